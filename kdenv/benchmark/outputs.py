"""Per-example outputs in a table: the student's outputs on the reward split at every node, and on
the dev examples at every scored leaf, so that any metric, any subset of examples and any bootstrap
over examples is computed from the table without rebuilding it.

In a tree build's job records a node carries its outputs as float16 bytes (``encode``; they are
part of what a recomputed node must equal). A table keeps them out of its seed files, in one
compressed NumPy file per seed beside them (``seed<N>.outputs.npz``, read with
``allow_pickle=False`` and checksummed in the manifest): the seed files stay small and load as
before, and a kdenv that ignores outputs reads the table unchanged.

Labels are not stored: they are GLUE data. :func:`kdenv.benchmark.outofsample.table_labels` reads them from the GLUE files
the table was built from (the same splits, carved by the recorded data config) and checks them
against the fingerprints the build recorded, so outputs are never scored against other labels.
"""

from __future__ import annotations

import base64
import hashlib
import io
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kdenv.errors import KdenvError
from kdenv.io import atomic_write

DTYPE = np.float16


class OutputsError(KdenvError, ValueError):
    """A table's outputs that cannot be used as asked; the message says why and what to do."""


def encode(outputs: np.ndarray) -> dict[str, Any]:
    """A node's outputs ([examples, columns]) as JSON: shape and little-endian float16 bytes."""
    array = np.ascontiguousarray(np.asarray(outputs, dtype="<f2"))
    return {"shape": list(array.shape), "f16": base64.b64encode(array.tobytes()).decode("ascii")}


def decode(item: dict[str, Any]) -> np.ndarray:
    """The array :func:`encode` wrote (float16)."""
    shape = tuple(int(n) for n in item["shape"])
    array = np.frombuffer(base64.b64decode(item["f16"], validate=True), dtype="<f2")
    if array.size != int(np.prod(shape)):
        raise OutputsError(f"outputs of shape {shape} hold {array.size} values")
    return array.reshape(shape).astype(DTYPE)


def labels_fingerprint(labels: np.ndarray) -> str:
    """Identifies a split's labels (what outputs are scored against) without storing them."""
    return hashlib.sha256(np.ascontiguousarray(np.asarray(labels, dtype="<f4")).tobytes()).hexdigest()[:16]


def outputs_file(seed: int) -> str:
    return f"seed{seed}.outputs.npz"


def _histories(keys: list[tuple[int, ...]], phases: int) -> np.ndarray:
    array = np.full((len(keys), max(phases, 1)), -1, dtype=np.int16)
    for row, history in enumerate(keys):
        array[row, : len(history)] = history
    return array


def split_records(records: list[dict[str, Any]], phases: int,
                  teacher: dict[str, np.ndarray]) -> tuple[list[dict[str, Any]], dict[str, np.ndarray] | None]:
    """One seed's build records without their outputs, and the outputs as the arrays of its
    outputs file (None when the records carry none: a build that kept no outputs)."""
    if not any("outputs" in record for record in records):
        return records, None
    stripped, reward, reward_keys, dev, dev_keys = [], [], [], [], []
    for record in records:
        outputs = record.get("outputs")
        stripped.append({key: value for key, value in record.items() if key != "outputs"})
        if outputs is None:
            if record.get("status", "ok") == "ok":
                raise OutputsError(f"node {record['history']} has no outputs while others do: the build mixed records "
                                   "with and without outputs; rebuild the seed")
            continue  # a crashed phase has no evaluation
        reward_keys.append(tuple(record["history"]))
        reward.append(decode(outputs["reward"]))
        if "dev" in outputs:
            dev_keys.append(tuple(record["history"]))
            dev.append(decode(outputs["dev"]))
    arrays = {"histories": _histories(reward_keys, phases), "reward": np.stack(reward),
              "dev_histories": _histories(dev_keys, phases),
              "dev": np.stack(dev) if dev else np.zeros((0, 0, reward[0].shape[1]), DTYPE)}
    arrays.update({f"teacher_{split}": np.asarray(values, dtype=DTYPE) for split, values in teacher.items()})
    return stripped, arrays


def write_outputs(directory: Path, seed: int, arrays: dict[str, np.ndarray]) -> Path:
    """One seed's outputs file, written atomically (reproducible bytes: no timestamps in it)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        for name in sorted(arrays):
            member = io.BytesIO()
            np.save(member, np.ascontiguousarray(arrays[name]), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, member.getvalue())
    path = Path(directory) / outputs_file(seed)
    with atomic_write(path, "wb") as handle:
        handle.write(buffer.getvalue())
    return path


REQUIRED = ("histories", "reward", "dev_histories", "dev")


@dataclass
class SeedOutputs:
    """One seed's outputs: on the reward split at every evaluated node, on the scored dev examples
    at every scored leaf, and the teacher's on both. Float16, [nodes or leaves, examples, columns]."""

    reward: dict[tuple[int, ...], np.ndarray]
    dev: dict[tuple[int, ...], np.ndarray]
    teacher: dict[str, np.ndarray]

    @classmethod
    def read(cls, path: Path) -> SeedOutputs:
        try:
            with np.load(path, allow_pickle=False) as stored:
                arrays = {name: stored[name] for name in stored.files}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as error:
            raise OutputsError(f"{path} cannot be read as a table's outputs ({type(error).__name__}: {error}); restore "
                               "it from the repository (git checkout) or rebuild the seed") from None
        missing = [name for name in REQUIRED if name not in arrays]
        if missing:
            raise OutputsError(f"{path} lacks {missing}; restore it from the repository or rebuild the seed")

        def by_history(keys: np.ndarray, values: np.ndarray) -> dict[tuple[int, ...], np.ndarray]:
            if len(keys) != len(values):
                raise OutputsError(f"{path}: {len(keys)} histories for {len(values)} output rows")
            return {tuple(int(a) for a in row if a >= 0): value for row, value in zip(keys, values)}

        return cls(by_history(arrays["histories"], arrays["reward"]), by_history(arrays["dev_histories"], arrays["dev"]),
                   {name.removeprefix("teacher_"): value for name, value in arrays.items() if name.startswith("teacher_")})
