"""GLUE data: loading (local GLUE folder or the Hugging Face hub), tokenisation with an on-disk
cache, the train / reward / dev splits, and length-bucketed batches with dynamic padding.

After loading, both sources go through the same code: a :class:`RawSplit` of texts and label ids.
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from kdenv.config import DataConfig
from kdenv.engine.tasks import TaskSpec, get_task
from kdenv.errors import KdenvError
from kdenv.io import atomic_write
from kdenv.paths import cache_dir

GLUE_DIR_ENV = "KDENV_GLUE_DIR"
HUB_DATASET = "nyu-mll/glue"


class DataError(KdenvError, ValueError):
    """Data that is missing or malformed; the message says what and how to fix it."""


@dataclass
class RawSplit:
    """Texts and label ids of one split, whatever the source."""

    text_a: list[str]
    text_b: list[str] | None
    labels: np.ndarray  # int64 class ids, or float32 scores for regression

    def __len__(self) -> int:
        return len(self.text_a)

    def fingerprint(self) -> str:
        digest = hashlib.sha256()
        for column in (self.text_a, self.text_b or []):
            for text in column:
                digest.update(text.encode("utf-8"))
                digest.update(b"\x00")
        digest.update(np.ascontiguousarray(self.labels).tobytes())
        return digest.hexdigest()[:16]


# --------------------------------------------------------------------------- sources


def resolve_glue_dir(data_dir: str | os.PathLike | None) -> Path | None:
    """The local GLUE folder to read: the argument, else ``$KDENV_GLUE_DIR``, else None (hub)."""
    chosen = data_dir if data_dir else os.environ.get(GLUE_DIR_ENV)
    if not chosen:
        return None
    path = Path(chosen).expanduser()
    if not path.is_dir():
        raise DataError(
            f"GLUE data folder {str(path)!r} does not exist; pass --data-dir (or set {GLUE_DIR_ENV}) "
            "to a folder in the download_glue_data.py layout, or leave both unset to use the hub"
        )
    return path


def read_local_split(task: TaskSpec, glue_dir: Path, filename: str) -> RawSplit:
    """Reads one TSV of the standard GLUE layout as tab-split lines.

    The csv module's quoting is deliberately not used: GLUE fields hold unbalanced double quotes that
    make quote-aware readers merge rows. ``utf-8-sig`` drops MRPC's byte-order mark.
    """
    layout = task.local
    path = glue_dir / layout.folder / filename
    if not path.is_file():
        raise DataError(
            f"{task.name}: missing file {path}; the GLUE folder must hold {layout.folder}/{filename} "
            f"(download_glue_data.py layout), or leave --data-dir / {GLUE_DIR_ENV} unset to use the hub"
        )
    try:
        lines = path.read_text(encoding="utf-8-sig").split("\n")
    except UnicodeDecodeError as error:
        raise DataError(f"{path}: not UTF-8 text ({error}); the file is damaged or not a GLUE TSV (re-download it)") from None
    if lines and lines[-1] == "":
        lines.pop()
    lines = [line.rstrip("\r") for line in lines]
    if not any(line.strip() for line in lines):
        raise DataError(f"{path}: the file is empty; re-download the GLUE data (download_glue_data.py layout)")
    if layout.has_header:
        header = lines[0].split("\t")
        rows, first_line = lines[1:], 2
        try:
            columns = [
                header.index(name) if isinstance(name, str) else name
                for name in (layout.text_a, layout.text_b, layout.label)
                if name is not None
            ]
        except ValueError:
            raise DataError(
                f"{path}: header {header} lacks one of the expected columns "
                f"{[layout.text_a, layout.text_b, layout.label]}; is this the right task's file?"
            ) from None
        expected_fields = len(header)
    else:
        rows, first_line = lines, 1
        columns = [c for c in (layout.text_a, layout.text_b, layout.label) if c is not None]
        expected_fields = len(rows[0].split("\t")) if rows else 0
    text_a, text_b, labels = [], [], []
    for number, line in enumerate(rows, start=first_line):
        fields = line.split("\t")
        if len(fields) != expected_fields:
            raise DataError(
                f"{path}:{number}: malformed line with {len(fields)} tab-separated fields, expected "
                f"{expected_fields}; the file is damaged or not a GLUE TSV (re-download it)"
            )
        values = [fields[c] for c in columns]
        try:
            labels.append(task.label_id(values[-1]))
        except ValueError:
            raise DataError(
                f"{path}:{number}: label {values[-1]!r} is not valid for {task.name} "
                f"(expected {list(task.label_names) or 'a number'})"
            ) from None
        text_a.append(values[0])
        if task.is_pair:
            text_b.append(values[1])
    if not text_a:
        raise DataError(f"{path}: no examples in file")
    dtype = np.float32 if task.is_regression else np.int64
    return RawSplit(text_a, text_b if task.is_pair else None, np.asarray(labels, dtype=dtype))


def load_hub_split(task: TaskSpec, split: str) -> RawSplit:
    """Reads one split of ``nyu-mll/glue`` through ``datasets``."""
    import datasets

    from kdenv.engine.hub import datasets_offline_if_unreachable, offline_note

    with datasets_offline_if_unreachable() as offline:
        try:
            dataset = datasets.load_dataset(HUB_DATASET, task.hub_config, split=split)
        except Exception as error:  # the hub raises many types; all mean the same to the user
            raise DataError(
                f"could not load {task.name}/{split} from the Hugging Face hub ({HUB_DATASET}){offline_note(offline)}: "
                f"{error}. Without network access, pass --data-dir or set {GLUE_DIR_ENV} to a local GLUE folder"
            ) from error
    fields = task.hub_text_fields
    dtype = np.float32 if task.is_regression else np.int64
    return RawSplit(
        text_a=list(dataset[fields[0]]),
        text_b=list(dataset[fields[1]]) if task.is_pair else None,
        labels=np.asarray(dataset["label"], dtype=dtype),
    )


def load_raw_splits(task: TaskSpec, data_dir: str | os.PathLike | None) -> dict[str, RawSplit]:
    """The labelled splits: ``train``, ``dev`` and, for MNLI, ``dev_mismatched``; a task from files
    reads its own files (``data_dir`` is for GLUE only)."""
    if task.files is not None:
        from kdenv.engine.task_files import read_file_splits

        return {name: RawSplit(*columns) for name, columns in read_file_splits(task.file_task).items()}
    glue_dir = resolve_glue_dir(data_dir)
    dev_names = ["dev"] + [f"dev_{f.removeprefix('dev_').removesuffix('.tsv')}" for f in task.local.dev_files[1:]]
    if glue_dir is not None:
        splits = {"train": read_local_split(task, glue_dir, "train.tsv")}
        for name, filename in zip(dev_names, task.local.dev_files):
            splits[name] = read_local_split(task, glue_dir, filename)
        return splits
    splits = {"train": load_hub_split(task, "train")}
    for name, hub_split in zip(dev_names, task.hub_dev_splits):
        splits[name] = load_hub_split(task, hub_split)
    return splits


# --------------------------------------------------------------------------- tokenisation


@dataclass
class EncodedSplit:
    """Token ids of one split, stored without padding (one variable-length row per example)."""

    input_ids: list[np.ndarray]
    token_type_ids: list[np.ndarray]
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def lengths(self) -> np.ndarray:
        return np.fromiter((len(ids) for ids in self.input_ids), dtype=np.int64, count=len(self))

    def subset(self, indices: Sequence[int]) -> EncodedSplit:
        return EncodedSplit(
            [self.input_ids[i] for i in indices],
            [self.token_type_ids[i] for i in indices],
            self.labels[np.asarray(indices, dtype=np.int64)],
        )


def tokenizer_fingerprint(tokenizer) -> str:
    """Identifies a tokenizer by what changes its output: class, vocabulary and casing."""
    digest = hashlib.sha256(type(tokenizer).__name__.encode())
    vocab = sorted(tokenizer.get_vocab().items())
    digest.update(json.dumps(vocab).encode())
    digest.update(str(getattr(tokenizer, "do_lower_case", None)).encode())
    return digest.hexdigest()[:16]


def _encode(tokenizer, raw: RawSplit, max_length: int) -> EncodedSplit:
    encoded = tokenizer(
        raw.text_a,
        raw.text_b,
        truncation=True,
        max_length=max_length,
        return_token_type_ids=True,
        return_attention_mask=False,
    )
    return EncodedSplit(
        [np.asarray(ids, dtype=np.int32) for ids in encoded["input_ids"]],
        [np.asarray(ids, dtype=np.int8) for ids in encoded["token_type_ids"]],
        raw.labels,
    )


def _save_encoded(path: Path, key: str, split: EncodedSplit) -> None:
    offsets = np.concatenate([[0], np.cumsum(split.lengths)])
    with atomic_write(path, "wb") as handle:
        np.savez(
            handle,
            key=np.array(key),
            input_ids=np.concatenate(split.input_ids) if len(split) else np.zeros(0, np.int32),
            token_type_ids=np.concatenate(split.token_type_ids) if len(split) else np.zeros(0, np.int8),
            offsets=offsets,
            labels=split.labels,
        )


def _load_encoded(path: Path, key: str) -> EncodedSplit | None:
    """The cached split, or None when it is absent, unreadable or was made for another key."""
    try:
        with np.load(path) as stored:
            if str(stored["key"]) != key:
                return None
            offsets = stored["offsets"]
            ids, types = stored["input_ids"], stored["token_type_ids"]
            return EncodedSplit(
                [ids[offsets[i] : offsets[i + 1]] for i in range(len(offsets) - 1)],
                [types[offsets[i] : offsets[i + 1]] for i in range(len(offsets) - 1)],
                stored["labels"],
            )
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error):
        return None  # truncated or damaged: rebuilt by the caller


def encode_split(
    tokenizer, task: TaskSpec, split_name: str, raw: RawSplit, max_length: int, cache: Path | None
) -> EncodedSplit:
    """Tokenises a split, reusing the on-disk cache keyed by (tokenizer, task, max length, data)."""
    key = json.dumps(
        {
            "tokenizer": tokenizer_fingerprint(tokenizer),
            "task": task.name,
            "split": split_name,
            "max_length": max_length,
            "data": raw.fingerprint(),
        },
        sort_keys=True,
    )
    if cache is None:
        return _encode(tokenizer, raw, max_length)
    path = cache / f"{task.name}-{split_name}-{hashlib.sha256(key.encode()).hexdigest()[:16]}.npz"
    cached = _load_encoded(path, key) if path.exists() else None
    if cached is not None:
        return cached
    encoded = _encode(tokenizer, raw, max_length)
    _save_encoded(path, key, encoded)
    return encoded


# --------------------------------------------------------------------------- splits


def stratified_holdout(
    labels: np.ndarray, size: int | float, seed: int, regression: bool = False, bins: int = 5
) -> tuple[np.ndarray, np.ndarray]:
    """Splits example indices into (kept, held out) with class shares preserved.

    ``size`` is a count (int) or a fraction (float in (0, 1)). Regression targets are stratified
    by quantile bins. The result depends only on the labels, size and seed.
    """
    n = len(labels)
    count = int(round(size * n)) if isinstance(size, float) else int(size)
    if not 0 < count < n:
        raise ValueError(f"reward split size {size} leaves no examples on one side (of {n})")
    if regression:
        edges = np.quantile(labels, np.linspace(0, 1, bins + 1)[1:-1])
        strata = np.digitize(labels, edges)
    else:
        strata = np.asarray(labels)
    classes, class_counts = np.unique(strata, return_counts=True)
    # Largest-remainder rounding, so the per-class counts add up to exactly `count`.
    exact = class_counts * count / n
    per_class = np.floor(exact).astype(int)
    order = np.argsort(-(exact - per_class), kind="stable")
    per_class[order[: count - per_class.sum()]] += 1
    rng = np.random.default_rng(seed)
    held_out = []
    for cls, take in zip(classes, per_class):
        members = np.flatnonzero(strata == cls)
        held_out.append(rng.permutation(members)[:take])
    held_out = np.sort(np.concatenate(held_out))
    kept = np.setdiff1d(np.arange(n), held_out, assume_unique=True)
    return kept, held_out


@dataclass
class TaskData:
    """A task's tokenised splits: ``train`` (what training sees), ``reward`` (held out of train,
    for rewards and model selection), ``dev`` (GLUE dev, final evaluation only)."""

    task: TaskSpec
    splits: dict[str, EncodedSplit]
    train_indices: np.ndarray  # positions in the GLUE train file
    reward_indices: np.ndarray
    pad_token_id: int

    def __getitem__(self, name: str) -> EncodedSplit:
        if name not in self.splits:
            raise KeyError(f"no split {name!r}; available: {', '.join(self.splits)}")
        return self.splits[name]


def split_indices(task: TaskSpec, config: DataConfig, train_labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positions in the GLUE train file of the train split and of the reward split, as ``config``
    carves them (labels alone decide: the same on every machine and tokenizer)."""
    kept, held_out = stratified_holdout(train_labels, config.reward_size, config.split_seed,
                                        regression=task.is_regression)
    if config.max_reward_examples is not None and len(held_out) > config.max_reward_examples:
        # Capping keeps the reward evaluation cheap; the dropped examples are used by nobody.
        _, capped_positions = stratified_holdout(train_labels[held_out], config.max_reward_examples,
                                                 config.split_seed, regression=task.is_regression)
        held_out = held_out[capped_positions]
    if config.max_train_examples is not None and len(kept) > config.max_train_examples:
        _, train_positions = stratified_holdout(train_labels[kept], config.max_train_examples, config.split_seed,
                                                regression=task.is_regression)
        kept = kept[train_positions]
    return kept, held_out


def load_task_data(config: DataConfig, tokenizer) -> TaskData:
    """Loads, tokenises (cached) and splits a task as ``config`` says."""
    task = get_task(config.task)
    raw = load_raw_splits(task, config.data_dir)
    cache = None if not config.cache_tokenization else cache_dir() / "tokenized"
    encoded = {
        name: encode_split(tokenizer, task, name, split, config.max_length, cache)
        for name, split in raw.items()
    }
    kept, held_out = split_indices(task, config, encoded["train"].labels)
    splits = {"train": encoded["train"].subset(kept), "reward": encoded["train"].subset(held_out)}
    splits.update({name: split for name, split in encoded.items() if name != "train"})
    return TaskData(task, splits, kept, held_out, tokenizer.pad_token_id)


# --------------------------------------------------------------------------- batching


def length_bucketed_batches(
    lengths: np.ndarray,
    batch_size: int,
    shuffle: bool,
    seed: int = 0,
    bucket_batches: int = 50,
) -> list[np.ndarray]:
    """Index batches of similar lengths, so that dynamic padding pads little.

    With ``shuffle``, examples are shuffled, cut into buckets of ``bucket_batches`` batches,
    sorted by length inside each bucket, batched, and the batches shuffled: randomness is kept
    while each batch holds examples of similar length. Without it, batches follow length order
    (for evaluation). Every example appears exactly once.
    """
    n = len(lengths)
    if not shuffle:
        order = np.argsort(lengths, kind="stable")
        return [order[i : i + batch_size] for i in range(0, n, batch_size)]
    rng = np.random.default_rng(seed)
    order = rng.permutation(n)
    bucket = batch_size * bucket_batches
    batches = []
    for start in range(0, n, bucket):
        chunk = order[start : start + bucket]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        batches.extend(chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size))
    return [batches[i] for i in rng.permutation(len(batches))]


MODEL_INPUTS = ("input_ids", "token_type_ids", "attention_mask")  # what a model forward takes from a batch


def model_inputs(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The batch's inputs that ``model`` takes. Segment ids go only to a model with a segment table
    of two or more rows (BERT, ELECTRA): DistilBERT has none, RoBERTa one row, DeBERTa-v2 none by default,
    and a pair's second-segment ids would index past such a table (or be silently dropped)."""
    inputs = {key: batch[key] for key in MODEL_INPUTS}
    if getattr(getattr(model, "config", None), "type_vocab_size", 0) < 2:
        del inputs["token_type_ids"]
    return inputs


def to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {name: tensor.to(device, non_blocking=True) for name, tensor in batch.items()}


def collate(split: EncodedSplit, indices: np.ndarray, pad_token_id: int) -> dict[str, torch.Tensor]:
    """Pads a batch to its own longest example (dynamic padding)."""
    width = max(len(split.input_ids[i]) for i in indices)
    input_ids = np.full((len(indices), width), pad_token_id, dtype=np.int64)
    token_type_ids = np.zeros((len(indices), width), dtype=np.int64)
    attention_mask = np.zeros((len(indices), width), dtype=np.int64)
    for row, i in enumerate(indices):
        length = len(split.input_ids[i])
        input_ids[row, :length] = split.input_ids[i]
        token_type_ids[row, :length] = split.token_type_ids[i]
        attention_mask[row, :length] = 1
    return {
        "input_ids": torch.from_numpy(input_ids),
        "token_type_ids": torch.from_numpy(token_type_ids),
        "attention_mask": torch.from_numpy(attention_mask),
        "labels": torch.from_numpy(split.labels[np.asarray(indices, dtype=np.int64)]),
        "example_ids": torch.as_tensor(np.asarray(indices, dtype=np.int64)),
    }


def padding_savings(lengths: np.ndarray, batches: list[np.ndarray], max_length: int) -> dict[str, float]:
    """Token positions computed with fixed padding to ``max_length`` vs dynamic padding per batch."""
    fixed = len(lengths) * max_length
    dynamic = int(sum(len(b) * lengths[b].max() for b in batches))
    return {
        "fixed_tokens": float(fixed),
        "dynamic_tokens": float(dynamic),
        "real_tokens": float(lengths.sum()),
        "saving": 1.0 - dynamic / fixed,
    }


class BatchStream:
    """An endless, resumable stream of training batches: epoch after epoch of length-bucketed
    batches, each epoch reshuffled from (seed, epoch). Its position is part of trainer snapshots."""

    def __init__(self, split: EncodedSplit, pad_token_id: int, batch_size: int, seed: int = 0):
        self.split, self.pad_token_id, self.batch_size = split, pad_token_id, batch_size
        self.seed, self.epoch, self.position = seed, 0, 0
        self._order: list[np.ndarray] | None = None
        self._lengths = split.lengths

    def _batches(self) -> list[np.ndarray]:
        if self._order is None:
            self._order = length_bucketed_batches(
                self._lengths, self.batch_size, shuffle=True, seed=self.seed * 100_003 + self.epoch
            )
        return self._order

    def __next__(self) -> dict[str, torch.Tensor]:
        batches = self._batches()
        if self.position >= len(batches):
            self.epoch, self.position, self._order = self.epoch + 1, 0, None
            batches = self._batches()
        indices = batches[self.position]
        self.position += 1
        return collate(self.split, indices, self.pad_token_id)

    def __iter__(self) -> BatchStream:
        return self

    @property
    def batches_per_epoch(self) -> int:
        return len(self._batches())

    def reseed(self, seed: int) -> None:
        """Starts over from the first epoch with another shuffling seed."""
        self.seed, self.epoch, self.position, self._order = seed, 0, 0, None

    def state_dict(self) -> dict[str, int]:
        return {"seed": self.seed, "epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.seed, self.epoch, self.position, self._order = state["seed"], state["epoch"], state["position"], None
