"""Bounded tests on the real packaged all-MiniLM-L6-v2 and real RTE, fully offline."""

import pytest

from kdenv.config import DataConfig, FinetuneConfig
from kdenv.engine.data import load_task_data
from kdenv.engine.inference import evaluate
from kdenv.engine.models import load_classifier, load_tokenizer
from kdenv.engine.runtime import make_runtime, seed_everything
from kdenv.engine.tasks import get_task
from kdenv.engine.teacher import finetune

pytestmark = [pytest.mark.integration, pytest.mark.slow]


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


def test_a_few_gkd_updates_lower_the_gkd_loss_on_real_rte(glue_dir, all_cores):
    import torch

    from kdenv.config import DistillConfig
    from kdenv.engine.data import collate
    from kdenv.engine.knowledge import StepContext, StudentNeeds
    from kdenv.engine.models import student_from_teacher
    from kdenv.engine.recipes import RECIPES
    from kdenv.engine.teacher_cache import OnlineTeacher
    from kdenv.engine.trainer import StudentTrainer

    rte = get_task("rte")
    tokenizer = load_tokenizer("minilm")
    data = load_task_data(DataConfig(task="rte", data_dir=str(glue_dir), max_train_examples=32, max_reward_examples=16), tokenizer)
    runtime = make_runtime("cpu")
    teacher = load_classifier("minilm", rte).eval()
    weights = RECIPES["gkd"].weights
    config = DistillConfig(learning_rate=1e-4, warmup_ratio=0.0, normalize_losses=False, measure_type_grad_norms=False)
    trainer = StudentTrainer(student_from_teacher(teacher, num_layers=3), OnlineTeacher(teacher, rte, runtime), data,
                             list(weights), config, runtime, 8, teacher.config)
    batches = [collate(data["train"], list(range(i, i + 16)), data.pad_token_id) for i in (0, 16)]
    keys = set().union(*(trainer.knowledge[name].teacher_keys() for name in weights))

    def gkd_loss() -> float:
        trainer.student.eval()  # no dropout: the same number for the same weights
        total = 0.0
        for batch in batches:
            outputs = trainer.student(input_ids=batch["input_ids"], token_type_ids=batch["token_type_ids"],
                                      attention_mask=batch["attention_mask"])
            step = StepContext(rte, batch, trainer.student, outputs.logits, None, None,
                               trainer.teacher_source.batch_outputs(batch, keys),
                               gradient_needs=StudentNeeds(embedding_gradient=True))
            total += float(sum(w * trainer.knowledge[name](step) for name, w in weights.items()).detach())
        trainer.student.train()
        return total / len(batches)

    before = gkd_loss()
    stats = trainer.run_phase(weights, 6)
    after = gkd_loss()
    assert stats.status == "ok" and stats.losses["gradient"] > 0
    assert after < before - 0.01, (before, after)
    assert not torch.equal(trainer.student.bert.encoder.layer[0].attention.self.query.weight,
                           teacher.bert.encoder.layer[1].attention.self.query.weight)
