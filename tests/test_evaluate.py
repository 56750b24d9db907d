"""The evaluation command on a tiny setup: table, plots, resume, and saved agents replaying."""

import csv
import json
import warnings

import numpy as np
import pytest

from kdenv.config import DataConfig, DistillConfig, EnvConfig
from kdenv.decision.algorithms import SavedAgent
from kdenv.decision.factory import make_env
from kdenv.decision.schedules import run_episode
from kdenv.paths import runs_dir
from tests.conftest import command

TINY = ["--phases", "2", "--updates-per-phase", "1", "--max-train-examples", "32", "--max-reward-examples", "16"]


def train_tiny_agent(glue_dir, out):
    assert command("train").main(
        ["--algo", "a2c", "--task", "wnli", "--data-dir", str(glue_dir), *TINY, "--total-timesteps", "4",
         "--tensorboard-log", str(out), "--no-progress", "--hp", "n_steps=2", "--baselines", ""]) == 0
    return out / "agent.zip"


def test_saved_agent_reproduces_its_recorded_schedule(tiny_teacher, glue_dir, tmp_path):
    agent_path = train_tiny_agent(glue_dir, tmp_path / "agent_run")
    recorded = json.loads((tmp_path / "agent_run" / "comparison.json").read_text())[0]
    saved = SavedAgent.open(agent_path)
    model = saved.load(device="cpu")
    env = make_env(task="wnli", env_config=EnvConfig(**saved.record["env"]),
                   data_config=DataConfig(task="wnli", data_dir=str(glue_dir), max_train_examples=32, max_reward_examples=16),
                   distill_config=DistillConfig())
    replay = run_episode(env, model, seed=recorded["seed"])
    assert replay.schedule == recorded["schedule"]
    assert replay.rewards == recorded["rewards"]


def test_evaluation_writes_tables_and_plots_and_resumes(tiny_teacher, glue_dir, tmp_path, monkeypatch, capsys):
    agent_path = train_tiny_agent(glue_dir, tmp_path / "agent_run")
    evaluate = command("evaluate")
    args = ["--task", "wnli", "--data-dir", str(glue_dir), "--policies", f"kd,only-hidden+gradient,agent:{agent_path}",
            "--baseline", "kd", "--num-seeds", "2", *TINY, "--no-progress"]
    assert evaluate.main([*args, "--output-dir", str(tmp_path / "eval1")]) == 0
    out = tmp_path / "eval1"
    for name in ("results.md", "results.csv", "runs.json", "metric_by_policy.png"):
        assert (out / name).is_file(), name
    assert list(out.glob("schedule_agent-a2c*.png")) and list(out.glob("events.out.tfevents.*"))
    runs = json.loads((out / "runs.json").read_text())
    assert sorted((r["policy"].split("@")[0], r["seed"]) for r in runs) == [
        ("agent:a2c", 0), ("agent:a2c", 1), ("kd", 0), ("kd", 1), ("only-hidden+gradient", 0), ("only-hidden+gradient", 1)]
    for run in runs:
        assert 0.0 <= run["label_loyalty"] <= 1.0 and 0.0 <= run["probability_loyalty"] <= 1.0
        assert -1.0 <= run["saliency_loyalty"] <= 1.0
    agent_runs = [r for r in runs if r["policy"].startswith("agent")]
    assert agent_runs[0]["agent_training_s"] > 0
    table = (out / "results.md").read_text()
    assert "| kd |" in table and "±" in table
    # The command quoted is the one evaluate was given (not the pytest process's arguments).
    assert f"command: `python agents/evaluate.py {' '.join(args)} --output-dir {out}`" in table
    kd = [r["dev"]["accuracy"] for r in runs if r["policy"] == "kd"]
    assert f"{np.mean(kd):.4f}" in table
    agent_by_seed = {r["seed"]: r["dev"]["accuracy"] for r in agent_runs}
    kd_by_seed = {r["seed"]: r["dev"]["accuracy"] for r in runs if r["policy"] == "kd"}
    differences = [agent_by_seed[seed] - kd_by_seed[seed] for seed in (0, 1)]
    agent_row = next(line for line in table.splitlines() if line.startswith("| agent:"))
    # The difference from the baseline, paired by seed, with its interval over the two seeds.
    assert f"| {np.mean(differences):+.4f} [{min(differences):+.4f}, {max(differences):+.4f}] (n=2) |" in agent_row
    assert "Baseline: kd, named in advance" in table
    with open(out / "results.csv", newline="") as handle:
        rows = {row["policy"]: row for row in csv.DictReader(handle)}
    assert rows["kd"]["dev_gain"] == "" and rows[agent_runs[0]["policy"]]["baseline"] == "kd"
    assert float(rows[agent_runs[0]["policy"]]["dev_gain"]) == pytest.approx(np.mean(differences))
    # The reward split: the final metric each run recorded, paired the same way.
    reward = {(r["policy"], r["seed"]): r["reward_split"]["final"] for r in runs}
    constant = [reward["only-hidden+gradient", seed] - reward["kd", seed] for seed in (0, 1)]
    assert float(rows["only-hidden+gradient"]["reward_split_gain"]) == pytest.approx(np.mean(constant))
    assert all(r["reward_split"]["metric"] == "accuracy" for r in runs)
    paired = json.loads((out / "paired.json").read_text())
    assert paired["baseline"] == "kd" and paired["baseline_named"] and set(paired["comparisons"]) == {
        "only-hidden+gradient", agent_runs[0]["policy"]}
    # A constant subset: the same two types on in every phase.
    assert all(r["schedule"] == [[0.0, 1.0, 1.0]] * 2 for r in runs if r["policy"] == "only-hidden+gradient")

    def must_not_run(*a, **k):
        raise AssertionError("a finished run was recomputed")

    from kdenv.decision import evaluation

    with monkeypatch.context() as patch:
        patch.setattr(evaluation, "run_evaluation_job", must_not_run)
        patch.setattr(evaluation, "run_seed_group", must_not_run)
        assert evaluate.main([*args, "--output-dir", str(tmp_path / "eval2")]) == 0
    assert json.loads((tmp_path / "eval2" / "runs.json").read_text()) == runs

    # A cached run edited into valid JSON (a better dev score) fails its checksum: named, run again, not used.
    cache = sorted((runs_dir() / "eval" / "wnli" / "cache").glob("kd_*_seed0.json"))
    assert len(cache) == 1, cache
    edited = json.loads(cache[0].read_text())
    edited["dev"]["accuracy"] = 0.99
    cache[0].write_text(json.dumps(edited))
    assert evaluate.main([*args, "--output-dir", str(tmp_path / "eval3")]) == 0
    rerun = json.loads((tmp_path / "eval3" / "runs.json").read_text())
    def timeless(run):  # a recomputed run differs in its wall time (and so its checksum) only
        return {key: value for key, value in run.items() if key not in ("wall_time_s", "sha256")}

    assert [timeless(r) for r in rerun] == [timeless(r) for r in runs]
    assert "checksum does not match" in capsys.readouterr().out


def test_first_seed_moves_the_episode_seeds(tiny_teacher, glue_dir, tmp_path, capsys):
    """--seeds 3-4 (a seed list, as everywhere) runs episode seeds 3 and 4, as do --first-seed 3
    --num-seeds 2 and, for one release, the old count spelling --first-seed 3 --seeds 2 (with a
    deprecation line); their runs are those of seeds 3 and 4 in a 0..4 evaluation (the same cache
    entries): seeds a table never held are reachable."""
    evaluate = command("evaluate")
    common = ["--task", "wnli", "--data-dir", str(glue_dir), "--policies", "kd", *TINY, "--no-progress"]
    assert evaluate.main([*common, "--seeds", "3-4", "--output-dir", str(tmp_path / "late")]) == 0
    late = json.loads((tmp_path / "late" / "runs.json").read_text())
    assert sorted(r["seed"] for r in late) == [3, 4]
    assert "seeds 3-4" in (tmp_path / "late" / "results.md").read_text()
    capsys.readouterr()
    for spelling, deprecated in ((["--first-seed", "3", "--num-seeds", "2"], False), (["--first-seed", "3", "--seeds", "2"], True)):
        assert evaluate.main([*common, *spelling, "--output-dir", str(tmp_path / "again")]) == 0
        assert json.loads((tmp_path / "again" / "runs.json").read_text()) == late
        assert ("--seeds 2 as a count is deprecated" in capsys.readouterr().err) == deprecated
    assert evaluate.main([*common, "--num-seeds", "5", "--output-dir", str(tmp_path / "all")]) == 0
    runs = {r["seed"]: r for r in json.loads((tmp_path / "all" / "runs.json").read_text())}
    assert sorted(runs) == [0, 1, 2, 3, 4]
    assert [runs[r["seed"]] for r in late] == late


def test_an_agent_trained_on_one_task_evaluates_on_another(tiny_teacher, glue_dir, tmp_path):
    agent_path = train_tiny_agent(glue_dir, tmp_path / "agent_run")  # trained on WNLI
    assert command("finetune_teacher").main(
        ["--task", "rte", "--data-dir", str(glue_dir), "--model", str(tiny_teacher), "--epochs", "1",
         "--max-steps", "2", "--no-progress"]) == 0
    out = tmp_path / "transfer"
    assert command("evaluate").main(
        ["--task", "rte", "--data-dir", str(glue_dir), "--policies", f"agent:{agent_path}", "--num-seeds", "1",
         *TINY, "--output-dir", str(out), "--no-progress"]) == 0
    runs = json.loads((out / "runs.json").read_text())
    assert runs[0]["config"]["task"] == "rte" and runs[0]["policy"].startswith("agent:a2c")
    assert len(runs[0]["schedule"]) == 2


def test_loyalty_means_skip_undefined_values_without_a_numpy_warning():
    from kdenv.decision.evaluation_report import defined_mean

   
    assert defined_mean([0.5, float("nan"), 0.7]) == pytest.approx(0.6)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # numpy's "Mean of empty slice" would raise here
        assert np.isnan(defined_mean([float("nan"), float("nan")]))


def test_a_per_phase_schedule_runs_live_and_a_wrong_length_is_refused_before_any_run(tiny_teacher, glue_dir, tmp_path,
                                                                                      capsys):
    """schedule-<subset>/<subset>: the live check plays a table's open-loop schedule through evaluate.py."""
    evaluate = command("evaluate")
    base = ["--task", "wnli", "--data-dir", str(glue_dir), "--num-seeds", "1", *TINY, "--no-progress"]
    assert evaluate.main([*base, "--policies", "kd,schedule-gradient/gradient/none", "--output-dir",
                          str(tmp_path / "bad")]) == 2
    assert "names 3 phases, but the episode has 2" in capsys.readouterr().err and not (tmp_path / "bad").exists()
    assert evaluate.main([*base, "--policies", "kd,schedule-hidden+gradient/none", "--baseline", "kd",
                          "--output-dir", str(tmp_path / "eval")]) == 0
    runs = json.loads((tmp_path / "eval" / "runs.json").read_text())
    played = next(r for r in runs if r["policy"] == "schedule-hidden+gradient/none")
    assert played["schedule"] == [[0.0, 1.0, 1.0], [0.0, 0.0, 0.0]]


def test_a_seed_s_runs_share_their_common_prefixes_and_give_what_independent_runs_give(tiny_teacher, glue_dir, tmp_path):
    """Three schedules that open alike, on two seeds: with shared prefixes (the default) the first phase is
    trained once a seed and restored for the other two runs; every result is, to the bit, what the runs
    give one by one (--no-share-prefixes)."""
    import shutil

    evaluate = command("evaluate")
    policies = "only-hidden+gradient,schedule-hidden+gradient/none,schedule-hidden+gradient/gradient"
    base = ["--task", "wnli", "--data-dir", str(glue_dir), "--policies", policies, "--num-seeds", "2", *TINY,
            "--no-progress"]
    results = {}
    for name, flags in (("shared", []), ("alone", ["--no-share-prefixes"])):
        shutil.rmtree(runs_dir() / "eval" / "wnli" / "cache", ignore_errors=True)  # no answer from the other's runs
        assert evaluate.main([*base, *flags, "--output-dir", str(tmp_path / name)]) == 0
        runs = json.loads((tmp_path / name / "runs.json").read_text())
        results[name] = {(r["policy"], r["seed"]): r for r in runs}
    assert sorted(results["shared"]) == sorted(results["alone"]) and len(results["alone"]) == 6
    same = ("schedule", "return", "dev", "reward_split", "label_loyalty", "probability_loyalty", "saliency_loyalty")
    for key, alone in results["alone"].items():
        shared = results["shared"][key]
        assert {field: shared[field] for field in same} == {field: alone[field] for field in same}, key
        assert alone["reused_phases"] == 0
    for seed in (0, 1):  # the first run of a seed trains both phases; the other two restore the first
        assert sorted(r["reused_phases"] for (_, s), r in results["shared"].items() if s == seed) == [0, 1, 1]
    # the schedules differ after the shared phase, so their students do too (WNLI's tiny student predicts the
    # majority class whatever it learns: its saliency tells them apart)
    assert len({json.dumps([r["dev"], r["saliency_loyalty"]]) for (_, s), r in results["alone"].items() if s == 0}) > 1
