"""The Well HDF5 files: the documented layout attribute by attribute, The Well's own reader
on our files (skipped without `the_well`), round trips and one clear error per bad file.

Layout reference: PolymathicAI/the_well docs/data_format.md and the_well.data.datasets.WellDataset
(which reads `field_names`, `sample_varying`, `time_varying`, `dim_varying`, `bc_type`,
`associated_dims`, `mask`, `spatial_dims` and `n_trajectories`).
"""
from __future__ import annotations

import h5py
import numpy as np
import pytest

from pdeinf.data.well import open_well, write_well_file
from pdeinf.errors import InputError

GAMMA = 1.4


def conserved_states(rng, n=2, t=4, h=6, w=10, gamma=GAMMA):
    """Physical conserved CE states `[n, t, 4, h, w]` (rho, mx, my, E), H != W on purpose."""
    rho = rng.uniform(0.1, 1.0, (n, t, h, w))
    vx, vy = rng.uniform(-1, 1, (2, n, t, h, w))
    p = rng.uniform(0.1, 1.0, (n, t, h, w))
    energy = p / (gamma - 1) + 0.5 * rho * (vx**2 + vy**2)
    return np.stack([rho, rho * vx, rho * vy, energy], axis=2)


def _names(value) -> list[str]:
    return [v.decode() if isinstance(v, bytes) else str(v) for v in np.atleast_1d(value)]


# ----------------------------------------------------------------------------- layout

def test_well_file_follows_the_documented_layout(tmp_path):
    n, t, h, w = 2, 4, 6, 10
    u = conserved_states(np.random.default_rng(10), n, t, h, w)
    times = np.linspace(0.0, 0.045, t)
    path = write_well_file(tmp_path / "euler_multi_quadrants_openBC_gamma_1.4_Dry_air_20.hdf5", u,
                           gamma=GAMMA, periodic=(True, False), times=times)
    with h5py.File(path, "r") as f:
        assert set(f) == {"dimensions", "boundary_conditions", "scalars", "t0_fields", "t1_fields", "t2_fields"}
        # root
        assert f.attrs["dataset_name"] == "euler_multi_quadrants_openBC"
        assert f.attrs["grid_type"] == "cartesian"
        assert f.attrs["n_spatial_dims"] == 2 and f.attrs["n_trajectories"] == n
        assert _names(f.attrs["simulation_parameters"]) == ["gamma"]
        assert f.attrs["gamma"] == GAMMA
        # dimensions: time (T), x (X = W), y (Y = H), cell centres of the unit square
        dims = f["dimensions"]
        assert _names(dims.attrs["spatial_dims"]) == ["x", "y"]
        assert dims["time"].shape == (t,) and dims["time"].dtype == np.float32
        np.testing.assert_array_equal(dims["time"][()], times.astype(np.float32))
        assert dims["time"].attrs["sample_varying"] == False
        for axis, size in (("x", w), ("y", h)):
            assert dims[axis].dtype == np.float32
            np.testing.assert_allclose(dims[axis][()], (np.arange(size) + 0.5) / size, rtol=1e-7)
            assert dims[axis].attrs["sample_varying"] == False
            assert dims[axis].attrs["time_varying"] == False
        # boundary conditions: one group per axis, mask over that axis, values on the mask
        bcs = f["boundary_conditions"]
        assert set(bcs) == {"x_periodic", "y_open"}
        for name, axis, bc_type, size in (("x_periodic", "x", "PERIODIC", w), ("y_open", "y", "OPEN", h)):
            bc = bcs[name]
            assert bc.attrs["bc_type"] == bc_type
            assert _names(bc.attrs["associated_dims"]) == [axis]
            assert list(bc.attrs["associated_fields"]) == []
            assert bc.attrs["sample_varying"] == False and bc.attrs["time_varying"] == False
            mask = bc["mask"][()]
            assert mask.dtype == bool and mask.shape == (size,)
            assert mask[0] and mask[-1] and not mask[1:-1].any()
            assert bc["values"].dtype == np.float32 and bc["values"].shape == (int(mask.sum()),)
        # scalars
        scalars = f["scalars"]
        assert _names(scalars.attrs["field_names"]) == ["gamma"]
        assert scalars["gamma"].dtype == np.float32 and scalars["gamma"].shape == ()
        assert scalars["gamma"][()] == np.float32(GAMMA)
        assert scalars["gamma"].attrs["sample_varying"] == False
        assert scalars["gamma"].attrs["time_varying"] == False
        # fields: every dataset listed in its group's field_names, float32 (n, T, X, Y[, D])
        expected = {"t0_fields": (["density", "energy", "pressure"], (n, t, w, h)),
                    "t1_fields": (["momentum"], (n, t, w, h, 2)),
                    "t2_fields": ([], None)}
        for group, (names, shape) in expected.items():
            assert _names(f[group].attrs["field_names"]) == names
            assert sorted(f[group]) == names
            for name in names:
                field = f[group][name]
                assert field.shape == shape and field.dtype == np.float32
                assert list(field.attrs["dim_varying"]) == [True, True]
                assert field.attrs["sample_varying"] == True and field.attrs["time_varying"] == True
        # the fields hold the state: x along the third axis, momentum components (x, y)
        np.testing.assert_array_equal(f["t0_fields/density"][()], np.swapaxes(u[:, :, 0], -1, -2).astype(np.float32))
        np.testing.assert_array_equal(f["t1_fields/momentum"][..., 1],
                                      np.swapaxes(u[:, :, 2], -1, -2).astype(np.float32))


def test_well_roundtrip(tmp_path):
    u = conserved_states(np.random.default_rng(11))
    path = write_well_file(tmp_path / "euler_multi_quadrants_periodicBC_gamma_1.4_Dry_air_20.hdf5",
                           u, gamma=GAMMA, periodic=(True, False))
    with h5py.File(path, "r") as f:
        pressure = f["t0_fields/pressure"][...]
    reader = open_well(path)
    # the exact gamma (root attribute), not the float32 scalar
    assert reader.gamma == GAMMA and reader.periodic == (True, False)
    assert (reader.n_samples, reader.n_times, reader.resolution, reader.channels) == (2, 4, (6, 10), 4)
    np.testing.assert_array_equal(reader.times, np.linspace(0.0, 1.5, 4).astype(np.float32))
    out = reader.read()
    np.testing.assert_array_equal(out, u.astype(np.float32))
    # stored pressure is the ideal-gas pressure of the conserved state
    rho, mx, my, energy = (u[:, :, i] for i in range(4))
    p_expected = (GAMMA - 1) * (energy - 0.5 * (mx**2 + my**2) / rho)
    np.testing.assert_allclose(np.swapaxes(pressure, -1, -2), p_expected, rtol=1e-6)
    np.testing.assert_array_equal(reader.read([1, 0], [3]), u[[1, 0]][:, [3]].astype(np.float32))
    reader.validate()
    assert not list(tmp_path.glob(".*partial*"))


def test_cli_inspect_well_file_uses_its_gamma(tmp_path, capsys):
    from pdeinf.cli import main as cli_main
    from pdeinf.data.statistics import class_statistics

    u = conserved_states(np.random.default_rng(14), n=2, t=3, gamma=5.0 / 3.0)
    path = write_well_file(tmp_path / "w.hdf5", u, gamma=5.0 / 3.0)
    assert cli_main(["data", "inspect", str(path)]) == 0
    assert "samples 2, times 3, model channels 4" in capsys.readouterr().out
    table = class_statistics({"well": open_well(path)})
    rho, mx, my, energy = (u[:, :, i] for i in range(4))
    p = (2.0 / 3.0) * (energy - 0.5 * (mx**2 + my**2) / rho)
    assert table.loc["well", "p_mean"] == pytest.approx(p.mean(), rel=1e-5)
    assert table.loc["well", "rho_std"] == pytest.approx(rho.std(), rel=1e-5)


# ----------------------------------------------------------------------------- The Well's reader

@pytest.mark.peers
def test_the_wells_own_reader_opens_our_file(tmp_path):
    """`the_well.data.WellDataset` (The Well's PyTorch dataset) reads our file: names, shapes,
    boundary codes, grids and the values of one input/output window."""
    datasets = pytest.importorskip("the_well.data.datasets", reason="the_well is not installed")
    n, t, h, w = 2, 4, 6, 10
    u = conserved_states(np.random.default_rng(20), n, t, h, w)
    times = np.linspace(0.0, 0.045, t)
    write_well_file(tmp_path / "data" / "train" / "euler_multi_quadrants_openBC_gamma_1.4_Dry_air_20.hdf5",
                    u, gamma=GAMMA, periodic=(True, False), times=times)
    ds = datasets.WellDataset(path=str(tmp_path), well_split_name="train", n_steps_input=1,
                              n_steps_output=1, use_normalization=False)
    meta = ds.metadata
    assert meta.dataset_name == "euler_multi_quadrants_openBC"
    assert meta.n_spatial_dims == 2 and meta.spatial_resolution == (w, h)  # (X, Y)
    assert meta.field_names[0] == ["density", "energy", "pressure"]
    assert meta.field_names[1] == ["momentum_x", "momentum_y"]
    assert meta.field_names[2] == []
    assert meta.constant_scalar_names == ["gamma"] and meta.scalar_names == []
    assert sorted(meta.boundary_condition_types) == ["OPEN", "PERIODIC"]
    assert meta.n_trajectories_per_file == [n] and meta.n_steps_per_trajectory == [t]
    assert len(ds) == n * (t - 1)  # one-step windows per trajectory
    sample, step = 1, 2
    item = ds[sample * (t - 1) + step]
    rho, mx, my, energy = (np.swapaxes(u[sample, :, i], -1, -2) for i in range(4))  # [T, X, Y]
    pressure = (GAMMA - 1) * (energy - 0.5 * (mx**2 + my**2) / rho)
    channels = np.stack([rho, energy, pressure, mx, my], axis=-1).astype(np.float32)  # [T, X, Y, 5]
    np.testing.assert_array_equal(item["input_fields"].numpy(), channels[[step]])
    np.testing.assert_array_equal(item["output_fields"].numpy(), channels[[step + 1]])
    np.testing.assert_allclose(item["constant_scalars"].numpy(), [GAMMA], rtol=1e-7)
    # The Well's codes: WALL 0, OPEN 1, PERIODIC 2; rows x, y; columns low, high end
    np.testing.assert_array_equal(item["boundary_conditions"].numpy(), [[2, 2], [1, 1]])
    grid = item["space_grid"].numpy()
    assert grid.shape == (w, h, 2)
    np.testing.assert_allclose(grid[:, 0, 0], (np.arange(w) + 0.5) / w, rtol=1e-6)
    np.testing.assert_allclose(grid[0, :, 1], (np.arange(h) + 0.5) / h, rtol=1e-6)
    dt = np.float32(times[step + 1]) - np.float32(times[step])
    np.testing.assert_allclose(item["output_time_grid"].numpy(), [dt], rtol=1e-6)


# ----------------------------------------------------------------------------- bad files

def _edited(tmp_path, name, edit):
    path = write_well_file(tmp_path / name, conserved_states(np.random.default_rng(12)))
    with h5py.File(path, "r+") as f:
        edit(f)
    return path


def test_well_bad_input(tmp_path):
    u = conserved_states(np.random.default_rng(12))
    path = _edited(tmp_path, "w.hdf5", lambda f: f.__delitem__("t0_fields/energy"))
    with pytest.raises(InputError, match="w.hdf5: missing t0_fields/energy"):
        open_well(path)
    path = write_well_file(tmp_path / "v.hdf5", u)
    with h5py.File(path, "r+") as f:
        f["t0_fields/density"][0, 1, 2, 3] = np.nan
    with pytest.raises(InputError, match="v.hdf5: trajectory 0 contains NaN"):
        open_well(path).read()
    path = write_well_file(tmp_path / "t.hdf5", conserved_states(np.random.default_rng(13), n=3, h=32, w=32))
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size // 2)
    with pytest.raises(InputError, match="t.hdf5"):
        open_well(path).read()
    with pytest.raises(InputError, match="not-there.hdf5: no such file"):
        open_well(tmp_path / "not-there.hdf5")
    with pytest.raises(InputError, match="conserved"):
        write_well_file(tmp_path / "x.hdf5", u[:, :, :3])
    with pytest.raises(InputError, match="gamma = 0.5"):
        write_well_file(tmp_path / "x.hdf5", u, gamma=0.5)
    assert not (tmp_path / "x.hdf5").exists()


def test_well_corrupt_header_is_one_input_error(tmp_path):
    path = write_well_file(tmp_path / "c.hdf5", conserved_states(np.random.default_rng(15)))
    with open(path, "r+b") as f:
        f.write(b"not an HDF5 superblock!")
    with pytest.raises(InputError, match=r"c.hdf5: cannot open as an HDF5 file"):
        open_well(path)


def _replace(name, make):
    def edit(f):
        del f[name]
        make(f, name)
    return edit


@pytest.mark.parametrize("name, edit, message", [
    ("gamma-array.hdf5", _replace("scalars/gamma", lambda f, n: f.create_dataset(n, data=np.full(3, 1.4))),
     r"gamma-array.hdf5: scalars/gamma has shape \(3,\); expected one constant scalar"),
    ("gamma-text.hdf5", _replace("scalars/gamma", lambda f, n: f.create_dataset(n, data="1.4")),
     r"gamma-text.hdf5: scalars/gamma has dtype object; expected a number"),
    ("momentum-group.hdf5", _replace("t1_fields/momentum", lambda f, n: f.create_group(n)),
     r"momentum-group.hdf5: t1_fields/momentum is an HDF5 group; expected a dataset"),
    ("density-group.hdf5", _replace("t0_fields/density", lambda f, n: f.create_group(n)),
     r"density-group.hdf5: t0_fields/density is an HDF5 group; expected a dataset"),
    ("no-bc-type.hdf5", lambda f: f["boundary_conditions/x_periodic"].attrs.__delitem__("bc_type"),
     r"no-bc-type.hdf5: boundary_conditions/x_periodic has no attribute bc_type"),
    ("odd-bc-type.hdf5", lambda f: f["boundary_conditions/y_periodic"].attrs.__setitem__("bc_type", "SPONGE"),
     r"odd-bc-type.hdf5: boundary_conditions/y_periodic attribute bc_type = 'SPONGE'; expected one of"),
    ("no-bc-dims.hdf5", lambda f: f["boundary_conditions/y_periodic"].attrs.__delitem__("associated_dims"),
     r"no-bc-dims.hdf5: boundary_conditions/y_periodic has no attribute associated_dims"),
    ("no-y-bc.hdf5", lambda f: f.__delitem__("boundary_conditions/y_periodic"),
     r"no-y-bc.hdf5: no boundary condition for axis y"),
    ("short-time.hdf5", _replace("dimensions/time", lambda f, n: f.create_dataset(n, data=np.arange(3.0))),
     r"short-time.hdf5: dimensions/time has shape \(3,\); the fields have T = 4"),
    ("no-time.hdf5", lambda f: f.__delitem__("dimensions/time"),
     r"no-time.hdf5: missing dimensions/time"),
    ("bad-x.hdf5", _replace("dimensions/x", lambda f, n: f.create_dataset(n, data=np.arange(6.0))),
     r"bad-x.hdf5: dimensions/x has shape \(6,\); the fields have X = 10"),
])
def test_well_malformed_file_is_one_input_error(tmp_path, name, edit, message):
    path = _edited(tmp_path, name, edit)
    with pytest.raises(InputError, match=message):
        open_well(path)


def test_well_bc_type_is_case_insensitive_and_open_means_not_periodic(tmp_path):
    """The Well's reader upper-cases bc_type (its docs write 'periodic')."""
    def edit(f):
        f["boundary_conditions/x_periodic"].attrs["bc_type"] = "periodic"
        f["boundary_conditions/y_periodic"].attrs["bc_type"] = b"WALL"
    assert open_well(_edited(tmp_path, "case.hdf5", edit)).periodic == (True, False)
