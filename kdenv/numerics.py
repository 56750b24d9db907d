"""Numerics that replay exactly on every machine of one replay class: what CPU kernels torch may
use, pinned to a common baseline before torch starts.

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

MKL honours a code branch such as AVX2 on Intel CPUs only: on an AMD CPU it runs ``AVX2,STRICT``
as ``AUTO,STRICT`` (its own dispatch, with fixed cache sizes and deterministic reductions), so the
same pins give other bits there (measured: three AdamW steps of the packaged model, AMD EPYC
without AVX-512). The branch MKL actually took is asked of MKL itself and recorded; with the CPU
vendor it makes a record's **replay class** (``replay_class``): records of one class are the same
bits. The one branch MKL runs identically on every x86-64 vendor, COMPATIBLE (SSE2), costs 2 to
2.8 times as much per training step here, so it is not the default (docs/numerics.md).
"""

from __future__ import annotations

import contextlib
import os
import platform
import sys
from typing import Any

from kdenv.errors import KdenvError

MODE_ENV = "KDENV_NUMERICS"
MODES = ("portable", "native")
PORTABLE_ENV = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_CBWR": "AVX2,STRICT"}

_torch_was_loaded_first: bool | None = None


def requested_mode() -> str:
    mode = os.environ.get(MODE_ENV, "portable").strip().lower() or "portable"
    if mode not in MODES:
        raise ValueError(f"{MODE_ENV}={mode!r}: choose one of {', '.join(MODES)} (or unset it: portable)")
    return mode


def apply() -> None:
    """Pins the kernels for the portable mode, if torch has not started yet (``import kdenv`` does
    this first thing). A variable the user set already is left as it is. An unknown mode pins
    nothing here (an import is no place to stop a program): every program's ``main`` refuses it
    with one ``error:`` line (``kdenv.cli.run_main``), and anything that asks for the mode raises."""
    global _torch_was_loaded_first
    if _torch_was_loaded_first is None:
        _torch_was_loaded_first = "torch" in sys.modules
    try:
        mode = requested_mode()
    except ValueError:
        return
    if mode == "portable" and not _torch_was_loaded_first:
        for name, value in PORTABLE_ENV.items():
            os.environ.setdefault(name, value)


def cpu_model() -> str:
    return _cpuinfo_field("model name") or platform.processor() or platform.machine()


# MKL's code-branch constants (mkl_cbwr.h): what ``mkl_cbwr_get(MKL_CBWR_BRANCH)`` answers.
MKL_BRANCHES = {1: "OFF", 2: "AUTO", 3: "COMPATIBLE", 4: "SSE2", 6: "SSSE3", 7: "SSE4_1", 8: "SSE4_2", 9: "AVX",
                10: "AVX2", 11: "AVX512_MIC", 12: "AVX512", 13: "AVX512_MIC_E1", 14: "AVX512_E1"}


def _cpuinfo_field(name: str) -> str | None:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith(name):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def cpu_vendor() -> str:
    """``GenuineIntel``, ``AuthenticAMD``, ... (MKL chooses its code paths by it)."""
    return _cpuinfo_field("vendor_id") or platform.machine()


def cpu_has_avx512() -> bool:
    return "avx512f" in (_cpuinfo_field("flags") or "").split()


def mkl_branch() -> str | None:
    """The code branch MKL runs in this process (it may differ from the one ``MKL_CBWR`` asked for:
    on a non-Intel CPU MKL runs every ISA branch but COMPATIBLE as AUTO), or None where torch's MKL
    cannot be asked."""
    import ctypes

    import torch

    try:
        lib = ctypes.CDLL(os.path.join(os.path.dirname(torch.__file__), "lib", "libtorch_cpu.so"))
        code = int(lib.mkl_serv_cbwr_get(1))  # MKL_CBWR_BRANCH
    except (OSError, AttributeError):
        return None
    return MKL_BRANCHES.get(code, f"code {code}")


def replay_class(record: dict[str, Any] | None) -> str | None:
    """What must agree, besides software, teacher and threads, for records computed in the portable
    mode to be the same bits: MKL's branch, and for MKL's own dispatch (AUTO) the CPU vendor and
    whether it has AVX-512. Records from before MKL's branch was recorded were all made on Intel
    CPUs, where MKL honoured the AVX2 pin. None for records not in the portable mode."""
    if not record or not record.get("portable"):
        return None
    branch = record.get("mkl_branch")
    if branch is None:  # recorded before the branch was: the pin, honoured on the Intel CPU it ran on
        intel = "intel" in str(record.get("cpu", "")).lower()
        branch = str(record.get("pins", {}).get("MKL_CBWR", "")).split(",")[0] if intel else "unknown"
    if branch != "AUTO":
        return f"MKL {branch}"
    vendor = record.get("cpu_vendor") or "unknown vendor"
    return f"MKL AUTO on {vendor}{' with AVX-512' if record.get('avx512') else ' without AVX-512'}"


def numerics_key(record: dict[str, Any] | None) -> str | None:
    """What must agree for records computed under two numerics records to be the same bits: the
    portable mode's replay class, or native numerics on one CPU model."""
    if not record:
        return None
    return f"portable ({replay_class(record)})" if record.get("portable") else f"native on {record.get('cpu')}"


_cache_numerics_override: str | dict[str, str] | None = None


def cache_numerics(device_type: str = "cpu", split: str | None = None) -> str:
    """The numerics the teacher-knowledge cache of ``split`` is computed in, part of its key: on the
    CPU this process's :func:`numerics_key` (teacher outputs computed in native and in portable
    numerics differ in their last bits, and a table's records depend on them), on CUDA the device
    type. Inside :func:`caches_computed_in` it is the numerics named there instead."""
    override = _cache_numerics_override
    if isinstance(override, dict):
        override = override.get(split or "")
    if device_type != "cpu" or override is None:
        return own_cache_numerics(device_type)
    return override


CACHE_SPLITS = ("reward", "dev", "train")


def cache_numerics_record(device_type: str = "cpu") -> str | dict[str, str]:
    """What a table records of the numerics its teacher caches are computed in: one key, or one per
    split where they differ (inside :func:`caches_computed_in` with a per-split mapping)."""
    keys = {split: cache_numerics(device_type, split) for split in CACHE_SPLITS}
    return keys["train"] if len(set(keys.values())) == 1 else keys


def own_cache_numerics(device_type: str = "cpu") -> str:
    """The numerics this process computes teacher outputs in (the only ones it may compute a cache in)."""
    return numerics_key(describe()) if device_type == "cpu" else device_type


@contextlib.contextmanager
def caches_computed_in(keys: str | dict[str, str]):
    """Within: teacher caches are those computed in the numerics ``keys`` names (one for every
    split, or one per split name: ``{"reward": ..., "dev": ..., "train": ...}``, a split left out
    in this process's own), computed by another process (for instance one with
    ``KDENV_NUMERICS=native``); this process reads them and never computes one in numerics not its own."""
    global _cache_numerics_override
    before, _cache_numerics_override = _cache_numerics_override, keys
    try:
        yield
    finally:
        _cache_numerics_override = before


def replay_where(record: dict[str, Any] | None) -> str:
    """In words: the machines on which records of this (portable) numerics record replay exactly."""
    klass = replay_class(record)
    if klass == "MKL AVX2":
        return "Intel x86-64 CPUs with AVX2 (MKL honours the AVX2 branch on Intel only)"
    if klass == "MKL COMPATIBLE":
        return "any x86-64 CPU (MKL's COMPATIBLE branch)"
    if klass and klass.startswith("MKL AUTO on "):
        return f"CPUs of the same kind ({klass.removeprefix('MKL AUTO on ')}: MKL dispatches by itself there)"
    return f"CPUs where MKL runs the same branch ({klass})"


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
        "cpu_vendor": cpu_vendor(),
        "avx512": cpu_has_avx512(),
        "mkl_branch": mkl_branch(),
        "torch": str(torch.__version__),
        "torch_threads": torch.get_num_threads(),
    }


class NumericsError(KdenvError, RuntimeError):
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
