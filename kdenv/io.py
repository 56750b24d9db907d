"""Atomic writes: nothing under runs/ is ever left half-written.

Temporaries are named ``.<name>.<pid>.<random>.tmp`` beside their target. A process killed by
SIGKILL cannot remove its own, so the next write to the same target removes those whose process is
gone."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

# Failures of the disk rather than of the program: a full disk or quota, a file too large, a
# read-only or failing device. Reported in one line naming the file, never as a traceback.
DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EIO}


# A folder a program names by the time it started (runs/<task>/<algo>_<time>/, runs/eval/<task>/<time>/):
# the same command run again would start a new one.
_TIMED_FOLDER = re.compile(r"(^|_)\d{8}-\d{6}$")


def disk_error(error: OSError, path: str | os.PathLike) -> OSError:
    """``error`` restated with the file it hit and the way on. Inside a folder named by the time its
    run started, the way on names that folder (--output-dir): the same command alone would start a
    new one and leave the finished work behind."""
    timed = next((parent for parent in [Path(path), *Path(path).parents] if _TIMED_FOLDER.search(parent.name)), None)
    again = (f"rerun the same command with --output-dir {timed} (finished work there is kept)" if timed is not None
             else "rerun the same command (finished work is kept)")
    return OSError(error.errno, f"cannot write {path} ({error.strerror or error}); free space or choose another "
                                f"folder, then {again}")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temporaries(path: Path) -> list[Path]:
    """Removes the temporaries of ``path`` left by processes that no longer run; returns them."""
    pattern = re.compile(rf"^\.{re.escape(path.name)}\.(\d+)\.[^.]+\.tmp$")
    removed = []
    if not path.parent.is_dir():
        return removed
    for sibling in path.parent.iterdir():
        match = pattern.match(sibling.name)
        if match and int(match.group(1)) != os.getpid() and not _process_alive(int(match.group(1))):
            if sibling.is_dir():
                shutil.rmtree(sibling, ignore_errors=True)
            else:
                with contextlib.suppress(FileNotFoundError):
                    sibling.unlink()
            removed.append(sibling)
    return removed


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes, read in blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def _prefix(path: Path) -> str:
    return f".{path.name}.{os.getpid()}."


def check_writable(directory: str | os.PathLike) -> None:
    """Fails at once, with the fix, when outputs cannot be written under ``directory`` (checked on
    the nearest folder that exists, with a real temporary file)."""
    directory = Path(directory)
    existing = directory
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    try:
        if not existing.is_dir():
            raise NotADirectoryError(f"{existing} is a file")
        with tempfile.NamedTemporaryFile(dir=existing, prefix=".kdenv-write-check."):
            pass
    except OSError as error:
        raise OSError(f"cannot write outputs under {directory} ({error.strerror or error}); choose another folder "
                      f"(--output-dir, or $KDENV_RUNS_DIR) or make this one writable") from None


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w", **open_kwargs) -> Iterator:
    """Opens a temporary file beside ``path``; renames it over ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    fd, tmp_name = tempfile.mkstemp(prefix=_prefix(path), suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode, **open_kwargs) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp_name, 0o666 & ~_umask())  # mkstemp makes 0600 files; use normal permissions
        os.replace(tmp_name, path)
    except OSError as error:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        if error.errno in DISK_ERRNOS and error.filename is None:  # a write of this file failed: say which
            raise disk_error(error, path) from None
        raise
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise


def write_all(files: dict[Path, bytes]) -> None:
    """Writes a set of outputs all or nothing: every file to a temporary beside it first (where a
    full disk fails, leaving the old set whole), then each renamed over its target."""
    temporaries: list[tuple[str, Path]] = []
    try:
        for path, data in files.items():
            path = Path(path)
            path.parent.mkdir(parents=True, exist_ok=True)
            remove_stale_temporaries(path)
            fd, name = tempfile.mkstemp(prefix=_prefix(path), suffix=".tmp", dir=path.parent)
            temporaries.append((name, path))
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.chmod(name, 0o666 & ~_umask())
    except BaseException as error:
        for name, _ in temporaries:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name)
        if isinstance(error, OSError) and error.errno in DISK_ERRNOS and error.filename is None:
            raise disk_error(error, temporaries[-1][1] if temporaries else "the outputs") from None
        raise
    for name, path in temporaries:
        os.replace(name, path)


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike) -> Iterator[Path]:
    """Yields a temporary directory beside ``path``; it replaces ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    tmp_dir = Path(tempfile.mkdtemp(prefix=_prefix(path), suffix=".tmp", dir=path.parent))
    os.chmod(tmp_dir, 0o777 & ~_umask())
    try:
        yield tmp_dir
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise
    old = None
    if path.exists():
        old = path.with_name(f".{path.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(path, old)
    os.replace(tmp_dir, path)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def record_checksum(record: dict) -> str:
    """The SHA-256 of a JSON record (keys sorted), as a checked record stores it."""
    return hashlib.sha256(json.dumps(record, sort_keys=True, default=str).encode()).hexdigest()


def write_checked_record(path: Path, record: dict) -> None:
    """Writes a work folder's record (a JSON mapping) atomically, with a checksum of itself."""
    with atomic_write(path) as handle:
        json.dump({**record, "sha256": record_checksum(record)}, handle, indent=2)


def read_checked_record(path: Path) -> tuple[dict | None, str | None]:
    """A record written by :func:`write_checked_record` and, where it is unusable, why: (record,
    None), (None, None) for no file, or (None, what is wrong: not JSON, not a mapping, a checksum
    that does not match). A record written before records carried a checksum is read as it is."""
    if not Path(path).is_file():
        return None, None
    try:
        recorded = json.loads(Path(path).read_text())
    except (ValueError, UnicodeDecodeError) as error:
        return None, f"not JSON: {error}"
    if not isinstance(recorded, dict):
        return None, f"a JSON {type(recorded).__name__}, not a record"
    checksum = recorded.pop("sha256", None)
    if checksum is not None and checksum != record_checksum(recorded):
        return None, "its checksum does not match its content (edited)"
    return recorded, None
