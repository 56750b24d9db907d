"""Agents and baselines: every algorithm learns a few steps on the tiny environment, fixed
policies choose what they promise, and the training command works end to end."""

import json
import subprocess
import sys

import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from kdenv.decision.algorithms import ALGORITHMS, load_hyperparams
from kdenv.decision.policies import FixedPolicy
from kdenv.decision.schedules import run_episode
from kdenv.decision.wrappers import MultiDiscreteOnOff
from tests.conftest import REPO, command
from tests.test_env import make_tiny_env

SMALL = {  # shrink buffers and batches so that a few environment steps train something
    "a2c": {"n_steps": 2}, "ppo": {"n_steps": 4, "batch_size": 4, "n_epochs": 1},
    "trpo": {"n_steps": 4, "batch_size": 4}, "recurrent_ppo": {"n_steps": 4, "batch_size": 4, "n_epochs": 1},
    "dqn": {"learning_starts": 2, "batch_size": 2}, "sac": {"learning_starts": 2, "batch_size": 2},
    "td3": {"learning_starts": 2, "batch_size": 2}, "ddpg": {"learning_starts": 2, "batch_size": 2},
}


@pytest.mark.parametrize("name", sorted(ALGORITHMS))
def test_every_algorithm_learns_on_its_action_space(name):
    algorithm = ALGORITHMS[name]
    env = make_tiny_env(algorithm.action_space)
    agent_env = MultiDiscreteOnOff(env) if algorithm.wrap_multidiscrete else env
    hyperparams = load_hyperparams(name)
    model = algorithm.load_class()(hyperparams.policy, agent_env, seed=0, **{**hyperparams.kwargs, **SMALL[name]})
    before = {k: v.clone() for k, v in model.policy.state_dict().items()}
    model.learn(total_timesteps=8)
    after = model.policy.state_dict()
    assert any(not before[k].equal(after[k]) for k in before), f"{name} did not update its policy"
    record = run_episode(agent_env, model, seed=3, policy_name=name)
    assert len(record.schedule) == 2 and record.status == "ok"


def test_recurrent_ppo_needs_the_wrapper_on_multibinary():
    env = make_tiny_env("multibinary")
    wrapped = MultiDiscreteOnOff(env)
    assert wrapped.action_space.nvec.tolist() == [2, 2, 2]
    with pytest.raises(ValueError, match="wraps MultiBinary"):
        MultiDiscreteOnOff(make_tiny_env("box"))


def test_fixed_policies_choose_what_they_promise():
    env = make_tiny_env("multibinary", phases=3)
    observation, _ = env.reset(seed=0)
    assert FixedPolicy("all", env).predict(observation)[0].tolist() == [1, 1, 1]
    assert FixedPolicy("none", env).predict(observation)[0].tolist() == [0, 0, 0]
    assert FixedPolicy("only-gradient", env).predict(observation)[0].tolist() == [0, 0, 1]
    assert FixedPolicy("kd", env).predict(observation)[0].tolist() == [1, 0, 0]  # logits 0.5 rounds on
    assert FixedPolicy("gkd", env).predict(observation)[0].tolist() == [1, 0, 1]
    soft = make_tiny_env("box", phases=3)
    increase = FixedPolicy("linear-increase", soft)
    record = run_episode(soft, increase, seed=0, policy_name="linear-increase")
    np.testing.assert_allclose(record.schedule, [[0, 0, 0], [0.5, 0.5, 0.5], [1, 1, 1]])
    decrease = run_episode(soft, FixedPolicy("linear-decrease", soft), seed=0)
    np.testing.assert_allclose(decrease.schedule, [[1, 1, 1], [0.5, 0.5, 0.5], [0, 0, 0]])
    random_soft = run_episode(soft, FixedPolicy("random-soft", soft, seed=4), seed=0).schedule
    assert random_soft == run_episode(soft, FixedPolicy("random-soft", soft, seed=4), seed=0).schedule
    with pytest.raises(ValueError, match="needs knowledge \\['gradient_cls'\\]"):
        FixedPolicy("gkd-cls", env)
    with pytest.raises(ValueError, match="unknown policy 'best'"):
        FixedPolicy("best", env)


def test_a_schedule_policy_plays_its_subset_in_each_phase_and_refuses_what_cannot_run():
    """schedule-<subset>/<subset>/...: what an open-loop schedule chosen on a table plays live."""
    env = make_tiny_env("multibinary", phases=3)
    record = run_episode(env, FixedPolicy("schedule-hidden+gradient/gradient/none", env), seed=0)
    np.testing.assert_allclose(record.schedule, [[0, 1, 1], [0, 0, 1], [0, 0, 0]])
    with pytest.raises(ValueError, match="names 2 phases, but the episode has 3"):
        FixedPolicy("schedule-hidden/gradient", env)
    with pytest.raises(ValueError, match="'attention' is not offered"):
        FixedPolicy("schedule-hidden/attention/none", env)
    for bad in ("schedule-hidden//none", "schedule-hidden+hidden/gradient/none", "schedule-"):
        with pytest.raises(ValueError, match="name one subset a phase"):
            FixedPolicy(bad, env)


@pytest.mark.slow  # a subprocess
def test_train_a2c_help_runs():
    result = subprocess.run([sys.executable, str(REPO / "agents" / "train_a2c.py"), "--help"],
                            capture_output=True, text=True, check=True)
    assert "A2C" in result.stdout and "--task" in result.stdout and "--algo" not in result.stdout
    for flag in ("--phases", "--updates-per-phase", "--total-timesteps", "--reward", "--preset", "--hp", "--resume"):
        assert flag in result.stdout


def test_train_command_end_to_end_writes_schedules_to_tensorboard(tiny_teacher, glue_dir, tmp_path):
    out = tmp_path / "a2c_run"
    code = command("train").main(
        ["--task", "wnli", "--data-dir", str(glue_dir), "--phases", "2", "--updates-per-phase", "1",
         "--total-timesteps", "4", "--max-train-examples", "32", "--max-reward-examples", "16",
         "--tensorboard-log", str(out), "--no-progress", "--hp", "n_steps=2"], default_algo="a2c")
    assert code == 0
    for name in ("agent.zip", "config.yaml", "schedules.json", "schedules.csv", "comparison.json",
                 "comparison.md", "learned_schedule.png"):
        assert (out / name).is_file(), name
    comparison = json.loads((out / "comparison.json").read_text())
    assert [r["policy"] for r in comparison] == ["agent:a2c", "all", "kd"]
    assert all(r["dev"] is not None and len(r["schedule"]) == 2 for r in comparison)
    events = EventAccumulator(str(out), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    tags = events.Tags()
    assert {"schedule/logits", "schedule/hidden", "schedule/gradient", "reward/total", "episode/return"} <= set(tags["scalars"])
    assert "schedule/heatmap" in tags["images"]
    assert len(events.Scalars("schedule/logits")) == 4  # one per environment step
    # SB3's own scalars, written after every rollout even at this tiny budget.
    (sb3_dir,) = out.glob("sb3_*")
    sb3 = EventAccumulator(str(sb3_dir), size_guidance={"scalars": 0})
    sb3.Reload()
    assert {"train/value_loss", "train/policy_loss", "train/entropy_loss"} <= set(sb3.Tags()["scalars"])
    assert len(sb3.Scalars("train/value_loss")) == 2  # 4 steps, n_steps=2: two rollouts
    # One hparams entry tying the configuration to the final metrics, and the comparison.
    assert {"_hparams_/experiment", "_hparams_/session_start_info", "_hparams_/session_end_info"} <= set(
        events.PluginTagToContent("hparams"))
    start_info = events.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    assert b"a2c" in start_info and b"hp/n_steps" in start_info
    assert {"final/dev_accuracy", "final/reward_split_accuracy", "comparison/dev_accuracy/kd"} <= set(tags["scalars"])
    assert "comparison/text_summary" in events.Tags()["tensors"]
    text = events.Tensors("comparison/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "| agent:a2c |" in text and "| kd |" in text
    # A second algorithm runs from the same command without code changes, resuming is possible.
    resumed = tmp_path / "a2c_resumed"
    assert command("train").main(
        ["--algo", "a2c", "--task", "wnli", "--data-dir", str(glue_dir), "--phases", "2", "--updates-per-phase", "1",
         "--total-timesteps", "2", "--max-train-examples", "32", "--max-reward-examples", "16", "--baselines", "",
         "--resume", str(out / "agent.zip"), "--tensorboard-log", str(resumed), "--no-progress"]) == 0
