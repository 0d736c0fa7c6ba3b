"""Stage 1: the six data sets of a profile (generated here, or a user's PDEGym files), opened
with the profile's split and validated (finite, float, positive density / pressure / energy,
plausible ranges) before anything trains on them; each file is validated once per content."""
from __future__ import annotations

from pathlib import Path

from pdeinf import paths
from pdeinf.pipeline.common import ProfileLike, as_profile


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
