"""Splits, trajectories, one-step transitions and influence batches of one PDE's three classes.

`PDEData(root, pde)` reads `root/<CLASS>/` (chunk files) or `root/<CLASS>.nc` for the classes
of `pdeinf.config.PDE_CLASSES[pde]`, first `t_max` snapshots. Trajectory indices are positions
in the file, the same in every split.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pdeinf.checks import one_of, positive_int
from pdeinf.config import PDE_CHANNELS, PDE_CLASSES
from pdeinf.data.pdegym import PDEGymReader, open_dataset
from pdeinf.errors import InputError

SPLITS: tuple[str, ...] = ("train", "val", "test")
#: Sizes of the released PDEGym files and their official contiguous split (scOT base.py).
OFFICIAL_N: dict[str, int] = {"CE": 10000, "NS": 20000}
OFFICIAL_VAL, OFFICIAL_TEST = 120, 240


def _check_n(n) -> int:
    if positive_int(n, "n", minimum=0) < 3:
        raise InputError(f"n={n}: need at least 3 trajectories for non-empty train/val/test splits")
    return int(n)


def _split_sizes(n: int, n_val: int, n_test: int) -> tuple[int, int, int]:
    """`(n_train, n_val, n_test)`: for a tiny n the larger of val / test gives one trajectory
    until train is non-empty."""
    while n - n_val - n_test < 1:
        if n_test >= n_val:
            n_test -= 1
        else:
            n_val -= 1
    return n - n_val - n_test, n_val, n_test


def official_split(n: int, pde: str) -> dict[str, np.ndarray]:
    """PDEGym's contiguous split: test = the last 240 trajectories, val = the 120 before, the
    rest train. Files smaller than the released size (10000 CE / 20000 NS) scale both counts
    (`round(n * 240 / N_released)`, at least 1 each: CE n = 24 gives 22 / 1 / 1)."""
    n = _check_n(n)
    full = OFFICIAL_N[one_of(pde, OFFICIAL_N, "pde")]
    if n >= full:
        n_train, n_test = n - OFFICIAL_VAL - OFFICIAL_TEST, OFFICIAL_TEST
    else:
        n_train, _, n_test = _split_sizes(n, max(1, round(n * OFFICIAL_VAL / full)),
                                              max(1, round(n * OFFICIAL_TEST / full)))
    indices = np.arange(n)
    return {"train": indices[:n_train], "val": indices[n_train:n - n_test], "test": indices[n - n_test:]}


def split_indices(
    n: int, seed: int, fractions: tuple[float, float, float] = (0.65, 0.05, 0.30)
) -> dict[str, np.ndarray]:
    """The paper's seeded split: `np.random.default_rng(seed).permutation(n)` cut into
    `round(f * n)` pieces (val and test at least 1, train the rest, at least 1), each sorted."""
    n = _check_n(n)
    positive_int(seed, "seed", minimum=0)
    fractions = tuple(float(f) for f in fractions)
    if len(fractions) != 3 or min(fractions) <= 0 or abs(sum(fractions) - 1.0) > 1e-9:
        raise InputError(f"fractions={fractions}: need three positive numbers summing to 1")
    n_train, n_val, _ = _split_sizes(n, max(1, round(fractions[1] * n)),
                                     max(1, round(fractions[2] * n)))
    permutation = np.random.default_rng(int(seed)).permutation(n)
    return {split: np.sort(part) for split, part in
            zip(SPLITS, np.split(permutation, [n_train, n_train + n_val]))}


class PDEData:
    """The three classes of one PDE under `root`.

    `split_mode`: "seeded" (`split_indices(n, seed, fractions)` per class) or "official"
    (PDEGym's contiguous split; no seed). `content_cache`: JSON file caching the files' content
    digests (`pdeinf.data.fingerprint`) and validations between runs; None: memory only.
    """

    def __init__(self, root: str | os.PathLike, pde: str, t_max: int = 17, *,
                 split_mode: str = "seeded",
                 fractions: tuple[float, float, float] = (0.65, 0.05, 0.30),
                 content_cache: str | os.PathLike | None = None):
        one_of(pde, PDE_CLASSES, "pde")
        one_of(split_mode, ("seeded", "official"), "split_mode")
        positive_int(t_max, "t_max (at least one transition)", minimum=2)
        self.root = Path(root)
        if not self.root.is_dir():
            raise InputError(f"{self.root}: data root is not a directory")
        self.pde = pde
        self.t_max = int(t_max)
        self.split_mode = split_mode
        self.fractions = tuple(fractions)
        self.content_cache = Path(content_cache) if content_cache is not None else None
        self.classes: tuple[str, ...] = PDE_CLASSES[pde]
        self.channels = PDE_CHANNELS[pde]
        self._paths = {}
        for cls in self.classes:
            directory, assembled = self.root / cls, self.root / f"{cls}.nc"
            if not (directory.is_dir() or assembled.is_file()):
                raise InputError(f"{self.root}: class {cls} not found (expected {directory}/ or {assembled})")
            self._paths[cls] = directory if directory.is_dir() else assembled
        self._readers: dict[str, PDEGymReader] = {}
        resolutions = {cls: self.reader(cls).resolution for cls in self.classes}
        if len(set(resolutions.values())) != 1:
            raise InputError(f"{self.root}: classes have different resolutions {resolutions}")
        self.resolution: tuple[int, int] = resolutions[self.classes[0]]

    def reader(self, cls: str) -> PDEGymReader:
        one_of(cls, self.classes, "class")
        if cls not in self._readers:
            reader = open_dataset(self._paths[cls])
            if reader.pde != self.pde:
                raise InputError(f"{self._paths[cls]}: holds {reader.pde} data, expected {self.pde}")
            if reader.n_times < self.t_max:
                raise InputError(f"{self._paths[cls]}: {reader.n_times} snapshots < t_max = {self.t_max}")
            self._readers[cls] = reader
        return self._readers[cls]

    def split(self, cls: str, split: str, seed: int) -> np.ndarray:
        """File indices of one class's split, sorted."""
        one_of(split, SPLITS, "split")
        n = self.reader(cls).n_samples
        if self.split_mode == "official":
            return official_split(n, self.pde)[split]
        return split_indices(n, seed, self.fractions)[split]

    def trajectories(self, cls: str, split: str, seed: int) -> np.ndarray:
        """float32 `[n, t_max, C, H, W]` of one class's split (in file order)."""
        return self.reader(cls).read(self.split(cls, split, seed), range(self.t_max))

    def fingerprint(self) -> str:
        """16 hex digits identifying the data (stored in training checkpoints): per class the
        content key of its files and their shape, plus the PDE, t_max and split settings.
        Editing a value in place changes it; moving the data root does not."""
        from pdeinf.data.fingerprint import content_key

        record: dict = {"pde": self.pde, "t_max": self.t_max, "split_mode": self.split_mode,
                        "fractions": list(self.fractions)}
        for cls in self.classes:
            reader = self.reader(cls)
            record[cls] = {
                "content": content_key(reader.paths, self.content_cache),
                "shape": [reader.n_samples, reader.n_times, reader.channels, *reader.resolution],
            }
        return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()[:16]

    def validate(self, *, progress: bool = False) -> None:
        """Physical validation of every file, once per content
        (`pdeinf.data.validation.validate_dataset`, cached in `content_cache`)."""
        from pdeinf.data.validation import validate_dataset

        validate_dataset(self, cache=self.content_cache, progress=progress)

    def __repr__(self) -> str:
        return (f"PDEData({str(self.root)!r}, pde={self.pde}, t_max={self.t_max}, "
                f"resolution={self.resolution})")


class TransitionDataset(torch.utils.data.Dataset):
    """One-step pairs `u_t -> u_{t+1}`, t = 0 .. t_max-2, of every trajectory of one split of
    the three classes. Item: `(x [C,H,W], y [C,H,W], class_index, trajectory_index, t)`.

    `in_memory=True` reads the split once; `False` reads each item's two snapshots on access.
    """

    def __init__(self, pde_data: PDEData, split: str, seed: int, *, in_memory: bool = True,
                 dtype: torch.dtype = torch.float32):
        self.pde_data = pde_data
        self.split = split
        self.dtype = dtype
        self.steps = pde_data.t_max - 1
        self.indices = [pde_data.split(cls, split, seed) for cls in pde_data.classes]
        self._offsets = np.concatenate([[0], np.cumsum([len(i) * self.steps for i in self.indices])])
        self._arrays = [torch.from_numpy(pde_data.trajectories(cls, split, seed)).to(dtype)
                        for cls in pde_data.classes] if in_memory else None

    def __len__(self) -> int:
        return int(self._offsets[-1])

    def locate(self, item: int) -> tuple[int, int, int]:
        """`item -> (class_index, position within the split, t)`."""
        if not -len(self) <= item < len(self):
            raise IndexError(f"item {item} out of range for {len(self)} transitions")
        item %= len(self)
        c = int(np.searchsorted(self._offsets, item, side="right") - 1)
        k, t = divmod(item - int(self._offsets[c]), self.steps)
        return c, k, t

    def __getitem__(self, item: int):
        c, k, t = self.locate(int(item))
        trajectory = int(self.indices[c][k])
        if self._arrays is not None:
            pair = self._arrays[c][k, t:t + 2]
        else:
            reader = self.pde_data.reader(self.pde_data.classes[c])
            pair = torch.from_numpy(reader.read([trajectory], [t, t + 1])[0]).to(self.dtype)
        return pair[0], pair[1], c, trajectory, t


@dataclass
class InfluenceBatch:
    """One trajectory of each class, all transitions: N = 3 * (t_max - 1) examples ordered
    n = c * (t_max - 1) + t. `inputs`/`targets` `[N, C, H, W]`; `t`, `c`, `trajectory` `[N]`
    (`trajectory` = position in the class's file)."""

    inputs: torch.Tensor
    targets: torch.Tensor
    t: np.ndarray
    c: np.ndarray
    trajectory: np.ndarray
    classes: tuple[str, ...]
    index: int
    seed: int

    def __len__(self) -> int:
        return self.inputs.shape[0]


def influence_batch(pde_data: PDEData, seed: int, index: int, split: str = "test", *,
                    dtype: torch.dtype = torch.float32) -> InfluenceBatch:
    """The `index`-th trajectory (sorted file order) of `split` of every class, as an
    `InfluenceBatch`. Out-of-range `index` -> InputError."""
    positive_int(index, "index", minimum=0)
    steps = pde_data.t_max - 1
    states, trajectories = [], []
    for cls in pde_data.classes:
        members = pde_data.split(cls, split, seed)
        if index >= len(members):
            raise InputError(
                f"index={index}: class {cls} has only {len(members)} {split} trajectories (seed {seed})")
        trajectories.append(int(members[index]))
        read = pde_data.reader(cls).read([trajectories[-1]], range(pde_data.t_max))[0]
        states.append(torch.from_numpy(read).to(dtype))
    n_classes = len(pde_data.classes)
    return InfluenceBatch(
        inputs=torch.cat([s[:-1] for s in states]), targets=torch.cat([s[1:] for s in states]),
        t=np.tile(np.arange(steps), n_classes), c=np.repeat(np.arange(n_classes), steps),
        trajectory=np.repeat(trajectories, steps),
        classes=pde_data.classes, index=int(index), seed=int(seed),
    )
