"""Schedule tables on disk: a table folder (shipped ones in ``kdenv/tables/<name>/``) holds ``manifest.json`` and one gzipped JSONL
file per seed (``seed<N>.jsonl.gz``, one node per line, root first).

The manifest says what the table was built from (task, knowledge on offer, phases, updates per
phase, batch size, the full data/distillation/environment configs, the reward split's hash, the
teacher's fingerprint and the config to rebuild it, software versions, build wall time) and holds
the SHA-256 of every file, checked on load: a truncated or altered file is refused, never used.
"""

from __future__ import annotations

import gzip
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kdenv.io import atomic_write, file_sha256
from kdenv.paths import tables_dir

TABLE_FORMAT = 1
MANIFEST = "manifest.json"


class TableError(ValueError):
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


def write_manifest(directory: Path, manifest: dict[str, Any]) -> Path:
    """The manifest, with a checksum of every seed file it lists."""
    directory = Path(directory)
    manifest = {**manifest, "format": TABLE_FORMAT,
                "files": {seed_file(seed): file_sha256(directory / seed_file(seed)) for seed in manifest["seeds"]}}
    with atomic_write(directory / MANIFEST) as handle:
        json.dump(manifest, handle, indent=2, sort_keys=True)
    return directory / MANIFEST


@dataclass
class Table:
    """A loaded table: per seed, every node by its action history."""

    directory: Path
    manifest: dict[str, Any]
    nodes: dict[int, dict[tuple[int, ...], dict[str, Any]]] = field(default_factory=dict)

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
        if manifest.get("format") != TABLE_FORMAT:
            raise TableError(f"{path}: table format {manifest.get('format')!r}, this kdenv reads {TABLE_FORMAT}")
        table = cls(directory, manifest)
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
        for seed in manifest["seeds"]:
            with gzip.open(directory / seed_file(seed), "rt") as handle:
                records = [json.loads(line) for line in handle]
            table.nodes[int(seed)] = {tuple(record["history"]): record for record in records}
        return table
