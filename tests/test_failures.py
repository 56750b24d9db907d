"""The failures a new user hit in the first hour, each reproduced: every one now works or stops at
once with a message that names the problem and the fix, and leaves nothing half-written."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import yaml

from kdenv.config import ConfigError, DataConfig, DistillConfig, EnvConfig
from kdenv.decision.algorithms import SavedAgent, check_agent_fits
from kdenv.engine.data import DataError, encode_split, load_raw_splits
from kdenv.engine.models import ModelError
from kdenv.engine.tasks import get_task
from kdenv.engine.teacher import load_teacher, teacher_metadata
from kdenv.io import atomic_directory, check_writable
from tests.conftest import REPO, command
from tests.test_env import make_tiny_env

TINY = ["--phases", "2", "--updates-per-phase", "1", "--max-train-examples", "32", "--max-reward-examples", "16"]


def train(glue_dir, out, *extra, algo="a2c"):
    return command("train").main(
        ["--algo", algo, "--task", "wnli", "--data-dir", str(glue_dir), *TINY, "--total-timesteps", "4",
         "--output-dir", str(out), "--no-progress", "--baselines", "", *extra])


# ------------------------------------------------------------------ 1. async vector environments


@pytest.mark.slow  # a subprocess
def test_async_vector_env_steps_with_the_default_fork_start_method(tiny_teacher, glue_dir, private_runs_dir):
    """gymnasium.make_vec(..., "async") builds a dummy env in the parent (torch threads live), then
    forks: without kdenv's at-fork hook the workers hang in their first parallel kernel."""
    script = textwrap.dedent(f"""
        import gymnasium, numpy as np, torch
        import kdenv
        from kdenv.config import DataConfig
        torch.set_num_threads(2)
        envs = gymnasium.make_vec("kdenv/KnowledgeSelection-v0", num_envs=2, vectorization_mode="async",
                                  task="wnli", env_config={{"phases": 2, "updates_per_phase": 1}},
                                  data_config=DataConfig(task="wnli", data_dir={str(glue_dir)!r},
                                                         max_train_examples=32, max_reward_examples=16))
        observations, _ = envs.reset(seed=0)
        observations, rewards, terminated, truncated, infos = envs.step(np.ones((2, 3), dtype=np.int8))
        envs.close()
        print("stepped", observations.shape, rewards.shape)
    """)
    env = {**os.environ, "KDENV_RUNS_DIR": str(private_runs_dir)}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=240, env=env,
                            cwd=REPO)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "stepped (2, 17) (2,)" in result.stdout


# ------------------------------------------------------------------ 2. evaluation cache and teacher


def test_evaluation_reruns_after_the_teacher_is_fine_tuned_again(tiny_teacher, glue_dir, tmp_path, capsys):
    evaluate = command("evaluate")
    args = ["--task", "wnli", "--data-dir", str(glue_dir), "--policies", "kd", "--num-seeds", "1", *TINY, "--no-progress"]
    assert evaluate.main([*args, "--output-dir", str(tmp_path / "first")]) == 0
    first = json.loads((tmp_path / "first" / "runs.json").read_text())[0]
    assert command("finetune_teacher").main(
        ["--task", "wnli", "--data-dir", str(glue_dir), "--model", str(tiny_teacher), "--epochs", "1",
         "--max-steps", "2", "--seed", "7", "--force", "--no-progress"]) == 0
    capsys.readouterr()
    assert evaluate.main([*args, "--output-dir", str(tmp_path / "second")]) == 0
    assert "reused" not in capsys.readouterr().out
    second = json.loads((tmp_path / "second" / "runs.json").read_text())[0]
    assert first["config"]["teacher"] != second["config"]["teacher"]
    assert second["teacher_dev"]["accuracy"] == pytest.approx(load_teacher("wnli")[2]["dev"]["accuracy"])


# ------------------------------------------------------------------ 3. damaged tokenisation cache


def test_truncated_tokenization_cache_is_rebuilt(glue_dir, tokenizer, tmp_path):
    task = get_task("rte")
    raw = load_raw_splits(task, glue_dir)["dev"]
    first = encode_split(tokenizer, task, "dev", raw, 128, tmp_path)
    (path,) = tmp_path.glob("*.npz")
    with open(path, "r+b") as handle:
        handle.truncate(path.stat().st_size // 2)
    again = encode_split(tokenizer, task, "dev", raw, 128, tmp_path)
    assert all(np.array_equal(a, b) for a, b in zip(first.input_ids, again.input_ids))
    assert np.load(path)["labels"].shape == (len(raw),)  # rewritten whole


# ------------------------------------------------------------------ 4. interrupted agent training


def test_interrupted_training_saves_the_agent_and_resume_uses_its_settings(tiny_teacher, glue_dir, tmp_path, monkeypatch):
    from kdenv.decision import callbacks

    calls = {"n": 0}
    original = callbacks.ScheduleCallback._on_step

    def interrupt_at_step_three(self):
        calls["n"] += 1
        if calls["n"] == 3:
            assert (tmp_path / "run" / "agent.zip").is_file()  # checkpointed after the first episode
            raise KeyboardInterrupt
        return original(self)

    monkeypatch.setattr(callbacks.ScheduleCallback, "_on_step", interrupt_at_step_three)
    assert train(glue_dir, tmp_path / "run", "--hp", "n_steps=2") == 130
    saved = SavedAgent.open(tmp_path / "run" / "agent.zip")
    assert saved.load().num_timesteps >= 2
    monkeypatch.setattr(callbacks.ScheduleCallback, "_on_step", original)
    # Another algorithm cannot resume it.
    assert train(glue_dir, tmp_path / "wrong", "--resume", str(saved.path), algo="ppo") == 2
    assert not (tmp_path / "wrong").exists()
    # Resuming keeps the saved hyperparameters, applies --hp, and records what was used.
    assert train(glue_dir, tmp_path / "resumed", "--resume", str(saved.path), "--hp", "learning_rate=0.001") == 0
    recorded = yaml.safe_load((tmp_path / "resumed" / "config.yaml").read_text())["agent"]["hyperparams"]
    assert recorded["n_steps"] == 2 and recorded["learning_rate"] == 0.001
    resumed = SavedAgent.open(tmp_path / "resumed" / "agent.zip").load()
    assert resumed.learning_rate == 0.001 and resumed.n_steps == 2


def test_resume_refuses_another_environment_unless_asked(tiny_teacher, glue_dir, tmp_path, capsys):
    """`--resume` typed without the run's flags would continue the agent on another environment
    (phases, updates, data caps): refused before any work, naming each difference and the way on;
    --new-environment continues it there on purpose."""
    assert train(glue_dir, tmp_path / "run", "--hp", "n_steps=2") == 0
    saved = str(tmp_path / "run" / "agent.zip")
    capsys.readouterr()
    assert command("train").main(["--algo", "a2c", "--task", "wnli", "--data-dir", str(glue_dir), "--phases", "3",
                                  "--updates-per-phase", "1", "--max-train-examples", "32", "--max-reward-examples",
                                  "24", "--total-timesteps", "3", "--output-dir", str(tmp_path / "other"),
                                  "--no-progress", "--baselines", "", "--resume", saved]) == 2
    err = capsys.readouterr().err
    assert "env.phases 2 -> 3" in err and "data.max_reward_examples 16 -> 24" in err and "--new-environment" in err
    assert not (tmp_path / "other").exists()
    assert train(glue_dir, tmp_path / "same", "--resume", saved) == 0  # the run's own flags: resumed
    assert command("train").main(["--algo", "a2c", "--task", "wnli", "--data-dir", str(glue_dir), "--phases", "3",
                                  "--updates-per-phase", "1", "--max-train-examples", "32", "--max-reward-examples",
                                  "16", "--total-timesteps", "3", "--output-dir", str(tmp_path / "moved"),
                                  "--no-progress", "--baselines", "", "--resume", saved, "--new-environment"]) == 0


# ------------------------------------------------------------------ 5. agents carry their env spec


def test_an_agent_trained_with_cls_state_evaluates(tiny_teacher, glue_dir, tmp_path):
    assert train(glue_dir, tmp_path / "cls", "--cls-state", "--hp", "n_steps=2") == 0
    out = tmp_path / "eval"
    assert command("evaluate").main(
        ["--task", "wnli", "--data-dir", str(glue_dir), "--policies", f"agent:{tmp_path / 'cls' / 'agent.zip'}",
         "--num-seeds", "1", *TINY, "--output-dir", str(out), "--no-progress"]) == 0
    assert json.loads((out / "runs.json").read_text())[0]["config"]["env"]["cls_state"] is True


def test_an_agent_is_refused_by_an_environment_with_other_spaces():
    from stable_baselines3 import A2C

    model = A2C("MlpPolicy", make_tiny_env("multibinary"), n_steps=2)
    with pytest.raises(ValueError, match="trained with observation_space .* cls_state"):
        check_agent_fits(model, make_tiny_env("multibinary", cls_state=True), "agent.zip")


# ------------------------------------------------------------------ 6. clear errors


def write_glue(tmp_path, task_folder, name, text):
    folder = tmp_path / task_folder
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(text)
    return tmp_path


def test_empty_tsv_and_nan_score_are_data_errors(tmp_path, glue_dir):
    root = write_glue(tmp_path / "empty", "RTE", "train.tsv", "")
    (root / "RTE" / "dev.tsv").write_text((glue_dir / "RTE" / "dev.tsv").read_text())
    with pytest.raises(DataError, match="train.tsv: the file is empty"):
        load_raw_splits(get_task("rte"), root)
    header = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n"
    root = write_glue(tmp_path / "nan", "STS-B", "train.tsv", header + "0\tg\tf\t2012\t0\ts\ts\ta\tb\tnan\n")
    (root / "STS-B" / "dev.tsv").write_text(header + "0\tg\tf\t2012\t0\ts\ts\ta\tb\t3.0\n")
    with pytest.raises(DataError, match="train.tsv:2: label 'nan' is not valid for stsb"):
        load_raw_splits(get_task("stsb"), root)


def test_damaged_teacher_files_name_the_file_and_the_fix(tiny_teacher, glue_dir, private_runs_dir):
    folder = private_runs_dir / "teachers" / "wnli"
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(ModelError, match=r"teacher in .*wnli cannot be loaded.*--force"):
        load_teacher("wnli")
    record = folder / "kdenv.json"
    record.write_text(record.read_text()[:50])
    with pytest.raises(ModelError, match=r"teacher record .*kdenv.json is damaged.*--force"):
        teacher_metadata("wnli")
    assert command("finetune_teacher").main(
        ["--task", "wnli", "--data-dir", str(glue_dir), "--model", str(tiny_teacher), "--epochs", "1",
         "--max-steps", "2", "--force", "--no-progress"]) == 0
    assert teacher_metadata("wnli")["steps"] == 2 and load_teacher("wnli")[0] is not None


@pytest.mark.parametrize("fields, message", [
    ({"phases": 0}, "phases must be a whole number >= 1"),
    ({"phases": -1}, "phases must be a whole number >= 1"),
    ({"updates_per_phase": 0}, "updates_per_phase must be"),
    ({"knowledge": ["logits", "logits"]}, r"\['logits'\] offered twice"),
    ({"knowledge": []}, "offer at least one knowledge type"),
    ({"knowledge": ["ce"]}, "both offered and always on"),
    ({"reward_scale": float("nan")}, "reward_scale must be a finite"),
    ({"exploration_bonus": -1.0}, "exploration_bonus must be"),
    ({"action_space": "grid"}, "action_space must be one of"),
])
def test_env_config_refuses_bad_values(fields, message):
    with pytest.raises(ConfigError, match=message):
        EnvConfig(**fields)


@pytest.mark.parametrize("config, fields, message", [
    (DataConfig, {"reward_size": 1.5}, r"reward_size 1.5: give a fraction in \(0, 1\)"),
    (DataConfig, {"reward_size": 0}, "reward_size 0"),
    (DataConfig, {"max_length": 4}, "max_length must be"),
    (DistillConfig, {"student_init": "last"}, "student_init must be one of"),
    (DistillConfig, {"learning_rate": 0.0}, "learning_rate must be > 0"),
    (DistillConfig, {"teacher_mode": "remote"}, "teacher_mode must be"),
])
def test_configs_refuse_bad_values(config, fields, message):
    with pytest.raises(ConfigError, match=message):
        config(**fields)
    assert DataConfig(reward_size=250.0).reward_size == 250  # a whole count written as a float is a count


def test_step_after_the_episode_ended_needs_a_reset():
    env = make_tiny_env(phases=1)
    env.reset(seed=0)
    assert env.step(np.ones(3, np.int8))[2] is True
    with pytest.raises(RuntimeError, match="call env.reset"):
        env.step(np.ones(3, np.int8))
    env.reset(seed=0)
    env.step(np.ones(3, np.int8))


@pytest.mark.parametrize("extra, message", [
    (["--hp", "not_a_parameter=1"], "a2c takes no hyperparameter \\['not_a_parameter'\\]"),
    (["--hp", "learning_rate=[1"], "not valid YAML"),
    (["--hp", "n_steps=abc"], "a2c cannot be built with these hyperparameters .*--hp"),
    (["--knowledge", "gradient", "--baselines", "all,kd"], "recipe 'kd' needs knowledge \\['logits'\\]"),
    (["--baselines", "gkd-paper"], "sets its own training recipe"),
    (["--phases", "0"], "phases must be a whole number"),
    (["--reward-size", "1.5"], "reward_size 1.5"),
    (["--reward-scale", "nan"], "reward_scale must be a finite"),
])
def test_train_refuses_bad_settings_before_building_anything(extra, message, glue_dir, tmp_path, capsys, monkeypatch):
    script = command("train")

    def must_not_build(*args, **kwargs):
        raise AssertionError("the environment was built before the settings were checked")

    monkeypatch.setattr(script, "build_environment", must_not_build)
    code = script.main(["--algo", "a2c", "--task", "wnli", "--data-dir", str(glue_dir), "--output-dir",
                        str(tmp_path / "run"), "--no-progress", *extra])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and "Traceback" not in err
    assert __import__("re").search(message, err), err
    assert not (tmp_path / "run").exists()  # nothing half-written


def test_unwritable_output_folders_are_refused_with_the_fix(tmp_path, monkeypatch, glue_dir, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(OSError, match="cannot write outputs under .*a_file/run.*choose another folder"):
        check_writable(blocker / "run")
    import tempfile

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(tempfile, "NamedTemporaryFile", disk_full)
    with pytest.raises(OSError, match="No space left on device"):
        check_writable(tmp_path / "run")
    monkeypatch.undo()
    code = command("train").main(["--algo", "a2c", "--task", "wnli", "--data-dir", str(glue_dir), "--output-dir",
                                      str(blocker / "run"), "--no-progress"])
    assert code == 2 and "cannot write outputs" in capsys.readouterr().err


def test_evaluate_prints_clear_errors(glue_dir, tmp_path, capsys):
    evaluate = command("evaluate")
    cases = [
        (["--policies", f"agent:{tmp_path / 'missing.zip'}"], "does not exist; pass the agent.zip"),
        (["--policies", "kd,telepathy"], "unknown policy 'telepathy'"),
        (["--policies", "only-attention"], "'attention' is not offered"),
        (["--policies", "only-hidden+hidden"], "name the types to keep on once each"),
        (["--policies", "kd", "--baseline", "gkd"], "baseline 'gkd' is not one of the policies (kd)"),
        (["--num-seeds", "0"], "--num-seeds must be >= 1"),
        (["--first-seed", "-1"], "--first-seed -1: episode seeds are whole numbers >= 0"),
        (["--seeds", "0-2", "--first-seed", "1"], "--first-seed goes with --num-seeds"),
        (["--seeds", "2-1"], "--seeds"),
    ]
    for extra, message in cases:
        code = evaluate.main(["--task", "wnli", "--data-dir", str(glue_dir), "--no-progress",
                              "--output-dir", str(tmp_path / "out"), *extra])
        err = capsys.readouterr().err
        assert code == 2 and message in err and "Traceback" not in err, (extra, err)


def test_a_teacher_built_on_another_split_can_be_matched_by_flags(tiny_teacher, glue_dir, tmp_path, capsys):
    assert command("finetune_teacher").main(
        ["--task", "wnli", "--data-dir", str(glue_dir), "--model", str(tiny_teacher), "--epochs", "1",
         "--max-steps", "2", "--split-seed", "3", "--force", "--no-progress"]) == 0
    assert train(glue_dir, tmp_path / "mismatch", "--hp", "n_steps=2") == 2
    assert "Pass --split-seed 3" in capsys.readouterr().err
    assert train(glue_dir, tmp_path / "matched", "--split-seed", "3", "--hp", "n_steps=2") == 0


@pytest.mark.slow  # a subprocess
def test_a_killed_cache_build_leaves_no_hidden_folder_behind(tmp_path):
    target = tmp_path / "cache" / "train-abc"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / "cache" / f".train-abc.{int(dead.stdout)}.k3j2h1.tmp"
    stale.mkdir(parents=True)
    (stale / "part.npy").write_bytes(b"half")
    mine = tmp_path / "cache" / f".train-abc.{os.getpid()}.zz.tmp"  # a live process's is left alone
    mine.mkdir()
    with atomic_directory(target) as tmp:
        (tmp / "done").write_text("ok")
    assert not stale.exists() and mine.exists() and (target / "done").is_file()


def test_gpu_preset_refuses_a_teacher_from_another_base_model(tiny_teacher, glue_dir, tmp_path, capsys):
    code = train(glue_dir, tmp_path / "gpu", "--teacher-model", "bert-base-uncased", "--hp", "n_steps=2")
    err = capsys.readouterr().err
    assert code == 2 and "was fine-tuned from" in err and "--teacher-model" in err


def test_the_printed_resume_command_continues_the_same_experiment(tiny_teacher, glue_dir, tmp_path, monkeypatch, capsys):
    """Ctrl-C prints a command with every flag of the run (its budget, data caps, hyperparameters),
    the saved agent and the phases left: run as printed, it continues the same experiment."""
    import shlex

    from kdenv.decision import callbacks

    calls = {"n": 0}
    original = callbacks.ScheduleCallback._on_step

    def interrupt_at_step_three(self):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return original(self)

    monkeypatch.setattr(callbacks.ScheduleCallback, "_on_step", interrupt_at_step_three)
    assert train(glue_dir, tmp_path / "run", "--hp", "n_steps=2") == 130
    monkeypatch.setattr(callbacks.ScheduleCallback, "_on_step", original)
    printed = capsys.readouterr().err.strip().splitlines()[-1]
    words = shlex.split(printed)
    assert words[:2] == ["python", "agents/train.py"] and "--resume" in words
    assert words[words.index("--total-timesteps") + 1] == "1"  # 3 of 4 phases were stepped
    assert command("train").main([*words[2:], "--output-dir", str(tmp_path / "continued")]) == 0
    first = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    second = yaml.safe_load((tmp_path / "continued" / "config.yaml").read_text())
    for section in ("env", "data"):
        assert second[section] == first[section], section  # the same episodes and data caps, not the defaults
    assert second["agent"]["hyperparams"] == first["agent"]["hyperparams"]
    assert second["agent"]["total_timesteps"] == 1
