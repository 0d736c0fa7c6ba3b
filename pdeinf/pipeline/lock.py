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
from collections.abc import Iterator
from pathlib import Path

from pdeinf.errors import InputError
from pdeinf.storage import probe_writable

LOCK_NAME = ".pdeinf.lock"


def check_writable(directory: Path | str, what: str) -> Path:
    """InputError unless `directory` is (or can be made) a folder this process can write."""
    directory = Path(directory)
    if why := probe_writable(directory):
        raise InputError(f"{what}: {why}")
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise InputError(f"{what}: cannot write to {directory} ({err.strerror or err})") from None
    return directory


@contextlib.contextmanager
def results_lock(root: Path | str) -> Iterator[Path]:
    """Hold the results root's lock for the duration of the block (see the module doc). Waiting
    is always said on stderr (even without progress bars): a silent wait looks like a hang."""
    root = check_writable(root, "PDEINF_HOME/results")
    path = root / LOCK_NAME
    with open(path, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = "unknown"
            with contextlib.suppress(OSError):
                holder = path.read_text().strip() or holder
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
