"""Stopping a run cleanly. SIGTERM (a batch scheduler's time limit or preemption) and SIGINT
raise `Interrupted` in the main thread; further signals are ignored during cleanup.
`guarded_run(root)` frames a pipeline run: the results root's lock, stale temporaries removed,
and on the way out every child process stopped and waited for and their temporaries removed,
all before the lock is released. The command then exits with 128 + the signal number."""
from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

from pdeinf.atomic import process_alive, remove_stale_temporaries

#: Signals that stop a run.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
#: How long SIGKILLed processes may take to go: only a process stuck in the kernel (a hung
#: filesystem) takes longer, and then the lock is released after this wait anyway.
KILL_WAIT_SECONDS = 30.0


class Interrupted(KeyboardInterrupt):
    """A run stopped by signal `signum`."""

    def __init__(self, signum: int):
        self.signum = int(signum)
        super().__init__(f"stopped by {signal.Signals(self.signum).name}")


def descendants(pid: int | None = None) -> list[int]:
    """Process ids of every descendant of `pid` (default: this process), children first
    (psutil, else /proc on Linux)."""
    pid = os.getpid() if pid is None else pid
    try:
        import psutil
    except ImportError:
        found = [pid]
        for parent in found:  # breadth first: the list grows while it is read
            for task in Path(f"/proc/{parent}/task").glob("*/children"):
                with contextlib.suppress(OSError):
                    found += [int(c) for c in task.read_text().split()]
        return found[1:]
    try:
        return [p.pid for p in psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def _alive(pid: int) -> bool:
    """Whether `pid` still runs: a child of ours is reaped, any other is asked of the kernel."""
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:  # not our child (a grandchild)
        return process_alive(pid)
    return done == 0


def _signal(pids: Iterable[int], signum: int, wait: float) -> list[int]:
    """Send `signum` to each of `pids`; those still alive after up to `wait` seconds."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signum)
    deadline = time.monotonic() + wait
    while (left := [p for p in pids if _alive(p)]) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


def stop_processes(pids: Iterable[int], *, grace: float = 3.0) -> None:
    """SIGTERM to each of `pids`, wait up to `grace` seconds, SIGKILL what is left, and wait
    up to `KILL_WAIT_SECONDS` for those (on a loaded machine a killed process can take seconds
    to be gone; children of this process are reaped)."""
    _signal(_signal(list(pids), signal.SIGTERM, grace), signal.SIGKILL, KILL_WAIT_SECONDS)


def stop_children() -> None:
    """Stop every descendant of this process (`stop_processes`) but multiprocessing's resource
    tracker, which ends by itself with this process and warns when stopped early."""
    from multiprocessing import resource_tracker

    tracker = getattr(resource_tracker._resource_tracker, "_pid", None)
    stop_processes([p for p in descendants() if p != tracker])


@contextlib.contextmanager
def guarded_run(root: Path | str) -> Iterator[Path]:
    """The frame of one pipeline run (see the module doc). In the main thread, SIGINT and SIGTERM
    stop every child process and raise `Interrupted` once; later ones are ignored until the block
    is left, so cleanup is never cut short."""
    from pdeinf.pipeline.lock import results_lock

    previous = {}
    if threading.current_thread() is threading.main_thread():
        raised = []

        def handler(signum, frame):
            if raised:
                return
            raised.append(signum)
            stop_children()
            raise Interrupted(signum)

        previous = {s: signal.signal(s, handler) for s in STOP_SIGNALS}
    try:
        with results_lock(root) as lock:
            remove_stale_temporaries(root, recursive=True)
            try:
                yield lock
            except KeyboardInterrupt:
                stop_children()
                raise
            finally:
                remove_stale_temporaries(root, recursive=True)
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
