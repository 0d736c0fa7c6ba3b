"""Absolute paths used by every stage, independent of the working directory: under
`$PDEINF_HOME`, else the repository that holds this package, else the current directory."""
from __future__ import annotations

import os
from pathlib import Path

_PACKAGE_DIR = Path(__file__).resolve().parent


def root() -> Path:
    """Project root: `$PDEINF_HOME`, else the source checkout, else the working directory."""
    env = os.environ.get("PDEINF_HOME")
    if env:
        return Path(env).expanduser().resolve()
    checkout = _PACKAGE_DIR.parent
    return checkout if (checkout / "pyproject.toml").exists() else Path.cwd().resolve()


def results_dir() -> Path:
    """Everything the pipeline computes (git-ignored, cached, rebuildable)."""
    return root() / "results"


def data_dir(profile: str) -> Path:
    """Generated data sets of one profile, in the PDEGym layout: `<dir>/<NAME>/data_K.nc`."""
    return results_dir() / "data" / profile


def runs_dir(profile: str) -> Path:
    """Training runs (checkpoints, curves) of one profile."""
    return results_dir() / "runs" / profile


def run_name(pde: str, model: str, seed: int) -> str:
    """Directory name of one training run under `runs_dir`: `<PDE>-<model>-s<seed>`."""
    return f"{pde}-{model}-s{seed}"


def checkpoint_path(run_dir: Path | str, epoch: int) -> Path:
    """Scheduled checkpoint of a run: `<run_dir>/ckpt_e<epoch:04d>.pt`."""
    return Path(run_dir) / f"ckpt_e{epoch:04d}.pt"


def influence_dir(profile: str) -> Path:
    """Cached influence matrices (labelled netCDF) of one profile."""
    return results_dir() / "influence" / profile


def figures_dir(profile: str | None = None) -> Path:
    """A profile's figures (PNG, PDF) and findings JSON: `figures/` for the committed profile
    (`config.COMMITTED_PROFILE`, also for None), `figures/paper/` for the paper profile,
    `results/figures/<profile>/` (not committed) for the others, so that a tour or a test never
    overwrites the committed figures."""
    from pdeinf.config import COMMITTED_PROFILE

    if profile in (None, COMMITTED_PROFILE):
        return root() / "figures"
    if profile == "paper":
        return root() / "figures" / "paper"
    return results_dir() / "figures" / profile
