"""`pdeinf reproduce --executor slurm`: every stage of the stage graph as one Slurm job.

The graph is `reproduce.stage_tasks` (data, each training run, each sweep, each study) followed by
one job per notebook (the gathering notebooks after the others). Jobs are submitted through
submitit (`python` = this interpreter, so a job imports the same package) with ``afterok``
dependencies on the jobs of the stages they read; a stage is submitted once every stage it
depends on has succeeded, so a failing stage leaves everything downstream unsubmitted, and the
run ends with one line naming the failed job and its log. Other branches of the graph go on.

One log per job, stdout and stderr together: ``results/slurm/<profile>/logs/<jobid>_0_log.out``.
A job past its time limit or preempted is requeued by submitit (`slurm_job.StageJob` is
checkpointable) and resumes from the stage's own checkpoint. After a stage succeeds a stamp
``results/slurm/<profile>/stamps/<stage>.json`` records its key (the profile's settings, the
package version and the keys of the stages it read): a rerun submits only the stages whose key
differs (and notebooks whose executed copy is not current).

Options (`SlurmOptions`) come from a TOML file (``--slurm-config``; keys as the fields) and
command-line flags, the flags winning.
"""
from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from pdeinf import paths
from pdeinf.atomic import write_json
from pdeinf.errors import InputError, PdeinfError
from pdeinf.pipeline.common import content_key
from pdeinf.pipeline.schedule import Task, TaskResult, check_graph

#: environment variables a job needs to see the driver's package, results and profile
JOB_ENVIRONMENT = ("PDEINF_HOME", "PDEINF_PROFILE", "PYTHONPATH", "MPLBACKEND", "PDEINF_NOTEBOOKS")
#: stages that use every GPU of their job (DDP training, task-parallel sweeps)
MULTI_GPU = re.compile(r"^(training|influence) ")


class StageFailed(PdeinfError):
    """A stage's Slurm job failed; the message names the stage, the job and its log."""


@dataclass(frozen=True)
class SlurmOptions:
    """Where and how the jobs run. `gpus_per_task` GPUs go to multi-GPU stages (training,
    sweeps; run under torchrun when > 1), one to the other analysis stages, none to data and
    notebooks. `time_minutes` is each job's limit; `extra` holds more sbatch flags
    (``"--qos=high"``, ``"--constraint=a100"``)."""

    partition: str | None = None
    gpus_per_task: int = 0
    cpus_per_task: int = 1
    time_minutes: int = 24 * 60
    account: str | None = None
    mem: str | None = None
    extra: tuple[str, ...] = ()
    max_requeues: int = 3
    poll_seconds: float = 10.0

    def __post_init__(self):
        for name in ("gpus_per_task", "cpus_per_task", "time_minutes", "max_requeues"):
            value = getattr(self, name)
            low = 0 if name in ("gpus_per_task", "max_requeues") else 1
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise InputError(f"slurm {name}: expected an integer >= {low}, got {value!r}")
        if not (isinstance(self.poll_seconds, (int, float)) and self.poll_seconds > 0):
            raise InputError(f"slurm poll_seconds: expected a positive number, got "
                             f"{self.poll_seconds!r}")
        extra = (self.extra,) if isinstance(self.extra, str) else tuple(self.extra)
        for flag in extra:
            if not (isinstance(flag, str) and flag.startswith("--")):
                raise InputError(f"slurm extra: expected sbatch flags like '--qos=high', "
                                 f"got {flag!r}")
        object.__setattr__(self, "extra", extra)

    def gpus_for(self, stage: str) -> int:
        """GPUs of the job of `stage`."""
        if stage == "data" or stage.startswith("notebook "):
            return 0
        return self.gpus_per_task if MULTI_GPU.match(stage) else min(1, self.gpus_per_task)

    def extra_parameters(self) -> dict[str, str | bool]:
        """`extra` as submitit's `additional_parameters` (``--qos=high`` -> ``{"qos": "high"}``)."""
        parameters: dict[str, str | bool] = {}
        for flag in self.extra:
            key, sep, value = flag[2:].partition("=")
            parameters[key.replace("-", "_")] = value if sep else True
        return parameters


def load_options(path: Path | str | None = None, **overrides) -> SlurmOptions:
    """`SlurmOptions` from a TOML file (its top level or a ``[slurm]`` table), then
    `overrides` (None values ignored). InputError naming the file or the unknown key."""
    import tomllib

    values: dict = {}
    if path is not None:
        path = Path(path)
        try:
            values = tomllib.loads(path.read_text())
        except OSError as err:
            raise InputError(f"--slurm-config: cannot read {path} ({err.strerror or err})") from None
        except tomllib.TOMLDecodeError as err:
            raise InputError(f"--slurm-config: {path} is not valid TOML ({err})") from None
        values = values.get("slurm", values)
        known = {f.name for f in dataclasses.fields(SlurmOptions)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise InputError(f"--slurm-config: {path}: unknown key(s) {unknown}; known: "
                             f"{sorted(known)}")
    values.update({k: v for k, v in overrides.items() if v is not None})
    return SlurmOptions(**values)


# ---- the graph ---------------------------------------------------------------------------
def run_notebook_stage(profile, name: str) -> None:
    """One notebook (by stem) through papermill, or found current; raises if it failed."""
    from pdeinf.pipeline.notebooks import list_notebooks
    from pdeinf.pipeline.reproduce import run_notebooks

    entry = run_notebooks(profile, list_notebooks([name]), [], progress=False)[0]
    if entry["status"] != "ok":
        raise StageFailed(f"notebook {name}: {entry.get('error')}")


def notebook_tasks(profile, notebooks: Sequence[Path], after: Sequence[str]) -> list[Task]:
    """One task per notebook after every stage in `after`."""
    return [Task(f"notebook {nb.stem}", run_notebook_stage, (profile, nb.stem), {}, tuple(after))
            for nb in notebooks]


def select_stages(tasks: Sequence[Task], names: Sequence[str] | None) -> list[Task]:
    """The tasks named in `names` and every task they depend on (all when `names` is None),
    in graph order. InputError naming an unknown stage."""
    if names is None:
        return list(tasks)
    by_name = {t.name: t for t in tasks}
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise InputError(f"--stages: unknown stage(s) {unknown}; stages of this profile: "
                         f"{', '.join(by_name)}")
    keep: set[str] = set()
    todo = list(names)
    while todo:
        name = todo.pop()
        if name not in keep:
            keep.add(name)
            todo.extend(by_name[name].after)
    return [t for t in tasks if t.name in keep]


def slurm_graph(profile, *, notebooks: Sequence[Path] = (), stages: Sequence[str] | None = None,
                ) -> list[Task]:
    """The stages of the profile (or the `stages` selection and what they need), then the
    notebooks after all of them."""
    from pdeinf.pipeline.reproduce import stage_tasks

    tasks = select_stages(stage_tasks(profile, progress=False), stages)
    return tasks + notebook_tasks(profile, notebooks, [t.name for t in tasks])


# ---- stamps: what a rerun need not submit -------------------------------------------------
def slurm_dir(profile) -> Path:
    """``results/slurm/<profile>``: the job logs and the stage stamps."""
    return paths.results_dir() / "slurm" / profile.name


def _stamp_path(profile, stage: str) -> Path:
    return slurm_dir(profile) / "stamps" / (re.sub(r"[^A-Za-z0-9_.-]+", "_", stage) + ".json")


def stage_keys(profile, tasks: Sequence[Task]) -> dict[str, str]:
    """Each stage's key: the profile's settings, the package version, its name and the keys of
    the stages it reads (so a changed stage changes everything downstream)."""
    keys: dict[str, str] = {}
    pending = list(tasks)
    while pending:
        for task in [t for t in pending if all(a in keys for a in t.after)]:
            keys[task.name] = content_key(stage=task.name, profile=profile.to_dict(),
                                          after=[keys[a] for a in task.after])
            pending.remove(task)
    return keys


def is_current(profile, task: Task, key: str) -> bool:
    """A notebook: its executed copy is current. Any other stage: its stamp holds `key`."""
    import json

    if task.fn is run_notebook_stage:
        from pdeinf.pipeline.notebooks import (
            _executed_is_current,
            list_notebooks,
            notebook_cache_key,
        )

        nb = list_notebooks([task.args[1]])[0]
        return _executed_is_current(nb, notebook_cache_key(nb, profile))
    try:
        return json.loads(_stamp_path(profile, task.name).read_text()).get("key") == key
    except (OSError, ValueError, AttributeError):
        return False


# ---- the driver ---------------------------------------------------------------------------
#: Slurm job states after which a job never runs again (a requeued job passes through REQUEUED,
#: PENDING and COMPLETING instead).
ENDED_STATES = frozenset({"BOOT_FAIL", "CANCELLED", "COMPLETED", "DEADLINE", "FAILED", "NODE_FAIL",
                          "OUT_OF_MEMORY", "PREEMPTED", "REVOKED", "TIMEOUT"})
#: How long a job must look ended without a result before it counts as failed: a requeue passes
#: through states the controller reports inconsistently, and a shared filesystem may show the
#: result file late.
END_GRACE_SECONDS = 20.0


def _squeue_states(job_ids: Sequence[str]) -> dict[str, str] | None:
    """Slurm's state of each job the controller still knows (absent: gone), or None when the
    controller could not be asked (busy, restarting): nothing is concluded from that poll."""
    if not job_ids:
        return {}
    try:
        done = subprocess.run(["squeue", "-h", "-t", "all", "-o", "%i %T", "-j", ",".join(job_ids)],
                              capture_output=True, text=True, timeout=60, check=False)
    except subprocess.TimeoutExpired:
        return None
    if done.returncode != 0:
        if "Invalid job id" not in done.stderr:
            return None
        # a job id the controller no longer knows is an error, not an empty list: ask per job
        if len(job_ids) == 1:
            return {}
        states: dict[str, str] = {}
        for job_id in job_ids:
            one = _squeue_states([job_id])
            if one is None:
                return None
            states.update(one)
        return states
    states = {}
    for line in done.stdout.splitlines():
        parts = line.split()
        if len(parts) == 2:
            states[parts[0]] = parts[1]
    return states


def job_log(job) -> Path:
    """The one log (stdout and stderr) of a submitit job."""
    return Path(str(job.paths.stdout))


def _outcome(job, state: str | None) -> tuple[str, str] | None:
    """("ok", "") / ("failed", why) once the job has a result, ("gone", why) while it looks ended
    without one (`state` None: unknown to the controller), else None (still queued or running)."""
    from submitit.core.utils import pickle_load

    result = Path(job.paths.result_pickle)
    if result.is_file():
        try:
            kind, value = pickle_load(result)
        except Exception as err:  # noqa: BLE001 - a truncated pickle is a failed job
            return "failed", f"unreadable result ({err})"
        if kind == "success":
            return "ok", ""
        lines = [ln for ln in str(value).strip().splitlines() if ln.strip()]
        return "failed", lines[-1] if lines else "error"
    if state is None:  # gone from the queue without a result: cancelled, killed, node failure
        return "gone", "ended without a result (cancelled or killed)"
    if state in ENDED_STATES:
        return "gone", f"ended {state} without a result"
    return None


@dataclass
class _Running:
    task: Task
    job: object
    start: float
    #: when the job was first seen ended without a result (None: not seen so)
    ended_since: float | None = None


class SlurmRun:
    """Submit `tasks` as Slurm jobs in dependency order and wait for them (see the module doc).
    `on_submit(stage, job_id)` and `on_result(TaskResult)` are called as that happens.
    Subclasses run the jobs elsewhere (`node.NodeRun`: local processes)."""

    kind = "Slurm job"

    def __init__(self, profile, tasks: Sequence[Task], options: SlurmOptions, *,
                 echo: bool = True, on_submit: Callable[[str, str], None] | None = None,
                 on_result: Callable[[TaskResult], None] | None = None):
        check_graph(tasks)
        self.profile, self.tasks, self.options, self.echo = profile, list(tasks), options, echo
        self.on_submit, self.on_result = on_submit, on_result
        self.keys = stage_keys(profile, tasks)
        self.logs = slurm_dir(profile) / "logs"
        self.job_ids: dict[str, str] = {}
        self.results: list[TaskResult] = []
        self.failures: list[str] = []

    def _say(self, text: str) -> None:
        if self.echo:
            print(f"[pdeinf] {text}", file=sys.stderr, flush=True)

    def _executor(self, task: Task):
        import submitit

        options = self.options
        executor = submitit.SlurmExecutor(folder=self.logs, max_num_timeout=options.max_requeues,
                                          python=sys.executable)
        parameters = {"job_name": f"pdeinf-{task.name}".replace(" ", "-"),
                      "time": options.time_minutes, "cpus_per_task": options.cpus_per_task,
                      "stderr_to_stdout": True,
                      "additional_parameters": options.extra_parameters()}
        gpus = options.gpus_for(task.name)
        if gpus:
            parameters["gpus_per_node"] = gpus
        for name in ("partition", "account", "mem"):
            if getattr(options, name) is not None:
                parameters[name] = getattr(options, name)
        after = [self.job_ids[a] for a in task.after if a in self.job_ids]
        if after:
            parameters["dependency"] = "afterok:" + ":".join(after)
        executor.update_parameters(**parameters)
        return executor

    def _fits(self, task: Task) -> bool:
        """Whether `task` may start now (Slurm queues everything: always)."""
        return True

    def _release(self, task: Task) -> None:
        """Give back what `_fits` reserved for `task`."""

    def _states(self, running: Sequence[_Running]) -> dict[str, str] | None:
        """The scheduler's state of each running job (absent: no longer known); None when the
        scheduler could not be asked."""
        return _squeue_states([str(r.job.job_id) for r in running])

    def _submit(self, task: Task) -> _Running:
        from pdeinf.pipeline.slurm_job import StageJob

        environment = {k: os.environ[k] for k in JOB_ENVIRONMENT if k in os.environ}
        environment["PDEINF_HOME"] = str(paths.root())
        environment["PDEINF_SLURM_LOGS"] = str(self.logs)
        gpus = self.options.gpus_for(task.name)
        job = self._executor(task).submit(StageJob(task, environment,
                                                   threads=self.options.cpus_per_task,
                                                   nproc=max(1, gpus)))
        self.job_ids[task.name] = str(job.job_id)
        self._say(f"{task.name}: {self.kind} {job.job_id} (log {job_log(job)})")
        if self.on_submit is not None:
            self.on_submit(task.name, str(job.job_id))
        return _Running(task, job, time.perf_counter())

    def _record(self, result: TaskResult) -> None:
        self.results.append(result)
        if self.on_result is not None:
            self.on_result(result)

    def run(self) -> list[TaskResult]:
        """Submit, wait, submit what became ready, until nothing is left. Raises StageFailed
        (one line per failed job) when a stage failed."""
        self.logs.mkdir(parents=True, exist_ok=True)
        status: dict[str, str] = {}
        pending = list(self.tasks)
        running: dict[str, _Running] = {}
        while pending or running:
            for task in [t for t in pending if all(status.get(a) for a in t.after)]:
                if any(status[a] != "ok" for a in task.after):
                    status[task.name] = "skipped"
                    self._record(TaskResult(task.name, 0.0, "skipped"))
                elif is_current(self.profile, task, self.keys[task.name]):
                    status[task.name] = "ok"
                    self._record(TaskResult(task.name, 0.0, "cached"))
                elif self._fits(task):
                    running[task.name] = self._submit(task)
                else:
                    continue
                pending.remove(task)
            if not running:
                continue
            time.sleep(self.options.poll_seconds)
            states = self._states(list(running.values()))
            if states is None:
                continue
            for name, entry in list(running.items()):
                outcome = self._settled(entry, _outcome(entry.job, states.get(str(entry.job.job_id))))
                if outcome is not None:
                    del running[name]
                    self._release(entry.task)
                    status[name] = self._finish(entry, *outcome)
        if self.failures:
            raise StageFailed("\n".join(self.failures))
        return self.results

    def _settled(self, entry: _Running, outcome: tuple[str, str] | None) -> tuple[str, str] | None:
        """`outcome`, except that a job counts as ended without a result only after looking so
        for `END_GRACE_SECONDS` (and at least two polls)."""
        if outcome is None or outcome[0] != "gone":
            entry.ended_since = None
            return outcome
        now = time.monotonic()
        if entry.ended_since is None:
            entry.ended_since = now
            return None
        grace = max(END_GRACE_SECONDS, 2 * self.options.poll_seconds)
        return ("failed", outcome[1]) if now - entry.ended_since >= grace else None

    def _finish(self, entry: _Running, status: str, why: str) -> str:
        task, job = entry.task, entry.job
        seconds = time.perf_counter() - entry.start
        if status == "ok":
            write_json(_stamp_path(self.profile, task.name),
                       {"key": self.keys[task.name], "job": str(job.job_id)})
            self._record(TaskResult(task.name, seconds, "ok"))
            self._say(f"{task.name}: job {job.job_id} done ({seconds:.1f} s)")
            return "ok"
        line = (f"stage {task.name!r} failed in {self.kind} {job.job_id} ({why}); "
                f"log: {job_log(job)}")
        self.failures.append(line)
        print(f"pdeinf reproduce: {line}", file=sys.stderr, flush=True)
        self._record(TaskResult(task.name, seconds, "failed", StageFailed(line)))
        return "failed"


def check_slurm() -> None:
    """InputError unless submitit is installed and `sbatch` and `squeue` are on PATH."""
    import shutil

    try:
        import submitit  # noqa: F401
    except ImportError:
        raise InputError("--executor slurm: submitit is not installed "
                         "(pip install 'pdeinf[cluster]')") from None
    missing = [p for p in ("sbatch", "squeue") if shutil.which(p) is None]
    if missing:
        raise InputError(f"--executor slurm: {', '.join(missing)} not found on PATH "
                         "(run on a Slurm login node)")


def reproduce_slurm(profile, options: SlurmOptions, *, notebooks=None, only_pipeline=False,
                    stages: Sequence[str] | None = None, progress: bool = True,
                    on_submit=None, executor: str = "slurm") -> list[TaskResult]:
    """`reproduce` with every stage (and notebook) as a Slurm job (`executor` "slurm") or a
    local process on its own GPUs (`executor` "node", `node.NodeRun`); waits for the jobs.
    Writes ``results/slurm/<profile>/reproduce.json`` (job ids; each stage's time from
    submission to its end, queueing included). Raises StageFailed naming each failed job and its log."""
    from pdeinf.atomic import remove_stale_temporaries
    from pdeinf.pipeline.common import as_profile
    from pdeinf.pipeline.lock import check_writable, results_lock
    from pdeinf.pipeline.notebooks import list_notebooks

    profile = as_profile(profile)
    selected = [] if only_pipeline else list_notebooks(notebooks)
    tasks = slurm_graph(profile, notebooks=selected, stages=stages)
    if executor == "slurm":
        check_slurm()
        run_class = SlurmRun
    elif executor == "node":
        from pdeinf.pipeline.node import NodeRun as run_class
    else:
        raise InputError(f"executor: expected 'slurm' or 'node', got {executor!r}")
    check_writable(paths.results_dir(), "PDEINF_HOME/results")
    began = time.perf_counter()
    with results_lock(paths.results_dir()):
        remove_stale_temporaries(paths.results_dir(), recursive=True)
        run = run_class(profile, tasks, options, echo=progress, on_submit=on_submit)
        try:
            return run.run()
        finally:
            write_json(slurm_dir(profile) / "reproduce.json",
                       {"profile": profile.name, "executor": executor,
                        "wall_seconds": time.perf_counter() - began,
                        "jobs": run.job_ids,
                        "timings": [{"stage": r.name, "seconds": r.seconds, "status": r.status}
                                    for r in run.results]})
