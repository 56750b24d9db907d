"""Command-line flags that every script shares, declared once."""

from __future__ import annotations

from collections.abc import Callable


def add_common_arguments(add: Callable, progress_help: str = "hide progress bars") -> None:
    """--data-dir, --device, --precision and --no-progress, with the same meaning everywhere."""
    add("--data-dir", default=None, help="local GLUE folder (download_glue_data.py layout); default $KDENV_GLUE_DIR, else the HF hub")
    add("--device", default="auto", help="'auto' (CUDA if present), 'cpu' or 'cuda[:N]'")
    add("--precision", default="auto", choices=("auto", "fp32", "bf16", "fp16"),
        help="'auto': bf16 (fp16 if unsupported) autocast on CUDA, fp32 on CPU")
    add("--no-progress", action="store_true", help=progress_help)
