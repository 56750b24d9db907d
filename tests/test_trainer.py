"""The phase-wise trainer and the teacher-knowledge cache, on tiny models and the toy task."""

import numpy as np
import pytest
import torch

from kdenv.config import DataConfig, DistillConfig
from kdenv.engine.distillation import prepare_distillation
from kdenv.engine.knowledge import KnowledgeError
from kdenv.engine.models import student_from_teacher
from kdenv.engine.runtime import make_runtime
from kdenv.engine.teacher_cache import OnlineTeacher, TeacherCache
from kdenv.engine.trainer import StudentTrainer
from tests.conftest import tiny_bert, toy_task_data

ALL = ["ce", "logits", "hidden", "attention", "relation", "gradient", "gradient_cls"]
RUNTIME = make_runtime("cpu")


@pytest.fixture(scope="module")
def teacher():
    model = tiny_bert(layers=4, attn_implementation="eager", seed=1).eval()
    with torch.no_grad():
        model.classifier.weight.mul_(50)
    return model


@pytest.fixture(scope="module")
def data():
    return toy_task_data(n_train=48, n_eval=16)


def make_trainer(teacher, data, source=None, names=ALL, **config):
    torch.manual_seed(0)
    student = student_from_teacher(teacher, num_layers=2)
    source = source or OnlineTeacher(teacher, data.task, RUNTIME)
    return StudentTrainer(student, source, data, names, DistillConfig(**config), RUNTIME, 50, teacher.config)


def parameters(trainer):
    return [p.detach().clone() for p in trainer.student.parameters()]


def test_cached_and_online_teacher_give_the_same_losses(teacher, data, tmp_path):
    online = make_trainer(teacher, data)
    keys = set().union(*(m.teacher_keys() for m in online.knowledge.values()))
    batch = next(iter(online.stream))
    exact = TeacherCache.open(tmp_path / "fp32", teacher, data.task, data["train"], keys, RUNTIME, 0, dtype="float32", progress=False)
    compact = TeacherCache.open(tmp_path / "fp16", teacher, data.task, data["train"], keys, RUNTIME, 0, progress=False)
    reference = OnlineTeacher(teacher, data.task, RUNTIME).batch_outputs(batch, keys)
    for name, value in reference.items():
        torch.testing.assert_close(exact.batch_outputs(batch, {name})[name], value, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(compact.batch_outputs(batch, {name})[name], value, rtol=2e-2, atol=2e-3)
    weights = {name: 1.0 for name in ALL}
    from_online = make_trainer(teacher, data).run_phase(weights, 2).losses
    from_cache = make_trainer(teacher, data, source=exact).run_phase(weights, 2).losses
    for name in ALL:
        assert from_cache[name] == pytest.approx(from_online[name], rel=1e-4, abs=1e-7), name


def test_cache_is_reused_and_a_stale_or_corrupt_one_rebuilt(teacher, data, tmp_path):
    keys = {"logits", "grad.embedding"}
    first = TeacherCache.open(tmp_path / "c", teacher, data.task, data["train"], keys, RUNTIME, 0, progress=False)
    assert first.info.rebuilt and first.info.reason == "missing"
    again = TeacherCache.open(tmp_path / "c", teacher, data.task, data["train"], keys, RUNTIME, 0, progress=False)
    assert not again.info.rebuilt
    other_teacher = tiny_bert(layers=4, attn_implementation="eager", seed=2)
    stale = TeacherCache.open(tmp_path / "c", other_teacher, data.task, data["train"], keys, RUNTIME, 0, progress=False)
    assert stale.info.reason.startswith("stale")
    with open(tmp_path / "c" / "grad.embedding.npy", "r+b") as handle:
        handle.seek(-8, 2)
        handle.write(b"\x00\x01\x02\x03\x04\x05\x06\x07")
    corrupt = TeacherCache.open(tmp_path / "c", other_teacher, data.task, data["train"], keys, RUNTIME, 0, progress=False)
    assert corrupt.info.reason == "corrupt file grad.embedding.npy"
    mapped = TeacherCache.open(tmp_path / "c", other_teacher, data.task, data["train"], keys, RUNTIME, 0,
                               memory_budget_bytes=1, progress=False)
    assert mapped.info.memory_mapped and isinstance(mapped.arrays["grad.embedding"], np.memmap)
    # Stored without padding: one row per real token.
    assert mapped.arrays["grad.embedding"].shape == (int(data["train"].lengths.sum()), 32)
    assert mapped.arrays["grad.embedding"].dtype == np.float16


def test_splits_capped_differently_keep_their_own_teacher_caches(tiny_teacher, glue_dir, private_runs_dir):
    def reward_cache(cap):
        data_config = DataConfig(task="wnli", data_dir=str(glue_dir), max_train_examples=32, max_reward_examples=cap)
        return prepare_distillation(data_config, DistillConfig(), ["logits"], RUNTIME, progress=False).cache_reports["reward"]

    assert reward_cache(16) == "missing"
    assert reward_cache(24) == "missing"  # its own folder, not a rebuild of the 16-example cache
    assert reward_cache(16) == "valid"
    folders = [path.name for path in (private_runs_dir / "cache" / "teacher_knowledge" / "wnli").iterdir()]
    assert len([name for name in folders if name.startswith("reward-")]) == 2


def test_a_run_start_hashes_the_teacher_weights_once(tiny_teacher, glue_dir, monkeypatch):
    """load_teacher checks the weights against their recorded fingerprint and hands it on: the
    caches and the run record use it instead of hashing every tensor again."""
    import kdenv.engine.teacher as teacher_module
    from kdenv.engine.teacher_cache import model_fingerprint

    calls = []

    def counted(model):
        calls.append(1)
        return model_fingerprint(model)

    import kdenv.engine.distillation as distillation_module
    import kdenv.engine.teacher_cache as cache_module

    for module in (teacher_module, distillation_module, cache_module):
        monkeypatch.setattr(module, "model_fingerprint", counted, raising=False)
    data_config = DataConfig(task="wnli", data_dir=str(glue_dir), max_train_examples=32, max_reward_examples=16)
    setup = prepare_distillation(data_config, DistillConfig(), ["logits"], RUNTIME, progress=False)
    assert len(calls) == 1
    assert setup.teacher_fingerprint == model_fingerprint(setup.teacher) == setup.teacher_metadata["fingerprint"]


def test_snapshot_restore_repeats_training_exactly(teacher, data):
    trainer = make_trainer(teacher, data)
    weights = {"ce": 0.5, "logits": 1.0, "gradient": 1.0}
    trainer.run_phase(weights, 2)
    snapshot = trainer.snapshot()
    trainer.run_phase(weights, 3)
    first = parameters(trainer)
    trainer.restore(snapshot)
    trainer.run_phase(weights, 3)
    second = parameters(trainer)
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    assert not all(torch.equal(a, b) for a, b in zip(first, [p for p in snapshot.state["student"].values()]))


def test_same_seed_same_result(teacher, data):
    runs = []
    for _ in range(2):
        runs.append(make_trainer(teacher, data, seed=3))
        runs[-1].run_phase({"ce": 1.0, "hidden": 1.0}, 3)
    assert all(torch.equal(a, b) for a, b in zip(parameters(runs[0]), parameters(runs[1])))


def test_zero_weight_types_are_never_computed(teacher, data):
    trainer = make_trainer(teacher, data)
    asked = []
    source = trainer.teacher_source

    class Recording:
        def batch_outputs(self, batch, keys):
            asked.append(set(keys))
            return source.batch_outputs(batch, keys)

    trainer.teacher_source = Recording()
    for name in ("gradient", "attention", "gradient_cls"):
        trainer.knowledge[name].forward = lambda step, name=name: pytest.fail(f"{name} computed at weight 0")
    stats = trainer.run_phase({"ce": 1.0, "logits": 1.0, "gradient": 0.0, "attention": 0.0}, 2)
    assert stats.status == "ok" and set(stats.losses) == {"ce", "logits"}
    assert asked == [{"logits"}, {"logits"}]
    assert trainer.compute_calls["gradient"] == 0 and trainer.compute_calls["ce"] == 2


def test_gradient_knowledge_alone_trains_the_encoder_through_double_backward(teacher, data):
    trainer = make_trainer(teacher, data)
    before = {n: p.detach().clone() for n, p in trainer.student.named_parameters()}
    stats = trainer.run_phase({"gradient": 1.0}, 2)
    assert stats.status == "ok" and stats.grad_norms["gradient"] > 0
    changed = {n for n, p in trainer.student.named_parameters() if not torch.equal(p, before[n])}
    assert any(".encoder.layer.0." in n for n in changed)
    assert not any("embeddings" in n for n in changed)  # frozen, as in GKD


def test_phase_statistics_and_evaluation(teacher, data):
    trainer = make_trainer(teacher, data, eval_batch_size=5)
    trainer.eval_teacher_logits = {"dev": np.zeros((16, 2), np.float32)}
    stats = trainer.run_phase({"ce": 1.0, "relation": 0.5}, 3)
    assert stats.updates == 3 and trainer.updates_done == 3
    assert set(stats.grad_norms) == {"ce", "relation"} and stats.learning_rate > 0
    assert stats.normalized_losses["ce"] == pytest.approx(1.0, rel=0.3)
    result = trainer.evaluate("dev")
    assert {"accuracy", "loss", "agreement"} <= set(result)


def test_all_zero_weights_skip_learning_but_advance_the_schedule(teacher, data):
    trainer = make_trainer(teacher, data)
    before = parameters(trainer)
    stats = trainer.run_phase({"ce": 0.0}, 2)
    assert stats.updates == 2 and all(torch.equal(a, b) for a, b in zip(before, parameters(trainer)))


def test_bad_weights_and_setups_are_refused(teacher, data):
    trainer = make_trainer(teacher, data, names=["ce", "logits"])
    with pytest.raises(KnowledgeError, match="'hidden' is not available"):
        trainer.run_phase({"hidden": 1.0}, 1)
    with pytest.raises(KnowledgeError, match="finite number >= 0"):
        trainer.run_phase({"ce": -1.0}, 1)
    with pytest.raises(KnowledgeError, match="finite number >= 0"):
        trainer.run_phase({"ce": float("nan")}, 1)
    sdpa_teacher = tiny_bert(layers=4, seed=1)
    with pytest.raises(KnowledgeError, match="attn_implementation='eager'"):
        make_trainer(sdpa_teacher, data, names=["attention"])
    with pytest.raises(KnowledgeError, match="out of range"):
        make_trainer(teacher, data, names=["hidden"], layer_map=[[1, 9]])


def test_non_finite_loss_stops_the_phase_and_restores_the_student(teacher, data):
    trainer = make_trainer(teacher, data)
    trainer.run_phase({"ce": 1.0}, 1)
    before = parameters(trainer)
    calls = {"n": 0}
    original = trainer.knowledge["logits"].forward

    def poisoned(step):
        calls["n"] += 1
        loss = original(step)
        return loss * float("nan") if calls["n"] == 2 else loss

    trainer.knowledge["logits"].forward = poisoned
    stats = trainer.run_phase({"ce": 1.0, "logits": 1.0}, 4)
    assert stats.status == "non_finite" and "logits loss is nan at update 1" in stats.message
    assert stats.updates == 1
    assert all(torch.equal(a, b) for a, b in zip(before, parameters(trainer)))
    assert trainer.updates_done == 1  # restored to the phase start


def test_gradient_knowledge_works_with_sdpa_attention(data):
    """Fused SDPA kernels lack double backward; the student's gradient pass must avoid them."""
    sdpa_teacher = tiny_bert(layers=4, seed=1).eval()
    assert sdpa_teacher.config._attn_implementation == "sdpa"
    trainer = make_trainer(sdpa_teacher, data, names=["gradient", "gradient_cls"])
    stats = trainer.run_phase({"gradient": 1.0, "gradient_cls": 1.0}, 2)
    assert stats.status == "ok" and stats.grad_norms["gradient"] > 0


def test_schedule_spans_the_updates_it_was_built_for(teacher, data):
    student = student_from_teacher(teacher, num_layers=2)
    trainer = StudentTrainer(student, OnlineTeacher(teacher, data.task, RUNTIME), data, ["ce"],
                             DistillConfig(learning_rate=1e-3, warmup_ratio=0.5), RUNTIME, 4, teacher.config)
    rates = []
    for _ in range(4):
        rates.append(trainer.learning_rate)
        trainer.run_phase({"ce": 1.0}, 1)
    assert rates == pytest.approx([5e-4, 1e-3, 1e-3, 5e-4])
    assert trainer.learning_rate == 0.0


def test_trainer_uses_the_knowledge_modules_it_is_given(teacher, data):
    """Assembly builds the knowledge modules once; the trainer takes them as they are."""
    from kdenv.engine.knowledge import build_knowledge_modules

    student = student_from_teacher(teacher, num_layers=2)
    modules = build_knowledge_modules(["ce", "hidden"], DistillConfig(), data.task, student, teacher.config)
    trainer = StudentTrainer(student, OnlineTeacher(teacher, data.task, RUNTIME), data, modules, DistillConfig(),
                             RUNTIME, 4)
    assert trainer.knowledge["hidden"] is modules["hidden"]
    with pytest.raises(ValueError, match="teacher_config"):
        StudentTrainer(student, OnlineTeacher(teacher, data.task, RUNTIME), data, ["ce"], DistillConfig(), RUNTIME, 4)


def test_fp16_style_loss_scale_overflows_skip_the_update_instead_of_stopping_the_phase(teacher, data):
    """fp16 loss scaling starts high and searches down: an overflowing update is skipped and the
    scale lowered (GradScaler's contract), not taken as a diverged student. Emulated on the CPU
    with a scale so large that the first scaled gradients are inf."""
    from kdenv.engine.runtime import Runtime

    class HugeScale(Runtime):
        def grad_scaler(self):
            return torch.amp.GradScaler("cpu", init_scale=2.0 ** 127, enabled=True)

    torch.manual_seed(0)
    trainer = StudentTrainer(student_from_teacher(teacher, num_layers=2), OnlineTeacher(teacher, data.task, RUNTIME), data,
                             ["ce", "logits"], DistillConfig(), HugeScale(torch.device("cpu"), "fp32"), 50, teacher.config)
    before = parameters(trainer)
    stats = trainer.run_phase({"ce": 1.0, "logits": 1.0}, 12)
    assert stats.status == "ok" and stats.updates == 12, stats.message
    assert 1 <= stats.scaler_skips < 12 and trainer.scaler.get_scale() < 2.0 ** 127
    assert np.isfinite(stats.grad_norm) and stats.grad_norm > 0
    assert any(not torch.equal(a, b) for a, b in zip(before, parameters(trainer)))
    assert all(torch.isfinite(p).all() for p in trainer.student.parameters())
