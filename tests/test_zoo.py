"""rl_zoo3 as a client of both environments, run as a user would: train on the table environment
and on a tiny live environment with the shipped hyperparameter files, replay with enjoy, and tune
with --optimize (Optuna) on a table."""

import os
import subprocess
import sys

import pytest

from tests.conftest import REPO
from tests.tables import obvious_table

pytestmark = pytest.mark.slow

ZOO = REPO / "agents" / "zoo"


def zoo(module, *args, env=None, timeout=300):
    result = subprocess.run([sys.executable, "-m", f"rl_zoo3.{module}", "--gym-packages", "kdenv", *args],
                            capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})}, cwd=REPO)
    assert result.returncode == 0, result.stdout[-1500:] + result.stderr[-1500:]
    return result.stdout


def test_zoo_trains_replays_and_tunes_on_a_table(tmp_path):
    obvious_table(tmp_path / "table")
    kwargs = ["--env-kwargs", f"table:'{tmp_path / 'table'}'"]
    env = "kdenv/KnowledgeSelectionTable-v0"
    zoo("train", "--algo", "a2c", "--env", env, "-conf", str(ZOO / "a2c.yml"), *kwargs, "-n", "200",
        "-f", str(tmp_path / "logs"), "--eval-freq", "-1", "--seed", "0")
    assert list((tmp_path / "logs" / "a2c").glob("*_1/*.zip"))
    out = zoo("enjoy", "--algo", "a2c", "--env", env, "-f", str(tmp_path / "logs"), "--exp-id", "1", *kwargs,
              "-n", "8", "--no-render", "--deterministic")
    assert "Mean reward" in out
    zoo("train", "--algo", "dqn", "--env", env, "-conf", str(ZOO / "dqn.yml"), *kwargs, "-n", "300", "-optimize",
        "--n-trials", "2", "--n-jobs", "1", "--sampler", "random", "--pruner", "none", "--n-evaluations", "1",
        "--eval-episodes", "4", "-f", str(tmp_path / "opt"))
    assert list((tmp_path / "opt" / "dqn").glob("report_*"))


def test_zoo_trains_on_a_tiny_live_environment(tiny_teacher, glue_dir, tmp_path, private_runs_dir):
    kwargs = ["--env-kwargs", "task:'wnli'", "env_config:{'phases':2,'updates_per_phase':1}",
              f"data_config:{{'data_dir':'{glue_dir}','max_train_examples':32,'max_reward_examples':16}}"]
    zoo("train", "--algo", "ppo", "--env", "kdenv/KnowledgeSelection-v0", "-conf", str(ZOO / "ppo.yml"), *kwargs,
        "-n", "8", "--hyperparams", "n_steps:4", "batch_size:4", "-f", str(tmp_path / "logs"), "--eval-freq", "-1",
        env={"KDENV_RUNS_DIR": str(private_runs_dir)})
    assert list((tmp_path / "logs" / "ppo").glob("*_1/*.zip"))
