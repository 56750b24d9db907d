"""Hyperparameter search on a table (agents/tune_table.py): Optuna trials on the train seeds, a
resumable study, and default against tuned on the held-out seeds with paired differences."""

import json
from pathlib import Path

import pytest
import yaml

from tests.conftest import command
from tests.tables import obvious_table, synthetic_table

FAST = ["--trial-episodes", "24", "--trial-agents", "1", "--episodes", "24", "--agent-seeds", "2", "--no-progress"]


def test_tuning_writes_the_best_trial_and_compares_it_with_the_defaults_on_held_out_seeds(tmp_path):
    obvious_table(tmp_path / "table")
    out = tmp_path / "tune"
    tune = command("tune_table")
    assert tune.main(["--algo", "a2c", "--table", str(tmp_path / "table"), "--trials", "3", "--output-dir", str(out),
                      *FAST]) == 0
    trials = (out / "trials.csv").read_text().strip().splitlines()
    assert len(trials) == 1 + 3
    import optuna

    best = optuna.load_study(study_name="tune", storage=f"sqlite:///{out / 'study.db'}").best_trial
    tuned = yaml.safe_load((out / "tuned.yaml").read_text())
    assert tuned["learning_rate"] == pytest.approx(best.params["learning_rate"])
    assert tuned["n_steps"] == best.params["n_steps"] and tuned["policy"] == "MlpPolicy"
    default_config = yaml.safe_load((out / "default" / "config.yaml").read_text())
    assert default_config["agent"]["hyperparams"]["learning_rate"] == 0.0007  # kdenv/decision/hyperparams/a2c.yaml
    result = json.loads((out / "comparison.json").read_text())
    default = json.loads((out / "default" / "results.json").read_text())
    tuned_run = json.loads((out / "tuned" / "results.json").read_text())
    assert result["test_seeds"] == [2] and result["train_seeds"] == [0, 1]
    differences = [t["regret"] - d["regret"] for t, d in zip(tuned_run["agents"], default["agents"])]
    assert [a["agent_seed"] for a in tuned_run["agents"]] == [a["agent_seed"] for a in default["agents"]] == [0, 1]
    assert result["tuned_minus_default"]["regret"]["mean"] == pytest.approx(sum(differences) / 2)
    train_differences = [t["train"]["regret"] - d["train"]["regret"] for t, d in zip(tuned_run["agents"], default["agents"])]
    assert result["train"]["tuned_minus_default"]["regret"]["mean"] == pytest.approx(sum(train_differences) / 2)
    for agent in default["agents"] + tuned_run["agents"]:
        assert agent["regret"] == pytest.approx(0.2 - agent["test_return"])

    # Resuming adds only the missing trials.
    assert tune.main(["--algo", "a2c", "--table", str(tmp_path / "table"), "--trials", "4", "--output-dir", str(out),
                      *FAST]) == 0
    assert len((out / "trials.csv").read_text().strip().splitlines()) == 1 + 4
    import optuna

    trials = optuna.load_study(study_name="tune", storage=f"sqlite:///{out / 'study.db'}").trials
    assert trials[3].params != trials[0].params  # the added trial continues the search, it does not repeat trial 0

    # The final comparison resumes too: the default arm is reused, and a tuned arm trained with other
    # hyperparameters (here: edited) is moved aside, not mixed in.
    config = yaml.safe_load((out / "tuned" / "config.yaml").read_text())
    config["agent"]["hyperparams"]["learning_rate"] *= 2
    (out / "tuned" / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    reused = (out / "default" / "agent_seed0.json").stat().st_mtime_ns
    assert tune.main(["--algo", "a2c", "--table", str(tmp_path / "table"), "--trials", "4", "--output-dir", str(out),
                      *FAST]) == 0
    assert (out / "default" / "agent_seed0.json").stat().st_mtime_ns == reused
    aside = list(out.glob("tuned.replaced-*"))
    assert len(aside) == 1 and yaml.safe_load((aside[0] / "config.yaml").read_text()) == config
    assert yaml.safe_load((out / "tuned" / "config.yaml").read_text())["agent"]["hyperparams"] == tuned_now(out)

    # The tuned file drives agents/train_table.py.
    assert command("train_table").main(["--algo", "a2c", "--table", str(tmp_path / "table"), "--hp-file",
                                      str(out / "tuned.yaml"), "--episodes", "12", "--agent-seeds", "1",
                                      "--output-dir", str(tmp_path / "again"), "--no-progress"]) == 0
    used = yaml.safe_load((tmp_path / "again" / "config.yaml").read_text())["agent"]["hyperparams"]
    assert used == yaml.safe_load((out / "tuned.yaml").read_text())


def tuned_now(out):
    return yaml.safe_load((out / "tuned.yaml").read_text())


def test_tuning_refuses_bad_input_before_any_work(tmp_path, capsys):
    obvious_table(tmp_path / "table")
    tune = command("tune_table")
    with pytest.raises(SystemExit):
        tune.main(["--algo", "a2c", "--table", str(tmp_path / "table"), "--trials", "0"])
    assert "--trials must be >= 1" in capsys.readouterr().err
    assert tune.main(["--algo", "ppo", "--table", str(tmp_path / "table"), "--test-seeds", "7",
                      "--output-dir", str(tmp_path / "out")]) == 2
    assert "not in the table" in capsys.readouterr().err and not (tmp_path / "out").exists()


@pytest.mark.slow  # a subprocess
def test_make_table_study_is_one_target_per_table_and_algorithm():
    """`make -j2 table-study` can only run studies side by side if each is its own target."""
    import os
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}  # pytest under make
    lines = subprocess.run(["make", "-s", "-n", "-C", str(root), "table-study", "TABLES=stsb mrpc", "ALGOS=a2c dqn",
                            "VENV=.venv"], capture_output=True, text=True, check=True, env=env).stdout.replace("\\\n", " ").splitlines()
    commands = [" ".join(line.split()) for line in lines if "tune_table.py" in line]
    assert commands == [f".venv/bin/python agents/tune_table.py --algo {algo} --table {table} --output-dir "
                        f"runs/tables/{table}/tune_{algo} --no-progress" for table in ("stsb", "mrpc") for algo in ("a2c", "dqn")]
    lines = subprocess.run(["make", "-s", "-n", "-C", str(root), "table-study", "TABLES=stsb", "ALGOS=ppo", "VENV=.venv",
                            "TUNE_ARGS=--trials 20"], capture_output=True, text=True, check=True, env=env).stdout
    assert " ".join(lines.replace("\\\n", " ").split()).endswith("--no-progress --trials 20")


def test_a_trial_cut_short_by_a_kill_is_marked_failed_not_left_running(tmp_path, capsys):
    import optuna

    obvious_table(tmp_path / "table")
    out = tmp_path / "tune"
    args = ["--algo", "a2c", "--table", str(tmp_path / "table"), "--output-dir", str(out), *FAST]
    assert command("tune_table").main([*args, "--trials", "1"]) == 0
    study = optuna.load_study(study_name="tune", storage=f"sqlite:///{out / 'study.db'}")
    study.ask()  # as a killed run leaves it: RUNNING forever
    assert command("tune_table").main([*args, "--trials", "2"]) == 0
    states = [t.state for t in optuna.load_study(study_name="tune", storage=f"sqlite:///{out / 'study.db'}").trials]
    assert states == [optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL, optuna.trial.TrialState.COMPLETE]
    assert "cut short by an earlier run" in capsys.readouterr().out


def test_a_study_folder_refuses_another_table_budget_or_reward_and_a_damaged_record(tmp_path, capsys):
    """A study folder remembers what its trials ran on (study.json, with a checksum): resumed with
    another table, trial budget or reward it refuses before any trial, naming what differs; an
    edited record, or trials without one, are refused with the way out. Nothing is added."""
    import json

    import optuna

    obvious_table(tmp_path / "table")
    other = synthetic_table(tmp_path / "other", {s: {(a, b): 0.1 * (a + b) + 0.01 * s for a in range(2) for b in range(2)}
                                                 for s in range(3)})
    assert other.seeds == [0, 1, 2]
    out = tmp_path / "tune"
    args = ["--algo", "a2c", "--table", str(tmp_path / "table"), "--output-dir", str(out), *FAST, "--trials", "1"]
    assert command("tune_table").main(args) == 0
    storage = f"sqlite:///{out / 'study.db'}"
    capsys.readouterr()
    for change, named in ((["--table", str(tmp_path / "other")], "table"), (["--trial-episodes", "7"], "trial_episodes"),
                          (["--reward-scale", "5"], "reward_scale")):
        assert command("tune_table").main([*args, *change, "--trials", "2"]) == 2
        err = capsys.readouterr().err
        assert f"holds a study of another {named}" in err and "pass another --output-dir" in err, err
    assert len(optuna.load_study(study_name="tune", storage=storage).trials) == 1
    record = json.loads((out / "study.json").read_text())
    record["trial_agents"] = 9
    (out / "study.json").write_text(json.dumps(record))
    assert command("tune_table").main(args) == 2
    assert "checksum does not match" in capsys.readouterr().err
    (out / "study.json").unlink()
    assert command("tune_table").main(args) == 2
    assert "holds trials but no record" in capsys.readouterr().err


def test_ctrl_c_in_a_study_prints_the_command_that_resumes_it(tmp_path, capsys, monkeypatch):
    from kdenv.commands import tune_table

    obvious_table(tmp_path / "table")

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(tune_table, "tune", interrupted)
    args = ["--algo", "a2c", "--table", str(tmp_path / "table"), *FAST, "--trials", "1"]
    assert command("tune_table").main(args) == 130
    err = capsys.readouterr().err
    assert "Traceback" not in err and "resume with:" in err
    resume = err.split("resume with:\n")[1].strip().removeprefix("python agents/tune_table.py ").split()
    folder = resume[resume.index("--output-dir") + 1]
    assert resume[: len(args)] == args and (tmp_path / "table").exists() and (Path(folder) / "study.json").is_file()
