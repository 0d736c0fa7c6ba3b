"""What runs inside one Slurm job of `pdeinf reproduce --executor slurm`: one stage of the graph.

`StageJob` is a `submitit.helpers.Checkpointable`: when Slurm signals a time limit or a
preemption, submitit pickles the job again and requeues it (same job id); the requeued job calls
the same stage function, which resumes from the stage's own checkpoint (a training run's
``resume.pt``, a Krylov solve's saved state) and skips what is already cached. A stage that
uses several GPUs runs its function on every rank of a ``torchrun --standalone`` inside the job.

``python -m pdeinf.pipeline.slurm_job TASK.pkl`` is the per-rank entry point of that torchrun.
"""
from __future__ import annotations

import os
import pickle
import shutil
import subprocess
import sys
import time
from pathlib import Path

import submitit

from pdeinf.errors import NumericalError
from pdeinf.pipeline.schedule import Task


class StageJob(submitit.helpers.Checkpointable):
    """Run `task` in a Slurm job with `environment` set, `threads` torch threads, and, when
    `nproc` > 1, on `nproc` torchrun ranks. Returns the stage's wall time in seconds."""

    def __init__(self, task: Task, environment: dict[str, str], *, threads: int, nproc: int = 1):
        self.task = task
        self.environment = dict(environment)
        self.threads = int(threads)
        self.nproc = int(nproc)

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
        if self.nproc > 1:
            self._torchrun()
        else:
            self.task.fn(*self.task.args, **self.task.kwargs)
        seconds = time.perf_counter() - start
        print(f"[pdeinf] stage {self.task.name!r} done in {seconds:.1f} s", flush=True)
        return seconds

    def _torchrun(self) -> None:
        """The stage function on `nproc` ranks of this node (DDP training, sharded sweeps)."""
        folder = Path(os.environ.get("PDEINF_SLURM_LOGS", "."))
        path = folder / f"{submitit.JobEnvironment().job_id}_task.pkl"
        path.write_bytes(pickle.dumps(self.task))
        torchrun = shutil.which("torchrun") or str(Path(sys.executable).with_name("torchrun"))
        cmd = [torchrun, "--standalone", f"--nproc_per_node={self.nproc}",
               "-m", "pdeinf.pipeline.slurm_job", str(path)]
        done = subprocess.run(cmd, check=False)
        if done.returncode != 0:
            raise NumericalError(f"stage {self.task.name!r}: torchrun exited with "
                                 f"{done.returncode}")


def resume_notes(task: Task) -> list[str]:
    """One line per partial training run of a training stage: the epoch it resumes after."""
    from pdeinf.pipeline.common import run_dir
    from pdeinf.pipeline.training import ensure_training

    if task.fn is not ensure_training:
        return []
    profile, pde, model = task.args[:3]
    notes = []
    for seed in profile.seeds:
        directory = run_dir(profile, pde, model, seed)
        epochs = completed_epochs(directory)
        if epochs:
            notes.append(f"resuming {directory.name} after epoch {epochs}")
    return notes


def completed_epochs(directory: Path) -> int:
    """Epochs a (partial) run has finished, from its ``history.json`` (0 when none)."""
    import json

    try:
        return len(json.loads((directory / "history.json").read_text()))
    except (OSError, ValueError, TypeError):
        return 0


def _main(path: str) -> None:
    task = pickle.loads(Path(path).read_bytes())
    task.fn(*task.args, **task.kwargs)


if __name__ == "__main__":
    _main(sys.argv[1])
