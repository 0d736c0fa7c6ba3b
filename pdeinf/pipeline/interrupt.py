"""Stopping a run cleanly: SIGTERM (what a batch scheduler sends at a time limit or on
preemption) and SIGINT raise `Interrupted` in the main thread; further signals are ignored while
the run cleans up. `guarded_run(root)` is the frame of a pipeline run: the results root's lock,
temporaries of dead processes removed at the start, and on the way out every child process
(stage workers, notebook kernels and their children) stopped and waited for, then their
temporary files removed, all before the lock is released. The command then prints one line and
exits with 128 + the signal number (143 for SIGTERM, 130 for SIGINT)."""
from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

from pdeinf.atomic import remove_stale_temporaries

#: Signals that stop a run.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """A run stopped by a signal; `signum` is the signal, `exit_status` 128 + signum."""

    def __init__(self, signum: int):
        self.signum = int(signum)
        super().__init__(f"stopped by {signal.Signals(self.signum).name}")

    @property
    def exit_status(self) -> int:
        return 128 + self.signum


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """Within the block SIGINT and SIGTERM stop every child process (`stop_children`: stage
    workers, notebook kernels) and raise `Interrupted` once; later ones are ignored until the
    block is left (so cleanup is never cut short). Outside the main thread: no-op."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    raised = []

    def handler(signum, frame):
        if raised:
            return
        raised.append(signum)
        stop_children()
        raise Interrupted(signum)

    previous = {s: signal.signal(s, handler) for s in STOP_SIGNALS}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def descendants(pid: int | None = None) -> list[int]:
    """Process ids of every descendant of `pid` (default: this process), children first."""
    pid = os.getpid() if pid is None else pid
    try:
        import psutil
    except ImportError:
        return _proc_descendants(pid)
    try:
        return [p.pid for p in psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def _proc_descendants(pid: int) -> list[int]:
    """`descendants` from /proc (Linux) when psutil is not installed."""
    out, frontier = [], [pid]
    while frontier:
        parent = frontier.pop(0)
        found = []
        for task in Path(f"/proc/{parent}/task").glob("*/children"):
            with contextlib.suppress(OSError):
                found += [int(c) for c in task.read_text().split()]
        out += found
        frontier += found
    return out


def _alive(pid: int) -> bool:
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:  # not our child (a grandchild): ask the kernel
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return not _zombie(pid)
    return done == 0


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return False


#: How long SIGKILLed processes may take to go: only a process stuck in the kernel (a hung
#: filesystem) takes longer, and then the lock is released after this wait anyway.
KILL_WAIT_SECONDS = 30.0


def stop_processes(pids: Iterable[int], *, grace: float = 3.0) -> None:
    """SIGTERM to each of `pids`, wait up to `grace` seconds, SIGKILL what is left, and wait
    up to `KILL_WAIT_SECONDS` for those (on a loaded machine a killed process can take seconds
    to be gone; children of this process are reaped)."""
    pids = list(pids)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while (left := [p for p in pids if _alive(p)]) and time.monotonic() < deadline:
        time.sleep(0.05)
    for pid in left:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + KILL_WAIT_SECONDS
    while [p for p in left if _alive(p)] and time.monotonic() < deadline:
        time.sleep(0.05)


def stop_children() -> None:
    """Stop every descendant of this process (see `stop_processes`) but multiprocessing's
    resource tracker, which ends by itself with this process and warns when stopped early."""
    from multiprocessing import resource_tracker

    tracker = getattr(resource_tracker._resource_tracker, "_pid", None)
    stop_processes([p for p in descendants() if p != tracker])


@contextlib.contextmanager
def guarded_run(root: Path | str) -> Iterator[Path]:
    """The results root's lock for one pipeline run (see the module doc)."""
    from pdeinf.pipeline.lock import results_lock

    with stop_on_signals(), results_lock(root) as lock:
        remove_stale_temporaries(root, recursive=True)
        try:
            yield lock
        except KeyboardInterrupt:
            stop_children()
            raise
        finally:
            remove_stale_temporaries(root, recursive=True)
