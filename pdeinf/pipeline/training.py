"""Stages 1 and 2: the data sets of a profile, then its training runs (every seed of a (PDE,
model)), keyed on their inputs. The data sets (generated here, or a user's PDEGym files) are
validated (finite, positive density / pressure / energy, plausible ranges) once per content
before anything trains on them.

A run is current when every scheduled checkpoint exists and its `stage_key.json` holds the key
of what it was trained from (data fingerprint, training settings, package version); otherwise
it is moved aside to `<run>.stale/` (replacing an older one) and retrained.
"""
from __future__ import annotations

import functools
import json
import shutil
from pathlib import Path

from pdeinf import paths
from pdeinf.atomic import write_json
from pdeinf.errors import InputError, NumericalError
from pdeinf.pipeline.common import (
    ProfileLike,
    as_profile,
    check_selection,
    content_key,
    run_dir,
    scheduled_checkpoints,
)

STAGE_KEY = "stage_key.json"
_TRAINING_FIELDS = ("resolution", "model_size", "model_variant", "residual", "epochs",
                    "checkpoints", "batch_size", "lr", "weight_decay", "t_max", "split")


def content_cache_path() -> Path:
    """JSON cache of file content keys and validation passes (by path, mtime, size, inode)."""
    return paths.results_dir() / "cache" / "content_keys.json"


def ensure_data(profile: ProfileLike, *, progress: bool = True) -> Path:
    """Generate (or find) the six data sets of the profile; returns their root directory
    (``results/data/<profile>``, holding one PDEGym-layout folder per data set)."""
    from pdeinf.data.generate import ensure_profile_data

    return Path(ensure_profile_data(as_profile(profile), progress=progress))


def profile_data(profile: ProfileLike, pde: str, *, progress: bool = True, validate: bool = True):
    """`PDEData` of one PDE at the profile's `t_max` and split fractions, with the content
    cache; validated first (InputError naming file, variable, index and value on bad data)."""
    from pdeinf.data.datasets import PDEData

    profile = as_profile(profile)
    data = PDEData(ensure_data(profile, progress=progress), pde, t_max=profile.t_max,
                   fractions=profile.split, content_cache=content_cache_path())
    if validate:
        data.validate(progress=False)
    return data


def training_key(profile, pde: str, model: str, seed: int, data_fingerprint: str) -> str:
    """What a run depends on: data content, the profile's training settings, the version."""
    settings = {f: getattr(profile, f) for f in _TRAINING_FIELDS}
    return content_key(stage="training", pde=pde, model=model, seed=int(seed),
                       data=data_fingerprint, settings=settings)


def has_checkpoints(directory: Path, epochs) -> bool:
    """True when `directory` holds a non-empty checkpoint for every epoch of `epochs`."""
    return all((ckpt := paths.checkpoint_path(directory, e)).is_file() and ckpt.stat().st_size > 0
               for e in epochs)


def _stored_key(directory: Path) -> str | None:
    try:
        return json.loads((directory / STAGE_KEY).read_text()).get("key")
    except (OSError, ValueError, AttributeError):
        return None


def ensure_keyed_run(directory: Path, epochs, key: str, train_once, record: dict) -> Path:
    """Every trained run of the pipeline: `directory` is current when it holds a checkpoint for
    each of `epochs` and its `stage_key.json` records `key`. Otherwise a run of other inputs is
    set aside (`<run>.stale/`), `train_once()` trains (or resumes), and the key is written with
    `record`. A checkpoint that fails verification is moved aside first and rebuilt by resuming.
    NumericalError if training ends without every checkpoint."""
    from pdeinf.training.checkpoints import verify

    for epoch in epochs:
        verify(paths.checkpoint_path(directory, epoch))
    stored, complete = _stored_key(directory), has_checkpoints(directory, epochs)
    if complete and stored == key:
        return directory
    if stored != key and (stored is not None or complete) and directory.exists():
        # trained from other inputs: keep one copy beside it
        aside = directory.with_name(directory.name + ".stale")
        shutil.rmtree(aside, ignore_errors=True)
        directory.rename(aside)
    train_once()
    if not has_checkpoints(directory, epochs):
        raise NumericalError(f"training {directory} finished without all scheduled checkpoints "
                             f"{tuple(epochs)}")
    write_json(directory / STAGE_KEY, {"key": key, **record})
    return directory


def ensure_runs(profile, pde: str, model: str, seeds, root: Path, key_of, record: dict | None = None, *,
                epochs=None, train_data=None, progress: bool = True, train=None,
                **train_kwargs) -> dict[int, Path]:
    """`{seed: run_dir}` of `seeds` under `root`, each current (`ensure_keyed_run`) for
    `key_of(seed, fingerprint)` of the profile's data of `pde` (`fingerprint`, recorded with
    `record`) at each of `epochs` (None: the profile's checkpoints); trained where needed by
    `train(pde, model, seed, profile, data=..., out_dir=root, progress=progress, **train_kwargs)`
    (default `pdeinf.training.train.train`) on that data, or on `train_data(data)`."""
    profile = as_profile(profile)
    check_selection(profile, pde, model)
    if train is None:
        from pdeinf.training.train import train
    data = profile_data(profile, pde, progress=progress)
    fingerprint = str(data.fingerprint())
    data = data if train_data is None else train_data(data)
    epochs = scheduled_checkpoints(profile, pde) if epochs is None else epochs
    return {int(seed): ensure_keyed_run(root / paths.run_name(pde, model, seed), epochs,
                                        key_of(seed, fingerprint),
                                        functools.partial(train, pde, model, int(seed), profile, data=data,
                                                          out_dir=root, progress=progress, **train_kwargs),
                                        {"data_fingerprint": fingerprint, **(record or {})})
            for seed in seeds}


def ensure_training(profile: ProfileLike, pde: str, model: str, *, progress: bool = True,
                    train=None) -> dict[int, Path]:
    """Train `model` on `pde` for every seed of the profile (resuming partial runs, retraining
    stale ones); ``{seed: run_dir}``. `train`: default `pdeinf.training.train.train`."""
    profile = as_profile(profile)
    return ensure_runs(profile, pde, model, profile.seeds, paths.runs_dir(profile.name),
                       functools.partial(training_key, profile, pde, model), progress=progress, train=train)


# ---- training curves ------------------------------------------------------------------
_HISTORY_COLUMNS = {"train_smse": "train_loss", "val_smse": "val_loss"}


def training_history(profile: ProfileLike, pde: str, model: str):
    """Loss curves of every seed: a `pandas.DataFrame` with columns ``seed, epoch, train_loss,
    val_loss`` (mean SMSE over the epoch's training transitions; of the model after the epoch
    on the validation transitions), sorted. Read from each run's ``history.json`` (else its
    latest checkpoint's ``history``: a list of per-epoch dicts or a dict of lists). Does not
    train; InputError when a run has no readable history."""
    import pandas as pd

    profile = as_profile(profile)
    check_selection(profile, pde, model)
    frames = []
    for seed in profile.seeds:
        history, source = _read_history(run_dir(profile, pde, model, seed))
        if not history:
            raise InputError(f"{source}: empty training history")
        frame = pd.DataFrame(history).rename(columns=_HISTORY_COLUMNS)
        if "epoch" not in frame.columns:
            frame.insert(0, "epoch", range(1, len(frame) + 1))
        missing = {"train_loss", "val_loss"} - set(frame.columns)
        if missing:
            raise InputError(f"{source}: history lacks {sorted(missing)}")
        frame = frame[["epoch", "train_loss", "val_loss"]].astype({"epoch": int})
        frames.append(frame.assign(seed=int(seed)))
    out = pd.concat(frames, ignore_index=True)[["seed", "epoch", "train_loss", "val_loss"]]
    return out.sort_values(["seed", "epoch"], ignore_index=True)


def _read_history(directory: Path):
    json_path = directory / "history.json"
    if json_path.is_file():
        try:
            return json.loads(json_path.read_text()), json_path
        except json.JSONDecodeError as err:
            raise InputError(f"{json_path}: not valid JSON ({err})") from None
    ckpts = sorted(directory.glob("ckpt_e*.pt"))
    if not ckpts:
        raise InputError(f"{directory}: no history.json and no checkpoints; run ensure_training first")
    import torch

    ckpt = torch.load(ckpts[-1], map_location="cpu", weights_only=True)
    return ckpt.get("history"), ckpts[-1]
