"""What every stage of the pipeline shares: profile resolution, the selection checks, the run
layout of checkpoints, and content keys (hashes of what a stage's output depends on)."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from pdeinf import paths
from pdeinf.config import Profile, check_model, check_pde, get_profile
from pdeinf.errors import InputError

ProfileLike = Profile | str

#: A `Profile` from a Profile, a profile name, or None (then `$PDEINF_PROFILE`/quick).
as_profile = get_profile


def check_selection(profile: Profile, pde: str, model: str) -> None:
    """InputError unless `pde` and `model` are known and part of the profile."""
    check_pde(pde)
    check_model(model)
    for what, value, known in (("pde", pde, profile.pdes), ("model", model, profile.models)):
        if value not in known:
            raise InputError(f"{what}: {value!r} is not part of profile {profile.name!r} ({known})")


def check_pair(profile: Profile, pde: str, model: str, pairs, study: str) -> None:
    """InputError unless (pde, model) is one of `pairs`, the pairs of the profile's `study`."""
    if (pde, model) not in pairs:
        raise InputError(f"pde/model: ({pde}, {model}) is not among the {study} pairs of profile "
                         f"{profile.name!r} ({pairs})")


def run_dir(profile: ProfileLike, pde: str, model: str, seed: int) -> Path:
    """``runs_dir(profile)/<PDE>-<model>-s<seed>``."""
    return paths.runs_dir(as_profile(profile).name) / paths.run_name(pde, model, seed)


def checkpoint_path(profile: ProfileLike, pde: str, model: str, seed: int, epoch: int) -> Path:
    """``runs_dir(profile)/<PDE>-<model>-s<seed>/ckpt_e<epoch:04d>.pt`` (the training contract)."""
    return paths.checkpoint_path(run_dir(profile, pde, model, seed), epoch)


def scheduled_checkpoints(profile: Profile, pde: str) -> tuple[int, ...]:
    return tuple(sorted({int(e) for e in profile.checkpoints[pde]}))


def final_epoch(profile: Profile, pde: str) -> int:
    """The last kept checkpoint (the profiles keep one after the last epoch)."""
    return max(scheduled_checkpoints(profile, pde))


def file_digest(path: Path | str) -> str:
    """blake2b (16 bytes) of a file's bytes (`pdeinf.data.fingerprint.hash_file`, uncached)."""
    from pdeinf.data.fingerprint import hash_file

    return hash_file(path)


def content_key(**parts) -> str:
    """A key for a stage output: the hash of `parts` (JSON, sorted) and the package version."""
    import pdeinf

    payload = json.dumps({"version": pdeinf.__version__, **parts}, sort_keys=True, default=str)
    return hashlib.blake2b(payload.encode(), digest_size=16).hexdigest()


def require_checkpoints(files, hint: str) -> None:
    """InputError naming the first missing checkpoint of `files`, how many are missing, and
    `hint` (what to train first)."""
    missing = sorted({Path(f) for f in files if not Path(f).is_file()})
    if missing:
        raise InputError(f"{missing[0]}: checkpoint not found ({len(missing)} missing; {hint})")


def trajectory_list(batches) -> str:
    """The trajectories of influence batches, comma-separated (a result file's attribute)."""
    import numpy as np

    return ",".join(str(int(v)) for b in batches for v in np.unique(np.asarray(b.trajectory)))
