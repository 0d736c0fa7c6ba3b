"""Cached stages data -> training -> influence -> rollouts -> notebooks, and `pdeinf reproduce`.

Every stage is a pure function of ``(profile, pde, model)`` whose output lives under
`pdeinf.paths.results_dir()`; a stage whose output exists and is valid is not recomputed, so
rerunning after an interruption (or with a bigger selection) computes only what is missing.
The stage owners write their files under a temporary name and rename them; this module only
checks existence and validity:

=================  ============================================  ===============================
stage              output                                        owner
=================  ============================================  ===============================
`ensure_data`      ``results/data/<profile>/<DATASET>/*.nc``     `pdeinf.data.generate`
`ensure_training`  ``results/runs/<profile>/<PDE>-<model>-s<seed>/ckpt_e<epoch>.pt``
                                                                 `pdeinf.training.train`
`ensure_influence` ``results/influence/<profile>/...``           `pdeinf.influence.sweep`
`ensure_rollouts`  ``results/rollouts/<profile>/<PDE>-<model>.nc``  this module
notebooks          ``results/executed/<notebook>.ipynb``, ``results/<notebook>.json``,
                   ``figures/*``                                 the notebooks
=================  ============================================  ===============================

`reproduce(profile)` runs all stages, then every notebook through papermill (kernel
``python3``, parameter ``profile``), and prints a closing table with the figures, the key
numbers of each ``results/<notebook>.json`` and the wall time of every stage. On the command
line::

    pdeinf reproduce --profile quick                  # what `make reproduce` runs
    pdeinf reproduce --profile smoke --only-pipeline  # cached stages only, no notebooks
    pdeinf reproduce --profile quick --notebooks 03,04

Paper profile (GPUs). Training is data parallel (DistributedDataParallel, see
`pdeinf.training.ddp`) and the influence sweep is task parallel (rank k of K computes tasks
k, k+K, ... of the (seed, checkpoint, batch) list; ranks share only the file system) under
``torchrun``; the other stages run in one process. On a node with 2 GPUs run the heavy stages
first, then let `reproduce` pick up the cached results::

    # data: real PDEGym files placed under results/data/paper/<DATASET>/, or generated
    for ds in CE-RP CE-CRP CE-RPUI NS-BB NS-Gauss NS-Sines; do
      pdeinf data generate --dataset $ds --n-trajectories 1000 --resolution 128 \
          --solver-resolution 256 --out results/data/paper --device cuda
    done
    for pde in CE NS; do for model in unet vit; do for seed in 10 35 42; do
      torchrun --standalone --nproc_per_node 2 -m pdeinf train \
          --profile paper --pde $pde --model $model --seed $seed
    done; done; done
    for pde in CE NS; do for model in unet vit; do
      torchrun --standalone --nproc_per_node 2 -m pdeinf influence \
          --profile paper --pde $pde --model $model
    done; done
    pdeinf reproduce --profile paper      # rollouts + notebooks; everything above is cached

Every stage skips work whose output is already on disk, so any of these commands can be
interrupted and rerun.
"""
from __future__ import annotations

import contextlib
import hashlib
import inspect
import json
import math
import os
import re
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pdeinf import paths
from pdeinf.atomic import write_bytes, write_netcdf
from pdeinf.config import (
    PDE_CLASSES,
    PROFILE_NAMES,
    Profile,
    check_model,
    check_pde,
    get_profile,
)
from pdeinf.errors import InputError

ProfileLike = Profile | str

#: Source checkout holding the notebooks (they are read from here even when PDEINF_HOME
#: points elsewhere, e.g. the test suite's temporary home).
_CHECKOUT_NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
_NOTEBOOK_NAME = re.compile(r"^(\d\d)_[A-Za-z0-9_\-]+\.ipynb$")


# --------------------------------------------------------------------------------------
# argument checks
# --------------------------------------------------------------------------------------
#: A `Profile` from a Profile, a profile name, or None (then `$PDEINF_PROFILE`/quick).
as_profile = get_profile


def _check_pde_model(profile: Profile, pde: str, model: str) -> None:
    check_pde(pde)
    check_model(model)
    if pde not in profile.pdes:
        raise InputError(f"pde: {pde!r} is not part of profile {profile.name!r} ({profile.pdes})")
    if model not in profile.models:
        raise InputError(
            f"model: {model!r} is not part of profile {profile.name!r} ({profile.models})"
        )


run_name = paths.run_name


def checkpoint_path(profile: ProfileLike, pde: str, model: str, seed: int, epoch: int) -> Path:
    """``runs_dir(profile)/<PDE>-<model>-s<seed>/ckpt_e<epoch:04d>.pt`` (the training contract)."""
    profile = as_profile(profile)
    return paths.checkpoint_path(paths.runs_dir(profile.name) / run_name(pde, model, seed), epoch)


def _final_epoch(profile: Profile, pde: str) -> int:
    """The last kept checkpoint (the profiles keep one after the last epoch)."""
    return max(int(e) for e in profile.checkpoints[pde])


# --------------------------------------------------------------------------------------
# stages
# --------------------------------------------------------------------------------------
def ensure_data(profile: ProfileLike, *, progress: bool = True) -> Path:
    """Generate (or find) the six data sets of the profile; returns their root directory
    (``results/data/<profile>``, holding one PDEGym-layout folder per data set)."""
    profile = as_profile(profile)
    from pdeinf.data.generate import ensure_profile_data

    return Path(_call_with_supported(ensure_profile_data, profile, progress=progress))


def _scheduled_checkpoints(profile: Profile, pde: str) -> tuple[int, ...]:
    return tuple(sorted({int(e) for e in profile.checkpoints[pde]}))


def training_complete(profile: ProfileLike, pde: str, model: str, seed: int) -> bool:
    """True when every scheduled checkpoint of the run exists (non-empty)."""
    profile = as_profile(profile)
    for epoch in _scheduled_checkpoints(profile, pde):
        ckpt = checkpoint_path(profile, pde, model, seed, epoch)
        if not ckpt.is_file() or ckpt.stat().st_size == 0:
            return False
    return True


def ensure_training(
    profile: ProfileLike, pde: str, model: str, *, progress: bool = True
) -> dict[int, Path]:
    """Train ``model`` on ``pde`` for every seed of the profile (resuming partial runs).

    Returns ``{seed: run_dir}``; each run directory holds ``ckpt_e<epoch:04d>.pt`` for the
    profile's checkpoint schedule. Runs whose checkpoints all exist are not touched.
    """
    profile = as_profile(profile)
    _check_pde_model(profile, pde, model)
    runs: dict[int, Path] = {}
    missing = [s for s in profile.seeds if not training_complete(profile, pde, model, s)]
    if missing:
        data_root = ensure_data(profile, progress=progress)
        from pdeinf.training.train import train

        for seed in missing:
            result = train(pde, model, int(seed), profile, data_root=data_root, progress=progress)
            if not training_complete(profile, pde, model, seed):
                raise RuntimeError(
                    f"training {run_name(pde, model, seed)} finished without all scheduled "
                    f"checkpoints {_scheduled_checkpoints(profile, pde)} in {result.run_dir}"
                )
    for seed in profile.seeds:
        runs[int(seed)] = checkpoint_path(profile, pde, model, seed, 1).parent
    return runs


def _sweep_covers(ds, profile: Profile, pde: str) -> bool:
    """Does a loaded sweep hold every (seed, checkpoint, batch) of the profile?"""
    try:
        seeds = {int(s) for s in ds["seed"].values}
        epochs = {int(e) for e in ds["epoch"].values}
        batches = {int(b) for b in ds["batch"].values}
    except KeyError:
        return False
    return (
        "pi" in ds
        and {int(s) for s in profile.seeds} <= seeds
        and {int(e) for e in profile.checkpoints[pde]} <= epochs
        and set(range(profile.n_influence_batches)) <= batches
    )


def _call_with_supported(func, *args, **kwargs):
    """Call ``func`` with only the keyword arguments its signature accepts."""
    params = inspect.signature(func).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return func(*args, **kwargs)
    return func(*args, **{k: v for k, v in kwargs.items() if k in params})


#: (metric, observable) -> name of the variant along the sweep's `variant` dimension.
INFLUENCE_VARIANTS: dict[tuple[str, str], str] = {
    ("gauss-newton", "smse"): "gauss-newton",
    ("euclidean", "smse"): "euclidean",
    ("adam", "smse"): "adam",
    ("gauss-newton", "mass_drift"): "gn-mass",
    ("gauss-newton", "energy_drift"): "gn-energy",
}


def ensure_influence(
    profile: ProfileLike,
    pde: str,
    model: str,
    *,
    metric: str | None = None,
    observable: str | None = None,
    progress: bool = True,
):
    """Influence matrices of every (seed, checkpoint, influence batch), as an `xr.Dataset`.

    With ``metric`` and ``observable`` left None: everything the sweep stores, ``pi`` with dims
    ``(seed, epoch, batch, variant, t_resp, c_resp, t_pert, c_pert)`` (variants
    gauss-newton, euclidean, adam, and for CE gn-mass, gn-energy), ``losses (seed, epoch,
    batch, t, c)``, ``eta_eigenvalues``, ``rank``, ``input_distance`` (see
    `pdeinf.influence.sweep`). Giving either selects one variant (metric "gauss-newton" |
    "euclidean" | "adam", observable "smse" | "mass_drift" | "energy_drift"; the other
    defaults to gauss-newton / smse): ``pi`` then has no ``variant`` dimension and
    ``attrs["metric"]``, ``attrs["observable"]`` name it.

    Trains first if needed; runs the sweep only when the cached one is missing or incomplete
    (the sweep itself skips task files that already exist).
    """
    profile = as_profile(profile)
    _check_pde_model(profile, pde, model)
    variant = None
    if metric is not None or observable is not None:
        key = (metric or "gauss-newton", observable or "smse")
        if key not in INFLUENCE_VARIANTS:
            known = ", ".join(f"{m}/{o}" for m, o in INFLUENCE_VARIANTS)
            raise InputError(f"metric/observable: {key[0]}/{key[1]} is not computed; one of {known}")
        variant = INFLUENCE_VARIANTS[key]
    from pdeinf.influence import sweep

    ds = _try_load_sweep(sweep, profile, pde, model)
    if ds is None or not _sweep_covers(ds, profile, pde):
        data_root = ensure_data(profile, progress=progress)
        ensure_training(profile, pde, model, progress=progress)
        sweep.run_sweep(profile, pde, model, data_root=data_root, progress=progress)
        ds = _try_load_sweep(sweep, profile, pde, model)
        if ds is None or not _sweep_covers(ds, profile, pde):
            raise RuntimeError(
                f"influence sweep {pde}-{model} ({profile.name}) did not produce every "
                f"(seed, checkpoint, batch) of the profile"
            )
    if variant is None:
        return ds
    held = [str(v) for v in ds["variant"].values] if "variant" in ds["pi"].dims else []
    if variant not in held:
        raise InputError(f"metric/observable: variant {variant!r} not in the {pde} sweep ({held})")
    out = ds.sel(variant=variant, drop=True)
    out.attrs.update(metric=key[0], observable=key[1], variant=variant)
    return out


def _try_load_sweep(sweep, profile: Profile, pde: str, model: str):
    """The cached sweep, or None when a task file is missing or invalid."""
    try:
        return sweep.load_sweep(profile, pde, model)
    except (InputError, FileNotFoundError, OSError):
        return None


# ---- rollouts -------------------------------------------------------------------------
def rollouts_path(profile: ProfileLike, pde: str, model: str) -> Path:
    """``results/rollouts/<profile>/<PDE>-<model>.nc``."""
    profile = as_profile(profile)
    return paths.results_dir() / "rollouts" / profile.name / f"{pde}-{model}.nc"


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _rollout_key(profile: Profile, pde: str, model: str) -> str:
    """Hash of everything the rollout errors depend on: profile, package version and the
    bytes of the final checkpoints (retraining invalidates the cache)."""
    import pdeinf

    final = _final_epoch(profile, pde)
    payload = {
        "profile": profile.to_dict(),
        "version": pdeinf.__version__,
        "pde": pde,
        "model": model,
        "checkpoints": [
            _file_digest(checkpoint_path(profile, pde, model, s, final)) for s in profile.seeds
        ],
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def _load_valid_rollouts(path: Path, key: str):
    import xarray as xr

    if not path.is_file():
        return None
    try:
        with xr.open_dataarray(path, engine="h5netcdf") as da:
            if da.attrs.get("cache_key") != key:
                return None
            return da.load()
    except (OSError, ValueError, KeyError):
        return None


def ensure_rollouts(profile: ProfileLike, pde: str, model: str, *, progress: bool = True):
    """Per-step rollout SMSE of the final checkpoint of every seed.

    Returns an `xr.DataArray` named ``smse`` with dims ``(seed, class, trajectory, start,
    horizon)``: autoregressive rollouts from snapshot ``start`` of the first
    ``n_influence_batches`` test trajectories of each class (the trajectories that form the
    influence batches, so ``trajectory`` = influence-batch index), error of step ``horizon``
    (1-based) against the reference. Cached as netCDF, keyed by the profile, the package
    version and the final checkpoints' bytes.
    """
    profile = as_profile(profile)
    _check_pde_model(profile, pde, model)
    ensure_training(profile, pde, model, progress=progress)
    path = rollouts_path(profile, pde, model)
    key = _rollout_key(profile, pde, model)
    cached = _load_valid_rollouts(path, key)
    if cached is not None:
        return cached
    da = _compute_rollouts(profile, pde, model, progress=progress)
    da.attrs.update(
        cache_key=key,
        profile=profile.name,
        pde=pde,
        model=model,
        epoch=_final_epoch(profile, pde),
        description="per-step SMSE of autoregressive rollouts (final checkpoint)",
    )
    write_netcdf(da, path)
    return da


def _compute_rollouts(profile: Profile, pde: str, model: str, *, progress: bool):
    import torch
    import xarray as xr
    from tqdm.auto import tqdm

    from pdeinf.data.datasets import PDEData
    from pdeinf.training.train import load_checkpoint

    data = PDEData(ensure_data(profile, progress=progress), pde, t_max=profile.t_max)
    n = profile.n_influence_batches
    final = _final_epoch(profile, pde)
    per_seed = []
    for seed in tqdm(profile.seeds, desc=f"rollouts {pde}-{model}", disable=not progress):
        trajectories = {}
        for cls in PDE_CLASSES[pde]:
            test = data.trajectories(cls, "test", int(seed))
            if len(test) < n:
                raise InputError(
                    f"profile {profile.name!r}: class {cls} has {len(test)} test trajectories, "
                    f"fewer than n_influence_batches={n}"
                )
            trajectories[cls] = test[:n]
        net, _ = load_checkpoint(checkpoint_path(profile, pde, model, seed, final))
        with torch.no_grad():
            errors = rollouts_all_starts(net, trajectories)
        per_seed.append(errors.expand_dims(seed=[int(seed)]))
    da = xr.concat(per_seed, dim="seed")
    da = da.transpose("seed", "class", "trajectory", "start", "horizon")
    da.name = "smse"
    return da


def rollouts_all_starts(net, trajectories_by_class: dict, *, max_batch: int = 64):
    """`pdeinf.training.rollout.rollout_errors` for every start, batched over starts.

    Rolling out from each start separately runs T-1 tiny batches per class; here the
    windows ``u[s:]`` of all starts s become the members of one batch (padded at the end with
    the last snapshot, whose errors are then discarded), so each class takes T-1 model calls
    of up to ``max_batch`` states. Same values, dims ``(class, trajectory, start, horizon)``;
    NaN where ``start + horizon > T - 1``.
    """
    import numpy as np
    import xarray as xr

    from pdeinf.training.rollout import rollout_errors

    classes = list(trajectories_by_class)
    n_traj, n_times = next(iter(trajectories_by_class.values())).shape[:2]
    steps = n_times - 1
    chunk = max(1, max_batch // steps)
    values = np.full((len(classes), n_traj, steps, steps), np.nan)
    for ci, cls in enumerate(classes):
        arr = np.asarray(trajectories_by_class[cls])
        for lo in range(0, arr.shape[0], chunk):
            part = arr[lo : lo + chunk]  # [m, T, C, H, W]
            windows = np.stack(
                [np.concatenate([part[:, s:], np.repeat(part[:, -1:], s, axis=1)], axis=1)
                 for s in range(steps)], axis=1)  # [m, S, T, C, H, W]
            flat = windows.reshape(-1, *windows.shape[2:])
            err = rollout_errors(net, {cls: flat}, starts=[0], horizon=steps,
                                 batch_size=max_batch)
            values[ci, lo : lo + len(part)] = err.values[0, :, 0, :].reshape(len(part), steps, steps)
    start = np.arange(steps)[:, None]
    horizon = np.arange(1, steps + 1)[None, :]
    values[..., start + horizon > steps] = np.nan
    return xr.DataArray(
        values, dims=("class", "trajectory", "start", "horizon"),
        coords={"class": classes, "trajectory": np.arange(n_traj), "start": np.arange(steps),
                "horizon": np.arange(1, steps + 1)},
        name="smse", attrs={"description": "per-step SMSE of autoregressive rollouts"},
    )


# ---- training curves ------------------------------------------------------------------
_HISTORY_COLUMNS = {"train_smse": "train_loss", "val_smse": "val_loss"}


def training_history(profile: ProfileLike, pde: str, model: str):
    """Loss curves of every seed: a `pandas.DataFrame` with columns
    ``seed, epoch, train_loss, val_loss`` (mean SMSE over the epoch's training transitions,
    and of the model after the epoch on the validation transitions), one row per seed and
    epoch, sorted. Read from each run's ``history.json`` (else its latest checkpoint's
    ``history``). Does not train."""
    import pandas as pd

    profile = as_profile(profile)
    _check_pde_model(profile, pde, model)
    frames = []
    for seed in profile.seeds:
        run_dir = checkpoint_path(profile, pde, model, seed, 1).parent
        history, source = _read_history(run_dir)
        frame = _history_frame(history, source)
        frame.insert(0, "seed", int(seed))
        frames.append(frame)
    out = pd.concat(frames, ignore_index=True)
    return out.sort_values(["seed", "epoch"], ignore_index=True)


def _read_history(run_dir: Path):
    json_path = run_dir / "history.json"
    if json_path.is_file():
        try:
            return json.loads(json_path.read_text()), json_path
        except json.JSONDecodeError as err:
            raise InputError(f"{json_path}: not valid JSON ({err})") from None
    ckpts = sorted(run_dir.glob("ckpt_e*.pt"))
    if not ckpts:
        raise FileNotFoundError(
            f"{run_dir}: no history.json and no checkpoints; run ensure_training first"
        )
    import torch

    ckpt = torch.load(ckpts[-1], map_location="cpu", weights_only=True)
    return ckpt.get("history"), ckpts[-1]


def _history_frame(history, source: Path):
    """Accepts a list of per-epoch dicts or a dict of per-epoch lists."""
    import pandas as pd

    if not history:
        raise InputError(f"{source}: empty training history")
    frame = pd.DataFrame(history).rename(columns=_HISTORY_COLUMNS)
    if "epoch" not in frame.columns:
        frame.insert(0, "epoch", range(1, len(frame) + 1))
    missing = {"train_loss", "val_loss"} - set(frame.columns)
    if missing:
        raise InputError(f"{source}: history lacks {sorted(missing)}")
    frame = frame[["epoch", "train_loss", "val_loss"]].copy()
    frame["epoch"] = frame["epoch"].astype(int)
    return frame


# --------------------------------------------------------------------------------------
# whole pipeline
# --------------------------------------------------------------------------------------
@dataclass
class StageTiming:
    stage: str
    seconds: float
    status: str = "ok"


@dataclass
class ReproduceReport:
    """What `reproduce` did: per-stage wall times and the per-notebook results."""

    profile: str
    timings: list[StageTiming] = field(default_factory=list)
    notebooks: list[dict] = field(default_factory=list)

    @property
    def failed(self) -> list[dict]:
        return [nb for nb in self.notebooks if nb["status"] != "ok"]

    def to_dict(self) -> dict:
        return {
            "profile": self.profile,
            "timings": [t.__dict__ for t in self.timings],
            "notebooks": self.notebooks,
        }


@contextlib.contextmanager
def _timed(report_timings: list[StageTiming], stage: str, *, echo: bool) -> Iterator[None]:
    if echo:
        print(f"[pdeinf] {stage} ...", file=sys.stderr, flush=True)
    start = time.perf_counter()
    try:
        yield
    except BaseException:
        report_timings.append(StageTiming(stage, time.perf_counter() - start, "failed"))
        raise
    report_timings.append(StageTiming(stage, time.perf_counter() - start))
    if echo:
        print(f"[pdeinf] {stage}: {report_timings[-1].seconds:.1f} s", file=sys.stderr, flush=True)


def run_all(
    profile: ProfileLike, *, progress: bool = True, timings: list[StageTiming] | None = None
) -> list[StageTiming]:
    """Every cached stage for every (PDE, model) of the profile: data, training, influence
    sweep, rollouts. Returns the wall time of each stage (cached stages take ~0 s)."""
    profile = as_profile(profile)
    timings = [] if timings is None else timings
    with _timed(timings, "data", echo=progress):
        ensure_data(profile, progress=progress)
    for pde in profile.pdes:
        for model in profile.models:
            with _timed(timings, f"training {pde}-{model}", echo=progress):
                ensure_training(profile, pde, model, progress=progress)
            with _timed(timings, f"influence {pde}-{model}", echo=progress):
                ensure_influence(profile, pde, model, progress=progress)
            with _timed(timings, f"rollouts {pde}-{model}", echo=progress):
                ensure_rollouts(profile, pde, model, progress=progress)
    return timings


# ---- notebooks ------------------------------------------------------------------------
def notebooks_source() -> Path:
    """Directory the notebooks are read from: ``$PDEINF_HOME/notebooks`` when it exists,
    else the source checkout's ``notebooks/``."""
    home = paths.notebooks_dir()
    return home if home.is_dir() else _CHECKOUT_NOTEBOOKS


def list_notebooks(selection: Iterable[str] | str | None = None, *, source: Path | None = None):
    """The numbered notebooks (``NN_name.ipynb``) in order, optionally restricted to a
    selection of numbers or names (``"03,04"``, ``["03", "04_horizon"]``)."""
    source = Path(source) if source is not None else notebooks_source()
    available = sorted(p for p in source.glob("*.ipynb") if _NOTEBOOK_NAME.match(p.name))
    if selection is None:
        return available
    if isinstance(selection, str):
        selection = [s for s in selection.split(",")]
    wanted = [s.strip() for s in selection if s.strip()]
    if not wanted:
        raise InputError("notebooks: empty selection")
    chosen: list[Path] = []
    for item in wanted:
        stem = item.removesuffix(".ipynb")
        matches = [p for p in available if p.stem == stem or p.stem.split("_", 1)[0] == stem]
        if len(matches) != 1:
            names = ", ".join(p.stem for p in available) or f"none in {source}"
            raise InputError(f"notebooks: {item!r} matches no notebook; available: {names}")
        if matches[0] not in chosen:
            chosen.append(matches[0])
    return sorted(chosen)


def executed_dir() -> Path:
    """Executed copies of the notebooks: ``results/executed/``."""
    return paths.results_dir() / "executed"


def notebook_results_path(notebook: Path | str) -> Path:
    """``results/<notebook stem>.json``, written by the notebook itself."""
    return paths.results_dir() / f"{Path(notebook).stem}.json"


@contextlib.contextmanager
def _headless_env() -> Iterator[None]:
    """The kernel inherits our environment: make matplotlib headless for its lifetime."""
    saved = os.environ.get("MPLBACKEND")
    os.environ.setdefault("MPLBACKEND", "Agg")
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("MPLBACKEND", None)
        else:
            os.environ["MPLBACKEND"] = saved


def _tree_signature(root: Path, digest) -> None:
    """Feed (relative path, size, mtime) of every file under ``root`` into ``digest``."""
    if not root.exists():
        return
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        stat = path.stat()
        digest.update(f"{path.relative_to(root)}:{stat.st_size}:{stat.st_mtime_ns};".encode())


def notebook_cache_key(notebook: Path | str, profile: ProfileLike) -> str:
    """What an executed notebook depends on: its own bytes, the profile, the package source
    and the stage outputs of the profile (by path, size and mtime). Equal keys mean the
    executed copy, its figures and its results JSON are still what a rerun would produce."""
    profile = as_profile(profile)
    digest = hashlib.sha256()
    digest.update(Path(notebook).read_bytes())
    digest.update(profile.name.encode())
    package = Path(__file__).resolve().parent
    for source in sorted(package.rglob("*.py")):
        digest.update(source.read_bytes())
    for stage in ("data", "runs", "influence", "rollouts"):
        _tree_signature(paths.results_dir() / stage / profile.name, digest)
    return digest.hexdigest()


def _executed_is_current(notebook: Path, key: str) -> bool:
    """True when ``results/executed/<name>.ipynb`` was made with ``key`` and the results
    JSON and every figure it names still exist."""
    import nbformat

    executed = executed_dir() / notebook.name
    results = notebook_results_path(notebook)
    if not executed.is_file() or not results.is_file():
        return False
    try:
        stored = nbformat.read(executed, as_version=4).metadata.get("pdeinf", {}).get("cache_key")
        figures = _figures_of(json.loads(results.read_text()))
    except Exception:  # noqa: BLE001 - an unreadable copy is simply not current
        return False
    return stored == key and all(Path(f).exists() for f in figures)


def run_notebook(
    notebook: Path | str,
    profile: ProfileLike,
    *,
    progress: bool = True,
    timeout: float | None = None,
    cache_key: str | None = None,
) -> Path:
    """Execute one notebook with papermill at ``profile``; returns the executed copy
    ``results/executed/<name>.ipynb``.

    Kernel ``python3``, parameters ``{"profile": <name>}``, cwd = the notebook's folder,
    absolute paths throughout. The copy is written under a temporary name and renamed; on
    failure it is kept as ``<name>.failed.ipynb`` and the papermill error propagates.
    """
    import papermill as pm

    profile = as_profile(profile)
    notebook = Path(notebook).resolve()
    if not notebook.is_file():
        raise InputError(f"notebook: {notebook} does not exist")
    out_dir = executed_dir()
    out_dir.mkdir(parents=True, exist_ok=True)
    final = out_dir / notebook.name
    partial = out_dir / f".{notebook.stem}.{os.getpid()}.partial.ipynb"
    failed = out_dir / f"{notebook.stem}.failed.ipynb"
    try:
        with _headless_env():
            pm.execute_notebook(
                str(notebook),
                str(partial),
                parameters={"profile": profile.name},
                kernel_name="python3",
                cwd=str(notebook.parent),
                progress_bar=progress,
                execution_timeout=timeout,
            )
    except BaseException:
        if partial.exists():
            os.replace(partial, failed)
        raise
    if cache_key is not None:
        import nbformat

        executed = nbformat.read(partial, as_version=4)
        executed.metadata.setdefault("pdeinf", {})["cache_key"] = cache_key
        nbformat.write(executed, partial)
    os.replace(partial, final)
    failed.unlink(missing_ok=True)
    return final


def _leaves(obj, prefix: str = "") -> Iterator[tuple[str, object]]:
    if isinstance(obj, dict):
        for key, value in obj.items():
            yield from _leaves(value, f"{prefix}.{key}" if prefix else str(key))
    else:
        yield prefix, obj


def _figures_of(results: dict) -> list[str]:
    """PNG figures listed by a results JSON (PDF twins are left out of the table)."""
    figs = results.get("figures") or []
    if isinstance(figs, str):
        figs = [figs]
    if isinstance(figs, dict):
        figs = list(figs.values())
    pngs = [str(f) for f in figs if str(f).endswith(".png")]
    return pngs or [str(f) for f in figs]


def summarize_notebook(notebook: Path | str, *, max_numbers: int = 4) -> dict:
    """What the closing table shows of ``results/<notebook>.json``: its PNG figures, the
    first ``max_numbers`` scalar numbers (from its ``numbers`` entry when it has one), and
    verdicts: every boolean leaf named ``reproduced_<finding>`` counted over the (PDE,
    model) pairs, e.g. ``{"ridge": "4/4"}``."""
    path = notebook_results_path(notebook)
    out = {"notebook": Path(notebook).stem, "figures": [], "numbers": {}, "verdicts": {},
           "results": None}
    if not path.is_file():
        return out
    try:
        results = json.loads(path.read_text())
    except json.JSONDecodeError:
        return out
    if not isinstance(results, dict):
        return out
    out["results"] = str(path)
    out["figures"] = _figures_of(results)
    source = results.get("numbers", {k: v for k, v in results.items() if k != "figures"})
    for key, value in _leaves(source):
        if len(out["numbers"]) >= max_numbers:
            break
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out["numbers"][key] = float(value)
    tally: dict[str, list[int]] = {}
    for key, value in _leaves(results):
        name = key.rsplit(".", 1)[-1]
        if isinstance(value, bool) and name.startswith("reproduced_"):
            counts = tally.setdefault(name.removeprefix("reproduced_"), [0, 0])
            counts[0] += int(value)
            counts[1] += 1
    out["verdicts"] = {k: f"{yes}/{n}" for k, (yes, n) in tally.items()}
    return out


def _format_number(value: float) -> str:
    if not math.isfinite(value):
        return str(value)
    return f"{value:.4g}"


def _display_path(path: str) -> str:
    try:
        return str(Path(path).relative_to(paths.root()))
    except ValueError:
        return path


def format_report(report: ReproduceReport) -> str:
    """The closing table of `reproduce`: stage times, then one block per notebook with its
    figures, key numbers and finding verdicts (reproduced / pairs)."""
    lines = [f"pdeinf reproduce --profile {report.profile}", "", "stage timings (wall, s):"]
    width = max([len(t.stage) for t in report.timings] + [5])
    for t in report.timings:
        lines.append(f"  {t.stage:<{width}}  {t.seconds:9.1f}  {t.status}")
    lines.append(f"  {'total':<{width}}  {sum(t.seconds for t in report.timings):9.1f}")
    if report.notebooks:
        lines += ["", "notebooks:"]
        for nb in report.notebooks:
            lines.append(f"  {nb['notebook']}  [{nb['status']}]  {nb['seconds']:.1f} s")
            for fig in nb.get("figures", []):
                lines.append(f"      figure   {_display_path(fig)}")
            numbers = ", ".join(f"{k}={_format_number(v)}" for k, v in nb.get("numbers", {}).items())
            if numbers:
                lines.append(f"      numbers  {numbers}")
            verdicts = ", ".join(f"{k} {v}" for k, v in nb.get("verdicts", {}).items())
            if verdicts:
                lines.append(f"      findings reproduced: {verdicts}")
            if nb["status"] != "ok":
                lines.append(f"      error    {nb.get('error', '')}")
    return "\n".join(lines)


def reproduce(
    profile: ProfileLike,
    *,
    notebooks: Sequence[str] | str | None = None,
    only_pipeline: bool = False,
    progress: bool = True,
) -> ReproduceReport:
    """Data, training, influence sweeps, rollouts, then every notebook (or the selected
    ones) through papermill; executed copies under ``results/executed/``. Prints the closing
    table and writes it to ``results/reproduce_<profile>.json``. Notebook failures do not
    stop the others; they are listed in the report (``report.failed``)."""
    profile = as_profile(profile)
    selected = [] if only_pipeline else list_notebooks(notebooks)  # validate before long work
    if not only_pipeline and not selected:
        raise InputError(f"notebooks: no numbered notebooks found in {notebooks_source()}")
    report = ReproduceReport(profile.name)
    run_all(profile, progress=progress, timings=report.timings)
    for nb in selected:
        start = time.perf_counter()
        entry: dict = {"notebook": nb.stem}
        try:
            key = notebook_cache_key(nb, profile)
            if _executed_is_current(nb, key):
                entry.update(status="ok", executed=str(executed_dir() / nb.name), cached=True)
            else:
                with _timed(report.timings, f"notebook {nb.stem}", echo=progress):
                    executed = run_notebook(nb, profile, progress=progress, cache_key=key)
                entry.update(status="ok", executed=str(executed))
        except Exception as err:  # noqa: BLE001 - reported per notebook, others still run
            entry.update(status="failed", error=f"{type(err).__name__}: {_first_line(err)}")
        entry["seconds"] = time.perf_counter() - start
        summary = summarize_notebook(nb)
        entry.update(figures=summary["figures"], numbers=summary["numbers"],
                     verdicts=summary["verdicts"], results=summary["results"])
        report.notebooks.append(entry)
    _write_json_atomic(report.to_dict(), paths.results_dir() / f"reproduce_{profile.name}.json")
    print(format_report(report), flush=True)
    return report


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    # papermill errors start with a banner line; the exception name/value follows
    for line in text.splitlines():
        line = line.strip()
        if line and not set(line) <= set("-=*"):
            return line[:300]
    return text[:300]


def _write_json_atomic(obj, path: Path) -> None:
    write_bytes(path, json.dumps(obj, indent=2, default=str).encode())


# --------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------
def add_parser(subparsers):
    parser = subparsers.add_parser(
        "reproduce",
        help="run the cached pipeline and every notebook of a profile",
        description=(
            "Data, training, influence sweeps and rollouts (cached under results/), then every "
            "notebook through papermill (executed copies in results/executed/), then a table "
            "of figures, key numbers and timings."
        ),
    )
    parser.add_argument("--profile", choices=PROFILE_NAMES, default=None,
                        help="size profile (default: $PDEINF_PROFILE, else quick)")
    parser.add_argument("--only-pipeline", action="store_true",
                        help="run the cached stages only, no notebooks")
    parser.add_argument("--notebooks", default=None, metavar="NN,NN",
                        help="comma-separated notebook numbers or names, e.g. 03,04")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.set_defaults(func=_cli)
    return parser


def _cli(args) -> int:
    if args.only_pipeline and args.notebooks:
        raise InputError("--notebooks: cannot be combined with --only-pipeline")
    report = reproduce(
        as_profile(args.profile),
        notebooks=args.notebooks,
        only_pipeline=args.only_pipeline,
        progress=not args.no_progress,
    )
    for nb in report.failed:
        print(f"pdeinf reproduce: notebook {nb['notebook']} failed: {nb.get('error')}",
              file=sys.stderr)
    return 1 if report.failed else 0
