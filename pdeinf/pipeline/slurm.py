"""`pdeinf reproduce --executor slurm|node`: each stage of `reproduce.stage_tasks`, then each
notebook, as one job (submitit, this interpreter), submitted with ``afterok`` dependencies once
the stages it reads succeeded: a failure leaves its dependents unsubmitted, other branches go on,
and the run ends with one line per failed job and its log (``results/slurm/<profile>/logs/``).
A job past its time limit or preempted is requeued and resumes from the stage's checkpoint. Each
finished stage's key is stamped (``stamps/<stage>.json``): a rerun submits only stages whose key
differs and notebooks whose executed copy is not current. `NodeRun`: local processes instead."""
from __future__ import annotations

import dataclasses
import graphlib
import json
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
from pdeinf.checks import finite_float, positive_int
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
    sweeps; torchrun when > 1), one to the other analysis stages, none to data and notebooks.
    `time_minutes` is each job's limit; `extra` holds more sbatch flags (``"--qos=high"``)."""

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
        for name, low in (("gpus_per_task", 0), ("cpus_per_task", 1), ("time_minutes", 1),
                          ("max_requeues", 0)):
            positive_int(getattr(self, name), f"slurm {name}", minimum=low)
        finite_float(self.poll_seconds, "slurm poll_seconds", positive=True)
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
        return {key.replace("-", "_"): value if sep else True
                for key, sep, value in (flag[2:].partition("=") for flag in self.extra)}


def load_options(path: Path | str | None = None, **overrides) -> SlurmOptions:
    """`SlurmOptions` from a TOML file (its top level or a ``[slurm]`` table), then
    `overrides` (None values ignored). InputError naming the file or the unknown key."""
    import tomllib

    values: dict = {}
    if path is not None:
        try:
            values = tomllib.loads(Path(path).read_text())
        except OSError as err:
            raise InputError(f"--slurm-config: cannot read {path} ({err.strerror or err})") from None
        except tomllib.TOMLDecodeError as err:
            raise InputError(f"--slurm-config: {path} is not valid TOML ({err})") from None
        values = values.get("slurm", values)
        known = {f.name for f in dataclasses.fields(SlurmOptions)}
        if unknown := sorted(set(values) - known):
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


def select_stages(tasks: Sequence[Task], names: Sequence[str] | None) -> list[Task]:
    """The tasks named in `names` and every task they depend on (all when `names` is None),
    in graph order. InputError naming an unknown stage."""
    if names is None:
        return list(tasks)
    by_name = {t.name: t for t in tasks}
    if unknown := [n for n in names if n not in by_name]:
        raise InputError(f"--stages: unknown stage(s) {unknown}; stages of this profile: "
                         f"{', '.join(by_name)}")
    keep: set[str] = set()
    todo = list(names)
    while todo:
        if (name := todo.pop()) not in keep:
            keep.add(name)
            todo.extend(by_name[name].after)
    return [t for t in tasks if t.name in keep]


def run_graph(profile, stages: Sequence[str] | None = None,
              notebooks: Sequence[Path] = ()) -> list[Task]:
    """The profile's stages (`reproduce.stage_tasks`, only `stages` and what they need when
    given), then one task per notebook of `notebooks` after all of them."""
    from pdeinf.pipeline.reproduce import stage_tasks

    tasks = select_stages(stage_tasks(profile, progress=False), stages)
    after = tuple(t.name for t in tasks)
    return tasks + [Task(f"notebook {nb.stem}", run_notebook_stage, (profile, nb.stem), {}, after)
                    for nb in notebooks]


# ---- stamps: what a rerun need not submit -------------------------------------------------
def slurm_dir(profile) -> Path:
    """``results/slurm/<profile>``: the job logs, the stage stamps and ``reproduce.json``."""
    return paths.results_dir() / "slurm" / profile.name


def _stamp_path(profile, stage: str) -> Path:
    return slurm_dir(profile) / "stamps" / (re.sub(r"[^A-Za-z0-9_.-]+", "_", stage) + ".json")


def stage_keys(profile, tasks: Sequence[Task]) -> dict[str, str]:
    """Each stage's key: the profile's settings, the package version, its name and the keys of
    the stages it reads (so a changed stage changes everything downstream)."""
    keys: dict[str, str] = {}
    after = {t.name: t.after for t in tasks}
    for name in graphlib.TopologicalSorter(after).static_order():
        keys[name] = content_key(stage=name, profile=profile.to_dict(),
                                 after=[keys[a] for a in after[name]])
    return keys


def is_current(profile, task: Task, key: str) -> bool:
    """A notebook: its executed copy is current. Any other stage: its stamp holds `key`."""
    if task.fn is run_notebook_stage:
        from pdeinf.pipeline import notebooks

        nb = notebooks.list_notebooks([task.args[1]])[0]
        return notebooks._executed_is_current(nb, notebooks.notebook_cache_key(nb, profile))
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
        each = [_squeue_states([job_id]) for job_id in job_ids]
        return None if None in each else {k: v for one in each for k, v in one.items()}
    return dict(parts for line in done.stdout.splitlines() if len(parts := line.split()) == 2)


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
    """Submit `tasks` as Slurm jobs in dependency order and wait for them (see the module doc);
    `on_submit(stage, job_id)` is called on each submission."""

    kind = "Slurm job"

    def __init__(self, profile, tasks: Sequence[Task], options: SlurmOptions, *,
                 echo: bool = True, on_submit: Callable[[str, str], None] | None = None):
        check_graph(tasks)
        self.profile, self.tasks, self.options, self.echo = profile, list(tasks), options, echo
        self.on_submit = on_submit
        self.keys = stage_keys(profile, tasks)
        self.logs = slurm_dir(profile) / "logs"
        self.job_ids: dict[str, str] = {}
        self.results: list[TaskResult] = []

    def _say(self, text: str) -> None:
        if self.echo:
            print(f"[pdeinf] {text}", file=sys.stderr, flush=True)

    def _executor(self, task: Task):
        import submitit

        options = self.options
        executor = submitit.SlurmExecutor(folder=self.logs, max_num_timeout=options.max_requeues,
                                          python=sys.executable)
        after = [self.job_ids[a] for a in task.after if a in self.job_ids]
        optional = {"gpus_per_node": options.gpus_for(task.name) or None,
                    "partition": options.partition, "account": options.account, "mem": options.mem,
                    "dependency": "afterok:" + ":".join(after) if after else None}
        executor.update_parameters(job_name=f"pdeinf-{task.name}".replace(" ", "-"),
                                   time=options.time_minutes, cpus_per_task=options.cpus_per_task,
                                   stderr_to_stdout=True,
                                   additional_parameters=options.extra_parameters(),
                                   **{k: v for k, v in optional.items() if v is not None})
        return executor

    def _states(self, running: Sequence[_Running]) -> dict[str, str] | None:
        """As `_squeue_states`, for the running jobs."""
        return _squeue_states([str(r.job.job_id) for r in running])

    def _submit(self, task: Task) -> _Running | None:
        """Submit `task`'s job (Slurm queues everything; `NodeRun`: None while it cannot start)."""
        from pdeinf.pipeline.slurm_job import StageJob

        environment = {k: os.environ[k] for k in JOB_ENVIRONMENT if k in os.environ}
        environment.update(PDEINF_HOME=str(paths.root()), PDEINF_SLURM_LOGS=str(self.logs))
        job = self._executor(task).submit(StageJob(
            task, environment, threads=self.options.cpus_per_task,
            nproc=max(1, self.options.gpus_for(task.name))))
        self.job_ids[task.name] = str(job.job_id)
        self._say(f"{task.name}: {self.kind} {job.job_id} (log {job.paths.stdout})")
        if self.on_submit is not None:
            self.on_submit(task.name, str(job.job_id))
        return _Running(task, job, time.perf_counter())

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
                    self.results.append(TaskResult(task.name, 0.0, "skipped"))
                elif is_current(self.profile, task, self.keys[task.name]):
                    status[task.name] = "ok"
                    self.results.append(TaskResult(task.name, 0.0, "cached"))
                elif entry := self._submit(task):
                    running[task.name] = entry
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
                    status[name] = self._finish(entry, *outcome)
        if failures := [str(r.error) for r in self.results if r.status == "failed"]:
            raise StageFailed("\n".join(failures))
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
        seconds, error = time.perf_counter() - entry.start, None
        if status == "ok":
            write_json(_stamp_path(self.profile, task.name),
                       {"key": self.keys[task.name], "job": str(job.job_id)})
            self._say(f"{task.name}: job {job.job_id} done ({seconds:.1f} s)")
        else:
            error = StageFailed(f"stage {task.name!r} failed in {self.kind} {job.job_id} ({why}); "
                                f"log: {job.paths.stdout}")
            print(f"pdeinf reproduce: {error}", file=sys.stderr, flush=True)
        self.results.append(TaskResult(task.name, seconds, status, error))
        return status


class NodeRun(SlurmRun):
    """`SlurmRun` without a scheduler (``--executor node``): every stage a local process through
    submitit's `LocalExecutor`, given its own GPUs (``CUDA_VISIBLE_DEVICES``) from the node's pool,
    started once its inputs succeeded and its GPUs (a CPU stage: `cpus_per_task` cores) are free."""

    kind = "local job"

    def __init__(self, profile, tasks: Sequence[Task], options, **kwargs):
        import torch

        super().__init__(profile, tasks, options, **kwargs)
        self.free_gpus = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
        self.cpu_slots = max(1, (os.cpu_count() or 1) // options.cpus_per_task)
        self.held: dict[str, list[int]] = {}
        wanted = max((options.gpus_for(t.name) for t in tasks), default=0)
        if wanted > len(self.free_gpus):
            raise InputError(f"--gpus-per-task: {wanted} GPU(s) per stage, but this node has "
                             f"{len(self.free_gpus)}")

    def _submit(self, task: Task) -> _Running | None:
        gpus = self.options.gpus_for(task.name)
        cpu_stages = sum(not held for held in self.held.values())
        if gpus > len(self.free_gpus) or (gpus == 0 and cpu_stages >= self.cpu_slots):
            return None
        self.held[task.name] = self.free_gpus[:gpus]
        del self.free_gpus[:gpus]
        return super()._submit(task)

    def _finish(self, entry: _Running, status: str, why: str) -> str:
        self.free_gpus = sorted(self.free_gpus + self.held.pop(entry.task.name, []))
        return super()._finish(entry, status, why)

    def _executor(self, task: Task):
        import submitit

        executor = submitit.LocalExecutor(folder=self.logs, max_num_timeout=self.options.max_requeues,
                                          python=sys.executable)
        gpus = self.held.get(task.name, [])
        executor.update_parameters(timeout_min=self.options.time_minutes, gpus_per_node=len(gpus),
                                   visible_gpus=tuple(gpus))
        return executor

    def _states(self, running: Sequence[_Running]) -> dict[str, str]:
        return {str(r.job.job_id): "RUNNING" for r in running if not r.job.done()}


def reproduce_slurm(profile, options: SlurmOptions, *, notebooks=None, only_pipeline=False,
                    stages: Sequence[str] | None = None, progress: bool = True,
                    on_submit=None, executor: str = "slurm") -> list[TaskResult]:
    """`reproduce` with every stage (and notebook) as a Slurm job (`executor` "slurm") or a
    local process on its own GPUs (`executor` "node"); waits for the jobs. Writes
    ``results/slurm/<profile>/reproduce.json`` (job ids; each stage's time from submission to its
    end, queueing included). Raises StageFailed naming each failed job and its log."""
    import shutil

    from pdeinf.checks import one_of
    from pdeinf.pipeline.common import as_profile
    from pdeinf.pipeline.interrupt import guarded_run
    from pdeinf.pipeline.notebooks import list_notebooks

    profile = as_profile(profile)
    tasks = run_graph(profile, stages, [] if only_pipeline else list_notebooks(notebooks))
    if one_of(executor, ("slurm", "node"), "executor") == "slurm":
        try:
            import submitit  # noqa: F401
        except ImportError:
            raise InputError("--executor slurm: submitit is not installed "
                             "(pip install 'pdeinf[cluster]')") from None
        if missing := [p for p in ("sbatch", "squeue") if shutil.which(p) is None]:
            raise InputError(f"--executor slurm: {', '.join(missing)} not found on PATH "
                             "(run on a Slurm login node)")
    began = time.perf_counter()
    with guarded_run(paths.results_dir()):
        run = (SlurmRun if executor == "slurm" else NodeRun)(profile, tasks, options, echo=progress,
                                                             on_submit=on_submit)
        try:
            return run.run()
        finally:
            write_json(slurm_dir(profile) / "reproduce.json",
                       {"profile": profile.name, "executor": executor,
                        "wall_seconds": time.perf_counter() - began, "jobs": run.job_ids,
                        "timings": [{"stage": r.name, "seconds": r.seconds, "status": r.status}
                                    for r in run.results]})
