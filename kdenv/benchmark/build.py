"""Building a table: the live environment for the tree's setup, its jobs (seed × prefix, resumable,
independent), and the table with its manifest once every job is done."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from kdenv import numerics
from kdenv.benchmark.outputs import outputs_file, split_records, write_outputs
from kdenv.benchmark.table import MANIFEST, Table, TableError, write_manifest, write_seed
from kdenv.benchmark.tree import DevScoring, JobBusy, JobFile, TreeBuilder, _comparable, collect_seed, tree_size
from kdenv.config import (
    DataConfig,
    DistillConfig,
    EnvConfig,
    current_names,
    environment_record,
    recorded_names,
    to_dict,
)
from kdenv.decision.factory import EnvironmentSetup, build_environment
from kdenv.engine.distillation import student_record
from kdenv.engine.runtime import Runtime, deterministic_cuda, make_runtime
from kdenv.engine.tasks import get_task
from kdenv.engine.teacher_cache import split_fingerprint
from kdenv.io import file_sha256, read_checked_record, write_checked_record
from kdenv.jobs import JobRunner
from kdenv.numerics import numerics_key, replay_class, replay_where  # noqa: F401  (numerics_key re-exported)
from kdenv.paths import runs_dir


@dataclass
class TreeSetup:
    """What a tree is built from. Its hash names the work folder, so a rerun resumes the same build.

    ``threads`` (torch's, in every process that computes nodes) is part of it: CPU kernels reduce
    in a different order with another thread count, so records are exact only for one count."""

    data: DataConfig
    distill: DistillConfig
    env: EnvConfig
    threads: int = 1
    dev: DevScoring = dataclasses.field(default_factory=DevScoring)
    outputs: bool = False  # records keep per-example outputs (kdenv.benchmark.outputs)

    def __post_init__(self) -> None:
        # Tables enumerate subsets, hold task rewards only, and the feature observation.
        self.env = dataclasses.replace(self.env, action_space="discrete", exploration_bonus=0.0, cls_state=False)

    def key(self) -> str:
        # under the field names of before the renames (kdenv.config.RENAMED_FIELDS): a build keeps its folder
        fields = {"data": to_dict(self.data), "distill": recorded_names(DistillConfig, to_dict(self.distill)),
                  "env": recorded_names(EnvConfig, to_dict(self.env)), "threads": self.threads}
        for ignored in ("data_dir", "device", "precision"):
            fields["data"].pop(ignored, None)
            fields["distill"].pop(ignored, None)
        runtime = self.runtime()
        if runtime.device.type != "cpu" or runtime.precision != "fp32":  # CPU fp32 builds keep their old keys
            fields["runtime"] = {"device": runtime.device.type, "precision": runtime.precision}
        if not self.dev.is_default:  # so do builds that score every leaf on the whole dev split
            fields["dev_scoring"] = dataclasses.asdict(self.dev)
        if self.outputs:  # and builds that keep no outputs (their records lack them)
            fields["outputs"] = True
        if self.distill.student_model:  # a pre-trained student's folder: its files, not only its name
            fields["student"] = student_record(self.distill)
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:12]

    @property
    def num_actions(self) -> int:
        """Subsets of the offered types: the Discrete action space's size."""
        return 2 ** len(self.env.knowledge)

    def runtime(self) -> Runtime:
        """Where the nodes are computed: records are exact for one device type and precision."""
        return make_runtime(self.distill.device, self.distill.precision)

    def work_dir(self) -> Path:
        return runs_dir() / "trees" / get_task(self.data.task).name / self.key()  # a task file by its name

    def builder(self, environment: EnvironmentSetup) -> TreeBuilder:
        """The tree builder of this setup over ``environment``'s live environment."""
        return TreeBuilder(environment.env, self.work_dir(), dev_scoring=self.dev, keep_outputs=self.outputs)

    def build_env(self, progress: bool = True) -> EnvironmentSetup:
        if self.runtime().device.type == "cuda":
            deterministic_cuda()
        return build_environment(self.data.task, self.env, self.data, self.distill, progress=progress)


_ENVIRONMENTS: dict[str, EnvironmentSetup] = {}


def environment_for(setup: TreeSetup) -> EnvironmentSetup:
    """This process's environment for a tree setup, built once (a Ray worker reuses it across jobs)."""
    key = f"{runs_dir()}:{setup.key()}"
    if key not in _ENVIRONMENTS:
        _ENVIRONMENTS[key] = setup.build_env(progress=False)
    return _ENVIRONMENTS[key]


@dataclass(frozen=True)
class TreeJob:
    setup: TreeSetup
    seed: int
    prefix: tuple[int, ...]


def run_tree_job(job: TreeJob) -> float:
    """One (seed, prefix) job, in whatever process runs it; returns its compute seconds."""
    torch.set_num_threads(job.setup.threads)
    environment = environment_for(job.setup)
    builder = job.setup.builder(environment)
    return builder.run_job(job.seed, job.prefix).seconds


def run_jobs(setup: TreeSetup, seeds: list[int], job_depth: int = 1, progress: bool = True,
             environment: EnvironmentSetup | None = None, jobs: list[tuple[int, tuple[int, ...]]] | None = None,
             runner: JobRunner | None = None) -> float:
    """Runs (or resumes) every job, here or as Ray tasks (``runner``); returns the compute seconds.
    The driver's environment (built first: teacher and caches) serves the in-process jobs."""
    environment = environment or setup.build_env(progress)
    builder = setup.builder(environment)
    jobs = jobs if jobs is not None else builder.jobs(seeds, job_depth)
    if runner is not None and runner.ray:
        if int(runner.num_cpus) != setup.threads:
            raise ValueError(f"Ray jobs of {runner.num_cpus} CPUs run torch with {int(runner.num_cpus)} threads, but this "
                             f"tree's setup says {setup.threads}; records are exact for one thread count only")
        bar = tqdm(total=len(jobs), desc=f"tree {setup.data.task} (Ray jobs)", unit="job", disable=not progress)
        seconds = runner.map(run_tree_job, [TreeJob(setup, seed, prefix) for seed, prefix in jobs],
                             on_result=lambda job, result: bar.update(1))
        bar.close()
        return float(sum(seconds))
    torch.set_num_threads(setup.threads)
    total = sum(builder.job_nodes(prefix) for _, prefix in jobs)
    bar = tqdm(total=total, desc=f"tree {setup.data.task}", unit="node", disable=not progress, smoothing=0.05)
    seconds, busy = 0.0, []
    for seed, prefix in jobs:
        bar.set_postfix(seed=seed, prefix=",".join(map(str, prefix)) or "-")
        try:
            seconds += builder.run_job(seed, prefix, bar, wait=False).seconds
        except JobBusy:  # another build on this work folder has it: come back to it at the end
            busy.append((seed, prefix))
    for seed, prefix in busy:  # share the work: wait for the other build's jobs, then resume or reuse them
        bar.write(f"job {seed}:{','.join(map(str, prefix))} is being built by another process; waiting for it")
        seconds += builder.run_job(seed, prefix, bar, wait=True).seconds
    bar.close()
    return seconds


# What must be equal for seeds built at different times (or on different machines) to share a table.
SAME_SETUP = ("task", "knowledge", "phases", "updates_per_phase", "batch_size", "nodes_per_seed", "data", "distill",
              "env", "torch_threads", "reward_split", "device", "dev_scoring", "outputs")
SAME_SOFTWARE = ("python", "torch", "transformers")


def teacher_recipe(teacher: dict[str, Any] | None) -> dict[str, Any]:
    """How a table's teacher was made (base model, fine-tuning settings, train cap), without what
    differs between two fine-tunes of that recipe in other numerics: its fingerprint, folder and dev scores."""
    return {key: value for key, value in (teacher or {}).items()
            if key not in ("fingerprint", "directory") and not key.startswith("dev_")}


def canonical_sections(manifest: dict[str, Any]) -> dict[str, Any]:
    """A manifest with its config sections under today's field names (a table shipped before a rename
    records the old ones)."""
    return {**manifest, **{name: current_names(cls, manifest[name]) for name, cls in
                           (("distill", DistillConfig), ("env", EnvConfig)) if isinstance(manifest.get(name), dict)}}


def setup_differences(old: dict[str, Any], new: dict[str, Any],
                      provenance: dict[str, dict[str, Any]] | None = None) -> list[str]:
    """The manifest entries that keep two builds' seeds out of one table. ``provenance``: the old
    table's seeds that would be kept, each with where it replays (default: the old manifest's own).

    Seeds of one table share the setup, the software and the teacher's recipe. They may differ in
    replay class (kdenv.numerics.replay_class: the portable mode on an Intel CPU or on an AMD one)
    and so in the teacher's bits, which its recipe reproduces in each class: each seed records
    its own teacher and numerics, and replays where those can be had. Native or unrecorded
    numerics never mix with others, nor two teachers of one class."""
    old, new = canonical_sections(old), canonical_sections(new)
    differences = [key for key in SAME_SETUP if old.get(key) != new.get(key)]
    if teacher_recipe(old.get("teacher")) != teacher_recipe(new.get("teacher")):
        differences.append("teacher recipe")
    differences += [f"software.{key}" for key in SAME_SOFTWARE
                    if old.get("software", {}).get(key) != new.get("software", {}).get(key)]
    provenance = provenance or {"all": seed_provenance(old)}
    mine, my_teacher = new.get("numerics"), new.get("teacher", {}).get("fingerprint")
    for seed, record in provenance.items():
        theirs = record.get("numerics") or old.get("numerics")
        same_numerics = numerics_key(theirs) == numerics_key(mine)
        if not same_numerics and not (replay_class(theirs) and replay_class(mine)):
            differences.append(f"numerics of seed {seed} ({replay_promise(theirs)}; this build: {replay_promise(mine)})")
        elif same_numerics and record.get("teacher") != my_teacher:
            differences.append(f"teacher fingerprint of seed {seed} ({record.get('teacher')}; this build: {my_teacher})")
    return list(dict.fromkeys(differences))


def node_seconds(record: dict[str, Any]) -> float:
    """A node's measured build time: its phase and, at a leaf, its dev evaluation."""
    return record.get("wall_time_s", 0.0) + record.get("dev_wall_time_s", 0.0)


def seed_seconds(nodes: dict[Any, dict[str, Any]]) -> float:
    """A seed's measured build time: its nodes' (``node_seconds``), summed."""
    return sum(node_seconds(record) for record in nodes.values())


def kept_seeds(out: Path, manifest: dict[str, Any], seeds: list[int]) -> tuple[list[int], float, dict[str, Any]]:
    """Seeds of a table already in ``out`` that this write keeps: those not rebuilt now, when the
    earlier build had the same setup, teacher and software (the shipped seeds of a table being
    extended, perhaps on another machine whose runs/ folder does not hold their records).
    Returns them, their build time (their nodes' measured times: a seed rebuilt now is counted
    from its records, not again from the old total) and their provenance; refuses a table of another
    setup it would only partly replace."""
    if not (out / "manifest.json").is_file():
        return [], 0.0, {}
    old = Table.load(out)
    others = [seed for seed in old.seeds if seed not in seeds]
    if not others:
        return [], 0.0, {}
    provenance = {str(seed): old.manifest.get("seed_provenance", {}).get(str(seed), seed_provenance(old.manifest))
                  for seed in others}
    differences = setup_differences(old.manifest, manifest, provenance)
    if differences:
        raise TableError(f"{out} holds seeds {others} of a table built differently ({', '.join(differences)}); "
                         f"rebuild those seeds too (--seeds covering {old.seeds}) or write elsewhere (--output)")
    return others, float(sum(node_seconds(record) for seed in others for record in old.nodes[seed].values())), provenance


def outputs_record(setup: TreeSetup, environment: EnvironmentSetup) -> dict[str, Any] | None:
    """What a table's per-example outputs are (None when the build keeps none): their type, and per
    split the number of examples and the fingerprint of their labels (kdenv.benchmark.outputs)."""
    if not setup.outputs:
        return None
    scored = setup.builder(environment).scored_examples()
    return {"dtype": "float16", "columns": int(environment.distillation.student.config.num_labels),
            "examples": {split: item["examples"] for split, item in scored.items()},
            "labels": {split: item["labels"] for split, item in scored.items()},
            "described": "the student's outputs on the reward split at every node and on the scored dev examples at "
                         "every scored leaf, and the teacher's on both (seed<N>.outputs.npz)"}


def table_manifest(setup: TreeSetup, environment: EnvironmentSetup, seeds: list[int]) -> dict[str, Any]:
    """What a table of these seeds records about how it was built (before its files and build time)."""
    phases = setup.env.phases
    distillation = environment.distillation
    software = environment_record()
    software.pop("command", None)
    outputs = outputs_record(setup, environment)
    return {**({"outputs": outputs} if outputs else {}),
        "task": setup.data.task, "knowledge": list(setup.env.knowledge), "phases": phases,
        "updates_per_phase": environment.config.updates_per_phase, "batch_size": setup.distill.batch_size,
        "seeds": list(seeds), "nodes_per_seed": tree_size(setup.num_actions, phases) + 1,
        "data": {k: v for k, v in to_dict(setup.data).items() if k != "data_dir"},
        "distill": {k: v for k, v in to_dict(setup.distill).items() if k not in ("device", "precision")},
        "env": to_dict(environment.config),
        "torch_threads": setup.threads,
        "reward_split": {"examples": len(distillation.data["reward"]),
                         "fingerprint": split_fingerprint(distillation.data["reward"])},
        "teacher": distillation.teacher_record(),
        **({"student": student_record(setup.distill)} if setup.distill.student_model else {}),
        "device": distillation.runtime.describe(),
        "software": software,
        "numerics": numerics.describe(),
        "cache_numerics": numerics.cache_numerics_record(distillation.runtime.device.type),
        "dev_scoring": setup.dev.record(len(distillation.data["dev"])),
        "built": time.strftime("%Y-%m-%d"),
    }


def seed_provenance(manifest: dict[str, Any]) -> dict[str, Any]:
    """Where one seed of a table replays exactly: its teacher, numerics mode, CPU and software."""
    software = manifest.get("software", {})
    teacher = manifest.get("teacher", {})
    return {"teacher": teacher.get("fingerprint"),
            **{key: value for key, value in teacher.items() if key.startswith("dev_")},
            "numerics": manifest.get("numerics"),
            # the numerics its teacher caches were computed in (absent: the seed's own numerics)
            **({"cache_numerics": manifest["cache_numerics"]} if manifest.get("cache_numerics") else {}),
            "device": manifest.get("device"), "software": {key: software.get(key) for key in SAME_SOFTWARE},
            "built": manifest.get("built")}


def replay_promise(numerics_record: dict[str, Any] | None) -> str:
    """In words: where records made under these numerics replay exactly."""
    if not numerics_record:
        return "unrecorded numerics (built before kdenv recorded them): replays exactly only on the CPU model and " \
               "software it was built with, with KDENV_NUMERICS=native"
    if numerics_record.get("portable"):
        return (f"portable numerics, {replay_class(numerics_record)}: replays exactly on {replay_where(numerics_record)}, "
                "with the same software and threads")
    return f"native numerics on {numerics_record.get('cpu')}: replays exactly only there, with KDENV_NUMERICS=native"


def write_table(setup: TreeSetup, environment: EnvironmentSetup, seeds: list[int], out: Path,
                records: dict[int, list[dict[str, Any]]] | None = None) -> Path:
    """Collects each seed's records from the work folder (unless the caller collected them:
    ``records``) and writes the table and its manifest (the build time is the sum of every node's
    measured phase and dev-evaluation time). Seeds already in ``out`` from a build of the same setup
    are kept (see ``kept_seeds``); the check comes before any file is written."""
    out = Path(out)
    manifest = table_manifest(setup, environment, seeds)
    kept, kept_seconds, kept_provenance = kept_seeds(out, manifest, list(seeds))
    # (kept_seeds has verified the old manifest's checksums, if there is one.)
    before = json.loads((out / MANIFEST).read_text()) if (out / MANIFEST).is_file() else {}
    if records is None:
        records = {seed: collect_seed(setup.work_dir(), seed, setup.num_actions, setup.env.phases) for seed in seeds}
    build_seconds = sum(node_seconds(r) for seed_records in records.values() for r in seed_records)
    provenance = {}
    teacher = ({split: item["teacher"] for split, item in setup.builder(environment).scored_examples().items()
                if item["teacher"] is not None} if setup.outputs else {})
    outputs_files = {name: checksum for name, checksum in before.get("outputs_files", {}).items()
                     if name in {outputs_file(seed) for seed in kept}}
    split = {seed: split_records(seed_records, setup.env.phases, teacher) for seed, seed_records in records.items()}
    for seed, (_, arrays) in split.items():  # every seed checked before any file is written
        if setup.outputs != (arrays is not None):
            raise TableError(f"seed {seed}'s records {'lack' if setup.outputs else 'carry'} per-example outputs, "
                             "unlike its setup's; rebuild the seed")
    for seed, (seed_records, arrays) in split.items():
        if arrays is not None:
            outputs_files[outputs_file(seed)] = file_sha256(write_outputs(out, seed, arrays))
        path = write_seed(out, seed, seed_records)
        record, earlier = seed_provenance(manifest), before.get("seed_provenance", {}).get(str(seed))
        if (earlier and before.get("files", {}).get(path.name) == file_sha256(path)
                and {**earlier, "built": None} == {**record, "built": None}):
            record["built"] = earlier["built"]  # the same records rewritten (shipped again): built when first written
        provenance[str(seed)] = record
    if setup.outputs:
        manifest["outputs_files"] = dict(sorted(outputs_files.items()))
    manifest["seeds"] = sorted([*seeds, *kept])
    manifest["build_seconds"] = round(build_seconds + kept_seconds, 1)
    manifest["seed_provenance"] = {**kept_provenance, **provenance}
    # The table's date: its newest seed's.
    manifest["built"] = max((p.get("built") or "" for p in manifest["seed_provenance"].values()), default="") \
        or manifest["built"]
    return write_manifest(out, manifest)


PROVENANCE = "provenance.json"


def check_work_provenance(setup: TreeSetup, environment: EnvironmentSetup) -> None:
    """A build resumed on another machine continues exactly or stops before computing anything:
    the work folder records the numerics, software and teacher its records were computed with
    (``provenance.json``, with a checksum of itself), and a process that cannot reproduce them is
    refused with what to do. A damaged record (not JSON, not a mapping, an edit the checksum shows)
    is never simply rewritten with this process's values: it is rebuilt only when what it vouched
    for can be proved here (no records yet, or a recorded root node recomputes exactly), else the
    build is refused with the ways out."""
    record = {"numerics": numerics_key(numerics.describe()), "software": {k: v for k, v in environment_record().items()
                                                                         if k in SAME_SOFTWARE},
              "teacher": environment.distillation.teacher_fingerprint, "threads": setup.threads}
    path = setup.work_dir() / PROVENANCE
    recorded, damage = read_provenance(path)
    if recorded is not None:
        if recorded.get("numerics") == "portable":  # recorded before replay classes: every such build ran on Intel
            recorded["numerics"] = "portable (MKL AVX2)"
        differing = sorted(key for key in record if recorded.get(key) != record[key])
        if differing:
            raise TableError(
                f"the records in {setup.work_dir()} were computed with {', '.join(f'{k} {recorded.get(k)}' for k in differing)}; "
                f"this process has {', '.join(f'{k} {record[k]}' for k in differing)}, so its nodes would not be the same "
                "bits. Continue the build where those match (the portable numerics mode matches on CPUs of "
                "one replay class: docs/numerics.md; the software and teacher must be the same), or build "
                "elsewhere with --output and a fresh work folder ($KDENV_RUNS_DIR)")
        return
    if damage is not None and recomputes_a_recorded_root(setup, environment) is False:
        raise TableError(f"{path} is damaged ({damage}), and the records in {setup.work_dir()} do not recompute in this "
                         "process (another teacher, numerics or software made them). Continue the build where they were "
                         "computed (restore the teacher, software and machine kind that made them), or move the work "
                         "folder away to build afresh")
    write_checked_record(path, record)
    if damage is not None:
        print(f"healed {path} ({damage}): the records there recompute exactly in this process")


def read_provenance(path: Path) -> tuple[dict[str, Any] | None, str | None]:
    """A work folder's provenance record and, where it is unusable, why (kdenv.io.read_checked_record)."""
    return read_checked_record(path)


def recomputes_a_recorded_root(setup: TreeSetup, environment: EnvironmentSetup) -> bool | None:
    """Whether this process recomputes a recorded root node of the work folder exactly (it depends on
    the teacher, the numerics and the software as every node does); None when nothing is recorded."""
    for path in sorted(setup.work_dir().glob("seed*/prefix-*.jsonl")):
        root = JobFile(path, lock=False).records.get("")
        if root is None:
            continue
        live = setup.builder(environment).root_record(int(path.parent.name.removeprefix("seed")))
        return _comparable(live) == _comparable(root)
    return None
