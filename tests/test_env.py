"""The environment on a tiny BERT pair and the toy task: API conformance, action spaces,
rewards, crash path, determinism."""

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env as gym_check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env

import kdenv
from kdenv.config import DistillConfig, EnvConfig
from kdenv.decision.env import KnowledgeDistillationEnv
from kdenv.decision.rewards import REWARDS, RewardInput
from kdenv.engine.models import student_from_teacher
from kdenv.engine.runtime import make_runtime
from kdenv.engine.teacher_cache import OnlineTeacher
from kdenv.engine.trainer import StudentTrainer
from tests.conftest import tiny_bert, toy_task_data

OFFERED = ["logits", "hidden", "gradient"]


def make_tiny_env(action_space="multibinary", phases=2, updates=1, runtime=None, **overrides):
    teacher = tiny_bert(layers=4, seed=1).eval()
    data = toy_task_data(n_train=32, n_eval=16)
    runtime = runtime or make_runtime("cpu")
    trainer = StudentTrainer(student_from_teacher(teacher, num_layers=2), OnlineTeacher(teacher, data.task, runtime),
                             data, ["ce", *OFFERED], DistillConfig(seed=0), runtime, phases * updates, teacher.config)
    config = EnvConfig(knowledge=OFFERED, action_space=action_space, phases=phases, updates_per_phase=updates, **overrides)
    probe = np.zeros(teacher.config.hidden_size, np.float32) if config.cls_state else None
    return KnowledgeDistillationEnv(trainer, config, teacher_probe_cls=probe)


@pytest.mark.parametrize("action_space", ["multibinary", "box", "discrete"])
def test_both_checkers_pass_for_every_action_space(action_space):
    env = make_tiny_env(action_space)
    gym_check_env(env, skip_render_check=True)
    sb3_check_env(env, warn=True)


def test_dict_observation_with_cls_vectors_passes_the_checkers():
    env = make_tiny_env(cls_state=True)
    gym_check_env(env, skip_render_check=True)
    sb3_check_env(env, warn=True)
    obs, _ = env.reset(seed=0)
    assert set(obs) == {"features", "teacher_cls", "student_cls"} and obs["student_cls"].shape == (32,)


@pytest.mark.parametrize("action_space, action, expected", [
    ("multibinary", np.array([1, 0, 1], np.int8), {"logits": 1.0, "hidden": 0.0, "gradient": 1.0}),
    ("box", np.array([0.25, 1.5, -0.2], np.float32), {"logits": 0.25, "hidden": 1.0, "gradient": 0.0}),
    ("discrete", 6, {"logits": 0.0, "hidden": 1.0, "gradient": 1.0}),
])
def test_steps_with_each_action_space(action_space, action, expected):
    env = make_tiny_env(action_space)
    obs, info = env.reset(seed=1)
    assert obs.shape == (8 + 3 * 3,) and env.observation_space.contains(obs)
    obs, reward, terminated, truncated, info = env.step(action)
    assert info["action_weights"] == expected and info["weights"]["ce"] == 1.0
    assert set(info["losses"]) == {"ce"} | {name for name, w in expected.items() if w > 0}
    assert np.isfinite(reward) and not terminated and not truncated
    assert {"metric", "loss", "agreement", "phase_wall_time_s", "task_reward", "exploration_bonus", "grad_norms"} <= set(info)
    np.testing.assert_allclose(obs[-3:], [expected[n] for n in OFFERED])  # previous action
    _, _, terminated, _, _ = env.step(action)
    assert terminated  # two phases per episode


def test_all_off_action_trains_on_the_base_term_alone():
    env = make_tiny_env()
    env.reset(seed=0)
    _, _, _, _, info = env.step(np.zeros(3, np.int8))
    assert set(info["losses"]) == {"ce"}


def test_wrong_actions_get_clear_errors():
    env = make_tiny_env()
    env.reset(seed=0)
    with pytest.raises(ValueError, match=r"shape \(2,\) does not fit.*length-3"):
        env.step(np.array([1, 0]))
    with pytest.raises(ValueError, match="only 0 and 1"):
        env.step(np.array([1, 0, 2]))
    discrete = make_tiny_env("discrete")
    discrete.reset(seed=0)
    with pytest.raises(ValueError, match=r"Discrete\(8\)"):
        discrete.step(8)


def test_same_seed_same_episode():
    env = make_tiny_env(updates=2)
    runs = []
    for _ in range(2):
        obs, _ = env.reset(seed=5)
        rewards = [env.step(np.array([1, 1, 1], np.int8))[1] for _ in range(2)]
        runs.append((obs, rewards, [p.detach().clone() for p in env.trainer.student.parameters()]))
    np.testing.assert_array_equal(runs[0][0], runs[1][0])
    assert runs[0][1] == runs[1][1]
    assert all(torch.equal(a, b) for a, b in zip(runs[0][2], runs[1][2]))


def test_rewards_only_ever_use_the_reward_split():
    env = make_tiny_env()
    asked = []
    evaluate = env.trainer.evaluate_with_outputs  # what the environment evaluates with (it keeps the outputs)

    def recording(split="reward", indices=None):
        asked.append(split)
        return evaluate(split, indices)

    env.trainer.evaluate_with_outputs = recording
    env.reset(seed=0)
    for _ in range(2):
        env.step(np.ones(3, np.int8))
    assert asked and set(asked) == {"reward"}
    data = env.trainer.data
    assert np.intersect1d(data.train_indices, data.reward_indices).size == 0


def test_non_finite_loss_ends_the_episode_with_the_crash_penalty():
    env = make_tiny_env(crash_penalty=-2.0)
    env.reset(seed=0)
    env.trainer.knowledge["hidden"].forward = lambda step: torch.tensor(float("nan"))
    _, reward, terminated, _, info = env.step(np.array([0, 1, 0], np.int8))
    assert terminated and reward == -2.0
    assert "hidden loss is nan" in info["crash"] and info["status"] == "non_finite"


def test_reward_variants():
    step = RewardInput(metric_before=0.5, metric_after=0.6, loss_before=0.8, loss_after=0.4, metric_initial=0.45, terminal=False)
    assert REWARDS["metric_gain"](step) == pytest.approx(0.1)
    assert REWARDS["loss_decrease"](step) == pytest.approx(0.4)
    assert REWARDS["log_loss"](step) == pytest.approx(np.log(2))
    assert REWARDS["final_metric"](step) == 0.0
    last = RewardInput(0.5, 0.6, 0.8, 0.4, 0.45, terminal=True)
    assert REWARDS["final_metric"](last) == pytest.approx(0.15)


def test_exploration_bonus_is_reported_apart():
    env = make_tiny_env(exploration_bonus=0.5)
    env.reset(seed=0)
    _, reward, _, _, first = env.step(np.array([1, 0, 0], np.int8))
    _, _, _, _, second = env.step(np.array([1, 0, 0], np.int8))
    assert first["exploration_bonus"] == pytest.approx(0.5)
    assert second["exploration_bonus"] == pytest.approx(0.5 / np.sqrt(2))
    assert reward == pytest.approx(first["task_reward"] + first["exploration_bonus"])


def test_environment_id_is_registered():
    assert kdenv.ENV_ID in gym.registry
    assert gym.registry[kdenv.ENV_ID].entry_point == "kdenv.decision.factory:make_env"


BAD_ACTIONS = {
    "discrete": [1.0, np.float32(2), "3", float("nan"), np.array([1, 2]), None, -1, 2**len(OFFERED)],
    "multibinary": [np.array([1, 0]), np.array([1, 0, 0.5]), np.array([1, 0, np.nan]), "101", None],
    "box": [np.array([0.5, np.nan, 0.1]), np.array([0.5, np.inf, 0.1]), np.array([0.5, 0.5]), "abc", None],
}


@pytest.mark.parametrize("space", sorted(BAD_ACTIONS))
def test_both_environments_refuse_the_same_bad_actions_and_accept_the_same_good_ones(space, tmp_path):
    """One action check for the live and the table environment: floats, strings, NaN/inf and wrong
    shapes are refused by both with a ValueError naming the space; a Discrete action of shape (1,)
    (what a vectorised agent hands over) is accepted by both."""
    from kdenv.benchmark.table_env import KnowledgeSelectionTableEnv
    from kdenv.decision.env import action_weights
    from tests.tables import synthetic_table

    for action in BAD_ACTIONS[space]:
        with pytest.raises(ValueError, match="action"):
            action_weights(action, OFFERED, space)
    live = make_tiny_env(space)
    live.reset(seed=0)
    for action in BAD_ACTIONS[space]:
        with pytest.raises(ValueError, match="action"):
            live.step(action)
    good, expected = {"discrete": (np.array([5]), [1.0, 0.0, 1.0]),
                      "multibinary": (np.array([1, 0, 1], dtype=np.int8), [1.0, 0.0, 1.0]),
                      "box": (np.array([0.9, -3.0, 0.6]), [0.9, 0.0, 0.6])}[space]
    assert list(live.action_to_weights(good).values()) == pytest.approx(expected)
    table = KnowledgeSelectionTableEnv(synthetic_table(tmp_path, {0: {(0, 0): 0.0, (0, 1): 0.1, (1, 0): 0.2,
                                                                          (1, 1): 0.3}}), action_space=space)
    bad_for_one_type = {"discrete": [1.0, "1", float("nan"), np.array([0, 1]), 2],
                        "multibinary": [np.array([0.5]), np.array([np.nan]), np.array([1, 0])],
                        "box": [np.array([np.nan]), np.array([np.inf]), np.array([0.1, 0.2])]}[space]
    table.reset(seed=0)
    for action in bad_for_one_type:
        with pytest.raises(ValueError, match="action"):
            table.step(action)
    assert table.action_index({"discrete": np.array([1]), "multibinary": np.array([1]), "box": np.array([0.7])}[space]) == 1


def test_teacher_agreement_reward():
    step = RewardInput(0.5, 0.6, 0.8, 0.4, 0.45, terminal=False, agreement_before=0.70, agreement_after=0.75)
    assert REWARDS["teacher_agreement"](step) == pytest.approx(0.05)
    assert REWARDS["teacher_agreement"](RewardInput(0.5, 0.6, 0.8, 0.4, 0.45, terminal=True)) == 0.0


def test_the_live_teacher_agreement_reward_is_the_change_of_agreement_with_the_teacher(tiny_teacher, glue_dir):
    """With reward="teacher_agreement" each step pays (agreement after - before) x scale, where agreement
    is the student's with the teacher's predictions on the reward split (the teacher's cached logits)."""
    import gymnasium

    from kdenv.config import DataConfig

    env = gymnasium.make("kdenv/KnowledgeSelection-v0", task="wnli",
                         env_config={"phases": 2, "updates_per_phase": 2, "reward": "teacher_agreement",
                                     "reward_scale": 10.0},
                         data_config=DataConfig(task="wnli", data_dir=str(glue_dir), max_train_examples=32,
                                                max_reward_examples=16))
    try:
        env.reset(seed=0)
        episode = env.unwrapped.episode
        agreements, rewards = [episode.agreement], []
        for _ in range(2):
            _, reward, terminated, truncated, _ = env.step(np.ones(3, dtype=np.int8))
            agreements.append(env.unwrapped.episode.agreement)
            rewards.append(reward)
        assert 0.0 <= min(agreements) and max(agreements) <= 1.0  # label agreement on WNLI
        assert rewards == pytest.approx([10.0 * (b - a) for a, b in zip(agreements, agreements[1:])])
    finally:
        env.close()
