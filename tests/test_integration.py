"""Bounded tests on the real packaged all-MiniLM-L6-v2 and real RTE, fully offline."""

import pytest

from kdenv.config import DataConfig, FinetuneConfig
from kdenv.data import load_task_data
from kdenv.models import load_classifier, load_tokenizer
from kdenv.runtime import make_runtime, seed_everything
from kdenv.tasks import get_task
from kdenv.training import evaluate, finetune

pytestmark = pytest.mark.integration


def test_packaged_minilm_fine_tunes_offline_on_real_rte(glue_dir, monkeypatch, all_cores):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # any hub access would now fail
    seed_everything(0)
    tokenizer = load_tokenizer("minilm")
    model = load_classifier("minilm", get_task("rte"))
    assert model.config.num_hidden_layers == 6 and model.config.hidden_size == 384
    data = load_task_data(
        DataConfig(task="rte", data_dir=str(glue_dir), max_train_examples=48, max_reward_examples=16), tokenizer
    )
    data.splits["dev"] = data.splits["reward"]  # keep the per-epoch evaluation short
    runtime = make_runtime("cpu")
    before = evaluate(model, data, "train", runtime)["loss"]
    config = FinetuneConfig(epochs=3, batch_size=8, learning_rate=1e-4, warmup_ratio=0.0, seed=0)
    result = finetune(model, data, config, runtime, select_on="dev", progress=False)
    assert result.steps == 18
    after = evaluate(model, data, "train", runtime)["loss"]
    assert after < before - 0.01, (before, after)
