"""`pdeinf reproduce --executor node`: the Slurm executor's graph on one machine without a
scheduler. Every stage is a local process started through submitit's `LocalExecutor` (the same
`slurm_job.StageJob`, logs and stamps), given its own GPUs (``CUDA_VISIBLE_DEVICES``) from the
node's pool; a stage starts once the stages it reads have succeeded and its GPUs (or, for a CPU
stage, `cpus_per_task` of the node's cores) are free.
"""
from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from pdeinf.errors import InputError
from pdeinf.pipeline.schedule import Task
from pdeinf.pipeline.slurm import SlurmRun, _Running


def visible_gpus() -> list[int]:
    """The GPU indices this process may use (``CUDA_VISIBLE_DEVICES`` order), none without CUDA."""
    import torch

    return list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []


class NodeRun(SlurmRun):
    """`SlurmRun` with local processes: a pool of GPUs and of CPU slots instead of a queue."""

    kind = "local job"

    def __init__(self, profile, tasks: Sequence[Task], options, *, gpus: Sequence[int] | None = None,
                 **kwargs):
        super().__init__(profile, tasks, options, **kwargs)
        self.free_gpus = list(visible_gpus() if gpus is None else gpus)
        self.cpu_slots = max(1, (os.cpu_count() or 1) // options.cpus_per_task)
        self.held: dict[str, list[int]] = {}
        wanted = max((options.gpus_for(t.name) for t in tasks), default=0)
        if wanted > len(self.free_gpus):
            raise InputError(f"--gpus-per-task: {wanted} GPU(s) per stage, but this node has "
                             f"{len(self.free_gpus)}")

    def _fits(self, task: Task) -> bool:
        gpus = self.options.gpus_for(task.name)
        if gpus == 0:
            cpu_jobs = sum(1 for name in self.held if not self.held[name])
            if cpu_jobs >= self.cpu_slots:
                return False
            self.held[task.name] = []
            return True
        if gpus > len(self.free_gpus):
            return False
        self.held[task.name] = self.free_gpus[:gpus]
        del self.free_gpus[:gpus]
        return True

    def _release(self, task: Task) -> None:
        self.free_gpus = sorted(self.free_gpus + self.held.pop(task.name, []))

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
