"""Schedule tables on disk: a table folder (shipped ones in ``kdenv/tables/<name>/``) holds ``manifest.json`` and one gzipped JSONL
file per seed (``seed<N>.jsonl.gz``, one node per line, root first).

The manifest says what the table was built from (task, knowledge on offer, phases, updates per
phase, batch size, the full data/distillation/environment configs, the reward split's hash, the
teacher's fingerprint and the config to rebuild it, software versions, build wall time) and holds
the SHA-256 of every file, checked on load: a truncated or altered file is refused, never used.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kdenv.config import DataConfig, DistillConfig, EnvConfig, from_dict
from kdenv.decision.rewards import REWARDS, RewardInput
from kdenv.errors import KdenvError
from kdenv.io import atomic_write, file_sha256
from kdenv.paths import tables_dir

TABLE_FORMAT = 1  # seed files and manifest only
OUTPUTS_FORMAT = 2  # format 1 and per-example outputs beside each seed file (kdenv.benchmark.outputs)
FORMATS = (TABLE_FORMAT, OUTPUTS_FORMAT)
MANIFEST = "manifest.json"


class TableError(KdenvError, ValueError):
    """A table that cannot be used as asked; the message says why and what to do."""


def available_tables() -> list[str]:
    """The names of the tables in :func:`kdenv.paths.tables_dir` (the shipped ones by default)."""
    return sorted(path.parent.name for path in tables_dir().glob(f"*/{MANIFEST}"))


def table_path(name_or_path: str | Path) -> Path:
    """The folder a ``--table`` value means: an existing folder as it is, else a table's name in
    :func:`kdenv.paths.tables_dir` (``stsb``, ``stsb_h100_u8``)."""
    path = Path(name_or_path)
    if path.is_dir() or len(path.parts) > 1:
        return path
    return tables_dir() / str(name_or_path)


def resolve_table(name_or_path: str | Path, **checks: Any) -> Table:
    """The table a ``--table`` value (a name or a folder) names, loaded and checked; ``checks``
    go to :meth:`Table.load`. The one resolver every script and both environments use."""
    return Table.load(table_path(name_or_path), **checks)


def seed_file(seed: int) -> str:
    return f"seed{seed}.jsonl.gz"


def write_seed(directory: Path, seed: int, records: list[dict[str, Any]]) -> Path:
    """One seed's records, gzipped reproducibly (no timestamp), written atomically."""
    buffer = io.BytesIO()
    with gzip.GzipFile(fileobj=buffer, mode="wb", mtime=0, compresslevel=9) as handle:
        for record in records:
            handle.write((json.dumps(record, sort_keys=True, separators=(",", ":")) + "\n").encode())
    path = Path(directory) / seed_file(seed)
    with atomic_write(path, "wb") as handle:
        handle.write(buffer.getvalue())
    return path


def history_key(history: Iterable[int]) -> str:
    """A node's key, its action history as text: ``"3,1"`` (the root: ``""``)."""
    return ",".join(str(int(a)) for a in history)


def subtree_size(num_actions: int, depth: int) -> int:
    """Nodes below a node with ``depth`` phases left: A + A² + … + A^depth."""
    return sum(num_actions**d for d in range(1, depth + 1))


def tree_size(num_actions: int, phases: int) -> int:
    """Nodes of a ``phases``-phase tree over ``num_actions`` actions, the root not counted."""
    return subtree_size(num_actions, phases)


def manifest_checksum(manifest: dict[str, Any]) -> str:
    """The manifest's SHA-256 of itself: its canonical JSON without the checksum entry."""
    body = {key: value for key, value in manifest.items() if key != "manifest_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def write_manifest(directory: Path, manifest: dict[str, Any]) -> Path:
    """The manifest, with a checksum of every seed file it lists and of itself."""
    directory = Path(directory)
    manifest = {**manifest, "format": OUTPUTS_FORMAT if manifest.get("outputs") else TABLE_FORMAT,
                "files": {seed_file(seed): file_sha256(directory / seed_file(seed)) for seed in manifest["seeds"]}}
    manifest["manifest_sha256"] = manifest_checksum(manifest)
    with atomic_write(directory / MANIFEST) as handle:
        json.dump(manifest, handle, indent=2, sort_keys=True)
    return directory / MANIFEST


def tree_problems(records: dict[str, dict[str, Any]], num_actions: int, phases: int) -> list[str]:
    """What keeps one seed's records (by history key, ``"3,1"``) from being a whole schedule tree:
    a missing root or child, an action out of range, a depth that is not the history's length, a
    path longer than the episode, a leaf that ends early without a crash. Empty when whole."""
    problems = []
    if "" not in records:
        problems.append("no root node")
    for key, record in records.items():
        history = record.get("history")
        if (not isinstance(history, list) or len(history) > phases or record.get("depth") != len(history)
                or any(not isinstance(a, int) or not 0 <= a < num_actions for a in history)):
            problems.append(f"node [{key}] is not a path of a {phases}-phase tree over {num_actions} actions")
            continue
        depth = len(history)
        open_node = depth == 0 or (record.get("status") == "ok" and not record.get("terminal"))
        if open_node and depth == phases:
            problems.append(f"node [{key}] is at the last phase but not terminal")
        if open_node and depth < phases:
            problems += [f"node [{key},{a}] is missing".replace("[,", "[") for a in range(num_actions)
                         if (f"{key},{a}" if key else str(a)) not in records]
        if depth > 0 and record.get("status") == "ok" and record.get("terminal") and depth != phases:
            problems.append(f"node [{key}] ends the episode after {depth} of {phases} phases without a crash")
    return problems


def derive_rewards(nodes: dict[tuple[int, ...], dict[str, Any]]) -> dict[tuple[int, ...], dict[str, Any]]:
    """Adds to each phase's record the registered rewards it does not store, computed from the node and
    its parent as the live environment computes them (kdenv.decision.rewards.RECORDED_REWARDS are stored)."""
    root = nodes[()]
    for history, node in nodes.items():
        rewards = node.get("rewards")
        if not history or node.get("status") != "ok" or rewards is None:
            continue
        missing = [name for name in REWARDS if name not in rewards]
        if not missing:
            continue
        parent = nodes[history[:-1]]
        step = RewardInput(metric_before=parent["metric"], metric_after=node["metric"], loss_before=parent["loss"],
                           loss_after=node["loss"], metric_initial=root["metric"], terminal=bool(node.get("terminal")),
                           agreement_before=parent.get("agreement", 0.0), agreement_after=node.get("agreement", 0.0))
        for name in missing:
            rewards[name] = float(REWARDS[name](step))
    return nodes


@dataclass
class Table:
    """A loaded table: per seed, every node by its action history."""

    directory: Path
    manifest: dict[str, Any]
    nodes: dict[int, dict[tuple[int, ...], dict[str, Any]]] = field(default_factory=dict)
    _outputs: dict[int, Any] = field(default_factory=dict, repr=False, compare=False)  # read on first use

    @property
    def task(self) -> str:
        return self.manifest["task"]

    @property
    def knowledge(self) -> list[str]:
        return list(self.manifest["env"]["knowledge"])

    @property
    def phases(self) -> int:
        return int(self.manifest["env"]["phases"])

    @property
    def num_actions(self) -> int:
        return 2 ** len(self.knowledge)

    @property
    def seeds(self) -> list[int]:
        return sorted(self.nodes)

    def leaves(self, seed: int) -> list[dict[str, Any]]:
        return [node for node in self.nodes[seed].values() if node["depth"] > 0 and node["terminal"]]

    @property
    def name(self) -> str:
        return self.directory.name

    @property
    def has_outputs(self) -> bool:
        """Whether the table keeps per-example outputs (kdenv.benchmark.outputs)."""
        return bool(self.manifest.get("outputs"))

    def outputs(self, seed: int):
        """One seed's per-example outputs (:class:`kdenv.benchmark.outputs.SeedOutputs`), checked
        against the manifest's checksum before use; read once, then kept."""
        from kdenv.benchmark.outputs import OutputsError, SeedOutputs, outputs_file

        if not self.has_outputs:
            raise OutputsError(f"the table at {self.directory} keeps no per-example outputs (built before kdenv kept "
                               "them, or with --no-outputs); rebuild it with agents/build_tree.py to have them")
        if seed not in self.nodes:
            raise OutputsError(f"seed {seed} is not in the table (it has {self.seeds})")
        cache = self._outputs
        if seed not in cache:
            file = self.directory / outputs_file(seed)
            if not file.is_file():
                raise OutputsError(f"{file} is not here: outputs files live beside the seed files in the repository "
                                   "(kdenv/tables/<name>/), not in the wheel; use a clone (pip install -e .) or pass "
                                   "the table's folder with --table PATH")
            if file_sha256(file) != self.manifest["outputs_files"][file.name]:
                raise OutputsError(f"{file} is truncated or altered (its SHA-256 differs from the manifest's); restore "
                                   "it from the repository (git checkout) or rebuild the seed")
            cache[seed] = SeedOutputs.read(file)
        return cache[seed]

    def with_seeds(self, seeds: list[int]) -> Table:
        """The table as it stood with only ``seeds`` (some of its own): figures recomputed as a table grew
        (``kdenv.benchmark.regimes.seed_by_seed``). Shares the loaded nodes and outputs; in memory only."""
        missing = sorted(set(seeds) - set(self.nodes))
        if missing or not seeds:
            raise TableError(f"seeds {missing or seeds} are not a non-empty part of the table's seeds {self.seeds}")
        manifest = {**self.manifest, "seeds": sorted(seeds)}
        return Table(self.directory, manifest, {seed: self.nodes[seed] for seed in sorted(seeds)}, self._outputs)

    @classmethod
    def load(cls, directory: str | Path, knowledge: list[str] | None = None, phases: int | None = None) -> Table:
        """Loads and checks a table. ``knowledge`` / ``phases``, if given, must be the table's."""
        directory = Path(directory)
        path = directory / MANIFEST
        if not path.is_file():
            raise TableError(f"no table at {directory} (no {MANIFEST}); name one of {', '.join(available_tables())} "
                             f"(in {tables_dir()}), pass a table folder, or build one with agents/build_tree.py")
        try:
            manifest = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise TableError(f"{path} is damaged ({error}); restore it from the repository (git checkout)") from None
        if not isinstance(manifest, dict) or manifest.get("format") not in FORMATS:
            found = manifest.get("format") if isinstance(manifest, dict) else None
            raise TableError(f"{path}: table format {found!r}, this kdenv reads {' and '.join(map(str, FORMATS))}; "
                             "a newer table needs a newer kdenv (pip install -U kdenv)")
        table = cls(directory, manifest)
        table._check_manifest(path)
        if knowledge is not None and list(knowledge) != table.knowledge:
            raise TableError(f"the table at {directory} offers {table.knowledge}, not {list(knowledge)}; build a table "
                             "for that knowledge set with agents/build_tree.py")
        if phases is not None and phases != table.phases:
            raise TableError(f"the table at {directory} has {table.phases} phases, not {phases}")
        for name, checksum in manifest["files"].items():
            file = directory / name
            if not file.is_file() or file_sha256(file) != checksum:
                raise TableError(f"{file} is missing, truncated or altered (its SHA-256 differs from the manifest's); "
                                 "restore it from the repository (git checkout) or rebuild the table")
        nodes = {}
        for seed in manifest["seeds"]:
            file = directory / seed_file(seed)
            try:
                with gzip.open(file, "rt") as handle:
                    records = {history_key(record["history"]): record for record in map(json.loads, handle)}
            except (OSError, EOFError, ValueError, KeyError, TypeError) as error:
                raise TableError(f"{file} cannot be read as a table's seed file ({type(error).__name__}: {error}); "
                                 "restore it from the repository (git checkout) or rebuild the table") from None
            problems = tree_problems(records, table.num_actions, table.phases)
            if len(records) > int(manifest["nodes_per_seed"]):
                problems.append(f"{len(records)} nodes where the manifest says {manifest['nodes_per_seed']} per seed")
            if problems:
                raise TableError(f"{file} does not hold the tree its manifest describes ({problems[0]}; "
                                 f"{len(problems)} problem(s)); restore the table from the repository or rebuild it")
            nodes[int(seed)] = derive_rewards({tuple(record["history"]): record for record in records.values()})
        table.nodes = nodes  # all seeds checked: the table is used whole or not at all
        return table

    def _check_manifest(self, path: Path) -> None:
        """The manifest agrees with itself: its own checksum, one checksum per seed file and no other, phases and knowledge stated alike in both places, the
        node count of a full tree."""
        manifest = self.manifest
        problems = []
        if "manifest_sha256" not in manifest:
            problems.append("it carries no checksum of itself (manifest_sha256)")
        elif manifest["manifest_sha256"] != manifest_checksum(manifest):
            problems.append("its own checksum does not match its content (it was edited)")
        try:
            seeds = [int(seed) for seed in manifest["seeds"]]
            files = manifest["files"]
            if not isinstance(files, dict) or sorted(files) != sorted(seed_file(seed) for seed in seeds):
                problems.append(f"its files {sorted(files) if isinstance(files, dict) else files!r} are not one "
                                f"checksummed file per seed {seeds}")
            if len(set(seeds)) != len(seeds) or not seeds:
                problems.append(f"its seeds {seeds} are empty or repeat")
            if int(manifest["phases"]) != self.phases or list(manifest["knowledge"]) != self.knowledge:
                problems.append(f"phases {manifest['phases']} / knowledge {manifest['knowledge']} differ from its env "
                                f"section's {self.phases} / {self.knowledge}")
            if manifest.get("outputs"):
                from kdenv.benchmark.outputs import outputs_file

                outputs = manifest.get("outputs_files")
                if not isinstance(outputs, dict) or sorted(outputs) != sorted(outputs_file(seed) for seed in seeds):
                    problems.append(f"its outputs files {outputs!r} are not one checksummed file per seed {seeds}")
            if self.phases < 1 or int(manifest["nodes_per_seed"]) != tree_size(self.num_actions, self.phases) + 1:
                problems.append(f"nodes_per_seed {manifest['nodes_per_seed']} is not the size of a {self.phases}-phase "
                                f"tree over {self.num_actions} actions")
        except (KeyError, TypeError, ValueError) as error:
            problems.append(f"an entry is missing or malformed ({type(error).__name__}: {error})")
        if problems:
            raise TableError(f"{path} is inconsistent: {problems[0]}; restore the table from the repository "
                             "(git checkout) or rebuild it")


def table_configs(table: Table, data_dir: str | None = None, device: str = "cpu",
                  ) -> tuple[DataConfig, DistillConfig, EnvConfig]:
    """The trainer configuration a table was built with (the data folder and device are this
    machine's), in the table's precision: the one mapping from a table to live configs, used by
    validation, the live check and the table environment."""
    manifest = table.manifest
    data = from_dict(DataConfig, {**manifest["data"], "data_dir": data_dir})
    precision = str(manifest.get("device", "fp32")).rpartition(", ")[2]  # "cuda:0 (NVIDIA H100 ...), fp32"
    distill = from_dict(DistillConfig, {**manifest["distill"], "device": device, "precision": precision})
    return data, distill, table_env_config(table)


def table_env_config(table: Table) -> EnvConfig:
    """The environment configuration a table was built with (its knowledge, phases, updates, reward)."""
    return from_dict(EnvConfig, table.manifest["env"])
