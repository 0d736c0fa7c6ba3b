"""PDEGym netCDF readers/writers: layout, conversions, bad input (The Well: test_well.py)."""
from __future__ import annotations

import h5netcdf
import h5py
import numpy as np
import pytest

from pdeinf.data import pdegym
from pdeinf.data.pdegym import chunk_files, open_dataset, write_chunk
from pdeinf.errors import InputError

GAMMA = 1.4
TIMES = np.linspace(0.0, 1.0, 5)


def primitive_states(rng, n=3, t=5, h=6, w=8):
    """Physical CE primitive fields `[n, t, 5, h, w]` (rho, vx, vy, p, E), H != W on purpose."""
    rho = rng.uniform(0.1, 1.0, (n, t, h, w))
    vx, vy = rng.uniform(-1, 1, (2, n, t, h, w))
    p = rng.uniform(0.1, 1.0, (n, t, h, w))
    energy = p / (GAMMA - 1) + 0.5 * rho * (vx**2 + vy**2)
    return np.stack([rho, vx, vy, p, energy], axis=2).astype(np.float32)


def test_ce_roundtrip_converts_primitive_to_conserved_exactly(tmp_path):
    rng = np.random.default_rng(0)
    prim = primitive_states(rng)
    path = write_chunk(tmp_path / "data_0.nc", prim, "CE", TIMES)
    reader = open_dataset(path)
    assert (reader.pde, reader.n_samples, reader.n_times, reader.resolution) == ("CE", 3, 5, (6, 8))
    out = reader.read()
    assert out.dtype == np.float32 and out.shape == (3, 5, 4, 6, 8)
    rho, vx, vy, energy = prim[:, :, 0], prim[:, :, 1], prim[:, :, 2], prim[:, :, 4]
    # float32 x float32 products are exact in float64, so float32(rho*vx) is unique
    np.testing.assert_array_equal(out[:, :, 0], rho)
    np.testing.assert_array_equal(out[:, :, 1], (rho.astype(np.float64) * vx).astype(np.float32))
    np.testing.assert_array_equal(out[:, :, 2], (rho.astype(np.float64) * vy).astype(np.float32))
    np.testing.assert_array_equal(out[:, :, 3], energy)
    np.testing.assert_allclose(reader.times, TIMES)
    reader.validate()


def test_file_axis_is_x_first_and_reader_puts_x_along_w(tmp_path):
    """A field varying only with x (along W in our convention) varies along the first spatial
    axis on disk, as in PDEGym (dims ..., x, y)."""
    h, w = 4, 6
    x = (np.arange(w) + 0.5) / w
    prim = np.ones((1, 2, 5, h, w), np.float32)
    prim[:, :, 1] = np.broadcast_to(np.sin(2 * np.pi * x), (h, w))  # vx(x)
    path = write_chunk(tmp_path / "data_0.nc", prim, "CE", [0.0, 0.05])
    with h5py.File(path, "r") as f:
        stored = f["data"][0, 0, 1]
        assert stored.shape == (w, h)
        np.testing.assert_allclose(stored[:, 0], np.sin(2 * np.pi * x), rtol=1e-6)
        names = [f["data"].dims[i][0].name for i in range(5)]
        assert names == ["/sample", "/time", "/channel", "/x", "/y"]
        np.testing.assert_allclose(f["x"][:], x)
    with h5netcdf.File(path, "r") as f:  # a library of the field agrees on dims
        assert f.variables["data"].dimensions == ("sample", "time", "channel", "x", "y")
    np.testing.assert_allclose(open_dataset(path).read()[0, 0, 1, 2], np.sin(2 * np.pi * x), rtol=1e-6)


def test_ns_tracer_written_as_zeros_and_dropped(tmp_path):
    rng = np.random.default_rng(1)
    velocity = rng.normal(size=(2, 3, 2, 5, 5)).astype(np.float32)
    path = write_chunk(tmp_path / "velocity_0.nc", velocity, "NS", [0, 0.05, 0.1])
    with h5py.File(path, "r") as f:
        assert f["velocity"].shape == (2, 3, 3, 5, 5)
        assert np.all(f["velocity"][:, :, 2] == 0)
        assert "not simulated" in f["velocity"].attrs["tracer"]
    reader = open_dataset(path)
    assert reader.pde == "NS" and reader.channels == 2
    np.testing.assert_array_equal(reader.read(), velocity)


def test_directory_is_read_in_numeric_order_with_arbitrary_indices(tmp_path):
    rng = np.random.default_rng(2)
    velocity = rng.normal(size=(12, 3, 2, 4, 4)).astype(np.float32)
    for k in range(12):  # one sample per chunk: data_10 must come after data_9, not after data_1
        write_chunk(tmp_path / f"velocity_{k}.nc", velocity[k:k + 1], "NS", [0, 0.5, 1])
    (tmp_path / ".velocity_3.nc.partial-123").write_bytes(b"junk")  # ignored
    assert [p.name for p in chunk_files(tmp_path)][9:] == ["velocity_9.nc", "velocity_10.nc", "velocity_11.nc"]
    reader = open_dataset(tmp_path)
    assert reader.n_samples == 12
    np.testing.assert_array_equal(reader.read(), velocity)
    picks, times = [11, 2, 10, 2], [2, 0]
    np.testing.assert_array_equal(reader.read(picks, times), velocity[picks][:, times])
    np.testing.assert_array_equal(reader.read(slice(9, None), 1), velocity[9:, 1:2])


def test_assembled_file_same_as_chunks(tmp_path):
    rng = np.random.default_rng(3)
    prim = primitive_states(rng, n=4)
    write_chunk(tmp_path / "CE-RP" / "data_0.nc", prim[:3], "CE", TIMES)
    write_chunk(tmp_path / "CE-RP" / "data_1.nc", prim[3:], "CE", TIMES)
    write_chunk(tmp_path / "CE-RP.nc", prim, "data", TIMES)
    np.testing.assert_array_equal(open_dataset(tmp_path / "CE-RP").read(), open_dataset(tmp_path / "CE-RP.nc").read())


def test_foreign_hdf5_without_dimension_scales_is_read(tmp_path):
    """scOT/h5py-style assembled files: just the variable, no netCDF dimension scales."""
    prim = primitive_states(np.random.default_rng(4), n=2)
    with h5py.File(tmp_path / "CE-CRP.nc", "w") as f:
        f["data"] = np.swapaxes(prim, -1, -2)
    out = open_dataset(tmp_path / "CE-CRP.nc").read()
    np.testing.assert_array_equal(out[:, :, 0], prim[:, :, 0])


# ----------------------------------------------------------------------------- bad input

def _one_line(err) -> str:
    message = str(err.value)
    assert "\n" not in message
    return message


def test_truncated_file_raises_input_error(tmp_path):
    path = write_chunk(tmp_path / "data_0.nc", primitive_states(np.random.default_rng(5), n=4, h=16, w=16), "CE", TIMES)
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.truncate(size // 2)
    with pytest.raises(InputError) as err:
        open_dataset(path).read()
    assert "data_0.nc" in _one_line(err)
    with pytest.raises(InputError):
        open_dataset(path).validate()


def test_corrupt_header_raises_input_error(tmp_path):
    path = write_chunk(tmp_path / "data_0.nc", primitive_states(np.random.default_rng(6)), "CE", TIMES)
    with open(path, "r+b") as f:
        f.write(b"\x00" * 64)
    with pytest.raises(InputError) as err:
        open_dataset(path)
    assert str(path) in _one_line(err)


def test_missing_variable_wrong_channels_wrong_dims(tmp_path):
    with h5py.File(tmp_path / "a.nc", "w") as f:
        f["pressure"] = np.zeros((1, 2, 5, 4, 4), np.float32)
    with pytest.raises(InputError, match="a.nc.*'data'.*'velocity'"):
        open_dataset(tmp_path / "a.nc")
    with h5py.File(tmp_path / "b.nc", "w") as f:
        f["data"] = np.ones((1, 2, 4, 4, 4), np.float32)
    with pytest.raises(InputError, match="b.nc.*4 channels; expected 5"):
        open_dataset(tmp_path / "b.nc")
    with h5py.File(tmp_path / "c.nc", "w") as f:
        f["velocity"] = np.ones((2, 3, 4, 4), np.float32)
    with pytest.raises(InputError, match="c.nc.*4 dims"):
        open_dataset(tmp_path / "c.nc")
    with h5netcdf.File(tmp_path / "d.nc", "w") as f:  # right rank, wrong dim names
        f.dimensions = {"sample": 1, "channel": 5, "time": 2, "x": 3, "y": 3}
        f.create_variable("data", ("sample", "channel", "time", "x", "y"), "f4")
    with pytest.raises(InputError, match="d.nc.*dims"):
        open_dataset(tmp_path / "d.nc")
    with pytest.raises(InputError, match="nowhere"):
        open_dataset(tmp_path / "nowhere")
    with pytest.raises(InputError, match="no PDEGym files"):
        (tmp_path / "empty").mkdir()
        open_dataset(tmp_path / "empty")


def test_mismatched_chunks_raise(tmp_path):
    rng = np.random.default_rng(7)
    write_chunk(tmp_path / "data_0.nc", primitive_states(rng, h=6, w=6), "CE", TIMES)
    write_chunk(tmp_path / "data_1.nc", primitive_states(rng, h=8, w=8), "CE", TIMES)
    with pytest.raises(InputError, match="data_1.nc.*differs"):
        open_dataset(tmp_path)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_values_raise_naming_file_and_sample(tmp_path, bad):
    prim = primitive_states(np.random.default_rng(8))
    with pytest.raises(InputError, match="NaN or Inf"):  # the writer refuses too
        bad_prim = prim.copy()
        bad_prim[1, 2, 0, 3, 3] = bad
        write_chunk(tmp_path / "x.nc", bad_prim, "CE", TIMES)
    path = write_chunk(tmp_path / "data_0.nc", prim, "CE", TIMES)
    with h5py.File(path, "r+") as f:
        f["data"][1, 2, 0, 3, 3] = bad
    reader = open_dataset(path)
    np.testing.assert_array_equal(reader.read([0, 2])[:, :, 0], prim[[0, 2], :, 0])  # others fine
    with pytest.raises(InputError, match=r"data_0.nc: sample 1 contains NaN or Inf"):
        reader.read([1])
    with pytest.raises(InputError, match=r"data_0.nc: variable 'data', channel 'rho', sample 1, time 2, "
                                         r"x 3, y 3: value -?(nan|inf) is NaN or Inf"):
        reader.validate(block=2)


def test_validate_rejects_non_positive_density(tmp_path):
    prim = primitive_states(np.random.default_rng(9))
    prim[2, 0, 0, 0, 0] = -0.1
    path = write_chunk(tmp_path / "data_0.nc", prim, "CE", TIMES)
    with pytest.raises(InputError, match="channel 'rho', sample 2, time 0, x 0, y 0: value -0.1 must be positive"):
        open_dataset(path).validate()


def test_bad_arguments(tmp_path):
    prim = primitive_states(np.random.default_rng(10))
    with pytest.raises(InputError, match="kind"):
        write_chunk(tmp_path / "x.nc", prim, "euler", TIMES)
    with pytest.raises(InputError, match="channels"):
        write_chunk(tmp_path / "x.nc", prim[:, :, :4], "CE", TIMES)
    with pytest.raises(InputError, match="times"):
        write_chunk(tmp_path / "x.nc", prim, "CE", TIMES[:3])
    reader = open_dataset(write_chunk(tmp_path / "data_0.nc", prim, "CE", TIMES))
    with pytest.raises(InputError, match="out of range"):
        reader.read([3])
    with pytest.raises(InputError, match="times index out of range"):
        reader.read([0], [5])
    assert not list(tmp_path.glob(".*partial*")) and not (tmp_path / "x.nc").exists()


def test_chunk_writer_refuses_misfit_batches(tmp_path):
    writer = pdegym.ChunkWriter(tmp_path / "data_0.nc", "CE", 2, TIMES, (6, 8))
    with pytest.raises(InputError, match="does not fit"):
        writer.put(1, primitive_states(np.random.default_rng(15), n=2))
    with pytest.raises(RuntimeError, match="not all 2 samples"):
        writer.close()
    assert list(tmp_path.iterdir()) == []
