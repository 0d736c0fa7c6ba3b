"""Splits, PDEData, TransitionDataset and influence batches on small hand-made files."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from pdeinf.config import PDE_CLASSES
from pdeinf.data.datasets import (
    PDEData,
    TransitionDataset,
    influence_batch,
    official_split,
    split_indices,
)
from pdeinf.data.pdegym import write_chunk
from pdeinf.errors import InputError

N_TIMES = 7


def encoded_velocity(n, c, times=N_TIMES, size=4):
    """NS fields whose values encode (class, sample, time, component) so every item can be
    traced back: u = 1000 c + 10 k + t / 10, v = -u."""
    k = np.arange(n)[:, None, None, None]
    t = np.arange(times)[None, :, None, None]
    u = 1000.0 * c + 10.0 * k + t / 10.0 + np.zeros((1, 1, size, size))
    return np.stack([u, -u], axis=2).astype(np.float32)  # [n, T, 2, H, W]


@pytest.fixture()
def ns_root(tmp_path):
    sizes = {"NS-BB": 10, "NS-Gauss": 7, "NS-Sines": 12}
    for c, cls in enumerate(PDE_CLASSES["NS"]):
        data = encoded_velocity(sizes[cls], c)
        if cls == "NS-Gauss":  # assembled single file
            write_chunk(tmp_path / f"{cls}.nc", data, "NS", np.arange(N_TIMES) / 20)
        else:  # chunk directory, uneven chunks
            write_chunk(tmp_path / cls / "velocity_0.nc", data[:4], "NS", np.arange(N_TIMES) / 20)
            write_chunk(tmp_path / cls / "velocity_1.nc", data[4:], "NS", np.arange(N_TIMES) / 20)
    return tmp_path


def decode(u):
    """(class, sample, time) from an encoded u value."""
    u = float(u)
    c = int(u // 1000)
    k = int((u - 1000 * c) // 10)
    return c, k, round((u - 1000 * c - 10 * k) * 10)


@pytest.mark.parametrize("n", [3, 4, 7, 20, 100, 1001])
@pytest.mark.parametrize("seed", [0, 10, 35])
def test_split_indices_partition(n, seed):
    splits = split_indices(n, seed)
    joined = np.concatenate([splits[s] for s in ("train", "val", "test")])
    assert sorted(joined.tolist()) == list(range(n))  # disjoint and covering
    assert all(len(splits[s]) >= 1 for s in splits)
    if n >= 100:
        assert abs(len(splits["test"]) - 0.30 * n) <= 1 and abs(len(splits["val"]) - 0.05 * n) <= 1
    again = split_indices(n, seed)
    assert all(np.array_equal(splits[s], again[s]) for s in splits)


def test_split_depends_on_seed_and_rejects_bad_arguments():
    assert not np.array_equal(split_indices(100, 10)["test"], split_indices(100, 35)["test"])
    for bad in [{"n": 2, "seed": 0}, {"n": 0, "seed": 0}, {"n": 10, "seed": -1}, {"n": 10.0, "seed": 0}]:
        with pytest.raises(InputError):
            split_indices(**bad)
    with pytest.raises(InputError, match="fractions"):
        split_indices(10, 0, (0.5, 0.5, 0.5))
    with pytest.raises(InputError, match="fractions"):
        split_indices(10, 0, (1.0, 0.0, 0.0))


def test_official_split():
    full = official_split(10000, "CE")
    assert len(full["train"]) == 9640 and full["val"][0] == 9640 and full["test"][0] == 9760
    assert full["test"][-1] == 9999 and len(official_split(20000, "NS")["train"]) == 19640
    small = official_split(24, "CE")
    assert [len(small[s]) for s in ("train", "val", "test")] == [22, 1, 1]
    medium = official_split(2000, "NS")  # NS scales by 20000: val 12, test 24
    assert [len(medium[s]) for s in ("train", "val", "test")] == [1964, 12, 24]
    assert medium["test"][-1] == 1999 and medium["val"][-1] + 1 == medium["test"][0]
    with pytest.raises(InputError, match="pde"):
        official_split(100, "KdV")


def test_pde_data_reads_splits_in_file_order(ns_root):
    data = PDEData(ns_root, "NS", t_max=5)
    assert data.classes == PDE_CLASSES["NS"] and data.resolution == (4, 4)
    for c, cls in enumerate(data.classes):
        n = data.reader(cls).n_samples
        for split in ("train", "val", "test"):
            expected = split_indices(n, 10)[split]
            traj = data.trajectories(cls, split, seed=10)
            assert traj.shape == (len(expected), 5, 2, 4, 4)
            codes = [decode(traj[i, t, 0, 0, 0]) for i in range(len(expected)) for t in range(5)]
            assert codes == [(c, int(k), t) for k in expected for t in range(5)]
            np.testing.assert_array_equal(traj[:, :, 1], -traj[:, :, 0])


def test_fingerprint_changes_with_the_data(ns_root):
    first = PDEData(ns_root, "NS", t_max=5).fingerprint()
    assert first == PDEData(ns_root, "NS", t_max=5).fingerprint() and len(first) == 16
    assert PDEData(ns_root, "NS", t_max=6).fingerprint() != first
    write_chunk(ns_root / "NS-BB" / "velocity_2.nc", encoded_velocity(1, 0), "NS", np.arange(N_TIMES) / 20)
    assert PDEData(ns_root, "NS", t_max=5).fingerprint() != first


def test_transition_dataset_items(ns_root):
    data = PDEData(ns_root, "NS", t_max=5)
    for in_memory in (True, False):
        dataset = TransitionDataset(data, "train", seed=35, in_memory=in_memory)
        sizes = [len(split_indices(data.reader(cls).n_samples, 35)["train"]) for cls in data.classes]
        assert len(dataset) == 4 * sum(sizes)
        seen = set()
        for item in range(len(dataset)):
            x, y, c, trajectory, t = dataset[item]
            assert x.shape == (2, 4, 4) and x.dtype == torch.float32
            assert decode(x[0, 0, 0]) == (c, trajectory, t) and decode(y[0, 0, 0]) == (c, trajectory, t + 1)
            assert trajectory in split_indices(data.reader(data.classes[c]).n_samples, 35)["train"]
            seen.add((c, trajectory, t))
        assert len(seen) == len(dataset)  # every transition exactly once
    with pytest.raises(IndexError):
        dataset[len(dataset)]
    loader = torch.utils.data.DataLoader(TransitionDataset(data, "test", 35), batch_size=5, shuffle=True,
                                         generator=torch.Generator().manual_seed(0))
    x, y, c, _traj, t = next(iter(loader))
    assert x.shape == (5, 2, 4, 4) and c.shape == (5,)


def test_influence_batch_order_and_content(ns_root):
    data = PDEData(ns_root, "NS", t_max=5)
    for index in range(2):
        batch = influence_batch(data, seed=10, index=index)
        assert batch.inputs.shape == (12, 2, 4, 4) == batch.targets.shape
        for n in range(12):
            c, t = divmod(n, 4)  # n = c * (t_max - 1) + t
            assert (batch.c[n], batch.t[n]) == (c, t)
            expected_traj = split_indices(data.reader(data.classes[c]).n_samples, 10)["test"][index]
            assert batch.trajectory[n] == expected_traj
            assert decode(batch.inputs[n, 0, 0, 0]) == (c, expected_traj, t)
            assert decode(batch.targets[n, 0, 0, 0]) == (c, expected_traj, t + 1)
    assert influence_batch(data, 10, 0, dtype=torch.float64).inputs.dtype == torch.float64
    n_test = min(len(data.split(cls, "test", 10)) for cls in data.classes)  # NS-Gauss: 7 -> 2
    assert n_test == 2
    with pytest.raises(InputError, match="index=2: class NS-Gauss has only 2 test"):
        influence_batch(data, 10, 2)
    with pytest.raises(InputError, match="index"):
        influence_batch(data, 10, -1)


def test_pde_data_bad_input(ns_root, tmp_path):
    with pytest.raises(InputError, match="class CE-RP not found"):
        PDEData(ns_root, "CE")
    with pytest.raises(InputError, match="pde"):
        PDEData(ns_root, "KdV")
    with pytest.raises(InputError, match="7 snapshots < t_max = 17"):
        PDEData(ns_root, "NS").reader("NS-BB")
    with pytest.raises(InputError, match="t_max"):
        PDEData(ns_root, "NS", t_max=1)
    with pytest.raises(InputError, match="split"):
        PDEData(ns_root, "NS", t_max=5).trajectories("NS-BB", "training", 0)
    with pytest.raises(InputError, match="not a directory"):
        PDEData(tmp_path / "missing", "NS")
    official = PDEData(ns_root, "NS", t_max=5, split_mode="official")
    assert official.split("NS-Sines", "test", 0).tolist() == [11]
