"""Errors that used to end in a traceback or say too little: a full disk names the file and the
way on; a damaged evaluation cache is recomputed; a damaged agent record is refused in one line;
a teacher whose weights changed after it was saved is refused."""

import errno
import json
import os

import pytest

from kdenv.io import atomic_write
from tests.conftest import command

TINY = ["--phases", "2", "--updates-per-phase", "1", "--max-train-examples", "32", "--max-reward-examples", "16"]


def test_a_full_disk_names_the_file_and_leaves_no_half_written_file(tmp_path, monkeypatch):
    target = tmp_path / "out" / "results.json"

    def no_space(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(OSError, match=r"cannot write .*results.json \(No space left on device\); free space"):
        with atomic_write(target) as handle:
            handle.write("{}")
    assert not target.exists() and not list(target.parent.iterdir())  # neither the file nor its temporary


def test_a_program_on_a_full_disk_ends_in_one_line_not_a_traceback(tmp_path, monkeypatch, capsys):
    from tests.tables import obvious_table

    obvious_table(tmp_path / "table")
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space left on device")))
    code = command("oracle").main(["--table", str(tmp_path / "table"), "--rewards", "metric_gain", "--output-dir",
                                   str(tmp_path / "o")])
    monkeypatch.setattr(os, "fsync", real_fsync)
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and "oracle.md" in err and "rerun the same command" in err


def test_a_full_disk_in_a_time_named_run_folder_names_that_folder_to_continue_in(tmp_path):
    """Without --output-dir a program names its folder by the time it started, so 'rerun the same
    command' would start a new folder: the message names the folder to pass instead."""
    from kdenv.io import disk_error

    full = OSError(errno.ENOSPC, "No space left on device")
    timed = tmp_path / "runs" / "rte" / "a2c_20261206-041500"
    message = str(disk_error(full, timed / "schedules_seed0" / "heatmap.png"))
    assert f"rerun the same command with --output-dir {timed} (finished work there is kept)" in message
    named = str(disk_error(full, tmp_path / "mine" / "results.json"))
    assert "rerun the same command (finished work is kept)" in named and "--output-dir" not in named


def test_a_damaged_evaluation_cache_file_is_named_and_recomputed(tiny_teacher, glue_dir, tmp_path, capsys,
                                                                 private_runs_dir):
    evaluate = command("evaluate")
    args = ["--task", "wnli", "--data-dir", str(glue_dir), "--policies", "kd", "--num-seeds", "1", *TINY, "--no-progress"]
    assert evaluate.main([*args, "--output-dir", str(tmp_path / "a")]) == 0
    (cached,) = (private_runs_dir / "eval" / "wnli" / "cache").glob("*.json")
    first = json.loads(cached.read_text())
    cached.write_text(cached.read_text()[:40])  # cut short by a kill or a full disk
    capsys.readouterr()
    assert evaluate.main([*args, "--output-dir", str(tmp_path / "b")]) == 0
    assert f"cached run {cached} is damaged" in capsys.readouterr().out
    assert json.loads(cached.read_text())["dev"] == first["dev"]  # recomputed, the same result


def test_a_damaged_agent_record_is_refused_in_one_line(tmp_path, glue_dir, capsys):
    from tests.test_agent_files import saved_agent

    path, _, _ = saved_agent(tmp_path)
    (path.parent / "config.yaml").write_text("env: {knowledge: [logits\nagent: ]]")
    code = command("evaluate").main(["--task", "wnli", "--data-dir", str(glue_dir), "--policies", f"agent:{path}",
                                     "--num-seeds", "1", "--no-progress", "--output-dir", str(tmp_path / "e")])
    err = capsys.readouterr().err
    assert code == 2 and "config.yaml" in err and "is damaged" in err and "Traceback" not in err


def test_a_teacher_whose_weights_changed_after_saving_is_refused(tiny_teacher, private_runs_dir):
    import torch
    from safetensors.torch import load_file, save_file

    from kdenv.engine.models import ModelError
    from kdenv.engine.teacher import load_teacher

    folder = private_runs_dir / "teachers" / "wnli"
    assert json.loads((folder / "kdenv.json").read_text())["fingerprint"]
    load_teacher("wnli")  # as saved: loads
    weights_file = next(folder.glob("*.safetensors"))
    weights = load_file(weights_file)
    name = next(key for key, tensor in weights.items() if tensor.dtype == torch.float32)
    weights[name] = weights[name] + 1e-3  # a valid file with other numbers: a damaged or swapped teacher
    save_file(weights, weights_file, metadata={"format": "pt"})
    with pytest.raises(ModelError, match="damaged or was replaced.*--force"):
        load_teacher("wnli")


def test_a_teacher_folder_without_weights_names_the_fine_tune_that_remakes_it(tiny_teacher, glue_dir,
                                                                              private_runs_dir, capsys):
    """A record without weights (a save cut short, a deleted file) is a broken teacher: loading it
    names `finetune_teacher.py --force` (not the hub), and finetune_teacher without --force
    fine-tunes it again instead of calling it 'already there'."""
    from kdenv.engine.models import ModelError
    from kdenv.engine.teacher import load_teacher

    folder = private_runs_dir / "teachers" / "wnli"
    next(folder.glob("*.safetensors")).unlink()
    with pytest.raises(ModelError, match=r"record but no weights .*finetune_teacher.py --task wnli --force"):
        load_teacher("wnli")
    capsys.readouterr()
    assert command("finetune_teacher").main(["--task", "wnli", "--data-dir", str(glue_dir), "--model", str(tiny_teacher),
                                             "--epochs", "1", "--max-steps", "2", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "no weights: fine-tuning it again" in out and "already at" not in out
    load_teacher("wnli")  # whole again
