"""Command-line flags: the ones every script shares, and flags derived from the config dataclasses.

A config field's flag, type, default and help all come from the dataclass (``kdenv.config``), so a
script never copies flags into config fields by hand. Derived flags are absent from the parsed
namespace unless given, so that a config built from them keeps its own (or a recipe's) values for
everything the user did not set.
"""

from __future__ import annotations

import argparse
import dataclasses
import numbers
import sys
from collections.abc import Callable, Iterable
from typing import Any

from kdenv.config import ConfigError
from kdenv.errors import KdenvError


def add_common_arguments(add: Callable, progress_help: str = "hide progress bars", precision: bool = True) -> None:
    """--data-dir, --device, --precision and --no-progress, with the same meaning everywhere
    (``precision=False`` leaves --precision out, for a script that takes a list of precisions)."""
    add("--data-dir", default=None, help="local GLUE folder (download_glue_data.py layout); default $KDENV_GLUE_DIR, else the HF hub")
    add("--device", default="auto", help="'auto' (CUDA if present), 'cpu' or 'cuda[:N]'")
    if precision:
        add("--precision", default="auto", choices=("auto", "fp32", "bf16", "fp16"),
            help="'auto': bf16 (fp16 if unsupported) autocast on CUDA, fp32 on CPU")
    add("--no-progress", action="store_true", help=progress_help)


def _optional(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    def parse_or_none(text: str) -> Any:
        return None if text.strip().lower() in ("none", "") else parse(text)

    return parse_or_none


def _number(text: str) -> int | float:
    """A count (``250``) or a fraction (``0.1``)."""
    value = float(text)
    return int(value) if value.is_integer() and "." not in text and "e" not in text.lower() else value


def _name_list(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


_PARSERS: dict[str, Callable[[str], Any]] = {
    "int": int, "float": float, "str": str, "float | int": _number, "list[str]": _name_list,
}


def _parser_for(annotation: str) -> Callable[[str], Any]:
    optional = annotation.endswith(" | None")
    base = annotation.removesuffix(" | None")
    if base not in _PARSERS:
        raise TypeError(f"no command-line parser for a field of type {annotation!r}")
    return _optional(_PARSERS[base]) if optional else _PARSERS[base]


def _default_of(field: dataclasses.Field) -> Any:
    return field.default_factory() if field.default_factory is not dataclasses.MISSING else field.default


def _shown(value: Any) -> str:
    if isinstance(value, list):
        return ",".join(map(str, value))
    return "unset" if value is None else str(value)


def add_config_arguments(parser: argparse.ArgumentParser, cls: type, prefix: str, title: str,
                         only: Iterable[str] | None = None, rename: dict[str, str] | None = None,
                         defaults: dict[str, Any] | None = None) -> None:
    """Adds one flag per exposed field of ``cls`` (``--field-name``; ``rename`` maps a field to
    another flag name). ``defaults`` are the values shown in the help where a script's defaults
    differ from the dataclass's (e.g. a budget's)."""
    group = parser.add_argument_group(title)
    rename, defaults = rename or {}, defaults or {}
    chosen = None if only is None else set(only)
    for field in dataclasses.fields(cls):
        if not field.metadata.get("flag", False) or (chosen is not None and field.name not in chosen):
            continue
        flag = "--" + rename.get(field.name, field.name.replace("_", "-"))
        default = defaults.get(field.name, _default_of(field))
        shown = default if isinstance(default, str) and default.startswith("per --preset") else _shown(default)
        help_text = f"{field.metadata['help']} (default: {shown})"
        dest = f"{prefix}.{field.name}"
        if field.type == "bool":
            group.add_argument(flag, dest=dest, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,
                               help=help_text)
        else:
            metavar = field.name.upper() if field.type != "list[str]" else "A,B,..."
            group.add_argument(flag, dest=dest, type=_parser_for(field.type), default=argparse.SUPPRESS,
                               metavar=metavar, help=help_text)


def given_fields(args: argparse.Namespace, prefix: str) -> dict[str, Any]:
    """The fields of one config that were set on the command line."""
    start = prefix + "."
    return {key[len(start):]: value for key, value in vars(args).items() if key.startswith(start)}


def config_from_args(cls: type, args: argparse.Namespace, prefix: str, **base: Any) -> Any:
    """``cls(**base)`` with every flag given on the command line applied on top."""
    return cls(**{**base, **given_fields(args, prefix)})


# What a program reports as one ``error:`` line where it checks its inputs: kdenv's own errors, and
# the ValueError / OSError of what it was handed (a file that is missing, a number out of range).
CLEAR_ERRORS = (KdenvError, ValueError, OSError)


def fail(error: Exception | str, code: int = 2) -> int:
    """Prints a clear one-line error (no traceback) and returns the exit code."""
    print(f"error: {error}", file=sys.stderr)
    return code


def parse_seeds(text, flag: str = "--seeds") -> list[int]:
    """A seed list as every script and both environments take it: ``0-3``, ``0,2,5`` or both
    (``0-3,8``), or a list of integers; distinct whole numbers >= 0, in the order given. Anything
    else (a repeat, which would silently weight a draw; a fraction; a word) is refused naming
    ``flag`` and the syntax."""
    seeds: list[int] = []
    try:
        if isinstance(text, str):
            for part in filter(None, (p.strip() for p in text.split(","))):
                low, sep, high = part.partition("-")
                if sep and int(high) < int(low):
                    raise ValueError
                seeds.extend(range(int(low), int(high) + 1) if sep else [int(low)])
        else:
            for item in text:
                if isinstance(item, bool) or not isinstance(item, numbers.Integral):
                    raise ValueError
                seeds.append(int(item))
    except (TypeError, ValueError):
        seeds = []
    if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise ConfigError(f"{flag} {text!r}: give distinct whole numbers >= 0, e.g. 0-3, 0,2,5 or 0-3,8")
    return seeds


def add_seed_arguments(add: Callable, count: int, what: str, first_help: str) -> None:
    """``--seeds LIST`` (a seed list, as everywhere: ``0-3``, ``16-31``, ``0,2,5``), or
    ``--num-seeds N`` seeds from ``--first-seed``: the episode seeds of a program that plays on them."""
    add("--seeds", default=None, metavar="LIST",
        help=f"{what} as a list, e.g. 0-3, 16-31 or 0,2,5 (default: --num-seeds of them from --first-seed)")
    add("--num-seeds", type=int, default=count, metavar="N", help=f"how many {what}, from --first-seed (default {count})")
    add("--first-seed", type=int, default=None, help=first_help)


def chosen_seeds(args, first: int) -> list[int]:
    """The seeds ``add_seed_arguments``' flags name (``first``: the first seed when --first-seed is
    not given). A bare number after --seeds is the old spelling of a count: it still works, for
    one release, with a one-line deprecation message."""
    count = args.num_seeds  # args are read, never changed
    if args.seeds is not None:
        text = str(args.seeds).strip()
        if text.isdigit():
            print(f"warning: --seeds {text} as a count is deprecated (--seeds is a seed list everywhere); "
                  f"write --num-seeds {text}", file=sys.stderr)
            count = int(text)
        elif args.first_seed is not None:
            raise ConfigError("--seeds names the seeds itself; --first-seed goes with --num-seeds")
        else:
            return parse_seeds(text, "--seeds")
    if count < 1:
        raise ConfigError(f"--num-seeds must be >= 1, not {count}")
    start = first if args.first_seed is None else args.first_seed
    if start < 0:
        raise ConfigError(f"--first-seed {start}: episode seeds are whole numbers >= 0")
    return list(range(start, start + count))


def run_main(main: Callable[..., int]) -> Callable[..., int]:
    """Wraps a program's ``main``: any :class:`~kdenv.errors.KdenvError` it lets through (a bad
    flag, file, table or model), an unknown ``KDENV_NUMERICS`` and a failing disk (full,
    read-only, out of quota) end it with one ``error:`` line naming the problem and the way on,
    exit code 2, instead of a traceback; the program's finished work stays where a rerun of the
    same command finds it."""
    import functools

    from kdenv.io import DISK_ERRNOS, disk_error

    @functools.wraps(main)
    def guarded(*args, **kwargs) -> int:
        from kdenv import numerics

        try:
            numerics.requested_mode()  # a mistyped KDENV_NUMERICS stops here, before any work
        except ValueError as error:
            return fail(error)
        try:
            return main(*args, **kwargs)
        except KdenvError as error:
            return fail(error)
        except OSError as error:
            if error.errno not in DISK_ERRNOS:
                raise
            return fail(error if error.filename is None else disk_error(error, error.filename))

    return guarded
