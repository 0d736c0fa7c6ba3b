"""One stage of `pdeinf reproduce --executor slurm` inside its Slurm job.

`StageJob` is checkpointable: on a time limit or preemption submitit requeues it (same job id)
and the stage function resumes from the stage's own checkpoint, skipping what is cached. A stage
on several GPUs runs on every rank of a ``torchrun --standalone`` inside the job, whose per-rank
entry point is ``python -m pdeinf.pipeline.slurm_job TASK.pkl``.
"""
from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import submitit

from pdeinf.errors import NumericalError
from pdeinf.pipeline.schedule import Task


@dataclass
class StageJob(submitit.helpers.Checkpointable):
    """Run `task` in a Slurm job with `environment` set, `threads` torch threads, and, when
    `nproc` > 1, on `nproc` torchrun ranks. Returns the stage's wall time in seconds."""

    task: Task
    environment: dict[str, str]
    threads: int
    nproc: int = 1

    def __call__(self) -> float:
        os.environ.update(self.environment)
        sys.stderr.flush()
        os.dup2(sys.stdout.fileno(), sys.stderr.fileno())  # one log per job, also run locally
        os.environ["OMP_NUM_THREADS"] = str(self.threads)
        import torch

        torch.set_num_threads(self.threads)
        job = submitit.JobEnvironment().job_id
        restarts = os.environ.get("SLURM_RESTART_COUNT", "0")
        print(f"[pdeinf] stage {self.task.name!r} in job {job} (restart {restarts})", flush=True)
        for line in resume_notes(self.task):
            print(f"[pdeinf] {line}", flush=True)
        start = time.perf_counter()
        if self.nproc > 1:  # DDP training, sharded sweeps: the stage function on every rank
            path = Path(os.environ.get("PDEINF_SLURM_LOGS", ".")) / f"{job}_task.pkl"
            path.write_bytes(pickle.dumps(self.task))
            torchrun = shutil.which("torchrun") or str(Path(sys.executable).with_name("torchrun"))
            done = subprocess.run([torchrun, "--standalone", f"--nproc_per_node={self.nproc}",
                                   "-m", "pdeinf.pipeline.slurm_job", str(path)], check=False)
            if done.returncode != 0:
                raise NumericalError(f"stage {self.task.name!r}: torchrun exited with "
                                     f"{done.returncode}")
        else:
            self.task.fn(*self.task.args, **self.task.kwargs)
        seconds = time.perf_counter() - start
        print(f"[pdeinf] stage {self.task.name!r} done in {seconds:.1f} s", flush=True)
        return seconds


def resume_notes(task: Task) -> list[str]:
    """One line per partial training run of a training stage: the epoch it resumes after."""
    from pdeinf.pipeline.common import run_dir
    from pdeinf.pipeline.training import ensure_training

    if task.fn is not ensure_training:
        return []
    profile, pde, model = task.args[:3]
    directories = [run_dir(profile, pde, model, seed) for seed in profile.seeds]
    return [f"resuming {d.name} after epoch {epochs}" for d in directories
            if (epochs := completed_epochs(d))]


def completed_epochs(directory: Path) -> int:
    """Epochs a (partial) run has finished, from its ``history.json`` (0 when none)."""
    try:
        return len(json.loads((directory / "history.json").read_text()))
    except (OSError, ValueError, TypeError):
        return 0


if __name__ == "__main__":
    task = pickle.loads(Path(sys.argv[1]).read_bytes())
    task.fn(*task.args, **task.kwargs)
