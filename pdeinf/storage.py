"""Where pdeinf writes: folders probed for writing before long work, free space checked against
what a write needs, and a full disk turned into one line (`DiskFullError`) naming the folder and
the space needed instead of a traceback or a crash inside a file library."""
from __future__ import annotations

import errno
import shutil
import tempfile
from pathlib import Path

from pdeinf.errors import PdeinfError

#: OS error numbers that mean "no room to write": a full file system or an exhausted quota.
NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


class DiskFullError(PdeinfError):
    """A write needs more space than its folder's file system has left."""


def format_bytes(n: float) -> str:
    """`n` bytes as a short human-readable size (B, KiB, MiB, GiB)."""
    if abs(n) < 1024:
        return f"{n:.0f} B"
    for unit in ("KiB", "MiB", "GiB"):
        n /= 1024
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}"


def existing_ancestor(path: Path | str) -> Path:
    """`path` itself when it exists, else its nearest existing parent."""
    path = Path(path).absolute()
    return next((p for p in (path, *path.parents) if p.exists()), Path("/"))


def free_bytes(directory: Path | str) -> int:
    """Free bytes on the file system that holds `directory` (or its nearest existing parent)."""
    return shutil.disk_usage(existing_ancestor(directory)).free


def disk_full(directory: Path | str, needed: float | None) -> DiskFullError:
    """The one-line error for a write of `needed` bytes (None: unknown) into `directory`."""
    need = f"needs {format_bytes(needed)}" if needed else "needs more space"
    return DiskFullError(f"no space left in {Path(directory)}: the write {need}, "
                         f"{format_bytes(free_bytes(directory))} free; free some space or point "
                         "PDEINF_HOME at a larger disk, then rerun the same command (what was "
                         "already computed is kept)")


def is_no_space(err: BaseException) -> bool:
    """True for an OSError (or an error from a file library that wraps one, as its cause or
    context) caused by a full disk or an exhausted quota."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno in NO_SPACE:
            return True
        text = str(err).lower()
        if "no space left" in text or "disk quota exceeded" in text:
            return True
        err = err.__cause__ or err.__context__
    return False


def probe_writable(directory: Path | str) -> str | None:
    """None when a file can be created in `directory` (its nearest existing parent when it does
    not exist yet: nothing is created), else the reason it cannot."""
    anchor = existing_ancestor(directory)
    if not anchor.is_dir():
        return f"{anchor} is a file, not a folder"
    try:
        with tempfile.TemporaryFile(dir=anchor):
            pass
    except OSError as err:
        return f"cannot write to {anchor} ({err.strerror or err})"
    return None
