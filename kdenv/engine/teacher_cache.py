"""Teacher knowledge, computed once and reused by every run and every episode.

The teacher is frozen, so its logits, hidden states, attention maps and input gradients for a
split never change. :class:`TeacherCache` computes the outputs that the offered knowledge types
need, stores them compactly (fp16, variable lengths without padding), keyed by what determines
them (teacher weights, task, tokenised data, output names, dtype), and checks key and checksums
on load: a stale or corrupt cache is rebuilt, never used. :class:`OnlineTeacher` runs the teacher
on every batch instead (for comparison, or for data too large to cache); both answer
``batch_outputs(batch, keys)`` with the same tensors.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from kdenv import numerics
from kdenv.engine.data import EncodedSplit, collate, length_bucketed_batches
from kdenv.engine.knowledge.base import parse_teacher_keys, teacher_outputs
from kdenv.engine.runtime import Runtime
from kdenv.engine.tasks import TaskSpec
from kdenv.errors import KdenvError
from kdenv.io import atomic_directory, file_sha256

CACHE_FORMAT = 1
STORAGE_DTYPES = {"float16": np.float16, "float32": np.float32}


class TeacherSource(Protocol):
    def batch_outputs(self, batch: dict[str, torch.Tensor], keys: set[str]) -> dict[str, torch.Tensor]: ...


def frozen(teacher: nn.Module, runtime: Runtime) -> nn.Module:
    """The teacher on the runtime's device, in eval mode, with no parameter requiring gradients."""
    teacher = teacher.to(runtime.device).eval()
    for parameter in teacher.parameters():
        parameter.requires_grad_(False)
    return teacher


class OnlineTeacher:
    """Runs the teacher on each batch (no cache)."""

    def __init__(self, teacher: nn.Module, task: TaskSpec, runtime: Runtime):
        self.teacher, self.task, self.runtime = frozen(teacher, runtime), task, runtime

    def batch_outputs(self, batch: dict[str, torch.Tensor], keys: set[str]) -> dict[str, torch.Tensor]:
        if not keys:
            return {}
        with self.runtime.autocast():
            return teacher_outputs(self.teacher, batch, self.task, keys)


def model_fingerprint(model: nn.Module) -> str:
    """Hash of a model's weights: a retrained teacher never matches an old cache."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:20]


def split_fingerprint(split: EncodedSplit) -> str:
    digest = hashlib.sha256()
    for ids, types in zip(split.input_ids, split.token_type_ids):
        digest.update(np.ascontiguousarray(ids, dtype=np.int32).tobytes())
        digest.update(np.ascontiguousarray(types, dtype=np.int8).tobytes())
        digest.update(b"|")
    return digest.hexdigest()[:20]


def _kind(key: str) -> str:
    """How a key is stored: per token ([tokens, H]), per example ([N, D]) or attention maps."""
    if key.startswith("hidden.") or key == "grad.embedding":
        return "token"
    if key.startswith("attention."):
        return "attention"
    return "example"


@dataclass
class CacheInfo:
    directory: Path
    rebuilt: bool
    reason: str
    bytes: int
    memory_mapped: bool


class CacheError(KdenvError, RuntimeError):
    """A teacher cache that this process may not compute; the message says how to make it."""


class TeacherCache:
    """Cached teacher outputs for one split. Build or load with :meth:`open`."""

    def __init__(self, arrays: dict[str, np.ndarray], lengths: np.ndarray, heads: int, info: CacheInfo):
        self.arrays, self.lengths, self.heads, self.info = arrays, lengths, heads, info
        self.keys = set(arrays)
        self.token_offsets = np.concatenate([[0], np.cumsum(lengths)])
        self.attention_offsets = np.concatenate([[0], np.cumsum(heads * lengths**2)])

    # ------------------------------------------------------------------ building and loading

    @classmethod
    def open(
        cls,
        directory: Path,
        teacher: nn.Module,
        task: TaskSpec,
        split: EncodedSplit,
        keys: set[str],
        runtime: Runtime,
        pad_token_id: int,
        dtype: str = "float16",
        memory_budget_bytes: int = 4 << 30,
        batch_size: int = 32,
        progress: bool = True,
        teacher_fingerprint: str | None = None,
        numerics_of: str | None = None,
    ) -> TeacherCache:
        """Loads the cache in ``directory`` if it matches and is intact, else (re)builds it.
        ``teacher_fingerprint``: ``model_fingerprint(teacher)`` when the caller already has it
        (hashing the weights costs a pass over them; several caches of one teacher share it).
        ``numerics_of``: the numerics the outputs must be computed in (default this process's,
        :func:`kdenv.numerics.cache_numerics`); a missing cache of other numerics is refused, not
        computed in the wrong ones."""
        if dtype not in STORAGE_DTYPES:
            raise ValueError(f"cache dtype must be one of {list(STORAGE_DTYPES)}, not {dtype!r}")
        parse_teacher_keys(keys)  # unknown names fail before any work
        key = {
            "format": CACHE_FORMAT,
            "teacher": teacher_fingerprint or model_fingerprint(teacher),
            "task": task.name,
            "data": split_fingerprint(split),
            "examples": len(split),
            "keys": sorted(keys),
            "dtype": dtype,
            # The numerics the outputs are computed in: native and portable kernels give other last
            # bits, and a table's records depend on them (a cache made in native numerics and reused
            # by portable builds kept tables from replaying elsewhere).
            "numerics": numerics_of or numerics.cache_numerics(runtime.device.type),
        }
        reason = cls._check(directory, key)
        if reason is not None and key["numerics"] != numerics.own_cache_numerics(runtime.device.type):
            raise CacheError(f"the teacher cache in {directory} ({reason}) must hold outputs computed in "
                             f"{key['numerics']}, which this process does not compute in; build it in a process with "
                             "those numerics first (validate_table.py does so for the seeds that need it)")
        if reason is not None:
            cls._build(directory, key, teacher, task, split, keys, runtime, pad_token_id, dtype, batch_size, progress)
        manifest = json.loads((directory / "manifest.json").read_text())
        total = sum(entry["bytes"] for entry in manifest["files"].values())
        memory_mapped = total > memory_budget_bytes
        arrays = {
            name: np.load(directory / entry["file"], mmap_mode="r" if memory_mapped else None)
            for name, entry in manifest["files"].items()
        }
        info = CacheInfo(directory, reason is not None, reason or "valid", total, memory_mapped)
        return cls(arrays, split.lengths, manifest["heads"], info)

    @staticmethod
    def _check(directory: Path, key: dict) -> str | None:
        """None if the cache at ``directory`` is usable, else why not."""
        manifest_path = directory / "manifest.json"
        if not manifest_path.is_file():
            return "missing"
        try:
            manifest = json.loads(manifest_path.read_text())
        except json.JSONDecodeError:
            return "corrupt manifest"
        if manifest.get("key") != key:
            return "stale (teacher, data or knowledge changed)"
        for entry in manifest["files"].values():
            path = directory / entry["file"]
            if not path.is_file() or path.stat().st_size != entry["bytes"] or file_sha256(path) != entry["sha256"]:
                return f"corrupt file {entry['file']}"
        return None

    @staticmethod
    def _build(directory, key, teacher, task, split, keys, runtime, pad_token_id, dtype, batch_size, progress):
        teacher = frozen(teacher, runtime)
        storage = STORAGE_DTYPES[dtype]
        lengths = split.lengths
        token_offsets = np.concatenate([[0], np.cumsum(lengths)])
        heads = teacher.config.num_attention_heads
        attention_offsets = np.concatenate([[0], np.cumsum(heads * lengths**2)])
        batches = length_bucketed_batches(lengths, batch_size, shuffle=False)
        with atomic_directory(directory) as tmp:
            files: dict[str, np.ndarray] = {}
            bar = tqdm(batches, desc=f"caching teacher knowledge ({task.name})", disable=not progress, unit="batch")
            for indices in bar:
                batch = {k: v.to(runtime.device) for k, v in collate(split, indices, pad_token_id).items()}
                with runtime.autocast():
                    outputs = teacher_outputs(teacher, batch, task, keys)
                for name, value in outputs.items():
                    value = value.float().cpu().numpy()
                    kind = _kind(name)
                    # Logits stay fp32: they are tiny and KL at temperature is sensitive to rounding.
                    array_dtype = np.float32 if name == "logits" else storage
                    if name not in files:
                        if kind == "token":
                            shape = (int(token_offsets[-1]), value.shape[-1])
                        elif kind == "attention":
                            shape = (int(attention_offsets[-1]),)
                        else:
                            shape = (len(split), value.shape[-1])
                        files[name] = np.lib.format.open_memmap(tmp / f"{name}.npy", mode="w+", dtype=array_dtype, shape=shape)
                    target = files[name]
                    for row, example in enumerate(indices):
                        length = int(lengths[example])
                        if kind == "token":
                            target[token_offsets[example] : token_offsets[example + 1]] = value[row, :length]
                        elif kind == "attention":
                            block = value[row, :, :length, :length].reshape(-1)
                            target[attention_offsets[example] : attention_offsets[example + 1]] = block
                        else:
                            target[example] = value[row]
            for array in files.values():
                array.flush()
            names = list(files)
            files.clear()  # closes the memory maps before the files are hashed
            manifest_files = {}
            for name in names:
                path = tmp / f"{name}.npy"
                manifest_files[name] = {"file": path.name, "bytes": path.stat().st_size, "sha256": file_sha256(path)}
            manifest = {"key": key, "heads": heads, "files": manifest_files}
            (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2))

    # ------------------------------------------------------------------ lookup

    def batch_outputs(self, batch: dict[str, torch.Tensor], keys: set[str]) -> dict[str, torch.Tensor]:
        """The cached outputs for the examples of ``batch``, padded to its width, on its device."""
        missing = keys - self.keys
        if missing:
            raise KeyError(f"teacher cache holds {sorted(self.keys)}, not {sorted(missing)}; rebuild it for these knowledge types")
        examples = batch["example_ids"].tolist()
        width = batch["input_ids"].shape[1]
        device = batch["input_ids"].device
        result = {}
        for name in keys:
            array, kind = self.arrays[name], _kind(name)
            if kind == "example":
                out = torch.from_numpy(np.asarray(array[examples], dtype=np.float32))
            elif kind == "token":
                out = torch.zeros(len(examples), width, array.shape[-1])
                for row, example in enumerate(examples):
                    start, end = self.token_offsets[example], self.token_offsets[example + 1]
                    out[row, : end - start] = torch.from_numpy(np.asarray(array[start:end], dtype=np.float32))
            else:
                out = torch.zeros(len(examples), self.heads, width, width)
                for row, example in enumerate(examples):
                    length = int(self.lengths[example])
                    start, end = self.attention_offsets[example], self.attention_offsets[example + 1]
                    block = np.asarray(array[start:end], dtype=np.float32).reshape(self.heads, length, length)
                    out[row, :, :length, :length] = torch.from_numpy(block)
            result[name] = out.to(device, non_blocking=True)
        return result
