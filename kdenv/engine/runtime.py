"""Device, precision and seeding: decided here and nowhere else."""

from __future__ import annotations

import contextlib
import os
import random
from dataclasses import dataclass

import numpy as np
import torch

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


@dataclass(frozen=True)
class Runtime:
    """Where and in what precision a model runs."""

    device: torch.device
    precision: str  # fp32, bf16 or fp16

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision)

    def autocast(self) -> contextlib.AbstractContextManager:
        """Mixed-precision context for forward passes; a no-op in fp32."""
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)

    def grad_scaler(self) -> torch.amp.GradScaler:
        """Loss scaling is needed for fp16 only; disabled otherwise."""
        return torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")

    def describe(self) -> str:
        name = torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else "CPU"
        return f"{self.device} ({name}), {self.precision}"


def make_runtime(device: str = "auto", precision: str = "auto") -> Runtime:
    """Resolves ``auto``: CUDA with bf16 (fp16 where bf16 is unsupported) when present, else CPU fp32.

    On CPU fp32 is the default because bf16 measured slower than fp32 on the target machine.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of {PRECISIONS}")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available; use --device cpu")
    if precision == "auto":
        if resolved.type == "cuda":
            precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        else:
            precision = "fp32"
    if precision == "fp16" and resolved.type != "cuda":
        raise ValueError("fp16 mixed precision needs CUDA; use --precision fp32 (or bf16) on CPU")
    if resolved.type == "cuda":
        # SDPA prefers cuDNN's attention on Hopper for bf16/fp16, and cuDNN builds a plan for every
        # new input shape. Batches here are padded to their own longest example, so shapes rarely
        # repeat: measured on an H100 (bench/gpu_throughput.py --cudnn-attention), a bare bf16 loop's
        # first pass over new shapes ran 7x slower with it. Flash and memory-efficient attention
        # have no per-shape cost.
        torch.backends.cuda.enable_cudnn_sdp(False)
    return Runtime(resolved, precision)


def _one_thread_after_fork() -> None:
    # A child forked while torch's OpenMP threads are live hangs in its first parallel kernel (GNU
    # OpenMP's pool does not survive fork). One thread runs every kernel inline, so forked workers
    # (gymnasium.make_vec(..., vectorization_mode="async"), SubprocVecEnv with fork) work as called.
    torch.set_num_threads(1)


os.register_at_fork(after_in_child=_one_thread_after_fork)


def seed_everything(seed: int) -> None:
    """Seeds Python, NumPy and torch (all devices) and asks torch for deterministic CPU kernels."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    os.environ.setdefault("PYTHONHASHSEED", str(seed))


def deterministic_cuda() -> None:
    """Asks CUDA for deterministic kernels (cuBLAS with a fixed workspace, no atomics where torch
    has an alternative), as schedule trees need: their records must repeat when recomputed. Ops
    without a deterministic CUDA kernel warn instead of failing. Call before the first CUDA matmul."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)


def quiet_transformers() -> None:
    """Hides transformers' per-load reports and weight-loading bars in command-line tools."""
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
