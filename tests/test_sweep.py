"""Sweeps: one labelled file per task, reruns skip, stale or corrupt files recomputed, torchrun
sharding.

A tiny `sources` collaborator (checkpoints and influence batches) is passed to the sweep:
3 classes x 2 transitions (t_max = 3), a small periodic conv net trained a few AdamW steps and
saved following the checkpoint contract.
"""
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from pdeinf.errors import InputError

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FIXTURE = textwrap.dedent('''
    import dataclasses
    import numpy as np
    import torch
    from torch import nn
    from types import SimpleNamespace
    from pdeinf.config import PROFILES

    PROFILE = dataclasses.replace(PROFILES["smoke"], name="tiny", t_max=3, seeds=(1, 2),
                                  checkpoints={"CE": (1, 2), "NS": (1, 2)}, n_influence_batches=1)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(4, 3, 3, padding=1, padding_mode="circular")
            self.b = nn.Conv2d(3, 4, 1)
        def forward(self, x):
            return x + 0.1 * self.b(torch.tanh(self.a(x)))

    def influence_batch(data, seed, index):
        g = torch.Generator().manual_seed(100 * seed + index)
        x = 1.0 + 0.2 * torch.rand(6, 4, 4, 4, generator=g, dtype=torch.float64)
        y = x + 0.05 * torch.randn(6, 4, 4, 4, generator=g, dtype=torch.float64)
        return SimpleNamespace(inputs=x, targets=y, trajectory=np.full(6, index))

    def write_checkpoints(runs_root):
        for seed in PROFILE.seeds:
            torch.manual_seed(seed)
            model = Net().double()
            opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=1e-4)
            for epoch in (1, 2):
                b = influence_batch(None, seed, 50 + epoch)
                opt.zero_grad()
                ((model(b.inputs) - b.targets) ** 2).mean().backward()
                opt.step()
                d = runs_root / f"CE-unet-s{seed}"
                d.mkdir(parents=True, exist_ok=True)
                torch.save({"model_state": model.state_dict(), "optimizer_state": opt.state_dict(),
                            "epoch": epoch, "config": {"model": "unet", "pde": "CE"}},
                           d / f"ckpt_e{epoch:04d}.pt")

    def load_checkpoint(path, pde, model_name):
        ckpt = torch.load(path, weights_only=False)
        model = Net().double()
        model.load_state_dict(ckpt["model_state"])
        return model.eval(), ckpt

    class Sources:
        def __init__(self, runs_root, data_key="tiny-data-v1"):
            self.runs_root, self.key = runs_root, data_key
        def checkpoint(self, seed, epoch):
            return self.runs_root / f"CE-unet-s{seed}" / f"ckpt_e{epoch:04d}.pt"
        def model(self, seed, epoch):
            return load_checkpoint(self.checkpoint(seed, epoch), "CE", "unet")
        def batch(self, seed, index):
            return influence_batch(None, seed, index)
        def data_key(self):
            return self.key
''')


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep")
    (root / "sweep_fixture.py").write_text(FIXTURE)
    sys.path.insert(0, str(root))
    import sweep_fixture as fx

    fx.write_checkpoints(root / "runs")
    yield root, fx
    sys.path.remove(str(root))
    sys.modules.pop("sweep_fixture", None)


def _run(root, fx, out="out", data_key="tiny-data-v1", **kw):
    from pdeinf.pipeline.influence import run_sweep

    return run_sweep(fx.PROFILE, "CE", "unet", sources=fx.Sources(root / "runs", data_key),
                     out_root=root / out, progress=False, **kw)


def test_serial_sweep_content(setup):
    from pdeinf.influence import VARIANTS, hat_matrix
    from pdeinf.pipeline.influence import load_sweep

    root, fx = setup
    files = _run(root, fx)
    assert len(files) == 4 and all(f.is_file() for f in files)
    assert files[0].name == "s1_e0001_b00.nc" and files[0].parent.name == "CE-unet"
    ds = load_sweep(fx.PROFILE, "CE", "unet", out_root=root / "out")
    assert ds["pi"].dims == ("seed", "epoch", "batch", "variant", "t_resp", "c_resp", "t_pert", "c_pert")
    assert ds["pi"].shape == (2, 2, 1, 5, 2, 3, 2, 3)
    assert tuple(ds["variant"].values) == VARIANTS
    assert list(ds["c_resp"].values) == ["CE-RP", "CE-CRP", "CE-RPUI"]
    # one task against direct computation: seed 2, epoch 1, batch 0
    model, ckpt = fx.load_checkpoint(root / "runs" / "CE-unet-s2" / "ckpt_e0001.pt", "CE", "unet")
    b = fx.influence_batch(None, 2, 0)
    task = ds.sel(seed=2, epoch=1, batch=0)
    for variant, kw in [("gauss-newton", {}), ("euclidean", {"metric": "euclidean"}),
                        ("adam", {"metric": "adam", "optimizer_state": ckpt["optimizer_state"]}),
                        ("gn-mass", {"response": "mass_drift_sq"}), ("gn-energy", {"response": "energy_drift_sq"})]:
        res = hat_matrix(model, b.inputs, b.targets, damping=fx.PROFILE.damping,
                         energy_tol=fx.PROFILE.energy_tol, **kw)
        if variant == "gauss-newton":
            res_gn = res
        expected = res.to_xarray(t_max=3, classes=["CE-RP", "CE-CRP", "CE-RPUI"])
        # the sweep may keep the ket JVPs where hat_matrix pushes the basis itself: two exact
        # routes through J, equal to float64 rounding
        np.testing.assert_allclose(task["pi"].sel(variant=variant).values, expected.values, rtol=1e-10)
        # ordering n = c * 2 + t
        assert task["pi"].sel(variant=variant, t_resp=1, c_resp="CE-CRP", t_pert=0,
                              c_pert="CE-RPUI").item() == pytest.approx(res.pi[3, 4].item(), rel=1e-10)
    assert int(task["rank"]) == res_gn.rank
    np.testing.assert_allclose(task["losses"].sel(t=1, c="CE-RPUI"), res_gn.losses[5].item(), rtol=1e-12)
    d = task["input_distance"].values.reshape(6, 6)  # (t, c) pairs flattened consistently
    assert np.allclose(d, d.T) and np.allclose(np.diag(d), 0.0) and (d >= 0).all()
    x = b.inputs
    s0, s1 = x[0].pow(2).mean((-2, -1)).sqrt(), x[1].pow(2).mean((-2, -1)).sqrt()
    manual = ((x[0] - x[1]).pow(2).mean((-2, -1)) / (0.5 * (s0 + s1) + 1e-6)).mean()
    assert task["input_distance"].sel(t_resp=0, c_resp="CE-RP", t_pert=1, c_pert="CE-RP").item() == \
        pytest.approx(manual.item(), rel=1e-12)
    ev = task["eta_eigenvalues"].values
    assert np.isfinite(ev[: res_gn.rank]).all() and np.isnan(ev[res_gn.rank:]).all()


def test_rerun_skips_and_corrupt_file_is_recomputed(setup, monkeypatch):
    import xarray as xr


    root, fx = setup
    files = _run(root, fx)  # the files of the first test when present
    for f in files:  # work on a copy so that the other tests keep their reference files
        (root / "out2" / "CE-unet").mkdir(parents=True, exist_ok=True)
        (root / "out2" / "CE-unet" / f.name).write_bytes(f.read_bytes())
    files = [root / "out2" / "CE-unet" / f.name for f in files]
    stamps = [f.stat().st_mtime_ns for f in files]
    with xr.open_dataset(files[3], engine="h5netcdf") as ds:
        before = ds["pi"].values.copy()
    from pdeinf.influence.task import labelled_influence

    calls = []

    def counting(*a, **k):
        calls.append(1)
        return labelled_influence(*a, **k)

    _run(root, fx, out="out2", compute=counting)
    assert calls == [] and [f.stat().st_mtime_ns for f in files] == stamps
    files[3].write_bytes(b"\x89HDF\r\n garbage, an interrupted copy")
    _run(root, fx, out="out2", compute=counting)
    assert len(calls) == 1
    with xr.open_dataset(files[3], engine="h5netcdf") as ds:
        np.testing.assert_array_equal(ds["pi"].values, before)
    assert not list((files[3].parent).glob(".*.tmp"))


def test_missing_inputs_are_named(setup, tmp_path):
    from pdeinf.pipeline.influence import load_sweep, run_sweep

    _, fx = setup
    with pytest.raises(InputError, match="s1_e0001_b00.nc"):
        load_sweep(fx.PROFILE, "CE", "unet", out_root=tmp_path)
    with pytest.raises(InputError, match="ckpt_e0001.pt"):
        run_sweep(fx.PROFILE, "CE", "unet", sources=fx.Sources(tmp_path), out_root=tmp_path,
                  progress=False)
    with pytest.raises(InputError, match="model"):
        run_sweep(fx.PROFILE, "CE", "resnet", out_root=tmp_path, progress=False)
    with pytest.raises(InputError, match="rank"):
        run_sweep(fx.PROFILE, "CE", "unet", out_root=tmp_path, rank=2, world_size=2)


def test_stale_and_bit_flipped_files_are_recomputed_alone(setup):
    """A file of other inputs (data changed) or with flipped bytes in its arrays is
    never read back as valid: exactly that task is recomputed, to the reference values."""
    import shutil

    import xarray as xr

    from pdeinf.influence.task import labelled_influence
    from pdeinf.pipeline.influence import load_sweep

    root, fx = setup
    files = _run(root, fx)
    shutil.rmtree(root / "out3", ignore_errors=True)
    shutil.copytree(root / "out" / "CE-unet", root / "out3" / "CE-unet")
    target = root / "out3" / "CE-unet" / files[1].name
    with xr.open_dataset(target, engine="h5netcdf") as ds:
        reference = ds["pi"].values.copy()
    # flip a block of bytes inside the stored pi array (the file still opens)
    raw = bytearray(target.read_bytes())
    needle = np.ascontiguousarray(reference[0]).tobytes()[:64]
    at = raw.find(needle)
    assert at > 0, "pi values not found uncompressed in the file"
    raw[at:at + 64] = bytes(b ^ 0xFF for b in raw[at:at + 64])
    target.write_bytes(bytes(raw))
    with xr.open_dataset(target, engine="h5netcdf") as ds:
        assert not np.array_equal(ds["pi"].values, reference)  # really corrupted on disk
    with pytest.raises(InputError, match="corrupt"):
        load_sweep(fx.PROFILE, "CE", "unet", out_root=root / "out3")
    calls = []

    def counting(*a, **k):
        calls.append(1)
        return labelled_influence(*a, **k)

    _run(root, fx, out="out3", compute=counting)
    assert len(calls) == 1
    with xr.open_dataset(target, engine="h5netcdf") as ds:
        np.testing.assert_array_equal(ds["pi"].values, reference)
    # other inputs (the data's content key changed): every task is recomputed
    calls.clear()
    _run(root, fx, out="out3", data_key="tiny-data-v2", compute=counting)
    assert len(calls) == len(files)


def test_cached_files_helper_keeps_valid_and_computes_the_rest_once(tmp_path):
    """`pipeline.checksums.ensure_cached`: a valid file is kept, a missing, stale or non-finite
    one is computed (a path shared by two tasks once), written with its key and checksum;
    `load_cached` names the first bad file."""
    import xarray as xr

    from pdeinf.atomic import write_netcdf
    from pdeinf.pipeline.checksums import Cached, ensure_cached, load_cached, stack, with_checksum

    calls, written = [], []

    def compute(task):
        calls.append(task.id)
        return xr.Dataset({"v": ("x", np.full(2, float(task.id[0])))})

    tasks = [Cached((a, b), tmp_path / f"{a}.nc", f"key{a}") for a in (1, 2) for b in (0,)]
    tasks.append(Cached((2, 1), tmp_path / "2.nc", "key2"))  # shares the file of (2, 0)
    held = ensure_cached(tasks, compute, variables=("v",), finite=("v",), progress=False,
                         written=lambda t: written.append(t.id))
    assert calls == written == [(1, 0), (2, 0)] and float(held[(2, 1)]["v"][0]) == 2.0
    assert held[(1, 0)].attrs["cache_key"] == "key1"
    ensure_cached(tasks, compute, variables=("v",), progress=False)
    assert len(calls) == 2  # warm: nothing computed
    stale = [Cached((1, 0), tmp_path / "1.nc", "other"), *tasks[1:]]
    paths = ensure_cached(stale, compute, variables=("v",), progress=False, load=False)
    assert calls[2:] == [(1, 0)] and paths[(2, 1)] == tmp_path / "2.nc"
    nan = xr.Dataset({"v": ("x", [np.nan, 1.0])}, attrs={"cache_key": "key2"})
    write_netcdf(with_checksum(nan), tmp_path / "2.nc")  # intact, but not finite
    ensure_cached(stale, compute, variables=("v",), finite=("v",), progress=False)
    assert calls[3:] == [(2, 0)]
    with pytest.raises(InputError, match=r"1\.nc: thing missing, stale or corrupt \(1 of 2\); run me"):
        load_cached(tasks[:2], what="thing", hint="me")
    both = stack(load_cached([Cached(t.id, t.path) for t in tasks[:2]], what="thing", hint="me"),
                 ("a", "b"))
    assert both["v"].dims == ("a", "b", "x") and both["v"].values[:, 0, 0].tolist() == [1.0, 2.0]


def test_cli_reports_missing_checkpoint(setup, tmp_path, capsys):
    from pdeinf.cli import main

    code = main(["influence", "--pde", "NS", "--model", "vit", "--profile", "smoke",
                 "--runs-root", str(tmp_path), "--out", str(tmp_path), "--no-progress"])
    assert code == 2
    assert "ckpt_e0001.pt" in capsys.readouterr().err


@pytest.mark.slow
def test_torchrun_two_ranks_match_serial(setup):
    import xarray as xr

    root, fx = setup
    _run(root, fx)  # serial reference (reuses the files of the first test when present)
    script = root / "rank_main.py"
    script.write_text(textwrap.dedent(f'''
        import json, os, sys
        sys.path.insert(0, {str(root)!r})
        import sweep_fixture as fx
        from pathlib import Path
        from pdeinf.pipeline.influence import run_sweep
        root = Path({str(root)!r})
        files = run_sweep(fx.PROFILE, "CE", "unet", sources=fx.Sources(root / "runs"),
                          out_root=root / "dist", progress=False)
        (root / f"rank{{os.environ['RANK']}}.json").write_text(json.dumps([f.name for f in files]))
    '''))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "0",
         str(script)], env=env, capture_output=True, text=True, timeout=300, check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    import json

    shares = [set(json.loads((root / f"rank{r}.json").read_text())) for r in (0, 1)]
    assert shares[0].isdisjoint(shares[1]) and len(shares[0] | shares[1]) == 4 and len(shares[0]) == 2
    for name in shares[0] | shares[1]:
        with xr.open_dataset(root / "dist" / "CE-unet" / name, engine="h5netcdf") as a, \
                xr.open_dataset(root / "out" / "CE-unet" / name, engine="h5netcdf") as b:
            np.testing.assert_allclose(a["pi"].values, b["pi"].values, rtol=1e-10, atol=1e-300)
            assert int(a["rank"]) == int(b["rank"])
