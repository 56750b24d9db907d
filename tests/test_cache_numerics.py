"""Teacher caches are keyed by the numerics they are computed in, and a table replays on caches of
the numerics its seeds record.

The shipped stsb_u8 seeds built on the Intel Xeon trained in the portable mode on teacher caches
that a native-numerics process had computed earlier (the cache key did not hold the numerics), so
they replayed nowhere else; on a fourth CPU model they matched once their caches were computed in
native numerics there (docs/numerics.md)."""

import shutil

import pytest

from kdenv import numerics
from kdenv.benchmark.build import TreeSetup, run_jobs, write_table
from kdenv.benchmark.table import Table, TableError, resolve_table
from kdenv.benchmark.validate import (
    build_caches_in,
    caches_by_seed,
    native_here,
    plan_text,
    replay_refusal,
    seed_record,
)
from kdenv.config import DataConfig, DistillConfig, EnvConfig
from kdenv.engine.teacher_cache import CacheError
from tests.conftest import command


def tiny_setup(glue_dir):
    return TreeSetup(DataConfig(task="wnli", data_dir=str(glue_dir), max_train_examples=32, max_reward_examples=16),
                     DistillConfig(), EnvConfig(knowledge=["logits", "gradient"], phases=1, updates_per_phase=1))


def test_a_cache_of_other_numerics_is_never_reused_nor_computed_in_the_wrong_ones(tiny_teacher, glue_dir):
    setup = tiny_setup(glue_dir)
    portable = setup.build_env(progress=False).distillation
    assert all(report == "missing" or report.startswith("missing") for report in portable.cache_reports.values())
    assert setup.build_env(progress=False).distillation.cache_reports["reward"] == "valid"
    with numerics.caches_computed_in("native on a CPU nobody has"):
        with pytest.raises(CacheError, match="must hold outputs computed in native on a CPU nobody has"):
            setup.build_env(progress=False)
    assert numerics.cache_numerics() == numerics.numerics_key(numerics.describe())  # the context is left


def test_the_shipped_intel_seeds_record_native_caches_and_are_grouped_for_them():
    table = resolve_table("stsb_u8")
    assert seed_record(table, 0)["cache_numerics"] == "native on Intel(R) Xeon(R) Processor"
    assert seed_record(table, 7)["cache_numerics"] == numerics.numerics_key(seed_record(table, 7)["numerics"])
    intel = {"portable": True, "cpu": "Intel(R) Xeon(R) Processor", "cpu_vendor": "GenuineIntel", "mkl_branch": "AVX2"}
    assert caches_by_seed(table, [0, 1], intel) == [("native on Intel(R) Xeon(R) Processor", [0, 1])]
    assert caches_by_seed(table, [7], {**intel, "cpu_vendor": "AuthenticAMD", "mkl_branch": "AUTO"}) == [(None, [7])]
    if native_here() != "native on Intel(R) Xeon(R) Processor":  # another CPU model cannot compute them
        why = replay_refusal(table, [0], {"fingerprint": seed_record(table, 0)["teacher"]}, intel)
        assert why and "teacher caches were computed in native on Intel" in why
        with pytest.raises(TableError, match="this machine computes in"):
            build_caches_in("native on Intel(R) Xeon(R) Processor", tiny_setup("."))


@pytest.mark.slow
@pytest.mark.parametrize("per_split", [False, True])
def test_a_table_built_on_native_caches_replays_on_native_caches_computed_in_a_subprocess(
        tiny_teacher, glue_dir, tmp_path, private_runs_dir, monkeypatch, capsys, per_split):
    """Every cache native (stsb_u8's Intel seeds), or only the reward and dev splits' (stsb_k2_u64's
    seed 0, whose train cache of other knowledge was computed later, in the portable mode)."""
    setup = tiny_setup(glue_dir)
    key = native_here()
    if per_split:
        key = {"reward": key, "dev": key, "train": numerics.own_cache_numerics()}
    build_caches_in(key, setup)  # the build's caches, computed by a process in native numerics
    with numerics.caches_computed_in(key):  # its training in this process's portable numerics
        environment = setup.build_env(progress=False)
        run_jobs(setup, [0], job_depth=0, progress=False, environment=environment)
        write_table(setup, environment, [0], tmp_path / "table")
    assert Table.load(tmp_path / "table").manifest["seed_provenance"]["0"]["cache_numerics"] == key
    fresh = tmp_path / "fresh"  # another machine's runs folder: the teacher only, no cache
    shutil.copytree(private_runs_dir / "teachers", fresh / "teachers")
    monkeypatch.setenv("KDENV_RUNS_DIR", str(fresh))
    assert command("validate_table").main(["--table", str(tmp_path / "table"), "--data-dir", str(glue_dir),
                                           "--schedule", "3", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert f"seeds [0]: teacher caches computed in {plan_text(key)} (a subprocess" in out and "seed 0, schedule [3]: exact match" in out


def test_validation_without_the_tables_teacher_refuses_at_once_with_the_command_that_makes_it(capsys):
    """It used to fine-tune a teacher with default settings (another fingerprint) after minutes of work."""
    for extra in ([], ["--statistical", "2"]):
        assert command("validate_table").main(["--table", "stsb_u8", "--seed", "0", *extra, "--no-progress"]) == 2
        err = capsys.readouterr().err
        assert "no stsb teacher on this machine" in err
        assert "python agents/finetune_teacher.py --task stsb --force --batch-size 16 --epochs 4" in err
