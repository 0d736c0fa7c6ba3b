"""Stored NS data are divergence-free; content fingerprints; physical validation of data files;
refusal of corrupt files and of absurd generation requests before any work."""
from __future__ import annotations

import os
import re

import h5py
import numpy as np
import pytest
import torch

from pdeinf.cli import main as cli_main
from pdeinf.data import fingerprint, validation
from pdeinf.data import generate as gen
from pdeinf.data.datasets import PDEData
from pdeinf.data.pdegym import open_dataset, write_chunk
from pdeinf.errors import InputError
from pdeinf.solvers import navier_stokes

TIMES = np.arange(21) / 20


def relative_divergence(v: np.ndarray) -> float:
    """rms(spectral div v) / rms(spectral grad v) of velocity `[..., 2, H, W]` (x along W)."""
    v = torch.from_numpy(np.asarray(v, np.float64))
    h, w = v.shape[-2:]
    vh = torch.fft.rfft2(v, norm="forward")
    ky = 2 * np.pi * torch.fft.fftfreq(h, 1.0 / h, dtype=torch.float64)[:, None]
    kx = 2 * np.pi * torch.fft.rfftfreq(w, 1.0 / w, dtype=torch.float64)[None, :]
    grad = torch.cat([torch.fft.irfft2(1j * k * vh, s=(h, w), norm="forward") for k in (kx, ky)], dim=-3)
    div = navier_stokes.divergence(v)
    return float(div.pow(2).mean().sqrt() / grad.pow(2).mean().sqrt())


# ------------------------------------------------------- stored NS fields are divergence-free

@pytest.mark.parametrize("dataset", ["NS-Sines", "NS-Gauss"])
def test_stored_navier_stokes_velocity_is_divergence_free(tmp_path, dataset):
    from pdeinf.solvers import initial_conditions

    gen.generate(dataset, 2, 8, tmp_path, seed=0, solver_resolution=16, progress=False)
    stored = open_dataset(tmp_path / dataset).read()  # float32 [2, 21, 2, 8, 8], read back from disk
    assert relative_divergence(stored) < 2e-6  # float32 round-off
    # the solver's fine field and a block average of it (the old downsampling) for contrast
    u0 = initial_conditions.sample(dataset, 1, 16, seed=0, start=1, dtype=torch.float64)
    fine = navier_stokes.solve(u0, TIMES, viscosity="spectral", progress=False)[0]
    assert relative_divergence(gen.block_average(fine, 2).numpy()) > 1e-3
    np.testing.assert_allclose(stored[1], gen.spectral_truncate(fine, 8).numpy(), rtol=1e-5, atol=1e-6)


def test_downsampling_follows_the_discretisation():
    assert gen.downsampling_kind("CE") == gen.BLOCK_AVERAGE
    assert gen.downsampling_kind("NS") == gen.SPECTRAL_TRUNCATION
    # spectral truncation reproduces a band-limited field exactly and drops the coarse Nyquist mode
    x = (torch.arange(16, dtype=torch.float64) + 0.5) / 16
    y, x = torch.meshgrid(x, x, indexing="ij")
    smooth = torch.sin(2 * np.pi * x) * torch.cos(2 * np.pi * 3 * y)
    coarse_x = x[::2, ::2]
    coarse_y = y[::2, ::2]
    np.testing.assert_allclose(gen.spectral_truncate(smooth, 8), torch.sin(2 * np.pi * coarse_x)
                               * torch.cos(2 * np.pi * 3 * coarse_y), atol=1e-12)
    nyquist = torch.cos(2 * np.pi * 4 * x)  # |m| = 4 = 8 / 2: not representable on 8 points
    np.testing.assert_allclose(gen.spectral_truncate(nyquist, 8), 0.0, atol=1e-12)


# ----------------------------------------------------------------------------- fingerprints

def primitive(rng, n=3, t=3, h=8, w=8):
    rho = rng.uniform(0.5, 1.5, (n, t, 1, h, w))
    v = rng.uniform(-0.5, 0.5, (n, t, 2, h, w))
    p = rng.uniform(0.2, 1.0, (n, t, 1, h, w))
    energy = 0.5 * rho * (v**2).sum(axis=2, keepdims=True) + p / 0.4
    return np.concatenate([rho, v, p, energy], axis=2)


@pytest.fixture()
def counted_hash(monkeypatch):
    fingerprint.clear_memory_cache()
    calls = []
    real = fingerprint.hash_file

    def counting(path):
        calls.append(str(path))
        return real(path)

    monkeypatch.setattr(fingerprint, "hash_file", counting)
    yield calls
    fingerprint.clear_memory_cache()


def test_content_key_sees_in_place_edits_and_caches(tmp_path, counted_hash):
    a = write_chunk(tmp_path / "d" / "data_0.nc", primitive(np.random.default_rng(1)), "CE", TIMES[:3])
    b = write_chunk(tmp_path / "d" / "data_1.nc", primitive(np.random.default_rng(2)), "CE", TIMES[:3])
    cache = tmp_path / "keys.json"
    key = fingerprint.content_key([a, b], cache)
    assert len(counted_hash) == 2 and cache.is_file()
    assert fingerprint.content_key([b, a], cache) != key  # order matters
    # cache hit (memory, then the JSON file in a "new process"): no file is read again
    fingerprint.content_key([a, b], cache)
    fingerprint.clear_memory_cache()
    assert fingerprint.content_key([a, b], cache) == key
    assert len(counted_hash) == 2
    # touching the mtime without changing bytes: recomputed once, same key
    stat = a.stat()
    os.utime(a, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert fingerprint.content_key([a, b], cache) == key
    assert fingerprint.content_key([a, b], cache) == key
    assert counted_hash[2:] == [str(a.resolve())]
    # editing one value in place (same size, same shape) changes the key
    size = a.stat().st_size
    with h5py.File(a, "r+") as handle:
        handle["data"][0, 1, 0, 2, 2] += 0.25
    os.utime(a, ns=(stat.st_atime_ns, stat.st_mtime_ns + 2_000_000_000))
    assert a.stat().st_size == size
    assert fingerprint.content_key([a, b], cache) != key


def test_pdedata_fingerprint_is_content_based(tmp_path, counted_hash):
    rng = np.random.default_rng(3)
    for cls in ("CE-RP", "CE-CRP", "CE-RPUI"):
        write_chunk(tmp_path / "root" / cls / "data_0.nc", primitive(rng), "CE", TIMES[:3])
    data = PDEData(tmp_path / "root", "CE", t_max=3, content_cache=tmp_path / "cache.json")
    first = data.fingerprint()
    assert data.fingerprint() == first and len(counted_hash) == 3
    path = tmp_path / "root" / "CE-CRP" / "data_0.nc"
    mtime = path.stat().st_mtime_ns
    with h5py.File(path, "r+") as handle:
        handle["data"][2, 0, 3, 1, 1] *= 1.5
    os.utime(path, ns=(mtime + 10**9, mtime + 10**9))
    edited = PDEData(tmp_path / "root", "CE", t_max=3).fingerprint()
    assert edited != first
    # moving the data root keeps the fingerprint (content, not names)
    (tmp_path / "root").rename(tmp_path / "moved")
    assert PDEData(tmp_path / "moved", "CE", t_max=3).fingerprint() == edited


# ----------------------------------------------------------------------------- validation

def one_line(err) -> str:
    message = str(err.value)
    assert "\n" not in message
    return message


@pytest.fixture()
def ce_file(tmp_path):
    fingerprint.clear_memory_cache()
    return write_chunk(tmp_path / "CE-RP" / "data_0.nc", primitive(np.random.default_rng(4)), "CE", TIMES[:3])


def test_valid_file_passes_once_per_content(ce_file, tmp_path, monkeypatch):
    cache = tmp_path / "cache.json"
    calls = []
    real = validation.validate_file
    monkeypatch.setattr(validation, "validate_file", lambda path, **kw: (calls.append(path), real(path, **kw)))
    validation.validate_dataset(open_dataset(ce_file), cache=cache)
    fingerprint.clear_memory_cache()  # a later process: the JSON cache remembers the pass
    validation.validate_dataset(open_dataset(ce_file), cache=cache)
    assert calls == [ce_file]


@pytest.mark.parametrize("edit, match", [
    (lambda d: d.__setitem__((1, 2, 0, 3, 4), -0.2),
     r"data_0.nc: variable 'data', channel 'rho', sample 1, time 2, x 3, y 4: value -0.2 must be positive"),
    (lambda d: d.__setitem__((2, 0, 3, 5, 1), 1e8),
     (r"data_0.nc: variable 'data', channel 'p', sample 2, time 0, x 5, y 1: value 1e\+08 \|value\| exceeds "
      r"the plausibility bound 7.\d+e\+03")),
    (lambda d: d.__setitem__((0, 1, 4, 0, 0), 0.0),
     r"channel 'E', sample 0, time 1, x 0, y 0: value 0 must be positive"),
    (lambda d: d.__setitem__((0, 1, 1, 0, 0), np.inf), r"channel 'vx', sample 0, time 1.*NaN or Inf"),
])
def test_corrupted_values_are_refused_in_one_line(ce_file, edit, match):
    with h5py.File(ce_file, "r+") as handle:
        edit(handle["data"])
    with pytest.raises(InputError, match=match) as err:
        validation.validate_dataset(open_dataset(ce_file))
    one_line(err)


def test_absurd_navier_stokes_velocity_is_refused(tmp_path):
    velocity = np.random.default_rng(5).normal(0, 0.5, (2, 3, 2, 8, 8))
    path = write_chunk(tmp_path / "velocity_0.nc", velocity, "NS", TIMES[:3])
    validation.validate_dataset(open_dataset(path))
    with h5py.File(path, "r+") as handle:
        handle["velocity"][1, 2, 1, 0, 0] = -5e4
    with pytest.raises(InputError, match=r"channel 'v', sample 1, time 2.*plausibility bound 6.\d+e\+03") as err:
        validation.validate_dataset(open_dataset(path))
    one_line(err)


def test_integer_rewrite_is_refused(ce_file):
    with h5py.File(ce_file, "r+") as handle:
        values = handle["data"][()]
        del handle["data"]
        handle["data"] = np.round(values * 100).astype(np.int16)
    with pytest.raises(InputError, match=r"data_0.nc: variable 'data' has dtype int16; expected float32 or float64") as err:
        open_dataset(ce_file)
    one_line(err)
    with pytest.raises(InputError, match="int16"):
        validation.validate_file(ce_file)


def test_corrupt_object_header_names_the_file(ce_file):
    with h5py.File(ce_file, "r") as handle:
        address = h5py.h5o.get_info(handle["data"].id).addr
    payload = bytearray(ce_file.read_bytes())
    payload[address:address + 64] = b"\xff" * 64  # h5py raised a bare KeyError here before
    ce_file.write_bytes(bytes(payload))
    with pytest.raises(InputError, match="corrupt netCDF4/HDF5 file") as err:
        open_dataset(ce_file)
    assert str(ce_file) in one_line(err)


# ----------------------------------------------------------------------------- generation

@pytest.fixture()
def no_work(monkeypatch):
    def never(*args, **kwargs):
        raise AssertionError("work started")

    monkeypatch.setattr(gen, "_run_batch", never)


@pytest.mark.parametrize("arguments, match", [
    (["--resolution", "7"], r"resolution=7: must be at least 8"),
    (["--resolution", "100000"], r"output [\d.e+]+ GiB .* free on .*one solver batch needs [\d.e+]+ GiB"),
    (["--n-trajectories", "1000000000"], r"estimated [\d.e+]+ hours \([\d.e-]+ s per trajectory at 32\^2 on cpu\)"),
])
def test_cli_refuses_absurd_requests_before_work(tmp_path, capsys, no_work, arguments, match):
    base = {"--dataset": "CE-RP", "--n-trajectories": "2", "--resolution": "16", "--out": str(tmp_path / "out")}
    base.update(dict(zip(arguments[::2], arguments[1::2])))
    argv = ["data", "generate", *[part for item in base.items() for part in item], "--no-progress"]
    assert cli_main(argv) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 1
    assert re.search(match, errors[0]), errors[0]
    assert not (tmp_path / "out").exists()


def test_output_path_must_be_a_writable_directory(tmp_path, no_work, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(InputError, match=r"--out .*file: exists and is not a directory"):
        gen.generate("NS-BB", 2, 8, blocker, progress=False)
    (tmp_path / "root").mkdir()
    (tmp_path / "root" / "NS-BB").write_text("x")
    with pytest.raises(InputError, match=r"NS-BB: exists and is not a directory"):
        gen.generate("NS-BB", 2, 8, tmp_path / "root", progress=False)
    monkeypatch.setattr(validation.os, "access", lambda path, mode: False)  # root ignores modes
    with pytest.raises(InputError, match=r"--out .*new: directory .* is not writable"):
        gen.generate("NS-BB", 2, 8, tmp_path / "new", progress=False)
    assert not (tmp_path / "new").exists()


def test_minimum_resolution_is_the_models_minimum():
    from pdeinf.models import build

    build("unet", channels=2, resolution=validation.MIN_RESOLUTION, size="smoke")
    with pytest.raises(InputError):
        build("unet", channels=2, resolution=validation.MIN_RESOLUTION - 1, size="smoke")


def test_navier_stokes_files_of_the_old_block_average_are_not_reused(tmp_path):
    """Resuming must not mix block-averaged (divergent) NS chunks with new ones."""
    paths = gen.generate("NS-BB", 2, 8, tmp_path, solver_resolution=16, progress=False)
    with h5py.File(paths[0], "r+") as handle:
        handle.attrs["downsampling"] = "2x2 block average of the solver grid"
    with pytest.raises(InputError, match=r"velocity_0.nc: exists from a different request \(downsampling differ"):
        gen.generate("NS-BB", 2, 8, tmp_path, solver_resolution=16, progress=False)
