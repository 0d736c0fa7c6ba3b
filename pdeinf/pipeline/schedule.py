"""Run the pipeline's stages as a dependency graph, in this process or in worker processes.

Every stage function (`ensure_*`) is idempotent, cached by content key and writes only its own
files atomically, so two stages may run at once as long as each starts after the stages it
reads have finished (`run_tasks`). Every task runs with `task_threads()` torch threads, a count
independent of the number of workers, so the results are too. With one worker the tasks run
here, one after the other, in list order. A failing task skips only the tasks downstream of it;
the first error is raised once everything that could run has run.
"""
from __future__ import annotations

import contextlib
import graphlib
import multiprocessing
import os
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field

from pdeinf import paths
from pdeinf.checks import positive_int
from pdeinf.errors import InputError, PdeinfError

#: `$PDEINF_WORKERS` overrides `default_workers()` (1 = sequential, in this process).
WORKERS_ENV = "PDEINF_WORKERS"
#: `$PDEINF_TASK_THREADS` overrides `task_threads()` (0: each task keeps its process's count).
TASK_THREADS_ENV = "PDEINF_TASK_THREADS"
#: Free bytes below which a worker that died is taken to have hit a full disk.
LOW_SPACE = 1 << 20


@dataclass(frozen=True)
class Task:
    """One stage: `fn(*args, **kwargs)` once every task named in `after` has succeeded; `fn`
    and its arguments are pickled to a worker process (a module-level function)."""

    name: str
    fn: Callable
    args: tuple = ()
    kwargs: dict = field(default_factory=dict)
    after: tuple[str, ...] = ()
    exclusive: bool = False  # run here, alone, with all threads (a stage all others wait for)


@dataclass
class TaskResult:
    name: str
    seconds: float  # wall time of the task itself, measured where it ran
    status: str  # "ok" | "failed" | "skipped"
    error: BaseException | None = None


def _env_int(name: str, minimum: int) -> int | None:
    """`$name` as an integer >= `minimum`; None when unset or empty."""
    env = os.environ.get(name)
    try:
        return positive_int(int(env), name, minimum=minimum) if env else None
    except ValueError:
        raise InputError(f"{name}: expected an integer >= {minimum}, got {env!r}") from None


def default_workers() -> int:
    """`$PDEINF_WORKERS`, else 1 with a CUDA device (one GPU, one process) and
    min(2, cpu_count) on a CPU."""
    value = _env_int(WORKERS_ENV, 1)
    if value is not None:
        return value
    import torch

    return 1 if torch.cuda.is_available() else max(1, min(2, os.cpu_count() or 1))


def threads_per_worker(workers: int) -> int:
    """Torch intra-op threads of each worker: the machine's cores shared evenly, at least 1."""
    return max(1, (os.cpu_count() or 1) // max(1, workers))


def task_threads() -> int:
    """Torch intra-op threads of every (non-exclusive) task, whatever the number of workers:
    `$PDEINF_TASK_THREADS`, else `threads_per_worker(min(2, cpu_count))`. Reductions depend on
    the thread count; a count fixed per machine makes a stage's output the same with 1 or N
    workers. 0: tasks run here keep this process's count and pool workers get
    `threads_per_worker(workers)` (results may then depend on the number of workers)."""
    value = _env_int(TASK_THREADS_ENV, 0)
    return threads_per_worker(max(1, min(2, os.cpu_count() or 1))) if value is None else value


def check_graph(tasks: Sequence[Task]) -> None:
    """InputError on a duplicate name, a dependency on an unknown task, or a cycle: before any
    work starts."""
    names = [t.name for t in tasks]
    if duplicates := sorted({n for n in names if names.count(n) > 1}):
        raise InputError(f"tasks: duplicate names {duplicates}")
    for task in tasks:
        if unknown := [a for a in task.after if a not in names]:
            raise InputError(f"task {task.name!r}: depends on unknown task(s) {unknown}")
    try:
        tuple(graphlib.TopologicalSorter({t.name: t.after for t in tasks}).static_order())
    except graphlib.CycleError as err:
        raise InputError(f"tasks: dependency cycle among {err.args[1]}") from None


def critical_path_order(tasks: Sequence[Task], seconds: dict[str, float]) -> list[Task]:
    """`tasks` sorted by the estimated `seconds` of the longest chain each heads (itself and,
    recursively, the tasks that run after it; no estimate: 0), longest first, ties in list
    order. Ready tasks started in this order keep the longest chain going (list scheduling by
    bottom level): a long chain that needs only the first stage no longer waits for the end."""
    check_graph(tasks)
    successors: dict[str, list[str]] = {t.name: [] for t in tasks}
    for task in tasks:
        for name in task.after:
            successors[name].append(task.name)
    chain: dict[str, float] = {}
    for name in reversed(tuple(graphlib.TopologicalSorter({t.name: t.after for t in tasks}).static_order())):
        chain[name] = seconds.get(name, 0.0) + max((chain[s] for s in successors[name]), default=0.0)
    return sorted(tasks, key=lambda t: -chain[t.name])


def _init_worker(threads: int) -> None:
    """A pool worker: `threads` torch threads (0: torch's default); SIGINT is left to the
    parent, which stops its workers itself (`pdeinf.pipeline.interrupt`)."""
    import signal

    import torch

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if threads:
        torch.set_num_threads(threads)


def _timed_call(fn: Callable, args: tuple, kwargs: dict) -> float:  # in a pool worker
    start = time.perf_counter()
    fn(*args, **kwargs)
    return time.perf_counter() - start


class EtaClock:
    """The time left of a run: a prior estimate of each stage (`planner.plan`: seconds on the
    threads it runs on), each scaled by measured / estimated seconds over the computed stages of
    its cost law (`laws`; 1 until one is computed: the planner timed this machine, and one law's
    error is its own constants', not the others'). Stages still to run are divided among
    `workers`, except `exclusive` ones, which run alone. A stage found cached (faster than
    `COMPUTED_SECONDS` or than `CACHED_FRACTION` of its estimate) does not count: loading and
    verifying cached files takes up to about 10 s at the faithful profile, and counting that
    would collapse the ETA of a resumed run."""

    COMPUTED_SECONDS = 30.0
    CACHED_FRACTION = 0.05

    def __init__(self, estimates: dict[str, float], workers: int = 1, *,
                 laws: dict[str, str] | None = None, exclusive=()):
        self.estimates = {k: max(0.0, float(v)) for k, v in estimates.items()}
        self.workers = max(1, int(workers))
        self.laws = {name: (laws or {}).get(name, name) for name in self.estimates}
        self.exclusive = set(exclusive)
        self.finished: set[str] = set()
        self.computed: dict[str, list[float]] = {}  # law -> [measured, estimated] seconds

    def finish(self, name: str, seconds: float) -> None:
        self.finished.add(name)
        estimate = self.estimates.get(name, 0.0)
        if estimate > 0.0 and seconds >= max(self.COMPUTED_SECONDS, self.CACHED_FRACTION * estimate):
            sums = self.computed.setdefault(self.laws[name], [0.0, 0.0])
            sums[0] += seconds
            sums[1] += estimate

    def scale_of(self, name: str) -> float:
        """Measured / estimated seconds over the computed stages of the cost law of `name`."""
        measured, estimated = self.computed.get(self.laws.get(name, name), (0.0, 0.0))
        return measured / estimated if estimated > 0 else 1.0

    def seconds_left(self) -> float:
        left = {k: self.scale_of(k) * v for k, v in self.estimates.items() if k not in self.finished}
        alone = sum(v for k, v in left.items() if k in self.exclusive)
        return alone + (sum(left.values()) - alone) / self.workers

    def line(self) -> str:
        """`"3/40 stages · ETA 1 h 12 min"`."""
        done = len(self.finished & set(self.estimates))
        return f"{done}/{len(self.estimates)} stages · ETA {format_duration(self.seconds_left())}"


def format_duration(seconds: float) -> str:
    """`"1 h 12 min"`, `"4 min 10 s"`, `"12 s"`."""
    minutes, secs = divmod(max(0, round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours} h {minutes} min"
    return f"{minutes} min {secs} s" if minutes else f"{secs} s"


def run_tasks(tasks: Sequence[Task], *, workers: int = 1, echo: bool = True,
              on_result: Callable[[TaskResult], None] | None = None,
              eta: EtaClock | None = None) -> list[TaskResult]:
    """Run `tasks` respecting `after`, ready ones in list order (`workers` > 1: in that many
    processes). Returns one `TaskResult` per task in completion order, each also passed to
    `on_result` here; raises the first task error at the end. `eta`: printed after each stage."""
    check_graph(tasks)
    positive_int(workers, "workers")
    results: list[TaskResult] = []

    def record(result: TaskResult) -> None:
        results.append(result)
        if eta is not None:
            eta.finish(result.name, result.seconds)
        if echo:
            tail = f" · {eta.line()}" if eta is not None else ""
            print(f"[pdeinf] {result.name}: {result.seconds:.1f} s {result.status}{tail}",
                  file=sys.stderr, flush=True)
        if on_result is not None:
            on_result(result)

    _run_graph(tasks, record, workers=workers, echo=echo)
    if failed := [r for r in results if r.status == "failed"]:
        raise failed[0].error
    return results


def _run_here(task: Task) -> Future:
    """Run `task` here with `task_threads()` torch threads (exclusive: unchanged), then restore
    the count; a finished future of its wall time or its error."""
    import torch

    future, before = Future(), torch.get_num_threads()
    try:
        if count := 0 if task.exclusive else task_threads():
            torch.set_num_threads(count)
        future.set_result(_timed_call(task.fn, task.args, task.kwargs))
    except KeyboardInterrupt:
        raise
    except BaseException as err:  # noqa: BLE001 - recorded, raised at the end
        future.set_exception(err)
    finally:
        torch.set_num_threads(before)
    return future


def _run_graph(tasks: Sequence[Task], record, *, workers: int, echo: bool) -> None:
    """Exclusive tasks (all with one worker) run here once nothing runs, the others in a pool
    of spawned processes (no forked torch / OpenMP state)."""
    status: dict[str, str] = {}
    pending = list(tasks)
    running: dict[Future, tuple[Task, float]] = {}
    pool = contextlib.nullcontext() if workers == 1 else ProcessPoolExecutor(
        max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
        initializer=_init_worker, initargs=(task_threads() or threads_per_worker(workers),))
    with pool:
        try:
            while pending or running:
                for task in [t for t in pending if all(a in status for a in t.after)]:
                    if any(status.get(a) in ("failed", "skipped") for a in task.after):
                        pending.remove(task)
                        status[task.name] = "skipped"
                        record(TaskResult(task.name, 0.0, "skipped"))
                        continue
                    here = task.exclusive or workers == 1
                    if running and (here or len(running) >= workers):
                        break  # a task run here waits for the running tasks to end first
                    pending.remove(task)
                    if echo:
                        print(f"[pdeinf] {task.name} ...{'' if here else ' (worker)'}",
                              file=sys.stderr, flush=True)
                    start = time.perf_counter()
                    future = (_run_here(task) if here
                              else pool.submit(_timed_call, task.fn, task.args, task.kwargs))
                    running[future] = (task, start)
                    if here:
                        break
                if not running:
                    continue
                finished, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in finished:
                    task, start = running.pop(future)
                    try:
                        seconds, error = future.result(), None
                    except BrokenProcessPool:
                        raise worker_died(task.name) from None
                    except BaseException as err:  # noqa: BLE001 - recorded, raised at the end
                        seconds, error = time.perf_counter() - start, err
                    status[task.name] = "ok" if error is None else "failed"
                    record(TaskResult(task.name, seconds, status[task.name], error))
        except BaseException:
            if workers > 1:  # stop the workers (and their children) now, queued tasks cancelled
                from pdeinf.pipeline.interrupt import descendants, stop_processes

                processes = list((getattr(pool, "_processes", None) or {}).keys())
                stop_processes([c for w in processes for c in descendants(w)] + processes)
                pool.shutdown(wait=False, cancel_futures=True)
            raise


def worker_died(name: str) -> Exception:
    """The error for a worker process that died without an answer (killed, out of memory, a
    crash in a native library): one line; a full disk, the usual cause, is named as such."""
    from pdeinf.storage import disk_full, free_bytes

    if free_bytes(root := paths.results_dir()) < LOW_SPACE:
        return disk_full(root, None)
    return PdeinfError(f"stage {name}: its worker process died without an answer (killed, out of "
                       "memory or a crash in a native library); rerun the same command to resume")
