"""The look-alike data generator, its CLI, and the data statistics.

Plumbing tests use a small hand-written initial-condition sampler (smooth fields whose
evolution the real solvers compute quickly); the end-to-end tests use the real sampler.
"""
from __future__ import annotations

import dataclasses
import math
import types

import numpy as np
import pytest
import torch

import pdeinf.solvers
from pdeinf.cli import main as cli_main
from pdeinf.config import DATASETS, PDE_CLASSES, get_profile
from pdeinf.data import generate as gen
from pdeinf.data.datasets import PDEData
from pdeinf.data.pdegym import open_dataset
from pdeinf.data.statistics import class_statistics, compare_to_pdegym
from pdeinf.errors import InputError, NumericalError
from pdeinf.solvers import euler, navier_stokes

GAMMA = 1.4


def smooth_sample(dataset, n, resolution, *, seed, dtype=torch.float64, start=0, device=None):
    """Smooth periodic initial conditions, sample k drawn from `(seed, k)` (CE conserved, NS
    velocity); the real sampler's interface."""
    coords = (torch.arange(resolution, dtype=dtype) + 0.5) / resolution
    y, x = torch.meshgrid(coords, coords, indexing="ij")
    states = []
    for index in range(start, start + n):
        rng = np.random.default_rng([seed, index])
        a, b, phase = rng.uniform(0.1, 0.3), rng.uniform(-0.5, 0.5), rng.uniform(0, 2 * np.pi)
        if dataset.startswith("CE"):
            rho = 1.0 + a * torch.sin(2 * math.pi * x + phase) * torch.cos(2 * math.pi * y)
            vx, vy = b + 0 * x, 0.2 * torch.sin(2 * math.pi * x)
            p = 1.0 + 0 * x
            states.append(euler.primitive_to_conserved(rho, vx, vy, p, GAMMA))
        else:
            u = a * torch.sin(2 * math.pi * x + phase) * torch.cos(2 * math.pi * y)
            v = -a * torch.cos(2 * math.pi * x + phase) * torch.sin(2 * math.pi * y)
            states.append(torch.stack([u, v]))
    return torch.stack(states)


@pytest.fixture()
def fake_sampler(monkeypatch):
    module = types.SimpleNamespace(sample=smooth_sample)
    monkeypatch.setattr(pdeinf.solvers, "initial_conditions", module, raising=False)
    return module


def block_average(u, f):
    *lead, h, w = u.shape
    return u.reshape(*lead, h // f, f, w // f, f).mean(axis=(-1, -3))


def test_ce_files_match_the_solver_and_conserve(tmp_path, fake_sampler):
    paths = gen.generate("CE-CRP", 3, 8, tmp_path, seed=5, solver_resolution=16, batch_size=2, progress=False)
    assert paths == [tmp_path / "CE-CRP" / "data_0.nc"]
    reader = open_dataset(tmp_path / "CE-CRP")
    out = reader.read()  # conserved [3, 21, 4, 8, 8]
    assert out.shape == (3, 21, 4, 8, 8)
    np.testing.assert_allclose(reader.times, np.arange(21) / 20)
    # the files hold the block average of the solver's fields (each trajectory solved alone)
    for j in (0, 2):
        u0 = smooth_sample("CE-CRP", 1, 16, seed=5, start=j)
        reference = euler.solve(u0, np.arange(21) / 20, gamma=GAMMA, progress=False)[0].numpy()
        np.testing.assert_allclose(out[j], block_average(reference, 2), rtol=2e-5, atol=2e-5)
    # finite volumes + block averaging conserve mass, momentum and energy on the torus
    totals = out.astype(np.float64).mean(axis=(-1, -2))  # [n, T, 4]
    np.testing.assert_allclose(totals, np.broadcast_to(totals[:, :1], totals.shape), rtol=1e-6, atol=1e-6)
    stored = reader.read_stored()  # primitive rho, vx, vy, p, E
    rho, vx, vy, p, energy = (stored[:, :, i].astype(np.float64) for i in range(5))
    np.testing.assert_allclose(p, (GAMMA - 1) * (energy - 0.5 * rho * (vx**2 + vy**2)), rtol=1e-5, atol=1e-6)
    assert p.min() > 0 and rho.min() > 0


def fourier_truncate(u, r):
    """Reference spectral truncation with the full complex FFT: keep modes |m_x|, |m_y| < r/2."""
    fine = u.shape[-1]
    coefficients = np.fft.fft2(u) / fine**2
    modes = np.fft.fftfreq(fine, 1.0 / fine).astype(int)
    keep = np.flatnonzero(np.abs(modes) < r / 2)
    coarse = modes[keep] % r  # position of mode m on the coarse grid's FFT layout
    out = np.zeros(u.shape[:-2] + (r, r), complex)
    out[..., coarse[:, None], coarse[None, :]] = coefficients[..., keep[:, None], keep[None, :]]
    return (np.fft.ifft2(out) * r**2).real


def test_ns_files_match_the_solver(tmp_path, fake_sampler):
    gen.generate("NS-Sines", 2, 8, tmp_path, seed=1, solver_resolution=16, progress=False)
    out = open_dataset(tmp_path / "NS-Sines").read()
    u0 = smooth_sample("NS-Sines", 1, 16, seed=1, start=1)
    reference = navier_stokes.solve(u0, np.arange(21) / 20, viscosity="spectral", progress=False)[0].numpy()
    # incompressible data are Fourier-truncated (not block-averaged) to the stored grid
    np.testing.assert_allclose(out[1], fourier_truncate(reference, 8), rtol=1e-5, atol=1e-6)
    # the flow is a decaying Taylor-Green-like vortex: zero mean, kinetic energy not increasing
    energy = (out.astype(np.float64) ** 2).sum(axis=(2, 3, 4))
    assert np.all(np.diff(energy, axis=1) <= 1e-9 * energy[:, :1])
    np.testing.assert_allclose(out.mean(axis=(-1, -2)), 0.0, atol=1e-6)


def test_chunking_does_not_change_trajectories(tmp_path, fake_sampler):
    one = gen.generate("CE-RP", 5, 8, tmp_path / "a", seed=3, solver_resolution=8, batch_size=1, progress=False)
    two = gen.generate("CE-RP", 5, 8, tmp_path / "b", seed=3, solver_resolution=8, chunk_size=2,
                       batch_size=1, progress=False)
    assert len(one) == 1 and [p.name for p in two] == ["data_0.nc", "data_1.nc", "data_2.nc"]
    a, b = open_dataset(tmp_path / "a" / "CE-RP").read(), open_dataset(tmp_path / "b" / "CE-RP").read()
    np.testing.assert_array_equal(a, b)
    # batching changes only the shared CFL step of the Euler solver: initial states identical
    c = gen.generate("CE-RP", 5, 8, tmp_path / "c", seed=3, solver_resolution=8, batch_size=3, progress=False)
    batched = open_dataset(c[0]).read()
    np.testing.assert_array_equal(batched[:, 0], a[:, 0])
    np.testing.assert_allclose(batched, a, rtol=1e-3, atol=1e-3)
    other_seed = gen.generate("CE-RP", 5, 8, tmp_path / "d", seed=4, solver_resolution=8, progress=False)
    assert not np.allclose(open_dataset(other_seed[0]).read()[:, 0], a[:, 0])


def test_crash_leaves_only_complete_files_and_rerun_resumes(tmp_path, fake_sampler, monkeypatch):
    real_solve = gen._solve
    calls = {"n": 0}

    def failing_solve(pde, u0):
        calls["n"] += 1
        if calls["n"] == 4:  # chunk 1 (trajectories 2, 3), second batch: trajectory 3
            raise euler.SolverError("Euler solver: non-positive density at t = 0.3 in batch member(s) [0]")
        return real_solve(pde, u0)

    monkeypatch.setattr(gen, "_solve", failing_solve)
    with pytest.raises(NumericalError, match=r"generate CE-RPUI: solver failed in chunk 1 on trajectories 3:"):
        gen.generate("CE-RPUI", 5, 8, tmp_path, solver_resolution=8, chunk_size=2, batch_size=1, progress=False)
    directory = tmp_path / "CE-RPUI"
    assert sorted(p.name for p in directory.iterdir()) == ["data_0.nc"]  # no partial, no data_1
    finished = (directory / "data_0.nc").stat().st_mtime_ns
    monkeypatch.setattr(gen, "_solve", real_solve)
    paths = gen.generate("CE-RPUI", 5, 8, tmp_path, solver_resolution=8, chunk_size=2, batch_size=1, progress=False)
    assert [p.name for p in paths] == ["data_0.nc", "data_1.nc", "data_2.nc"]
    assert (directory / "data_0.nc").stat().st_mtime_ns == finished  # skipped, not rewritten
    fresh = gen.generate("CE-RPUI", 5, 8, tmp_path / "fresh", solver_resolution=8, chunk_size=2,
                         batch_size=1, progress=False)
    np.testing.assert_array_equal(open_dataset(directory).read(), open_dataset(fresh[0].parent).read())
    assert sorted(p.name for p in directory.iterdir()) == ["data_0.nc", "data_1.nc", "data_2.nc"]


def test_interrupt_removes_the_temporary_file(tmp_path, fake_sampler, monkeypatch):
    def interrupted(pde, u0):
        raise KeyboardInterrupt

    monkeypatch.setattr(gen, "_solve", interrupted)
    with pytest.raises(KeyboardInterrupt):
        gen.generate("NS-Gauss", 2, 8, tmp_path, solver_resolution=16, progress=False)
    assert list((tmp_path / "NS-Gauss").iterdir()) == []


def test_existing_files_of_another_request_are_refused(tmp_path, fake_sampler):
    gen.generate("CE-RP", 3, 8, tmp_path, seed=0, solver_resolution=16, progress=False)
    with pytest.raises(InputError, match="data_0.nc: exists from a different request.*seed"):
        gen.generate("CE-RP", 3, 8, tmp_path, seed=1, solver_resolution=16, progress=False)
    with pytest.raises(InputError, match="data_0.nc: exists from a different request"):
        gen.generate("CE-RP", 3, 16, tmp_path, seed=0, solver_resolution=16, progress=False)


@pytest.mark.parametrize("kwargs, match", [
    ({"dataset": "CE-XX"}, "dataset='CE-XX'"),
    ({"n_trajectories": 0}, "n_trajectories=0"),
    ({"n_trajectories": -3}, "n_trajectories=-3"),
    ({"resolution": 0}, "resolution=0"),
    ({"resolution": 8, "solver_resolution": 12}, "solver_resolution=12: must be a multiple"),
    ({"chunk_size": 0}, "chunk_size=0"),
    ({"batch_size": -1}, "batch_size=-1"),
    ({"seed": -1}, "seed=-1"),
    ({"device": "gpu0"}, "device='gpu0'"),
    ({"device": "cuda"}, "device=cuda: CUDA is not available"),
])
def test_bad_arguments_fail_before_any_work(tmp_path, kwargs, match, monkeypatch):
    def never(*args, **kwargs):
        raise AssertionError("work started")

    monkeypatch.setattr(gen, "_run_batch", never)
    arguments = {"dataset": "CE-RP", "n_trajectories": 2, "resolution": 8, "out_dir": tmp_path / "out"}
    arguments.update(kwargs)
    with pytest.raises(InputError, match=match):
        gen.generate(**arguments, progress=False)
    assert not (tmp_path / "out").exists()


def test_cli_generate_inspect_and_errors(tmp_path, fake_sampler, capsys):
    out = tmp_path / "root"
    assert cli_main(["data", "generate", "--dataset", "CE-RP", "--n-trajectories", "3", "--resolution", "8",
                     "--out", str(out), "--solver-resolution", "8", "--chunk-size", "2", "--no-progress"]) == 0
    assert sorted(p.name for p in (out / "CE-RP").iterdir()) == ["data_0.nc", "data_1.nc"]
    assert cli_main(["data", "inspect", str(out / "CE-RP"), "--validate"]) == 0
    printed = capsys.readouterr().out
    assert "samples 3, times 21, model channels 4" in printed and "p_std" in printed
    assert "validated: all values finite; rho, p, E positive" in printed
    assert cli_main(["data", "inspect", str(out)]) == 0  # a root of class directories
    assert "CE-RP" in capsys.readouterr().out
    assert cli_main(["data", "generate", "--dataset", "KdV", "--n-trajectories", "3", "--resolution", "4",
                     "--out", str(out)]) == 2
    assert cli_main(["data", "inspect", str(tmp_path / "missing.nc")]) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 2 and "dataset='KdV'" in errors[0] and "missing.nc" in errors[1]


# ----------------------------------------------------------------------------- real sampler

@pytest.fixture(scope="module")
def real_root(tmp_path_factory):
    """All six data sets from the real sampler and solvers: 3 trajectories at 8x8 from 16x16."""
    pytest.importorskip("pdeinf.solvers.initial_conditions")
    profile = dataclasses.replace(get_profile("smoke"), n_trajectories=3, resolution=8, solver_resolution=16)
    root = gen.ensure_profile_data(profile, tmp_path_factory.mktemp("data"), progress=False)
    return root


@pytest.mark.slow
def test_ensure_profile_data_makes_all_six_readable(real_root):
    for dataset in DATASETS:
        reader = open_dataset(real_root / dataset)
        assert (reader.n_samples, reader.n_times, reader.resolution) == (3, 21, (8, 8))
        reader.validate()
    data = PDEData(real_root, "CE")
    assert data.trajectories("CE-RP", "test", 10).shape[1:] == (17, 4, 8, 8)
    stamp = {p: p.stat().st_mtime_ns for p in real_root.rglob("*.nc")}
    profile = dataclasses.replace(get_profile("smoke"), n_trajectories=3, resolution=8, solver_resolution=16)
    gen.ensure_profile_data(profile, real_root, progress=False)  # everything exists: nothing rewritten
    assert stamp == {p: p.stat().st_mtime_ns for p in real_root.rglob("*.nc")}


@pytest.mark.slow
def test_statistics_table_and_physics(real_root):
    table = class_statistics(real_root)
    assert list(table.index) == list(PDE_CLASSES["CE"] + PDE_CLASSES["NS"])
    comparison = compare_to_pdegym(table)
    print("\n" + comparison.to_string(float_format=lambda v: f"{v:.4g}"))
    initial = class_statistics(real_root, times=[0])
    for cls in PDE_CLASSES["CE"]:
        # periodic finite volumes conserve mass: the mean density never changes
        assert table.loc[cls, "rho_mean"] == pytest.approx(initial.loc[cls, "rho_mean"], rel=1e-5)
        assert table.loc[cls, "rho_min"] > 0 and table.loc[cls, "p_min"] > 0
    for cls in PDE_CLASSES["NS"]:
        # incompressible periodic flow conserves momentum: mean velocity stays its t = 0 value
        for q in ("vx", "vy"):
            assert table.loc[cls, f"{q}_mean"] == pytest.approx(initial.loc[cls, f"{q}_mean"], abs=1e-5)
        assert table.loc[cls, "vx_std"] > 0
    assert comparison.loc[("CE-RP", "rho"), "pdegym_mean"] == pytest.approx(1.25204)
