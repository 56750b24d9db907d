"""Shared fixtures: the real GLUE folder, a private runs folder, the packaged tokenizer, tiny BERTs."""

from __future__ import annotations

import importlib
import os
import shutil
from pathlib import Path

import pytest

import kdenv  # noqa: F401  (first: kdenv pins the CPU kernels before torch starts, as in every kdenv program)

# isort: split
import torch
from transformers import BertConfig, BertForSequenceClassification

REPO = Path(__file__).resolve().parents[1]

# Tiny models run far faster on one thread (and do not stall when another process holds the
# cores); tests on the real model take all cores through the `all_cores` fixture.
torch.set_num_threads(1)
DEFAULT_GLUE = REPO.parent / "shared" / "data" / "glue"


@pytest.fixture(scope="session")
def glue_dir() -> Path:
    """The real GLUE TSVs. A missing folder fails the tests loudly instead of skipping them."""
    path = Path(os.environ.get("KDENV_GLUE_DIR") or DEFAULT_GLUE)
    assert (path / "RTE" / "train.tsv").is_file(), (
        f"real GLUE data not found at {path}; set KDENV_GLUE_DIR to the GLUE folder"
    )
    return path


@pytest.fixture(autouse=True)
def private_runs_dir(tmp_path_factory, monkeypatch) -> Path:
    """Every test writes under its own runs folder, never the repository's."""
    path = tmp_path_factory.mktemp("runs")
    monkeypatch.setenv("KDENV_RUNS_DIR", str(path))
    return path


@pytest.fixture
def all_cores():
    torch.set_num_threads(os.cpu_count() or 1)
    yield
    torch.set_num_threads(1)


def command(name: str):
    """The program behind ``agents/<name>.py`` (``kdenv.commands.<name>``), to call its ``main``."""
    return importlib.import_module(f"kdenv.commands.{name}")


@pytest.fixture(scope="session")
def tiny_teacher_source(tmp_path_factory, glue_dir, tokenizer):
    """One tiny WNLI teacher for the whole session (fine-tuned for 3 steps from a 4-layer BERT):
    the base model's folder and the runs folder it was saved under."""
    from kdenv.engine.models import save_model

    root = tmp_path_factory.mktemp("tiny_teacher")
    base = root / "tiny_base"
    save_model(tiny_bert(layers=4, attn_implementation="eager"), tokenizer, base, {})
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("KDENV_RUNS_DIR", str(root / "runs"))
        assert command("finetune_teacher").main(
            ["--task", "wnli", "--data-dir", str(glue_dir), "--model", str(base), "--epochs", "1", "--max-steps", "3",
             "--no-progress"]) == 0
    return base, root / "runs"


@pytest.fixture
def tiny_teacher(tiny_teacher_source, private_runs_dir):
    """The session's tiny WNLI teacher, copied where the scripts look for it in this test's own
    runs folder (a test may fine-tune it again or damage it without touching the others)."""
    base, runs = tiny_teacher_source
    shutil.copytree(runs / "teachers", private_runs_dir / "teachers")
    return base


@pytest.fixture(scope="session")
def tokenizer():
    from kdenv.engine.models import load_tokenizer

    return load_tokenizer("minilm")


def tiny_bert(num_labels: int = 2, layers: int = 4, hidden: int = 32, seed: int = 0, **overrides):
    """A randomly initialised BERT small enough for unit tests, sharing the MiniLM vocabulary size."""
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=30522, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=4,
        intermediate_size=2 * hidden, max_position_embeddings=160, num_labels=num_labels, **overrides,
    )
    return BertForSequenceClassification(config)


@pytest.fixture
def tiny_bert_factory():
    return tiny_bert


def toy_task_data(n_train: int = 96, n_eval: int = 32, seed: int = 0, task: str = "rte"):
    """A learnable toy task with the real data structures: the label says whether token 2000
    occurs in the sequence. Lengths vary so that padding and bucketing are exercised."""
    import numpy as np

    from kdenv.engine.data import EncodedSplit, TaskData
    from kdenv.engine.tasks import get_task

    rng = np.random.default_rng(seed)

    def make(n):
        ids, types, labels = [], [], []
        for _ in range(n):
            length = int(rng.integers(6, 20))
            row = rng.integers(1000, 1999, size=length).astype(np.int32)
            label = int(rng.integers(0, 2))
            if label:
                row[int(rng.integers(1, length - 1))] = 2000
            row[0], row[-1] = 101, 102
            ids.append(row)
            types.append(np.zeros(length, np.int8))
            labels.append(label)
        return EncodedSplit(ids, types, np.asarray(labels, np.int64))

    splits = {"train": make(n_train), "reward": make(n_eval), "dev": make(n_eval)}
    return TaskData(get_task(task), splits, np.arange(n_train), np.arange(n_train, n_train + n_eval), 0)


@pytest.fixture
def toy_data():
    return toy_task_data()


@pytest.fixture(scope="module")
def pair():
    """For knowledge-loss tests: a 4-layer eager teacher, a 2-layer student made of its layers 1 and 3, and a padded batch."""
    torch.manual_seed(0)
    teacher = tiny_bert(layers=4, attn_implementation="eager", seed=1).eval()
    with torch.no_grad():  # confident outputs, so that soft-label losses are far from zero
        teacher.classifier.weight.mul_(200)
    from kdenv.engine.data import collate
    from kdenv.engine.models import student_from_teacher

    student = student_from_teacher(teacher, num_layers=2)
    # Make the student differ from the teacher so that every loss is clearly non-zero.
    with torch.no_grad():
        for parameter in [*student.bert.encoder.parameters(), *student.classifier.parameters()]:
            parameter.add_(0.05 * torch.randn_like(parameter))
    student.eval()
    data = toy_task_data(n_train=8)
    batch = collate(data["train"], list(range(6)), 0)
    assert batch["attention_mask"].sum(1).min() < batch["input_ids"].shape[1]  # some padding
    return teacher, student, batch
