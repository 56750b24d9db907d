"""The CUDA path: the same losses as on the CPU, the GKD double backward under bf16 autocast,
snapshots with the CUDA RNG, fp16 loss scaling and the environment, on tiny models.

Marked ``gpu``: without CUDA every test here is skipped with that reason (CI is CPU-only);
``pytest -m gpu`` runs them on a GPU machine. With ``KDENV_GPU_REPORT=path.json`` the measured
CPU/CUDA relative differences are written there, for the record.
"""

from __future__ import annotations

import copy
import json
import os

import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env as gym_check_env

from kdenv.config import DistillConfig
from kdenv.engine.models import student_from_teacher
from kdenv.engine.runtime import make_runtime
from kdenv.engine.teacher_cache import OnlineTeacher
from kdenv.engine.trainer import StudentTrainer
from tests.conftest import tiny_bert, toy_task_data
from tests.test_env import make_tiny_env

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (run `pytest -m gpu` on a GPU machine)"),
]

TYPES = ["ce", "logits", "hidden", "attention", "relation", "gradient", "gradient_cls"]
# bf16 keeps 8 significant bits: each rounding of a matmul operand is off by up to 2^-9 (about
# 2e-3) relative. Autocast rounds the operands of every linear layer (student and teacher), so a
# loss after a few layers carries a few such errors, and losses that compare two networks
# (hidden, attention, relation, gradient: a difference of nearby values, then squared) magnify
# them by the inverse of the relative gap between the networks. 5e-2 is ~25 roundings' worth for
# the first group and leaves room for that magnification in the second; a precision bug (a loss
# computed in bf16 end to end, a missing upcast before a reduction) is off by far more, and a
# wrong kernel or scaling by orders of magnitude.
BF16_RTOL = 5e-2
# fp32 on both devices: summation order alone. The first loss agrees to ~1e-6; the second comes
# after an AdamW step, whose g / sqrt(v) turns tiny differences in near-zero gradient entries into
# full-size parameter differences, so it gets 1e-3 (measured on an H100: 4e-4 for `logits`, whose
# KL of near-equal distributions is itself a cancellation).
FP32_RTOL = (1e-4, 1e-3)
REPORT: dict[str, dict[str, float]] = {}


@pytest.fixture(scope="module", autouse=True)
def write_report():
    yield
    path = os.environ.get("KDENV_GPU_REPORT")
    if path and REPORT:
        with open(path, "w") as handle:
            json.dump(REPORT, handle, indent=1, sort_keys=True)


@pytest.fixture(scope="module")
def teacher():
    """Dropout-free, so CPU and CUDA draw no random masks and differ only by arithmetic."""
    model = tiny_bert(layers=4, hidden=64, attn_implementation="eager", seed=1,
                      hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0).eval()
    with torch.no_grad():
        model.classifier.weight.mul_(50)  # confident soft labels: clearly non-zero KD losses
    return model


@pytest.fixture(scope="module")
def data():
    return toy_task_data(n_train=64, n_eval=16)


def trainer_on(runtime, teacher, data, names, seed=0, **config):
    teacher = copy.deepcopy(teacher)  # moving to a device is in place: each trainer gets its own
    torch.manual_seed(seed)
    student = student_from_teacher(teacher, num_layers=2)
    with torch.no_grad():  # a student clearly unlike its teacher, identically on both devices
        generator = torch.Generator().manual_seed(seed)
        for parameter in student.bert.encoder.parameters():
            parameter.add_(0.05 * torch.randn(parameter.shape, generator=generator))
    return StudentTrainer(student, OnlineTeacher(teacher, data.task, runtime), data, names,
                          DistillConfig(seed=seed, **config), runtime, 50, teacher.config)


def relative(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-12)


@pytest.mark.parametrize("name", TYPES)
def test_cuda_fp32_gives_the_cpu_losses_for_every_knowledge_type(name, teacher, data):
    """Two updates: the second loss also checks the first update's backward and optimiser step."""
    results = {}
    for key, device in (("cpu", "cpu"), ("cuda", "cuda")):
        trainer = trainer_on(make_runtime(device, "fp32"), teacher, data, [name])
        results[key] = [trainer.run_phase({name: 1.0}, 1).losses[name] for _ in range(2)]
    errors = [relative(c, r) for c, r in zip(results["cuda"], results["cpu"])]
    REPORT.setdefault("fp32_vs_cpu_first_update", {})[name] = errors[0]
    REPORT.setdefault("fp32_vs_cpu_second_update", {})[name] = errors[1]
    assert all(np.isfinite(results["cuda"])) and min(abs(v) for v in results["cpu"]) > 1e-6, results
    assert errors[0] < FP32_RTOL[0] and errors[1] < FP32_RTOL[1], (name, results)


@pytest.mark.parametrize("name", TYPES)
def test_cuda_bf16_losses_stay_within_bf16_rounding_of_cpu_fp32(name, teacher, data):
    reference = trainer_on(make_runtime("cpu", "fp32"), teacher, data, [name]).run_phase({name: 1.0}, 1).losses[name]
    bf16 = trainer_on(make_runtime("cuda", "bf16"), teacher, data, [name]).run_phase({name: 1.0}, 1).losses[name]
    REPORT.setdefault("bf16_vs_cpu_fp32", {})[name] = relative(bf16, reference)
    assert np.isfinite(bf16) and relative(bf16, reference) < BF16_RTOL, (name, bf16, reference)


@pytest.mark.parametrize("name", ["gradient", "gradient_cls"])
def test_gkd_double_backward_trains_the_student_under_bf16_autocast(name, teacher, data):
    """The input-gradient loss is differentiated again (create_graph) inside autocast: the
    student's encoder must receive finite gradients from it and move."""
    trainer = trainer_on(make_runtime("cuda", "bf16"), teacher, data, [name])
    before = [p.detach().clone() for p in trainer.student.bert.encoder.parameters()]
    stats = trainer.run_phase({name: 1.0}, 3)
    assert stats.status == "ok" and stats.updates == 3 and np.isfinite(stats.grad_norm) and stats.grad_norm > 0
    assert np.isfinite(stats.grad_norms[name]) and stats.grad_norms[name] > 0
    moved = [not torch.equal(a, b.detach()) for a, b in zip(before, trainer.student.bert.encoder.parameters())]
    assert all(p.is_cuda for p in trainer.student.parameters()) and sum(moved) >= len(moved) // 2


def test_fp16_with_loss_scaling_trains_every_type_together(teacher, data):
    trainer = trainer_on(make_runtime("cuda", "fp16"), teacher, data, TYPES)
    stats = trainer.run_phase({name: 1.0 for name in TYPES}, 24)
    REPORT["fp16_scaler_skips_of_24"] = {"skips": stats.scaler_skips, "scale": trainer.scaler.get_scale()}
    assert stats.status == "ok" and stats.updates == 24, stats.message
    assert stats.scaler_skips < 24 and np.isfinite(stats.grad_norm)  # at least one update stepped
    assert all(np.isfinite(v) for v in stats.losses.values()) and trainer.scaler.get_scale() > 0


def test_snapshot_restore_round_trips_on_cuda_including_its_rng(data):
    """With dropout on, the masks come from the CUDA generator: a restore must bring it back. The
    control run shows that a different CUDA RNG state does change the result."""
    model = tiny_bert(layers=4, hidden=64, seed=1).eval()
    names = ["ce", "logits", "hidden", "gradient"]
    weights = {name: 1.0 for name in names}
    trainer = trainer_on(make_runtime("cuda", "fp32"), model, data, names)
    trainer.run_phase(weights, 1)
    origin = trainer.snapshot()

    def phase():
        losses = trainer.run_phase(weights, 3).losses
        return np.array([losses[n] for n in names]), torch.cat([p.detach().flatten() for p in trainer.student.parameters()])

    first_losses, first_params = phase()
    torch.cuda.manual_seed_all(1234)  # disturb every generator before restoring
    torch.manual_seed(1234)
    trainer.restore(origin)
    again_losses, again_params = phase()
    trainer.restore(origin)
    torch.cuda.manual_seed_all(1234)  # control: same state except the CUDA generator
    other_losses, _ = phase()
    # Equal up to the order of floating-point atomics in CUDA backward kernels.
    np.testing.assert_allclose(again_losses, first_losses, rtol=1e-5)
    torch.testing.assert_close(again_params, first_params, rtol=1e-5, atol=1e-6)
    assert np.max(np.abs(other_losses - first_losses) / np.abs(first_losses)) > 1e-4
    assert trainer.updates_done == 1 + 3


def test_environment_steps_on_cuda_with_autocast():
    runtime = make_runtime("cuda")  # auto: bf16 where supported
    env = make_tiny_env(phases=3, updates=2, runtime=runtime)
    gym_check_env(env, skip_render_check=True)
    obs, _ = env.reset(seed=0)
    rewards, terminated = [], False
    for action in ([1, 0, 1], [0, 1, 1], [1, 1, 1]):
        obs, reward, terminated, truncated, info = env.step(np.array(action, np.int8))
        assert env.observation_space.contains(obs) and not truncated
        assert all(np.isfinite(v) for v in info["losses"].values())
        rewards.append(reward)
    assert terminated and np.all(np.isfinite(rewards))
    assert runtime.precision in ("bf16", "fp16") and next(env.trainer.student.parameters()).is_cuda


def test_agents_stay_on_the_cpu_on_a_cuda_machine_unless_told():
    from kdenv.decision.algorithms import get_algorithm

    env = make_tiny_env(phases=2, updates=1, runtime=make_runtime("cuda"))
    a2c = get_algorithm("a2c")
    assert a2c.build("MlpPolicy", env, seed=0).device.type == "cpu"  # SB3's "auto" would pick CUDA
    assert a2c.build("MlpPolicy", env, seed=0, device="cuda").device.type == "cuda"
