"""Ray as the engine for independent jobs, against a real local Ray runtime (2 CPUs): the same
results as in-process for evaluation runs and schedule trees, a killed worker retried, an
unreachable cluster refused within seconds; and live agents on several environments at once."""

import json
import os
import shutil
import time

import pytest

from kdenv.jobs import JobError, JobRunner, check_reachable
from tests.conftest import REPO, command

pytestmark = pytest.mark.slow  # Ray clusters and worker processes
# Ray is the [ray] extra: without it these tests are skipped, saying so (pip install -e .[ray]).
ray = pytest.importorskip("ray", reason="Ray is not installed: pip install -e .[ray]")

TINY = ["--phases", "2", "--updates-per-phase", "1", "--max-train-examples", "32", "--max-reward-examples", "16"]


@pytest.fixture(scope="module")
def local_ray():
    # Workers import the test job functions from the repository.
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def without_timing(runs):
    # The checksum of a run's result covers its wall time: both differ between two computations.
    return [{k: v for k, v in run.items() if k not in ("wall_time_s", "sha256")} for run in runs]


def test_a_killed_worker_is_retried_and_every_result_arrives(local_ray, tmp_path):
    from tests.ray_jobs import square_once_killed

    jobs = [(value, str(tmp_path / f"marker{value}")) for value in (2, 3)]
    results = JobRunner(ray=True, num_cpus=1).map(square_once_killed, jobs)
    assert [result[0] for result in results] == [4, 9]
    assert all(threads == 1 for _, threads in results)  # torch threads = the CPUs the task declared
    assert all((tmp_path / f"marker{value}").exists() for value in (2, 3))  # every job's worker died once


def test_evaluation_with_ray_gives_the_in_process_results(local_ray, tiny_teacher, glue_dir, tmp_path,
                                                          private_runs_dir, capsys):
    evaluate = command("evaluate")
    args = ["--task", "wnli", "--data-dir", str(glue_dir), "--policies", "kd,only-gradient", "--num-seeds", "1", *TINY,
            "--no-progress"]
    assert evaluate.main([*args, "--output-dir", str(tmp_path / "here")]) == 0
    shutil.rmtree(private_runs_dir / "eval" / "wnli" / "cache")  # the Ray run must compute everything again
    assert evaluate.main([*args, "--ray", "--output-dir", str(tmp_path / "ray")]) == 0
    assert "reused" not in capsys.readouterr().out
    here = json.loads((tmp_path / "here" / "runs.json").read_text())
    there = json.loads((tmp_path / "ray" / "runs.json").read_text())
    assert len(here) == 2 and without_timing(here) == without_timing(there)
    # A run's cache key holds the threads it computed with: a Ray task's, not the driver's. Tasks
    # of two CPUs (two torch threads) compute afresh instead of reusing the one-thread runs.
    assert {run["config"]["software"]["torch_threads"] for run in there} == {"1"}
    assert evaluate.main([*args, "--ray", "--cpus-per-job", "2", "--output-dir", str(tmp_path / "two")]) == 0
    assert "reused" not in capsys.readouterr().out
    two = json.loads((tmp_path / "two" / "runs.json").read_text())
    assert {run["config"]["software"]["torch_threads"] for run in two} == {"2"}


def test_job_flags_hand_the_job_arguments_on_unchanged():
    import argparse

    from kdenv.jobs import add_job_arguments, job_flags

    parser = argparse.ArgumentParser()
    add_job_arguments(parser.add_argument)
    for argv in ([], ["--ray"], ["--ray-address", "10.0.0.1:6379", "--cpus-per-job", "2", "--gpus-per-job", "0.25"]):
        given = parser.parse_args(argv)
        assert parser.parse_args(job_flags(given)) == given


def test_a_tree_built_by_ray_jobs_equals_the_in_process_tree(local_ray, tiny_teacher, glue_dir, tmp_path):
    from kdenv.benchmark.table import Table

    common = ["--task", "wnli", "--data-dir", str(glue_dir), "--seeds", "0", "--phases", "2", "--updates-per-phase",
              "1", "--knowledge", "logits,gradient", "--max-train-examples", "32", "--max-reward-examples", "16",
              "--no-progress"]
    from kdenv.paths import runs_dir

    build = command("build_tree")
    assert build.main([*common, "--output", str(tmp_path / "here")]) == 0
    shutil.rmtree(runs_dir() / "trees")  # the Ray build starts from nothing
    assert build.main([*common, "--ray", "--output", str(tmp_path / "ray")]) == 0

    def records(path):
        nodes = Table.load(path).nodes[0]
        return {h: {k: v for k, v in n.items() if not k.endswith("wall_time_s")} for h, n in nodes.items()}

    assert records(tmp_path / "here") == records(tmp_path / "ray")


def test_an_unreachable_cluster_fails_within_seconds(glue_dir, tmp_path, capsys):
    start = time.perf_counter()
    code = command("evaluate").main(["--task", "wnli", "--data-dir", str(glue_dir), "--policies", "kd",
                                         "--ray-address", "127.0.0.1:1", "--output-dir", str(tmp_path / "out"),
                                         "--no-progress"])
    assert code == 2 and time.perf_counter() - start < 10
    assert "no Ray cluster answers at 127.0.0.1:1" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    with pytest.raises(JobError, match="must look like HOST:PORT"):
        check_reachable("nowhere")


def test_live_agents_step_two_environments_in_subprocesses(tiny_teacher, glue_dir, tmp_path):
    out = tmp_path / "two"
    assert command("train").main(
        ["--algo", "a2c", "--task", "wnli", "--data-dir", str(glue_dir), *TINY, "--total-timesteps", "8",
         "--n-envs", "2", "--hp", "n_steps=2", "--baselines", "kd", "--output-dir", str(out), "--no-progress"]) == 0
    schedules = json.loads((out / "schedules.json").read_text())
    assert len(schedules) == 4  # 8 steps over 2 environments, 2 phases each
    comparison = json.loads((out / "comparison.json").read_text())
    assert [r["policy"] for r in comparison] == ["agent:a2c", "kd"]


def test_leaderboard_agents_retrained_by_ray_jobs_equal_the_in_process_ones(local_ray, tmp_path):
    from kdenv.benchmark.table import write_manifest
    from tests.tables import synthetic_table
    from tests.test_protocol import RETURNS

    synthetic_table(tmp_path / "rte", RETURNS)
    other = synthetic_table(tmp_path / "mrpc", {seed: {h: v / 2 for h, v in r.items()} for seed, r in RETURNS.items()})
    write_manifest(tmp_path / "mrpc", {k: v for k, v in dict(other.manifest, task="mrpc").items()
                                       if k not in ("files", "format")})

    def retrain(where, *extra):
        args = ["--tables", f"{tmp_path / 'rte'},{tmp_path / 'mrpc'}", "--k", "2", "--agent-seeds", "2",
                "--episodes", "20", "--agents", "a2c,dqn", "--results-dir", str(tmp_path / where / "results"),
                "--output", str(tmp_path / where / "board"), "--no-progress", "--retrain", *extra]
        assert command("leaderboard").main(args) == 0
        files = sorted((tmp_path / where / "results").rglob("*.json"))
        return {f.relative_to(tmp_path / where).as_posix(): {k: v for k, v in json.loads(f.read_text()).items()
                                                              if k != "train_seconds"} for f in files}

    here, there = retrain("here"), retrain("ray", "--ray")
    # Two tables x two rows, each file with its k-fold returns and the other task's.
    assert len(here) == 4 and all(len(result["cross"]) == 1 for result in here.values())
    assert here == there
