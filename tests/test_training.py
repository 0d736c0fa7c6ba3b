"""Training mechanics: the protocol (shuffle, batches, AdamW) against a hand-written loop,
checkpoints and curves, exact resume after SIGKILL, non-finite loss, refusal of foreign runs
and bad data. Data: `WaveData`, an in-memory stand-in for PDEData (exact advected waves)."""
from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from pdeinf.config import get_profile
from pdeinf.errors import InputError
from pdeinf.models import build
from pdeinf.training import train as train_mod
from pdeinf.training.loss import smse
from pdeinf.training.train import TrainingError, load_checkpoint, train

TESTS_DIR = Path(__file__).resolve().parent


pytestmark = pytest.mark.usefixtures("one_torch_thread")


class WaveData:
    """Per class, smooth random Fourier modes advected by a class-specific constant velocity on
    the periodic unit square, `u(x, t) = u0(x - v t)`. Same interface as PDEData."""

    def __init__(self, classes=("A", "B", "C"), n=8, t_max=17, channels=4, resolution=16,
                 seed=0, dt=0.05):
        self.classes = tuple(classes)
        self.t_max, self.channels, self.resolution, self._n = t_max, channels, resolution, n
        self._data = {c: self._make(seed, ci, dt) for ci, c in enumerate(self.classes)}

    def _make(self, seed, ci, dt):
        rng = np.random.default_rng([seed, ci])
        g = np.arange(self.resolution) / self.resolution
        yy, xx = np.meshgrid(g, g, indexing="ij")
        vx, vy = 0.5 + 0.5 * ci, -0.25 * ci
        t = dt * np.arange(self.t_max)[:, None, None]
        out = np.zeros((self._n, self.t_max, self.channels, self.resolution, self.resolution))
        for i in range(self._n):
            for c in range(self.channels):
                kx, ky = rng.integers(1, 3, size=2)
                amp, phase = rng.normal(), rng.uniform(0, 2 * np.pi)
                out[i, :, c] = 1.0 + c + amp * np.sin(
                    2 * np.pi * (kx * (xx - vx * t) + ky * (yy - vy * t)) + phase)
        return out.astype(np.float32)

    def split_indices(self, seed):
        perm = np.random.default_rng(seed).permutation(self._n)
        n_tr = round(0.65 * self._n)
        return {"train": np.sort(perm[:n_tr]), "val": np.sort(perm[n_tr:n_tr + 1]),
                "test": np.sort(perm[n_tr + 1:])}

    def trajectories(self, cls, split, seed):
        return self._data[cls][self.split_indices(seed)[split]]

    def fingerprint(self):
        h = hashlib.sha256()
        for c in self.classes:
            h.update(self._data[c].tobytes())
        return h.hexdigest()[:16]


def tiny_profile(epochs=2, checkpoints=None, **changes):
    checkpoints = tuple(checkpoints or (1, epochs))
    return dataclasses.replace(get_profile("smoke"), epochs={"CE": epochs, "NS": epochs},
                               checkpoints={"CE": checkpoints, "NS": checkpoints}, **changes)


def _manual_transitions(data, split, seed):
    xs, ys = [], []
    for cls in data.classes:
        traj = torch.as_tensor(data.trajectories(cls, split, seed), dtype=torch.float64)[:, :17]
        xs.append(traj[:, :-1].reshape(-1, *traj.shape[2:]))
        ys.append(traj[:, 1:].reshape(-1, *traj.shape[2:]))
    return torch.cat(xs), torch.cat(ys)


@pytest.mark.parametrize("model_name", ["unet", "vit"])
def test_training_follows_protocol_and_writes_checkpoints(tmp_path, model_name):
    data, seed, epochs = WaveData(n=5), 10, 2  # 3 x 3 x 16 = 144 transitions: 3 batches
    profile = tiny_profile(epochs)
    result = train("CE", model_name, seed, profile, data=data, out_dir=tmp_path, progress=False,
                   dtype=torch.float64)

    # The same protocol written out by hand: seed -> init, (seed, epoch) -> shuffle, AdamW.
    x, y = _manual_transitions(data, "train", seed)
    torch.manual_seed(seed)
    model = build(model_name, channels=4, resolution=16, size="smoke").double()
    opt = torch.optim.AdamW(model.parameters(), lr=5e-4, weight_decay=1e-4)
    train_curve = []
    for epoch in range(1, epochs + 1):
        perm = np.random.default_rng([seed, epoch]).permutation(len(x))
        total = 0.0
        for i in range(0, len(x), 48):
            idx = torch.as_tensor(perm[i : i + 48])
            loss_vec = smse(model(x[idx]), y[idx])
            total += loss_vec.sum().item()
            opt.zero_grad()
            loss_vec.mean().backward()
            opt.step()
        train_curve.append(total / len(x))

    assert result.run_dir == tmp_path / f"CE-{model_name}-s{seed}"
    assert sorted(result.checkpoints) == [1, 2]
    final_model, ckpt = load_checkpoint(result.checkpoints[2], pde="CE", model_name=model_name,
                                        size="smoke")
    for k, v in model.state_dict().items():
        torch.testing.assert_close(final_model.state_dict()[k], v, rtol=1e-10, atol=1e-12)
    assert set(ckpt) >= {"model_state", "optimizer_state", "config", "data_fingerprint", "epoch",
                         "history"}
    assert ckpt["epoch"] == 2 and ckpt["data_fingerprint"] == data.fingerprint()
    assert len(ckpt["optimizer_state"]["state"]) == len(list(model.parameters()))
    np.testing.assert_allclose([h["train_smse"] for h in ckpt["history"]], train_curve, rtol=1e-10)
    # Validation curve = SMSE of the checkpointed weights on the validation transitions.
    xv, yv = _manual_transitions(data, "val", seed)
    with torch.no_grad():
        val = smse(final_model(xv), yv).mean().item()
    assert ckpt["history"][-1]["val_smse"] == pytest.approx(val, rel=1e-10)
    on_disk = json.loads((result.run_dir / "history.json").read_text())
    assert [h["epoch"] for h in on_disk] == [1, 2]
    assert (result.run_dir / "history.csv").read_text().splitlines()[0].startswith("epoch,")
    assert not list(result.run_dir.glob("*.tmp")) and not list(result.run_dir.glob(".*.tmp"))


def test_training_reduces_loss_and_rerun_is_a_no_op(tmp_path):
    data = WaveData(n=8)
    result = train("CE", "vit", 3, tiny_profile(6, (3, 6)), data=data, out_dir=tmp_path,
                   progress=False)
    curve = [h["train_smse"] for h in result.history]
    # (the authors' direct-prediction models start from a far worse guess than u_t and fall
    # more slowly than the residual ones did: steadily, by about a quarter in 6 smoke epochs)
    assert all(b < a for a, b in itertools.pairwise(curve)) and curve[-1] < 0.85 * curve[0], curve
    before = (result.run_dir / "resume.pt").stat().st_mtime_ns
    again = train("CE", "vit", 3, tiny_profile(6, (3, 6)), data=data, out_dir=tmp_path,
                  progress=False)
    assert (result.run_dir / "resume.pt").stat().st_mtime_ns == before
    assert again.history == result.history and sorted(again.checkpoints) == [3, 6]


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    data = WaveData(n=8)
    steps_per_epoch = int(np.ceil(3 * 5 * 16 / 48))
    calls = {"n": 0}

    def poisoned(pred, target):
        out = smse(pred, target)
        calls["n"] += pred.requires_grad  # count training steps only (not validation)
        if pred.requires_grad and calls["n"] == steps_per_epoch + 2:  # epoch 2, step 2
            out = out * float("nan")
        return out

    monkeypatch.setattr(train_mod, "smse", poisoned)
    with pytest.raises(TrainingError, match=r"epoch 2, step 2/5.*ckpt_e0001\.pt"):
        train("CE", "vit", 10, tiny_profile(3, (1, 3)), data=data, out_dir=tmp_path, progress=False)
    run_dir = tmp_path / "CE-vit-s10"
    assert sorted(p.name for p in run_dir.glob("ckpt_*.pt")) == ["ckpt_e0001.pt"]
    state = torch.load(run_dir / "resume.pt", weights_only=True)
    assert state["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in state["model_state"].values())


def test_foreign_run_directory_and_checkpoint_are_refused(tmp_path):
    data = WaveData(n=8)
    result = train("CE", "vit", 10, tiny_profile(1, (1,)), data=data, out_dir=tmp_path,
                   progress=False)
    with pytest.raises(InputError, match="model_size"):
        train("CE", "vit", 10, tiny_profile(1, (1,), model_size="quick"), data=data,
              out_dir=tmp_path, progress=False)
    with pytest.raises(InputError, match="data changed"):
        train("CE", "vit", 10, tiny_profile(1, (1,)), data=WaveData(n=8, seed=1),
              out_dir=tmp_path, progress=False)
    ckpt = result.checkpoints[1]
    with pytest.raises(InputError, match="model='vit'"):
        load_checkpoint(ckpt, model_name="unet")
    with pytest.raises(InputError, match="pde='CE'"):
        load_checkpoint(ckpt, pde="NS")
    with pytest.raises(InputError, match="model_size='smoke'"):
        load_checkpoint(ckpt, size="paper")
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(ckpt.read_bytes()[:100])
    with pytest.raises(InputError, match="corrupt.pt"):
        load_checkpoint(corrupt)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"hello world" * 10)
    with pytest.raises(InputError, match="garbage.pt"):
        load_checkpoint(garbage)
    with pytest.raises(InputError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")


def test_bad_data_and_arguments_are_refused_before_training(tmp_path):
    data = WaveData(n=8)
    data._data["B"][2, 5, 1, 3, 3] = np.nan
    with pytest.raises(InputError, match=r"B \(train\).*NaN"):
        train("CE", "vit", 10, tiny_profile(), data=data, out_dir=tmp_path, progress=False)
    with pytest.raises(InputError, match="expected \\[n, T, 2"):
        train("NS", "vit", 10, tiny_profile(), data=WaveData(n=8), out_dir=tmp_path, progress=False)
    with pytest.raises(InputError, match="t_max"):
        train("CE", "vit", 10, tiny_profile(), data=WaveData(n=8, t_max=9), out_dir=tmp_path,
              progress=False)
    for kwargs, match in [({"pde": "XX"}, "pde"), ({"model_name": "mlp"}, "model"),
                          ({"seed": -1}, "seed"), ({"profile": "huge"}, "profile")]:
        args = {"pde": "CE", "model_name": "vit", "seed": 10, "profile": tiny_profile()} | kwargs
        with pytest.raises(InputError, match=match):
            train(**args, data=WaveData(n=8), out_dir=tmp_path, progress=False)
    assert not list(tmp_path.iterdir())


DRIVER = """
import sys
sys.path.insert(0, {tests!r})
from test_training import WaveData, tiny_profile
from pdeinf.training.train import train
train("CE", "unet", 10, tiny_profile({epochs}), data=WaveData(n=8), out_dir=sys.argv[1],
      progress=False)
"""


def _driver(tmp_path, epochs):
    script = tmp_path / "driver.py"
    script.write_text(textwrap.dedent(DRIVER.format(tests=str(TESTS_DIR), epochs=epochs)))
    # One intra-op thread here and in the in-process reference run: equal reduction orders
    # (bitwise comparison) and no thread thrashing on a shared machine.
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    return script, env


def test_sigkill_then_rerun_gives_bitwise_identical_weights(tmp_path):
    epochs = 4
    script, env = _driver(tmp_path, epochs)
    reference, interrupted = tmp_path / "reference", tmp_path / "interrupted"
    train("CE", "unet", 10, tiny_profile(epochs), data=WaveData(n=8), out_dir=reference,
          progress=False)  # one thread (fixture), as in the subprocesses

    proc = subprocess.Popen([sys.executable, str(script), str(interrupted)], env=env)
    resume = interrupted / "CE-unet-s10" / "resume.pt"
    deadline = time.time() + 240
    while not resume.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    time.sleep(0.1)  # land somewhere inside epoch 2 (or writing its files)
    assert proc.poll() is None, "the run finished before it could be interrupted"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    state = torch.load(resume, weights_only=True)
    assert 1 <= state["epoch"] < epochs
    subprocess.run([sys.executable, str(script), str(interrupted)], env=env, check=True, timeout=300)

    a = torch.load(reference / "CE-unet-s10" / f"ckpt_e{epochs:04d}.pt", weights_only=True)
    b = torch.load(interrupted / "CE-unet-s10" / f"ckpt_e{epochs:04d}.pt", weights_only=True)
    assert a["model_state"].keys() == b["model_state"].keys()
    for k in a["model_state"]:
        assert torch.equal(a["model_state"][k], b["model_state"][k]), k
    for pid, st in a["optimizer_state"]["state"].items():
        for k, v in st.items():
            assert torch.equal(v, b["optimizer_state"]["state"][pid][k]), (pid, k)
    assert [h["train_smse"] for h in a["history"]] == [h["train_smse"] for h in b["history"]]
    # no wall-clock time in a checkpoint (history.json keeps it): the files are the same bytes,
    # so every stage keyed on a checkpoint's digest stays current after a bitwise retraining
    ckpt = f"CE-unet-s10/ckpt_e{epochs:04d}.pt"
    assert (reference / ckpt).read_bytes() == (interrupted / ckpt).read_bytes()
    assert all("seconds" in h for h in json.loads((reference / "CE-unet-s10/history.json").read_text()))


def test_cli_on_generated_navier_stokes_files(tmp_path, capsys):
    """End to end on real generated PDEGym files: `pdeinf train --monitor` (smoke), then rollouts."""
    import argparse

    from pdeinf.config import PDE_CLASSES
    from pdeinf.data.datasets import PDEData
    from pdeinf.data.generate import generate
    from pdeinf.training import cli
    from pdeinf.training.rollout import rollout_errors

    data_root = tmp_path / "data"
    for name in PDE_CLASSES["NS"]:
        generate(name, 6, 16, data_root, seed=0, progress=False)
    parser = argparse.ArgumentParser()
    cli.add_parser(parser.add_subparsers())
    args = parser.parse_args(["train", "--pde", "NS", "--model", "unet", "--seed", "10",
                              "--profile", "smoke", "--data-root", str(data_root),
                              "--out-dir", str(tmp_path / "runs"), "--no-progress",
                              "--monitor", "--monitor-every", "6"])
    assert args.func(args) == 0
    assert "checkpoints at epochs 1, 2" in capsys.readouterr().out
    # the coherence monitor on the validation probe (3 classes x 16 transitions), steps 0 and 6
    records = json.loads((tmp_path / "runs" / "NS-unet-s10" / "monitor.json").read_text())
    assert [r["step"] for r in records] == [0, 6]
    assert all(np.isfinite(r[f"R[{c}]"]) for r in records for c in PDE_CLASSES["NS"])
    model, ckpt = load_checkpoint(tmp_path / "runs" / "NS-unet-s10" / "ckpt_e0002.pt", pde="NS")
    data = PDEData(data_root, "NS", t_max=17)
    assert ckpt["data_fingerprint"] == data.fingerprint() and ckpt["config"]["resolution"] == 16
    trajs = {c: data.trajectories(c, "test", 10) for c in data.classes}
    err = rollout_errors(model, trajs, starts=[0, 8], horizon=8)
    assert err.sizes["class"] == 3 and err.sizes["horizon"] == 8
    assert np.isfinite(err.values[~np.isnan(err.values)]).all() and np.nanmin(err.values) > 0
    json.loads((tmp_path / "runs" / "NS-unet-s10" / "history.json").read_text())


def test_validation_smse_is_the_mean_over_all_transitions_in_any_batching():
    """Not the sum over batches divided by the size of the last batch."""
    data = WaveData(n=8)  # validation: 3 classes x 1 trajectory x 16 = 48 transitions
    val = train_mod.load_transitions(data, "val", 10, 17, 4, torch.float64)
    torch.manual_seed(0)
    model = build("vit", channels=4, resolution=16, size="smoke").double()
    xv, yv = _manual_transitions(data, "val", 10)
    with torch.no_grad():
        direct = torch.stack([smse(model(xv[i : i + 1]), yv[i : i + 1])[0]
                              for i in range(len(xv))]).mean().item()
    assert len(val) == 48
    for batch_size in (48, 256, 7, 5, 1):  # one batch; several with ragged last batches 6, 3
        got = train_mod.evaluate_smse(model, val, batch_size=batch_size)
        assert got == pytest.approx(direct, rel=1e-12), batch_size


def test_run_files_follow_the_process_umask(tmp_path):
    """Checkpoints and curves get the permissions of the umask, not 0600."""
    old = os.umask(0o022)
    try:
        result = train("CE", "vit", 10, tiny_profile(1, (1,)), data=WaveData(n=5),
                       out_dir=tmp_path, progress=False)
    finally:
        os.umask(old)
    for name in ("ckpt_e0001.pt", "resume.pt", "history.json", "history.csv"):
        assert (result.run_dir / name).stat().st_mode & 0o777 == 0o644, name
