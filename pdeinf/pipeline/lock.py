"""One pdeinf run per results root at a time, and output folders checked before long work.

`results_lock(root)` takes an exclusive `fcntl` lock on `<root>/.pdeinf.lock`, released by the
kernel when the process dies (a killed run never leaves a stale lock). A second run says so in
one line naming the holder, waits, and then finds the first run's results cached.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from pdeinf.errors import InputError

LOCK_NAME = ".pdeinf.lock"


def check_writable(directory: Path | str, what: str) -> Path:
    """InputError unless `directory` is (or can be made) a folder this process can write."""
    directory = Path(directory)
    parent = next((p for p in (directory, *directory.parents) if p.exists()), None)
    if parent is not None and not parent.is_dir():
        raise InputError(f"{what}: {parent} is a file, not a folder")
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as err:
        raise InputError(f"{what}: cannot write to {directory} ({err.strerror or err})") from None
    return directory


@contextlib.contextmanager
def results_lock(root: Path | str) -> Iterator[Path]:
    """Hold the results root's lock for the duration of the block (see the module doc). Waiting
    is always said on stderr (even without progress bars): a silent wait looks like a hang."""
    root = check_writable(root, "results folder")
    path = root / LOCK_NAME
    with open(path, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                holder = path.read_text().strip() or "unknown"
            except OSError:
                holder = "unknown"
            print(f"[pdeinf] another pdeinf run holds {path} (pid {holder}); waiting for it to "
                  "finish", file=sys.stderr, flush=True)
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            fh.seek(0)
            fh.truncate()
            fh.write(str(os.getpid()))
            fh.flush()
            yield path
        finally:
            with contextlib.suppress(OSError):
                fcntl.flock(fh, fcntl.LOCK_UN)
