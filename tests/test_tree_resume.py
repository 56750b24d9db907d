"""Tree builds always resume: whatever a kill, a full disk or an edit leaves in the work folder,
the same command heals it and ends with the table an uninterrupted build gives (wall times
aside), and a table never holds a value that no computation produced. Two builds on one work
folder share the jobs instead of both computing them."""

import errno
import json
import threading

import pytest

from kdenv.benchmark.build import run_jobs
from kdenv.benchmark.tree import JobBusy, JobFile, TreeBuilder, collect_seed
from tests.test_benchmark import built  # noqa: F401  (the module's tiny table, built once)


def without_timing(records):
    return [{k: v for k, v in r.items() if not k.endswith("wall_time_s")} for r in records]


@pytest.fixture
def fresh(built, monkeypatch, tmp_path):  # noqa: F811
    """A builder over an empty work folder, and seed 0's records from the uninterrupted build."""
    setup, environment = built["setup"], built["environment"]
    monkeypatch.setenv("KDENV_RUNS_DIR", str(built["root"] / "runs"))
    reference = without_timing(collect_seed(setup.work_dir(), 0, 4, 2))
    monkeypatch.setenv("KDENV_RUNS_DIR", str(tmp_path / "runs"))
    return TreeBuilder(environment.env, setup.work_dir()), setup, reference


def lines_of(path):
    return path.read_text().splitlines()


def test_every_line_carries_a_checksum_of_its_own_content(fresh):
    builder, setup, reference = fresh
    builder.run_job(0, ())
    items = [json.loads(line) for line in lines_of(builder.job_path(0, ()))]
    assert items and all(len(item["sha256"]) == 64 for item in items)
    assert without_timing(collect_seed(setup.work_dir(), 0, 4, 2)) == reference
    table_record = collect_seed(setup.work_dir(), 0, 4, 2)[0]
    assert "sha256" not in table_record  # checksums stay in the work files


def test_a_torn_last_line_is_cut_and_its_node_recomputed_not_glued_to_the_next_record(fresh, capsys):
    builder, setup, reference = fresh
    builder.run_job(0, ())
    path = builder.job_path(0, ())
    lines = lines_of(path)
    # As a kill mid-write leaves it: the file ends in half a record, and the markers after it are gone.
    cut = next(i for i, line in enumerate(lines) if '"history": [3, 1]' in line)
    path.write_text("\n".join(lines[:cut]) + "\n" + lines[cut][: len(lines[cut]) // 2])
    stats = builder.run_job(0, ())
    assert "cut a last line that was cut short" in capsys.readouterr().out
    assert stats.computed >= 1 and stats.reused >= 1
    assert all(json.loads(line) for line in lines_of(path))  # every line whole again
    assert without_timing(collect_seed(setup.work_dir(), 0, 4, 2)) == reference


@pytest.mark.parametrize("damage", ["garbage", "no_history", "edited", "edited_marker"])
def test_a_damaged_or_edited_line_in_a_finished_job_is_recomputed_never_used(fresh, damage, capsys):
    builder, setup, reference = fresh
    builder.run_job(0, ())
    path = builder.job_path(0, ())
    lines = lines_of(path)
    index = next(i for i, line in enumerate(lines) if '"history": [2, 3]' in line and '"complete"' not in line)
    item = json.loads(lines[index])
    if damage == "garbage":
        lines[index] = "}{ not json at all"
    elif damage == "no_history":
        lines[index] = json.dumps({k: v for k, v in item.items() if k != "history"})
    elif damage == "edited":  # valid JSON, old checksum: a hand edit of a result
        item["rewards"]["metric_gain"] += 0.5
        lines[index] = json.dumps(item)
    else:  # a forged completion marker for a subtree that was never finished
        lines.append(json.dumps({"history": [1], "complete": True, "sha256": "0" * 64}))
        lines = [line for line in lines if '"history": [1, 2]' not in line]
    path.write_text("\n".join(lines) + "\n")
    # Reading for a table refuses the damage (the tree is now incomplete) instead of using it...
    with pytest.raises(ValueError, match="incomplete"):
        collect_seed(setup.work_dir(), 0, 4, 2)
    # ...and the same build command heals the file and recomputes what was lost.
    builder.run_job(0, ())
    assert "healed" in capsys.readouterr().out
    assert without_timing(collect_seed(setup.work_dir(), 0, 4, 2)) == reference


def test_a_full_disk_mid_write_names_the_file_and_the_same_command_resumes(fresh, monkeypatch):
    builder, setup, reference = fresh
    real_append, writes = JobFile.append, []

    def append_until_the_disk_fills(self, item):
        writes.append(item)
        if len(writes) == 7:  # half the line reaches the disk, then ENOSPC
            self._handle.write(self._line(item)[:40])
            self._handle.flush()
            raise OSError(errno.ENOSPC, f"cannot write the tree's record file {self.path} (No space left on device)")
        real_append(self, item)

    monkeypatch.setattr(JobFile, "append", append_until_the_disk_fills)
    with pytest.raises(OSError, match="record file .*prefix-root.jsonl"):
        builder.run_job(0, ())
    monkeypatch.setattr(JobFile, "append", real_append)
    builder.run_job(0, ())
    assert without_timing(collect_seed(setup.work_dir(), 0, 4, 2)) == reference


def test_the_disk_error_message_names_the_file(tmp_path):
    job = JobFile(tmp_path / "seed0" / "prefix-root.jsonl")
    job._handle.close()
    job._handle = open("/dev/full", "w")
    with pytest.raises(OSError, match=r"prefix-root.jsonl .*rerun the same command"):
        job.append({"history": [], "depth": 0})
    job.close()


def test_two_builds_on_one_work_folder_share_the_jobs(fresh, monkeypatch):
    builder, setup, reference = fresh
    other = JobFile(builder.job_path(0, (2,)))  # another process is building job 0:2 right now
    with pytest.raises(JobBusy):
        builder.run_job(0, (2,), wait=False)
    order = []
    original = TreeBuilder.run_job

    release = threading.Timer(0.5, other.close)  # the other build lets go of its job a moment later

    def recording(self, seed, prefix=(), progress=None, wait=True):
        order.append((prefix, wait))
        if prefix == (3,):  # the last job: job 2 has been found busy and left for later by now
            release.start()
        return original(self, seed, prefix, progress, wait)

    monkeypatch.setattr(TreeBuilder, "run_job", recording)
    try:
        run_jobs(setup, [0], job_depth=1, progress=False, environment=built_env(builder))
    finally:
        release.join()
    # Job 2 was left while busy, every other job done meanwhile, then job 2 taken up once free.
    assert order == [((0,), False), ((1,), False), ((2,), False), ((3,), False), ((2,), True)]
    assert without_timing(collect_seed(setup.work_dir(), 0, 4, 2)) == reference


def built_env(builder):
    class Holder:  # run_jobs reads only .env of the EnvironmentSetup it is given
        env = builder.env

    return Holder()


@pytest.mark.parametrize("job", ["0:9", "x:1", "0:1,2,3", "3"])
def test_a_bad_job_is_refused_in_one_line_before_any_work(job, glue_dir, capsys, tmp_path):
    from tests.conftest import command

    code = command("build_tree").main(["--task", "wnli", "--data-dir", str(glue_dir), "--knowledge", "logits,gradient",
                                       "--phases", "2", "--job", job, "--no-progress"])
    assert code == 2
    err = capsys.readouterr().err
    assert f"--job '{job}'" in err and "SEED:PREFIX" in err and "Traceback" not in err


def test_a_table_records_where_each_seed_replays(built):  # noqa: F811
    from kdenv.benchmark.table import Table

    manifest = Table.load(built["table"]).manifest
    assert manifest["numerics"]["portable"] is True and manifest["numerics"]["pins"]["MKL_CBWR"] == "AVX2,STRICT"
    for seed in ("0", "1"):
        provenance = manifest["seed_provenance"][seed]
        assert provenance["teacher"] == manifest["teacher"]["fingerprint"] and provenance["numerics"]["portable"]
        assert provenance["software"]["torch"] == manifest["software"]["torch"]


def test_a_build_resumed_where_its_records_cannot_be_reproduced_stops_before_computing(fresh):
    from kdenv.benchmark.build import PROVENANCE, check_work_provenance
    from kdenv.benchmark.table import TableError

    builder, setup, _ = fresh

    class Setup:
        class distillation:
            teacher_fingerprint = builder.env.trainer.__class__.__name__  # any fixed value for this check

    check_work_provenance(setup, Setup)  # a fresh work folder: records what this process computes with
    check_work_provenance(setup, Setup)  # the same process again: continues
    path = setup.work_dir() / PROVENANCE
    recorded = json.loads(path.read_text())
    recorded.pop("sha256")

    def written_elsewhere(record):  # as a build on another machine writes it, checksum and all
        from kdenv.io import record_checksum

        path.write_text(json.dumps({**record, "sha256": record_checksum(record)}))

    written_elsewhere({**recorded, "numerics": "native on AMD EPYC 9654 96-Core Processor"})
    with pytest.raises(TableError, match="numerics native on AMD EPYC.*this process has numerics portable"):
        check_work_provenance(setup, Setup)
    # Recorded before replay classes: every such build ran on an Intel Xeon, in MKL's AVX2 branch.
    path.write_text(json.dumps({**recorded, "numerics": "portable"}))  # (records of then carried no checksum)
    if recorded["numerics"] == "portable (MKL AVX2)":
        check_work_provenance(setup, Setup)
    else:
        with pytest.raises(TableError, match=r"numerics portable \(MKL AVX2\); this process has numerics portable \(MKL"):
            check_work_provenance(setup, Setup)


def test_validation_checks_the_teacher_and_the_numerics_before_any_preparation(built, tmp_path, monkeypatch):  # noqa: F811
    import shutil

    from kdenv.benchmark.table import Table, TableError, manifest_checksum
    from kdenv.benchmark.validate import check_before_replay

    monkeypatch.setenv("KDENV_RUNS_DIR", str(built["root"] / "runs"))
    table = Table.load(built["table"])
    check_before_replay(table)  # the table's own teacher and numerics: fine
    copy = tmp_path / "copy"
    shutil.copytree(built["table"], copy)

    def edit(change):
        manifest = json.loads((copy / "manifest.json").read_text())
        change(manifest)
        manifest["manifest_sha256"] = manifest_checksum(manifest)
        (copy / "manifest.json").write_text(json.dumps(manifest))
        return Table.load(copy)

    other_cpu = {"portable": False, "mode": "native", "cpu": "AMD EPYC 9654"}
    with pytest.raises(TableError, match="seed 0 of this table was built in native numerics on AMD EPYC"):
        check_before_replay(edit(lambda m: m["seed_provenance"]["0"].update(numerics=other_cpu)))
    with pytest.raises(TableError, match="seeds \\[0\\] with teacher 0+; seeds \\[1\\] with teacher \\w+; this machine's wnli teacher"):
        check_before_replay(edit(lambda m: m["seed_provenance"]["0"].update(teacher="0" * 20)))


OTHER_CLASS = {"portable": True, "mode": "portable", "mkl_branch": "AUTO", "cpu_vendor": "OtherVendor", "avx512": True,
               "cpu": "Other CPU", "pins": {"MKL_CBWR": "AVX2,STRICT"}}


def test_seeds_of_two_replay_classes_share_a_table_and_each_replays_in_its_own(built, tmp_path, monkeypatch):  # noqa: F811
    """A table extended on a machine of another replay class (the teacher's recipe fine-tuned there
    gives other bits) keeps its seeds, each with its own teacher and numerics; a replay checks the
    seeds it plays, and refuses those of the other class before any preparation."""
    from kdenv.benchmark.build import write_table
    from kdenv.benchmark.table import Table, TableError, write_manifest
    from kdenv.benchmark.validate import check_before_replay, check_saved_teacher, replayable_seeds, table_teachers

    monkeypatch.setenv("KDENV_RUNS_DIR", str(built["root"] / "runs"))
    setup, environment, out = built["setup"], built["environment"], tmp_path / "table"
    write_table(setup, environment, [0], out)
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["seed_provenance"]["0"].update(teacher="other-class-teacher", numerics=OTHER_CLASS)
    write_manifest(out, {k: v for k, v in manifest.items() if k not in ("files", "format")})
    write_table(setup, environment, [1], out)  # built here, in this machine's class
    table = Table.load(out)
    mine = environment.distillation.teacher_fingerprint
    assert table.seeds == [0, 1] and table_teachers(table) == {"other-class-teacher": [0], mine: [1]}
    assert table.manifest["seed_provenance"]["0"]["numerics"] == OTHER_CLASS
    check_before_replay(table, seeds=[1])
    exact, elsewhere = replayable_seeds(table)  # validate_table's default: the seeds this machine can replay
    assert exact == [1] and list(elsewhere) == [0] and "other-class-teacher" in elsewhere[0]
    check_saved_teacher(table, required=True)  # new episode seeds: any of the table's teachers will do
    with pytest.raises(TableError, match="seeds \\[0\\] with teacher other-class-teacher"):
        check_before_replay(table)
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["seed_provenance"]["0"]["teacher"] = mine  # this machine's teacher, but the other class's numerics
    write_manifest(out, {k: v for k, v in manifest.items() if k not in ("files", "format")})
    with pytest.raises(TableError, match="seed 0 of this table was built in portable numerics, MKL AUTO on OtherVendor "
                                         "with AVX-512: replays exactly on CPUs of the same kind"):
        check_before_replay(Table.load(out), seeds=[0])


def test_a_statistical_replay_measures_how_far_the_live_trainer_is_from_the_table(built):  # noqa: F811
    from kdenv.benchmark.table import Table
    from kdenv.benchmark.validate import statistical_replay

    table = Table.load(built["table"])
    found = statistical_replay(table, 0, built["environment"], schedules=6)
    assert len(found["schedules"]) == 6
    assert found["max_abs_difference"] == 0.0  # same teacher, numerics and software: the same numbers
    for played in found["schedules"]:
        assert played["live"] == played["table"]
    # A table that disagrees with the live trainer (here: one leaf's reward moved) is measured as such.
    first = found["schedules"][0]["schedule"]
    table.nodes[0][tuple(first)]["rewards"]["metric_gain"] += 0.01
    moved = statistical_replay(table, 0, built["environment"], schedules=6)
    assert moved["max_abs_difference"] == pytest.approx(0.01)


def test_rewriting_a_seed_already_in_the_table_keeps_the_other_seeds_and_their_provenance(built, tmp_path, monkeypatch):  # noqa: F811
    """A seed rebuilt elsewhere (so its file's bytes differ: other wall times) replaces its old
    file; the seeds kept keep their provenance, read before any file was written."""
    import kdenv.benchmark.build as build
    from kdenv.benchmark.build import write_table
    from kdenv.benchmark.table import Table

    setup, environment = built["setup"], built["environment"]
    monkeypatch.setenv("KDENV_RUNS_DIR", str(built["root"] / "runs"))
    out = tmp_path / "table"
    write_table(setup, environment, [0, 1], out)
    before = Table.load(out).manifest["seed_provenance"]["0"]
    original = build.collect_seed

    def rebuilt_elsewhere(work_dir, seed, num_actions, phases):
        return [{**record, "wall_time_s": record.get("wall_time_s", 0.0) + 1.0}
                for record in original(work_dir, seed, num_actions, phases)]

    monkeypatch.setattr(build, "collect_seed", rebuilt_elsewhere)
    write_table(setup, environment, [1], out)
    table = Table.load(out)
    assert table.seeds == [0, 1] and table.manifest["seed_provenance"]["0"] == before


@pytest.mark.parametrize("damage", ["{not json", "[1, 2]", "edited"])
def test_a_damaged_provenance_record_is_healed_only_where_its_records_recompute(built, monkeypatch, tmp_path,  # noqa: F811
                                                                                damage, capsys):
    import shutil

    from kdenv.benchmark.build import PROVENANCE, check_work_provenance, read_provenance
    from kdenv.benchmark.table import TableError

    setup, environment = built["setup"], built["environment"]
    monkeypatch.setenv("KDENV_RUNS_DIR", str(built["root"] / "runs"))
    source = setup.work_dir()
    monkeypatch.setenv("KDENV_RUNS_DIR", str(tmp_path / "runs"))
    shutil.copytree(source, setup.work_dir())  # the built records, in a folder of this test's own
    path = setup.work_dir() / PROVENANCE
    check_work_provenance(setup, environment)
    good = json.loads(path.read_text())
    assert len(good.pop("sha256")) == 64 and read_provenance(path) == (good, None)
    path.write_text(json.dumps({**good, "teacher": "0" * 20, "sha256": "0" * 64}) if damage == "edited" else damage)
    check_work_provenance(setup, environment)  # the recorded roots recompute here: healed, not refused
    assert "healed" in capsys.readouterr().out and read_provenance(path)[0] == good
    # Records this process does not recompute (another teacher made them): refused, not rewritten.
    job = JobFile(setup.work_dir() / "seed0" / "prefix-0.jsonl")
    root = dict(job.records[""])
    job.close()
    lines = [json.loads(line) for line in lines_of(job.path)]
    with open(job.path, "w") as handle:
        for item in lines:
            item.pop("sha256")
            if item.get("history") == [] and not item.get("complete"):
                item["agreement"] = root["agreement"] + 0.5
            handle.write(JobFile._line(item))
    for other in setup.work_dir().glob("seed*/prefix-*.jsonl"):
        if other != job.path:
            other.unlink()
    path.write_text(damage if damage != "edited" else json.dumps({**good, "sha256": "1" * 64}))
    with pytest.raises(TableError, match="is damaged .* do not recompute in this process"):
        check_work_provenance(setup, environment)
    assert path.read_text() == (damage if damage != "edited" else json.dumps({**good, "sha256": "1" * 64}))
