"""The oracle benchmark on a tiny tree (tiny random BERT teacher, 2 phases, 2 knowledge types):
the builder enumerates every schedule with common random numbers and resumes after a kill, the
table is checked on load, the table environment passes the checkers, the oracle gets known
answers right, and replaying schedules on the live trainer reproduces the table exactly."""

import gzip
import json
import os
import shutil

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env as gym_check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env

import kdenv
from kdenv.benchmark.build import TreeSetup, run_jobs, write_table
from kdenv.benchmark.oracle import action_names, dev_headroom, reward_dev_correlation, solve
from kdenv.benchmark.table import Table, TableError, write_manifest
from kdenv.benchmark.table_env import KnowledgeSelectionTableEnv
from kdenv.benchmark.tree import TreeBuilder, collect_seed, tree_size
from kdenv.benchmark.validate import validate
from kdenv.commands.oracle import report as oracle_report
from kdenv.config import DataConfig, DistillConfig, EnvConfig
from kdenv.stats import with_interval
from tests.tables import synthetic_table


def tiny_setup(glue_dir):
    return TreeSetup(DataConfig(task="wnli", data_dir=str(glue_dir), max_train_examples=32, max_reward_examples=16),
                     DistillConfig(), EnvConfig(knowledge=["logits", "gradient"], phases=2, updates_per_phase=1))


@pytest.fixture(scope="module")
def built(tmp_path_factory, glue_dir, tokenizer):
    """One tiny table (2 seeds), built once for the module in its own runs folder."""
    import os

    from kdenv.engine.models import save_model
    from tests.conftest import command, tiny_bert

    root = tmp_path_factory.mktemp("bench")
    old = os.environ.get("KDENV_RUNS_DIR")
    os.environ["KDENV_RUNS_DIR"] = str(root / "runs")
    try:
        save_model(tiny_bert(layers=4, attn_implementation="eager"), tokenizer, root / "base", {})
        assert command("finetune_teacher").main(
            ["--task", "wnli", "--data-dir", str(glue_dir), "--model", str(root / "base"), "--epochs", "1",
             "--max-steps", "3", "--no-progress"]) == 0
        setup = tiny_setup(glue_dir)
        environment = setup.build_env(progress=False)
        run_jobs(setup, [0, 1], job_depth=1, progress=False, environment=environment)
        write_table(setup, environment, [0, 1], root / "table")
        yield {"root": root, "setup": setup, "environment": environment, "table": root / "table"}
    finally:
        if old is None:
            os.environ.pop("KDENV_RUNS_DIR", None)
        else:
            os.environ["KDENV_RUNS_DIR"] = old


def test_the_tree_holds_every_schedule_with_shared_prefixes(built):
    table = Table.load(built["table"])
    assert table.seeds == [0, 1] and table.num_actions == 4
    for seed in table.seeds:
        assert len(table.nodes[seed]) == tree_size(4, 2) + 1 == 21
        leaves = table.leaves(seed)
        assert len(leaves) == 16 and all("dev" in leaf and "accuracy" in leaf["dev"] for leaf in leaves)
    root = table.nodes[0][()]
    first = table.nodes[0][(0,)]
    assert set(first["rewards"]) == {"metric_gain", "loss_decrease", "log_loss", "final_metric", "teacher_agreement"}
    assert first["rewards"]["metric_gain"] == pytest.approx(first["metric"] - root["metric"])
    # Common random numbers: the all-off action trains ce only, so its loss differs from the
    # logits-on sibling only through the action; seeds differ through data order and dropout.
    assert table.nodes[0][(0,)]["losses"]["ce"] == pytest.approx(table.nodes[0][(1,)]["losses"]["ce"])
    assert table.nodes[0][(0,)]["losses"]["ce"] != table.nodes[1][(0,)]["losses"]["ce"]
    manifest = table.manifest
    assert manifest["teacher"]["fingerprint"] == built["environment"].distillation.teacher_fingerprint
    assert manifest["reward_split"]["examples"] == 16 and manifest["knowledge"] == ["logits", "gradient"]
    assert manifest["build_seconds"] > 0 and manifest["software"]["torch"]


def test_replaying_three_schedules_live_matches_the_table_exactly(built):
    table = Table.load(built["table"])
    for seed, schedule in [(0, [3, 0]), (1, [1, 2]), (0, [2, 2])]:
        result = validate(table, schedule, seed, built["environment"])
        assert result.ok, result.mismatches
        assert len(result.live_rewards) == 2


def test_validation_catches_a_changed_table(built, tmp_path):
    table = Table.load(built["table"])
    table.nodes[0][(3,)]["rewards"]["metric_gain"] += 0.01
    result = validate(table, [3, 0], 0, built["environment"])
    assert not result.ok and "reward at [3]" in result.mismatches[0]
    table.manifest["seed_provenance"]["0"] = {**table.manifest["seed_provenance"]["0"], "teacher": "0" * 20}
    with pytest.raises(TableError, match="seeds \\[0\\] with teacher 0+; this machine's wnli teacher"):
        validate(table, [3, 0], 0, built["environment"])


def test_a_killed_build_resumes_and_loses_only_the_node_in_flight(built, glue_dir, monkeypatch):
    setup, environment = built["setup"], built["environment"]
    monkeypatch.setenv("KDENV_RUNS_DIR", str(built["root"] / "resume_runs"))
    builder = TreeBuilder(environment.env, setup.work_dir())

    class KillAfter:
        def __init__(self, n):
            self.n = n

        def update(self, count=1):
            self.n -= 1
            if self.n == 0:
                raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        builder.run_job(0, (), KillAfter(9))
    lines = builder.job_path(0, ()).read_text().splitlines()
    assert 0 < len([line for line in lines if '"complete"' not in line]) < 21
    with open(builder.job_path(0, ()), "a") as handle:
        handle.write('{"history": [3, 1], "trunc')  # a line cut short by the kill
    stats = builder.run_job(0, ())
    assert stats.reused >= 1 and stats.computed >= 1
    resumed = collect_seed(setup.work_dir(), 0, 4, 2)
    monkeypatch.setenv("KDENV_RUNS_DIR", str(built["root"] / "runs"))
    original = collect_seed(setup.work_dir(), 0, 4, 2)
    strip = lambda records: [{k: v for k, v in r.items() if not k.endswith("wall_time_s")} for r in records]  # noqa: E731
    assert strip(resumed) == strip(original)


def test_the_cost_estimate_times_every_action_once_and_writes_nothing(built, tmp_path):
    builder = TreeBuilder(built["environment"].env, tmp_path / "work")
    cost = builder.time_nodes(0)
    assert len(cost["phase_seconds"]) == 4 and min(cost["phase_seconds"]) > 0 and cost["dev_seconds"] > 0
    assert cost["seed_seconds"] == pytest.approx(np.mean(cost["phase_seconds"]) * 20 + cost["dev_seconds"] * 16)
    assert not (tmp_path / "work").exists()
    result = validate(Table.load(built["table"]), [3, 0], 0, built["environment"])  # the env is left usable
    assert result.ok, result.mismatches


def test_an_estimate_of_an_absurd_budget_returns_in_seconds_scaled_from_a_few_updates(built, tmp_path):
    """--updates-per-phase 1000000000 used to time a full phase of every action: it never returned."""
    import dataclasses
    import time

    env = built["environment"].env
    config = env.config
    env.config = dataclasses.replace(config, updates_per_phase=10**9)
    try:
        start = time.perf_counter()
        cost = TreeBuilder(env, tmp_path / "work").time_nodes(0)
        assert time.perf_counter() - start < 120
    finally:
        env.config = config
    assert min(cost["phase_seconds"]) > 10**9 / 16 * 1e-4  # scaled from 16 timed updates of at least 0.1 ms
    assert env.config == config and validate(Table.load(built["table"]), [3, 0], 0, built["environment"]).ok


def test_build_tree_estimate_prints_the_projected_cost(built, glue_dir, monkeypatch, capsys):
    import torch

    from tests.conftest import command

    monkeypatch.setenv("KDENV_RUNS_DIR", str(built["root"] / "runs"))
    timed_with, time_nodes = [], TreeBuilder.time_nodes

    def spy(self, seed):  # the estimate times what the build runs: --threads torch threads, not torch's default
        timed_with.append(torch.get_num_threads())
        return time_nodes(self, seed)

    monkeypatch.setattr(TreeBuilder, "time_nodes", spy)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert command("build_tree").main(
            ["--task", "wnli", "--data-dir", str(glue_dir), "--seeds", "0", "--knowledge", "logits,gradient", "--phases",
             "2", "--updates-per-phase", "1", "--max-train-examples", "32", "--max-reward-examples", "16", "--threads",
             "1", "--estimate", "--no-progress"]) == 0
    finally:
        torch.set_num_threads(threads)
    assert timed_with == [1]
    out = capsys.readouterr().out
    assert "s: - " in out and "logits+gradient " in out and "per seed: 20 phases" in out and "16 dev-scored leaves" in out
    assert "every leaf on the whole dev split" in out
    assert command("build_tree").main(
        ["--task", "wnli", "--data-dir", str(glue_dir), "--seeds", "0", "--knowledge", "logits,gradient", "--phases", "2",
         "--updates-per-phase", "1", "--max-train-examples", "32", "--max-reward-examples", "16", "--threads", "1",
         "--dev-examples", "20", "--dev-leaves", "0.5", "--estimate", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "8 dev-scored leaves" in out and "50% of leaves (by a hash of seed and schedule) on a fixed subsample of 20" in out


def test_a_dev_subsample_build_scores_the_chosen_leaves_on_the_chosen_examples(built, tmp_path, monkeypatch):
    """Dev scoring is a recorded choice of the build: its own work folder, its manifest entry, the
    same leaves and examples on every run, and metrics equal to scoring that subsample directly."""
    import dataclasses

    from kdenv.benchmark.tree import DevScoring

    setup, environment = built["setup"], built["environment"]
    monkeypatch.setenv("KDENV_RUNS_DIR", str(tmp_path / "runs"))
    dev = DevScoring(examples=20, leaves=0.5, seed=3)
    sampled = dataclasses.replace(setup, dev=dev)
    assert sampled.key() != setup.key()  # its own work folder
    run_jobs(sampled, [0], job_depth=0, progress=False, environment=environment)
    write_table(sampled, environment, [0], tmp_path / "table")
    table = Table.load(tmp_path / "table")
    assert table.manifest["dev_scoring"]["examples"] == 20 and "50% of leaves" in table.manifest["dev_scoring"]["described"]
    scored = [leaf for leaf in table.leaves(0) if "dev" in leaf]
    assert [tuple(leaf["history"]) for leaf in scored] == [
        tuple(leaf["history"]) for leaf in table.leaves(0) if dev.scores_leaf(0, leaf["history"])]
    assert 0 < len(scored) < 16
    indices = dev.indices(len(environment.distillation.data["dev"]))
    assert len(indices) == 20 and list(indices) == list(DevScoring(examples=20, seed=3).indices(71))
    # The recorded figures are the subsample's: replay one scored leaf and score those examples directly.
    leaf = scored[0]
    env = environment.env
    env.reset(seed=0)
    for action in leaf["history"]:
        env.step(action)
    direct = env.trainer.evaluate("dev", indices)
    assert leaf["dev"]["accuracy"] == direct["accuracy"] and leaf["dev"]["loss"] == direct["loss"]


def test_damaged_or_mismatched_tables_are_refused(built, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(built["table"], copy)
    with pytest.raises(TableError, match="offers \\['logits', 'gradient'\\], not \\['logits', 'hidden'\\]"):
        Table.load(copy, knowledge=["logits", "hidden"])
    with pytest.raises(TableError, match="has 2 phases, not 3"):
        Table.load(copy, phases=3)
    data = (copy / "seed1.jsonl.gz").read_bytes()
    (copy / "seed1.jsonl.gz").write_bytes(data[: len(data) // 2])
    with pytest.raises(TableError, match="seed1.jsonl.gz is missing, truncated or altered"):
        Table.load(copy)
    with pytest.raises(TableError, match="no table at"):
        Table.load(tmp_path / "nowhere")


@pytest.mark.parametrize("action_space", ["discrete", "multibinary", "box"])
def test_table_env_passes_the_checkers_and_replays_the_tree(built, action_space):
    env = gym.make(kdenv.TABLE_ENV_ID, table=str(built["table"]), action_space=action_space, seeds=[1])
    gym_check_env(env.unwrapped, skip_render_check=True)
    sb3_check_env(env.unwrapped, warn=True)
    table = Table.load(built["table"])
    observation, info = env.reset(seed=0)
    assert info["table_seed"] == 1
    assert np.array_equal(observation, np.asarray(table.nodes[1][()]["observation"], np.float32))
    action = {"discrete": 2, "multibinary": np.array([0, 1], np.int8), "box": np.array([0.2, 0.9], np.float32)}
    observation, reward, terminated, _, step_info = env.step(action[action_space])
    node = table.nodes[1][(2,)]
    assert reward == pytest.approx(10.0 * node["rewards"]["metric_gain"]) and not terminated
    assert np.array_equal(observation, np.asarray(node["observation"], np.float32))
    assert step_info["action_weights"] == {"logits": 0.0, "gradient": 1.0}


def test_table_env_rewards_and_seed_splits(built):
    table = Table.load(built["table"])
    env = KnowledgeSelectionTableEnv(table, seeds=[0], reward="loss_decrease", reward_scale=2.0)
    env.reset(options={"table_seed": 0})
    _, reward, _, _, _ = env.step(1)
    assert reward == pytest.approx(2.0 * table.nodes[0][(1,)]["rewards"]["loss_decrease"])
    with pytest.raises(TableError, match="seeds \\[5\\] are not in the table"):
        KnowledgeSelectionTableEnv(table, seeds=[5])
    with pytest.raises(TableError, match="table_seed 1 is not among"):
        env.reset(options={"table_seed": 1})


def test_oracle_known_answers(tmp_path):
    table = synthetic_table(tmp_path, {
        0: {(0, 0): 0.10, (0, 1): 0.30, (1, 0): 0.00, (1, 1): 0.20},
        1: {(0, 0): 0.10, (0, 1): 0.00, (1, 0): 0.40, (1, 1): 0.20},
    })
    result = solve(table, "metric_gain")
    assert result["oracle"]["per_seed"] == pytest.approx([0.30, 0.40])
    assert result["oracle"]["schedules"] == [[0, 1], [1, 0]]
    # Open loop: (1,0) has mean 0.20, (1,1) 0.20, (0,1) 0.15, (0,0) 0.10: the first best in order is (1, 0).
    assert result["open_loop"]["schedule"] == [1, 0] and result["open_loop"]["return"]["mean"] == pytest.approx(0.20)
    assert result["best_constant"]["schedule"] == [1, 1]
    assert result["best_constant"]["return"]["mean"] == pytest.approx(0.20)
    assert result["headroom"]["mean"] == pytest.approx(((0.30 - 0.20) + (0.40 - 0.20)) / 2)
    assert result["headroom"]["std"] == pytest.approx(np.std([0.10, 0.20], ddof=1))
    # Its bootstrap interval over the two seeds: between the two seeds' headrooms, and how many seeds.
    assert 0.10 - 1e-9 <= result["headroom"]["ci"][0] < 0.15 < result["headroom"]["ci"][1] <= 0.20 + 1e-9
    assert result["headroom"]["n"] == 2
    assert result["policies"]["all"]["per_seed"] == pytest.approx([0.20, 0.20])
    assert result["policies"]["none"]["per_seed"] == pytest.approx([0.10, 0.10])
    assert result["policies"]["linear-increase"]["schedule"] == [0, 1]
    assert action_names(table) == ["-", "logits"]
    correlation = reward_dev_correlation(table)
    assert correlation["pooled"] == pytest.approx(1.0) and correlation["dev_metric"] == "accuracy"


def test_the_reward_dev_correlation_of_a_seed_whose_leaves_all_tie_is_undefined_not_nan(tmp_path):
    """MRPC's F1 on 128 examples gave every leaf of a seed the same value: no ranking to compare."""
    from tests.conftest import command

    table = synthetic_table(tmp_path, {
        0: {(0, 0): 0.10, (0, 1): 0.30, (1, 0): 0.00, (1, 1): 0.20},
        1: {(0, 0): 0.25, (0, 1): 0.25, (1, 0): 0.25, (1, 1): 0.25},
    })
    correlation = reward_dev_correlation(table)
    assert correlation["per_seed"] == {0: pytest.approx(1.0), 1: None} and correlation["constant"] == [1]
    assert correlation["pooled"] is not None
    oracle = command("oracle")
    text = oracle.report(table, {"metric_gain": solve(table, "metric_gain")}, correlation, None)
    assert "1: undefined (the reward is constant over the leaves)" in text and "nan" not in text
    assert "Undefined on seed(s) 1" in text


@pytest.mark.parametrize("observe_seed", [True, False])
def test_the_closed_loop_shares_the_first_action_and_is_exact_only_when_observations_tell_seeds_apart(
        tmp_path, observe_seed):
    from kdenv.benchmark.oracle import all_returns, closed_loop

    table = synthetic_table(tmp_path, {
        0: {(0, 0): 0.10, (0, 1): 0.30, (1, 0): 0.00, (1, 1): 0.20},
        1: {(0, 0): 0.10, (0, 1): 0.00, (1, 0): 0.40, (1, 1): 0.20},
    }, observe_seed=observe_seed)
    result = solve(table, "metric_gain")
    # First action 0: seeds reach 0.30 and 0.10 (mean 0.20); first action 1: 0.20 and 0.40 (mean 0.30).
    loop = result["closed_loop"]
    assert loop["first_actions"] == [1] and loop["schedules"] == [[1, 1], [1, 0]]
    assert loop["per_seed"] == pytest.approx([0.20, 0.40]) and loop["return"]["mean"] == pytest.approx(0.30)
    assert result["closed_loop_headroom"]["mean"] == pytest.approx(0.30 - 0.20)
    # Seed 0 wants logits on after the first phase, seed 1 off: one policy can do both only if it sees the seed.
    assert loop["exact"] is observe_seed
    sequences, returns = all_returns(table, "metric_gain")
    assert closed_loop(table, sequences, returns, rows=[0])["per_seed"] == pytest.approx([0.30])  # one seed: its oracle


def test_oracle_reports_every_schedule_on_dev_and_the_dev_headroom(tmp_path):
    """Dev accuracy = 1 − return: what the reward prefers, dev punishes."""
    table = synthetic_table(tmp_path, {
        0: {(0, 0): 0.10, (0, 1): 0.30, (1, 0): 0.00, (1, 1): 0.20},
        1: {(0, 0): 0.10, (0, 1): 0.00, (1, 0): 0.40, (1, 1): 0.20},
    }, dev=lambda value: 1.0 - value)
    result = solve(table, "metric_gain")
    assert result["oracle"]["dev"]["mean"] == pytest.approx(((1 - 0.30) + (1 - 0.40)) / 2)
    assert result["best_constant"]["dev"]["mean"] == pytest.approx(0.80)
    assert result["policies"]["none"]["dev"]["mean"] == pytest.approx(0.90)
    # The reward's headroom on dev, seed by seed: oracle (0, 1) and (1, 0) against the constant (1, 1).
    assert result["headroom_on_dev"]["mean"] == pytest.approx(((0.70 - 0.80) + (0.60 - 0.80)) / 2)
    assert result["headroom_on_dev"]["n"] == 2
    text = oracle_report(table, {"metric_gain": result}, reward_dev_correlation(table), dev_headroom(table))
    assert "both chosen by this reward: -0.1500" in text
    # adapting to the seed against the reward's open-loop schedule (1, 0), on dev: seed 0 0.70 - 1.00, seed 1 0
    assert result["reward_to_dev"]["adapting"]["mean"] == pytest.approx(-0.15)
    assert ("| metric_gain | the same, minus the best open-loop schedule (paired): what adapting to the seed adds | "
            "seeds | -0.1500 [") in text
    on_dev = dev_headroom(table)
    assert on_dev["dev_metric"] == "accuracy" and on_dev["oracle"]["schedules"] == [[1, 0], [0, 1]]
    assert on_dev["oracle"]["value"]["mean"] == pytest.approx(1.0)
    assert on_dev["best_constant"]["schedule"] == [0, 0] and on_dev["best_constant"]["value"]["mean"] == pytest.approx(0.9)
    assert on_dev["headroom"]["mean"] == pytest.approx(0.1) and on_dev["spread"]["mean"] == pytest.approx(0.35)
    assert reward_dev_correlation(table)["pooled"] == pytest.approx(-1.0)


def test_tables_are_written_reproducibly(built, tmp_path, monkeypatch):
    monkeypatch.setenv("KDENV_RUNS_DIR", str(built["root"] / "runs"))
    setup, environment = built["setup"], built["environment"]
    write_table(setup, environment, [0, 1], tmp_path / "again")
    for name in ("seed0.jsonl.gz", "seed1.jsonl.gz"):
        assert (tmp_path / "again" / name).read_bytes() == (built["table"] / name).read_bytes()
    with gzip.open(built["table"] / "seed0.jsonl.gz", "rt") as handle:
        assert json.loads(handle.readline())["history"] == []


def test_the_work_folder_is_keyed_by_the_runtime_except_cpu_fp32_whose_old_keys_stand(glue_dir):
    import dataclasses
    import hashlib

    from kdenv.config import DistillConfig, EnvConfig, recorded_names, to_dict

    setup = tiny_setup(glue_dir)
    # The key of a CPU fp32 setup is what it was before runtimes entered it (builds under way resume),
    # with the fields under their names of then (distill.epochs, env.epochs).
    fields = {"data": to_dict(setup.data), "distill": recorded_names(DistillConfig, to_dict(setup.distill)),
              "env": recorded_names(EnvConfig, to_dict(setup.env)), "threads": 1}
    assert "epochs" in fields["distill"] and "epochs" in fields["env"]
    for ignored in ("data_dir", "device", "precision"):
        fields["data"].pop(ignored, None)
        fields["distill"].pop(ignored, None)
    assert setup.key() == hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:12]
    assert setup.key() == dataclasses.replace(setup, distill=dataclasses.replace(setup.distill, device="cpu",
                                                                                 precision="fp32")).key()
    bf16 = dataclasses.replace(setup, distill=dataclasses.replace(setup.distill, device="cpu", precision="bf16"))
    assert bf16.runtime().precision == "bf16" and bf16.key() != setup.key()


def test_deterministic_cuda_asks_torch_for_deterministic_kernels(monkeypatch):
    import torch

    from kdenv.engine.runtime import deterministic_cuda

    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    before = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())
    try:
        deterministic_cuda()
        assert torch.are_deterministic_algorithms_enabled() and torch.is_deterministic_algorithms_warn_only_enabled()
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])


def test_a_table_is_replayed_in_the_precision_it_was_built_in(built):
    from kdenv.benchmark.validate import table_setup

    table = Table.load(built["table"])
    assert table_setup(table).distill.precision == "fp32"
    table.manifest["device"] = "cpu (CPU), bf16"
    assert table_setup(table).distill.precision == "bf16"


def test_build_and_oracle_commands_end_to_end(tiny_teacher, glue_dir, tmp_path):
    from tests.conftest import command

    table_dir = tmp_path / "table"
    common = ["--task", "wnli", "--data-dir", str(glue_dir), "--seeds", "0-1", "--phases", "2", "--updates-per-phase",
              "1", "--knowledge", "logits,gradient", "--max-train-examples", "32", "--max-reward-examples", "16",
              "--no-progress"]
    build = command("build_tree")
    assert build.main([*common, "--job", "0:2", "--output", str(table_dir)]) == 0  # one job, no table yet
    assert not (table_dir / "manifest.json").exists()
    assert build.main([*common, "--output", str(table_dir)]) == 0
    table = Table.load(table_dir)
    assert table.seeds == [0, 1] and all(len(nodes) == 21 for nodes in table.nodes.values())
    out = tmp_path / "oracle"
    assert command("oracle").main(["--table", str(table_dir), "--output-dir", str(out), "--data-dir", str(glue_dir),
                                   "--halvings", "2", "--resamples", "10", "--reward-curve"]) == 0
    report = json.loads((out / "oracle.json").read_text())
    result = report["results"]["metric_gain"]
    assert result["oracle"]["return"]["mean"] >= result["open_loop"]["return"]["mean"] >= \
        result["best_constant"]["return"]["mean"] - 1e-12
    assert result["headroom"]["mean"] >= 0 and set(report["results"]) == {"metric_gain", "loss_decrease", "log_loss",
                                                                          "final_metric", "teacher_agreement"}
    for name in ("oracle.md", "oracle_seed0.png", "open_loop.png", "best_constant.png"):
        assert (out / name).is_file(), name
    text = (out / "oracle.md").read_text()
    # The table keeps outputs (the default): the report leads with the out-of-sample figures, every reward
    # that outputs can score cross-fitted, and labels the in-sample one as an upper bound.
    assert text.index("## Headroom out of sample") < text.index("## In sample, and the schedules")
    assert set(report["out_of_sample"]) == {"metric_gain", "loss_decrease", "log_loss", "final_metric",
                                           "teacher_agreement"}
    assert "| metric_gain | half the reward split (8) → the other half; 2 halvings | seeds, examples |" in text
    assert "| metric_gain | reward split (16) → dev (71, from outputs) | seeds, examples |" in text
    adapting = report["out_of_sample"]["metric_gain"]["over_open_loop"]["reward_to_dev"]["oracle"]
    assert (f"| metric_gain | the same, minus the best open-loop schedule (paired): what adapting to the seed adds | "
            f"seeds, examples | {with_interval(adapting['mean'], adapting['ci'])} |") in text
    assert "; the oracle minus the best open-loop schedule (paired), " in text
    # the report's switch section is there exactly when the best open-loop schedule is not a constant
    switches = report["switches"]
    assert ("## Which switch pays" in text) == bool(switches and switches["phases"])
    assert "In-sample headroom (oracle − best constant, chosen and scored on the same reward examples: an upper bound)" in text
    curve = json.loads((out / "reward_curve.json").read_text())
    assert {row["reward"] for row in curve["rows"]} == {"metric_gain", "loss_decrease", "log_loss", "teacher_agreement"}
    assert [row["examples"] for row in curve["rows"] if row["reward"] == "metric_gain"] == [16]
    assert "## The reward as an instrument" in text and "| teacher_agreement | 16 |" in text


def test_finished_seeds_are_shipped_mid_build_without_computing(built, glue_dir, tmp_path, monkeypatch, capsys):
    from kdenv.commands import build_tree
    from tests.conftest import command

    monkeypatch.setenv("KDENV_RUNS_DIR", str(built["root"] / "runs"))

    def must_not_run(*args, **kwargs):
        raise AssertionError("--finished computed nodes")

    monkeypatch.setattr(build_tree, "run_jobs", must_not_run)
    common = ["--task", "wnli", "--data-dir", str(glue_dir), "--knowledge", "logits,gradient", "--phases", "2",
              "--updates-per-phase", "1", "--max-train-examples", "32", "--max-reward-examples", "16", "--no-progress",
              "--output", str(tmp_path / "table"), "--finished", "--no-outputs"]  # the fixture kept no outputs
    assert command("build_tree").main([*common, "--seeds", "0-2"]) == 0  # seeds 0 and 1 are built, 2 is not
    out = capsys.readouterr().out
    assert "not finished, left out: none part-built, [2] not started" in out
    partial = built["setup"].work_dir() / "seed3"  # one job's records only: a part-built tree
    partial.mkdir()
    try:
        shutil.copy(built["setup"].work_dir() / "seed0" / "prefix-0.jsonl", partial / "prefix-0.jsonl")
        assert command("build_tree").main([*common, "--seeds", "0-3"]) == 0
        assert "left out: [3] part-built, [2] not started" in capsys.readouterr().out
    finally:
        shutil.rmtree(partial)
    table = Table.load(tmp_path / "table")
    assert table.seeds == [0, 1] and table.nodes[1] == Table.load(built["table"]).nodes[1]
    # Shipped again on a later day with nothing new: the manifest is the same bytes (each seed keeps
    # the date it was first written); a seed new that day carries that day's date, and so does the table.
    import time

    from kdenv.benchmark import build

    today = time.strftime("%Y-%m-%d")

    def ship(seeds, day):
        with monkeypatch.context() as patch:  # the build's clock only (time.strftime, while it writes)
            patch.setattr(build.time, "strftime", lambda fmt, *rest: day)
            assert command("build_tree").main([*common, "--seeds", seeds]) == 0

    manifest = (tmp_path / "table" / "manifest.json").read_text()
    ship("0-1", "2099-01-01")
    assert (tmp_path / "table" / "manifest.json").read_text() == manifest
    shutil.rmtree(tmp_path / "table")
    ship("0", today)
    ship("0-1", "2099-01-01")
    later = json.loads((tmp_path / "table" / "manifest.json").read_text())
    assert {seed: p["built"] for seed, p in later["seed_provenance"].items()} == {"0": today, "1": "2099-01-01"}
    assert later["built"] == "2099-01-01"
    capsys.readouterr()
    assert command("build_tree").main([*common, "--seeds", "5"]) == 1
    assert "nothing written" in capsys.readouterr().out
    assert command("build_tree").main([*common, "--seeds", "0", "--estimate"]) == 2
    assert "does not go with --job or --estimate" in capsys.readouterr().err


def test_build_refuses_bad_seeds(glue_dir, capsys):
    from tests.conftest import command

    assert command("build_tree").main(["--task", "wnli", "--seeds", "3-1", "--data-dir", str(glue_dir)]) == 2
    assert "--seeds '3-1'" in capsys.readouterr().err


def test_validate_command_replays_the_oracle_schedules(built, glue_dir, monkeypatch, capsys):
    from tests.conftest import command

    monkeypatch.setenv("KDENV_RUNS_DIR", str(built["root"] / "runs"))
    assert command("validate_table").main(["--table", str(built["table"]), "--data-dir", str(glue_dir),
                                               "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert out.count("exact match") == 2


def test_validate_command_replays_the_seeds_of_this_machines_class_and_names_the_others(built, glue_dir, tmp_path,
                                                                                       monkeypatch, capsys):
    import shutil

    from tests.conftest import command

    monkeypatch.setenv("KDENV_RUNS_DIR", str(built["root"] / "runs"))
    table = tmp_path / "table"
    shutil.copytree(built["table"], table)
    manifest = json.loads((table / "manifest.json").read_text())
    manifest["seed_provenance"]["0"]["numerics"] = {"portable": True, "mkl_branch": "AUTO", "cpu_vendor": "OtherVendor"}
    write_manifest(table, {k: v for k, v in manifest.items() if k not in ("files", "format")})
    validate_table = command("validate_table").main
    assert validate_table(["--table", str(table), "--data-dir", str(glue_dir), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "seeds [0] left out" in out and "MKL AUTO on OtherVendor" in out
    assert out.count("exact match") == 1 and "seed 1, schedule" in out
    assert validate_table(["--table", str(table), "--seed", "0-1", "--data-dir", str(glue_dir), "--no-progress"]) == 2
    assert "seed 0 of this table was built in portable numerics, MKL AUTO on OtherVendor" in capsys.readouterr().err


def test_an_agent_trained_on_a_table_plays_live_as_it_did_on_the_table(built, glue_dir, tmp_path, monkeypatch):
    """The table's observations are the live ones, so a table agent taken to the real trainer
    (agents/evaluate.py --policies agent:<zip>) plays the schedule it played on the table."""
    from tests.conftest import command

    monkeypatch.setenv("KDENV_RUNS_DIR", str(built["root"] / "runs"))
    agent_run = tmp_path / "agent"
    # The tiny tree's loss changes are ~1e-5: scaled up, the agent learns a non-trivial schedule
    # (gradient on) instead of its initial all-off one.
    assert command("train_table").main(["--algo", "a2c", "--table", str(built["table"]), "--episodes", "30",
                                      "--agent-seeds", "1", "--output-dir", str(agent_run), "--no-progress",
                                      "--reward", "loss_decrease", "--reward-scale", "1e5", "--hp", "n_steps=2"]) == 0
    on_table = json.loads((agent_run / "results.json").read_text())["agents"][0]["schedules"]["1"]  # held-out seed 1
    out = tmp_path / "live"
    assert command("evaluate").main(
        ["--task", "wnli", "--data-dir", str(glue_dir), "--policies", f"agent:{agent_run / 'agent_seed0.zip'}",
         "--num-seeds", "2", "--phases", "2", "--updates-per-phase", "1", "--max-train-examples", "32",
         "--max-reward-examples", "16", "--output-dir", str(out), "--no-progress"]) == 0
    runs = json.loads((out / "runs.json").read_text())
    live = next(run for run in runs if run["seed"] == 1)["schedule"]  # weights per phase, in knowledge order
    assert on_table != [0, 0]
    assert [sum(int(w >= 0.5) << i for i, w in enumerate(weights)) for weights in live] == on_table


def test_a_table_s_schedule_is_named_as_the_fixed_policy_that_plays_it():
    from types import SimpleNamespace

    from kdenv.benchmark.live import schedule_policy

    table = SimpleNamespace(knowledge=["logits", "hidden", "gradient"])  # subset bits in this order
    assert schedule_policy(table, (6, 6, 6)) == "only-hidden+gradient"
    assert schedule_policy(table, (0, 0, 0)) == "none"
    assert schedule_policy(table, (3, 4, 0)) == "schedule-logits+hidden/gradient/none"


def test_a_live_run_s_projected_cost_comes_from_the_table_s_cleanest_seed():
    from types import SimpleNamespace

    from kdenv.benchmark.live import run_seconds

    def seed(phase, dev):  # a root, two phases of 2-phase schedules and a leaf scored on dev
        return {(): {}, (1,): {"wall_time_s": phase}, (1, 1): {"wall_time_s": phase, "dev_wall_time_s": dev},
                (1, 0): {"wall_time_s": phase, "dev_wall_time_s": dev}}

    table = SimpleNamespace(seeds=[0, 1], phases=2, nodes={0: seed(10.0, 2.0), 1: seed(500.0, 2.0)},
                            manifest={"dev_scoring": {"dev_size": 1500, "examples": 500}})
    assert run_seconds(table) == pytest.approx(2 * 10.0 + 2.0 * 3)  # seed 1 was paused: left out; dev scaled x3
    table.nodes = {0: {(): {}}, 1: {(): {}}}
    assert run_seconds(table) is None


def test_the_live_check_plays_a_leaderboard_row_on_new_seeds_against_the_constant_chosen_on_the_table(
        built, glue_dir, tmp_path, monkeypatch, capsys):
    from kdenv.benchmark.protocol import FoldView
    from tests.conftest import command

    monkeypatch.setenv("KDENV_RUNS_DIR", str(built["root"] / "runs"))
    results, table = tmp_path / "results", Table.load(built["table"])
    live = ["--table", str(built["table"]), "--row", "a2c", "--num-seeds", "2", "--agent-seeds", "2", "--k", "2",
            "--results-dir", str(results), "--output-dir", str(tmp_path / "live"), "--data-dir", str(glue_dir),
            "--no-progress"]
    assert command("live_check").main(live) == 2  # the leaderboard row must exist first
    assert "no finished leaderboard result for a2c" in capsys.readouterr().err
    best = [*live[:2], "--row", "best", *live[4:]]
    assert command("live_check").main(best) == 2
    assert "no agent row has a finished leaderboard result" in capsys.readouterr().err
    assert command("leaderboard").main(["--tables", str(built["table"]), "--k", "2", "--agent-seeds", "1",
                                        "--episodes", "20", "--agents", "a2c,dqn", "--results-dir", str(results),
                                        "--output", str(tmp_path / "board"), "--no-progress", "--retrain"]) == 0
    assert command("live_check").main([*live, "--first-seed", "1"]) == 2  # seed 1 is in the table
    assert "are in the table" in capsys.readouterr().err
    # The live runs can go to Ray (evaluate.py's jobs): an unreachable cluster is refused before any agent trains.
    assert command("live_check").main([*live, "--ray-address", "127.0.0.1:1"]) == 2
    import importlib.util

    refusal = "no Ray cluster answers at 127.0.0.1:1" if importlib.util.find_spec("ray") else "--ray needs Ray: pip install"
    assert refusal in capsys.readouterr().err and not (tmp_path / "live").exists()  # without the [ray] extra: that
    # What evaluate.py would refuse after the agents train is refused now, by the dry run too.
    assert command("live_check").main([*live, "--extra", "nosuch", "--dry-run"]) == 2
    assert "unknown policy 'nosuch'" in capsys.readouterr().err
    # open-loop: the best fixed schedule chosen on all of the table's seeds, played as a schedule- policy
    from kdenv.benchmark.live import schedule_policy

    view = FoldView(table, "metric_gain")
    open_loop = schedule_policy(table, view.sequences[view.best_open_loop(table.seeds)])
    assert command("live_check").main([*live, "--extra", "open-loop,open-loop", "--dry-run"]) == 0
    planned = capsys.readouterr().out
    assert (f"extra ['{open_loop}']" in planned) != (f"baseline {open_loop} " in planned), planned
    assert "h on one thread as independent runs (" in planned and "a run, from the table's measured node times" in planned
    assert "train their common phases once" in planned
    assert command("live_check").main([*live, "--no-share-prefixes", "--dry-run"]) == 0
    assert "train their common phases once" not in capsys.readouterr().out
    assert command("live_check").main([*live, "--first-seed", "-20", "--dry-run"]) == 2
    assert "--first-seed -20: episode seeds are whole numbers >= 0" in capsys.readouterr().err
    assert command("live_check").main(best) == 0  # the row with the larger mean gain on the leaderboard
    report = json.loads((tmp_path / "live" / "live_check.json").read_text())
    rows = json.loads((tmp_path / "board.json").read_text())["tables"][str(built["table"])]["rows"]
    label = max(["A2C", "DQN"], key=lambda name: rows[name]["gain"]["mean"])
    assert report["row"] == {"A2C": "a2c", "DQN": "dqn"}[label] and f"best agent row on {built['table'].name}: {report['row']}" in \
        capsys.readouterr().out
    subset = view.sequences[view.best_constant(table.seeds)][0]
    on = [name for bit, name in enumerate(table.knowledge) if (subset >> bit) & 1]
    assert report["baseline"] == ("only-" + "+".join(on) if on else "none") and report["seeds"] == [2, 3]
    runs = json.loads((tmp_path / "live" / "eval" / "runs.json").read_text())
    assert sorted({run["seed"] for run in runs}) == [2, 3] and len(runs) == 2 * 3
    # The table's own trainer: the live reward split starts where the table's root node does.
    assert all(run["reward_split"]["initial"] == pytest.approx(table.nodes[0][()]["metric"]) for run in runs)
    agents = sorted({run["policy"] for run in runs if run["policy"].startswith("agent:")})
    assert len(agents) == 2
    base = {run["seed"]: run["dev"]["accuracy"] for run in runs if run["policy"] == report["baseline"]}
    differences = [run["dev"]["accuracy"] - base[run["seed"]] for run in runs if run["policy"] in agents]
    dev = report["comparisons"][label]["dev"]
    assert dev["mean"] == pytest.approx(np.mean(differences)) and (dev["seeds"], dev["agent_seeds"]) == (2, 2)
    assert dev["mean_ci"][0] <= dev["mean"] <= dev["mean_ci"][1]
    assert f"| {label} | reward split |" in (tmp_path / "live" / "live_check.md").read_text()
    # Beside the live figures, what the table says of the same agents on the seeds they trained on.
    on_table = report["on_the_table"]
    assert (on_table["seeds"], on_table["agent_seeds"]) == (len(table.seeds), 2) and len(on_table["per_agent"]) == 2
    assert on_table["mean"] == pytest.approx(np.mean(on_table["per_agent"]))
    assert "On the table, the same agents" in (tmp_path / "live" / "live_check.md").read_text()


def test_a_table_is_extended_by_seeds_built_later_and_refuses_another_setup(built, tmp_path, monkeypatch):
    """Seeds built at another time (another machine, whose runs/ lacks the shipped seeds' records)
    join the table when the setup, teacher and software are the same; otherwise nothing is written."""
    from kdenv.benchmark.table import seed_file

    monkeypatch.setenv("KDENV_RUNS_DIR", str(built["root"] / "runs"))
    setup, environment, out = built["setup"], built["environment"], tmp_path / "table"
    write_table(setup, environment, [0], out)
    first = (out / seed_file(0)).read_bytes()
    write_table(setup, environment, [1], out)
    table = Table.load(out)
    reference = Table.load(built["table"])
    assert table.seeds == [0, 1] and table.nodes == reference.nodes
    assert (out / seed_file(0)).read_bytes() == first
    assert table.manifest["build_seconds"] == pytest.approx(reference.manifest["build_seconds"], abs=0.2)
    write_table(setup, environment, [1], out)  # seed 1 again (a rerun): its time is not counted twice
    assert Table.load(out).manifest["build_seconds"] == pytest.approx(reference.manifest["build_seconds"], abs=0.2)

    other = tmp_path / "other"

    def rewrite(change):
        write_table(setup, environment, [0], other)
        manifest = json.loads((other / "manifest.json").read_text())
        change(manifest)
        write_manifest(other, {k: v for k, v in manifest.items() if k not in ("files", "format")})

    def another_teacher(manifest):  # same numerics, another teacher: not the same instance
        manifest["teacher"]["fingerprint"] = manifest["seed_provenance"]["0"]["teacher"] = "another-teacher"

    for change, refusal in ((another_teacher, "teacher fingerprint of seed 0"),
                            (lambda m: m["teacher"].update(base_model="another-model"), "teacher recipe"),
                            (lambda m: m["seed_provenance"]["0"].update(numerics={"portable": False, "cpu": "AMD EPYC"}),
                             "numerics of seed 0 .native numerics on AMD EPYC")):
        rewrite(change)
        with pytest.raises(TableError, match=refusal):
            write_table(setup, environment, [1], other)
        assert not (other / seed_file(1)).exists() and Table.load(other).seeds == [0]
    write_table(setup, environment, [0, 1], other)  # rebuilding every seed replaces the table
    assert Table.load(other).manifest["seed_provenance"]["0"]["teacher"] != "another-teacher"
