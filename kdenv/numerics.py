"""Numerics that replay on any x86-64 machine: what CPU kernels torch may use, pinned to a common
baseline before torch starts.

Bit-exact results (a teacher's fingerprint, a schedule table's records) depend on which kernels
ran. On a CPU with AVX-512, torch's own kernels (ATen), oneDNN and MKL each pick AVX-512 code
paths, and MKL takes other paths again on AMD than on Intel; the same command then gives other
bits on another machine. The **portable** mode (kdenv's default) pins all three to AVX2 with FMA,
which every x86-64 CPU of the last decade has:

    ATEN_CPU_CAPABILITY=avx2      torch's vectorised kernels
    ONEDNN_MAX_CPU_ISA=AVX2       oneDNN (convolutions, some matmuls, layer norms)
    MKL_CBWR=AVX2,STRICT          MKL's conditional numerical reproducibility (GEMMs)

Each of the three changes the weights after three AdamW steps of the packaged model on an AVX-512
Xeon (measured); together they give the bits ``tests/test_numerics.py`` pins. They are read once,
when torch initialises its kernels, so they must be in the environment before ``import torch``:
``import kdenv`` sets them (unless ``KDENV_NUMERICS=native``, or the variable is already set),
and a process that imported torch first is not in portable mode (``describe()`` says so, and tree
builds and teacher fine-tuning for tables refuse to start). The thread count matters too (the
order of reductions): tables record it and refuse mixing.
"""

from __future__ import annotations

import os
import platform
import sys
from typing import Any

MODE_ENV = "KDENV_NUMERICS"
MODES = ("portable", "native")
PORTABLE_ENV = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_CBWR": "AVX2,STRICT"}

_torch_was_loaded_first: bool | None = None


def requested_mode() -> str:
    mode = os.environ.get(MODE_ENV, "portable").strip().lower() or "portable"
    if mode not in MODES:
        raise ValueError(f"{MODE_ENV}={mode!r}: choose one of {', '.join(MODES)}")
    return mode


def apply() -> None:
    """Pins the kernels for the portable mode, if torch has not started yet (``import kdenv`` does
    this first thing). A variable the user set already is left as it is."""
    global _torch_was_loaded_first
    if _torch_was_loaded_first is None:
        _torch_was_loaded_first = "torch" in sys.modules
    if requested_mode() == "portable" and not _torch_was_loaded_first:
        for name, value in PORTABLE_ENV.items():
            os.environ.setdefault(name, value)


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def in_force() -> bool:
    """Whether this process computes in the portable mode: the pins were set before torch started
    and torch's kernels run at AVX2 (or below, on a CPU without it)."""
    import torch

    pinned = all(os.environ.get(name) == value for name, value in PORTABLE_ENV.items())
    return (pinned and not _torch_was_loaded_first and
            torch.backends.cpu.get_cpu_capability() in ("AVX2", "DEFAULT", "NO AVX"))


def describe() -> dict[str, Any]:
    """Where this process's numerics stand, for every record that must replay: the mode asked for
    and whether it is in force, the kernels' settings, the CPU, torch and its threads."""
    import torch

    return {
        "mode": requested_mode(),
        "portable": in_force(),
        "aten_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "pins": {name: os.environ.get(name) for name in PORTABLE_ENV},
        "cpu": cpu_model(),
        "torch": str(torch.__version__),
        "torch_threads": torch.get_num_threads(),
    }


class NumericsError(RuntimeError):
    """Work that must replay exactly was asked for in numerics that cannot promise it."""


def require_portable(what: str) -> None:
    """Refuses, with the fix, to start ``what`` (a tree build, a table teacher) unless the
    portable mode is in force or the user chose native numerics on purpose."""
    if requested_mode() == "native":
        return
    if not in_force():
        why = ("torch was imported before kdenv, so the kernel pins came too late" if _torch_was_loaded_first
               else f"the pins {PORTABLE_ENV} are not all set as kdenv sets them")
        raise NumericsError(f"{what} needs the portable numerics mode, and it is not in force here ({why}); run the "
                            f"kdenv command in a fresh process, or set {MODE_ENV}=native to build for this CPU only")
