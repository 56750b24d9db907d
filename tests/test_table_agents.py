"""Agents on schedule tables: every algorithm trains on train seeds and is scored on held-out
seeds against the exact oracle; on a table with an obvious best schedule, agents find it."""

import json
from pathlib import Path

import pytest

from kdenv.benchmark.study import TableStudy
from kdenv.decision.algorithms import ALGORITHMS
from tests.conftest import command
from tests.tables import obvious_table, synthetic_table

SMALL = {
    "a2c": ["n_steps=4"], "ppo": ["n_steps=16", "batch_size=16", "n_epochs=2"], "trpo": ["n_steps=16", "batch_size=16"],
    "recurrent_ppo": ["n_steps=16", "batch_size=16", "n_epochs=1"], "dqn": ["learning_starts=4"],
    "sac": ["learning_starts=4"], "td3": ["learning_starts=4"], "ddpg": ["learning_starts=4"],
}


@pytest.mark.parametrize("algo", sorted(ALGORITHMS))
def test_every_algorithm_trains_on_a_table_and_is_scored_on_held_out_seeds(algo, tmp_path):
    obvious_table(tmp_path / "table")
    out = tmp_path / "run"
    assert command("train_table").main(
        ["--algo", algo, "--table", str(tmp_path / "table"), "--episodes", "20", "--agent-seeds", "2",
         "--output-dir", str(out), "--no-progress", "--hp", *SMALL[algo]]) == 0
    summary = json.loads((out / "results.json").read_text())
    assert summary["train_seeds"] == [0, 1] and summary["test_seeds"] == [2]
    assert summary["oracle_test_return"]["mean"] == pytest.approx(0.2)
    for agent in summary["agents"]:
        assert agent["regret"] == pytest.approx(0.2 - agent["test_return"]) and agent["regret"] >= -1e-12
        assert agent["gain_over_best_constant"] == pytest.approx(agent["test_return"] - 0.2)
    assert (out / "agent_seed0.zip").is_file() and (out / "results.md").is_file()


def test_agents_are_also_scored_on_their_train_seeds(tmp_path):
    returns = {0: {(0, 0): 0.1, (0, 1): 0.3, (1, 0): 0.0, (1, 1): 0.2},
               1: {(0, 0): 0.0, (0, 1): 0.1, (1, 0): 0.4, (1, 1): 0.3},
               2: {(0, 0): 0.2, (0, 1): 0.0, (1, 0): 0.1, (1, 1): 0.1}}
    synthetic_table(tmp_path / "table", returns)
    out = tmp_path / "run"
    assert command("train_table").main(
        ["--algo", "a2c", "--table", str(tmp_path / "table"), "--episodes", "20", "--agent-seeds", "2",
         "--output-dir", str(out), "--no-progress", "--hp", "n_steps=4"]) == 0
    summary = json.loads((out / "results.json").read_text())
    # On train seeds 0 and 1 the best constant is (1, 1): mean 0.25 against (0, 0)'s 0.05.
    best = {seed: max(returns[seed].values()) for seed in (0, 1)}
    assert summary["train"]["best_constant_regret"]["mean"] == pytest.approx((best[0] - 0.2 + best[1] - 0.3) / 2)
    for agent in summary["agents"]:
        played = {seed: returns[seed][tuple(agent["train"]["schedules"][str(seed)])] for seed in (0, 1)}
        assert agent["train"]["return"] == pytest.approx((played[0] + played[1]) / 2)
        assert agent["train"]["regret"] == pytest.approx((best[0] - played[0] + best[1] - played[1]) / 2)
        assert agent["train"]["gain_over_best_constant"] == pytest.approx((played[0] + played[1]) / 2 - 0.25)
    assert summary["train"]["return"]["mean"] == pytest.approx(
        sum(agent["train"]["return"] for agent in summary["agents"]) / 2)
    assert "on their train seeds [0, 1]" in (out / "results.md").read_text()


def test_an_agent_finds_the_obvious_schedule(tmp_path):
    obvious_table(tmp_path / "table")
    out = tmp_path / "run"
    assert command("train_table").main(
        ["--algo", "ppo", "--table", str(tmp_path / "table"), "--episodes", "400", "--agent-seeds", "1",
         "--output-dir", str(out), "--no-progress", "--hp", "n_steps=32", "batch_size=32", "learning_rate=0.003"]) == 0
    summary = json.loads((out / "results.json").read_text())
    assert summary["regret"]["mean"] == pytest.approx(0.0, abs=1e-9)
    assert summary["agents"][0]["schedules"]["2"] == [1, 1]


def test_table_training_refuses_overlapping_seeds(tmp_path, capsys):
    obvious_table(tmp_path / "table")
    code = command("train_table").main(["--algo", "a2c", "--table", str(tmp_path / "table"), "--train-seeds", "0,2",
                                      "--test-seeds", "2", "--no-progress"])
    assert code == 2 and "must be non-empty and disjoint" in capsys.readouterr().err


def test_a_table_run_resumes_its_finished_agents_and_refuses_other_settings(tmp_path, monkeypatch, capsys):
    obvious_table(tmp_path / "table")
    out = tmp_path / "run"
    args = ["--algo", "a2c", "--table", str(tmp_path / "table"), "--episodes", "20", "--agent-seeds", "3",
            "--output-dir", str(out), "--no-progress", "--hp", "n_steps=4"]
    train = command("train_table")
    assert train.main(args) == 0
    first = json.loads((out / "results.json").read_text())
    study = TableStudy
    fitted = []
    original_fit = study.fit
    monkeypatch.setattr(study, "fit", lambda self, params, seed, *a, **k: fitted.append(seed) or original_fit(
        self, params, seed, *a, **k))
    (out / "agent_seed1.json").unlink()  # as if killed while agent 1 trained
    saved = json.loads((out / "agent_seed0.json").read_text())
    (out / "agent_seed0.json").write_text(json.dumps({k: v for k, v in saved.items() if k != "train"}))  # an older run's
    assert train.main(args) == 0
    assert fitted == [1]  # agents 0 and 2 were reused
    assert json.loads((out / "agent_seed0.json").read_text())["train"] == saved["train"]  # rescored from its zip
    again = json.loads((out / "results.json").read_text())
    for key in ("regret", "test_return", "gain_over_best_constant"):
        assert again[key] == pytest.approx(first[key])  # agent 1 retrained with the same seed: the same result
    capsys.readouterr()
    assert train.main([*args[:4], "--episodes", "30", *args[6:]]) == 2
    err = capsys.readouterr().err
    assert "holds agents of another run (different agent settings)" in err and "--output-dir" in err
    assert fitted == [1]  # refused before any training


@pytest.mark.slow
def test_table_agents_log_scalars_every_100th_episode_and_a_heatmap_every_1000th(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    obvious_table(tmp_path / "table")
    out = tmp_path / "run"
    assert command("train_table").main(
        ["--algo", "a2c", "--table", str(tmp_path / "table"), "--episodes", "1100", "--agent-seeds", "1",
         "--output-dir", str(out), "--no-progress", "--hp", "n_steps=4"]) == 0
    events = EventAccumulator(str(out / "schedules_seed0"), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    assert [e.step for e in events.Scalars("episode/return")] == list(range(0, 1100, 100))
    assert [e.step for e in events.Images("schedule/heatmap")] == [0, 1000]
    assert len(json.loads((out / "schedules_seed0" / "schedules.json").read_text())) == 1100


TABLE_RUN_BAD = [["--reward-scale", "0"], ["--reward", "dev_accuracy"], ["--train-seeds", "0,0"], ["--test-seeds", "x"]]
HP_BAD = [["--hp", "n_steps=-3"], ["--hp", "gamma=abc"], ["--hp", "no_such_setting=1"], ["--hp-file", "BROKEN"]]


@pytest.mark.parametrize("script, bad", [*(("train_table", bad) for bad in TABLE_RUN_BAD + HP_BAD),
                                         *(("tune_table", bad) for bad in TABLE_RUN_BAD)])
def test_table_runs_check_everything_before_writing_anything(script, bad, tmp_path, capsys):
    obvious_table(tmp_path / "table")
    (tmp_path / "broken.yaml").write_text("policy: MlpPolicy\nlearning_rate: [unclosed\n")
    bad = [str(tmp_path / "broken.yaml") if word == "BROKEN" else word for word in bad]
    out = tmp_path / "out"
    try:
        code = command(script).main(["--algo", "a2c", "--table", str(tmp_path / "table"), "--output-dir", str(out),
                                     "--no-progress", *bad])
    except SystemExit as exit:  # argparse's own refusal (a choice outside the list): exit 2 with usage
        code = exit.code
    assert code == 2
    err = capsys.readouterr().err
    assert "error" in err and "Traceback" not in err
    assert not out.exists()  # nothing left behind to trip the corrected rerun


def test_ctrl_c_on_a_table_run_says_how_to_resume_it_even_without_an_output_dir(tmp_path, monkeypatch, capsys):
    obvious_table(tmp_path / "table")
    calls = []
    original = TableStudy.fit

    def interrupted_second_agent(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    monkeypatch.setattr(TableStudy, "fit", interrupted_second_agent)
    args = ["--algo", "a2c", "--table", str(tmp_path / "table"), "--episodes", "20", "--agent-seeds", "2",
            "--no-progress", "--hp", "n_steps=4"]
    assert command("train_table").main(args) == 130
    err = capsys.readouterr().err
    assert "Traceback" not in err and "Continue with:" in err
    resume = err.strip().splitlines()[-1].split()
    assert resume[:2] == ["python", "agents/train_table.py"] and "--output-dir" in resume
    run_dir = resume[resume.index("--output-dir") + 1]
    monkeypatch.setattr(TableStudy, "fit", original)
    assert command("train_table").main(resume[2:]) == 0  # as printed: agent 0 is reused, agent 1 trained
    assert calls == [1, 1]
    assert len(json.loads((Path(run_dir) / "results.json").read_text())["agents"]) == 2
