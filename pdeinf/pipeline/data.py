"""Stage 1: the six data sets of a profile (generated here, or a user's PDEGym files)."""
from __future__ import annotations

from pathlib import Path

from pdeinf.pipeline.common import ProfileLike, as_profile


def ensure_data(profile: ProfileLike, *, progress: bool = True) -> Path:
    """Generate (or find) the six data sets of the profile; returns their root directory
    (``results/data/<profile>``, holding one PDEGym-layout folder per data set)."""
    from pdeinf.data.generate import ensure_profile_data

    return Path(ensure_profile_data(as_profile(profile), progress=progress))
