"""CoherenceMonitor: its records equal direct computations on `hat_matrix`, it runs on schedule,
leaves the model as it found it, and rides along `pdeinf.training.train` without changing the
training (bitwise), through a resume, with its history written beside the loss curves."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pdeinf.errors import InputError
from pdeinf.influence.hat import hat_matrix
from pdeinf.influence.monitor import CoherenceMonitor, coherence_record

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_training import WaveData, tiny_profile

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CLASSES = ("A", "B", "C")


class TinyNet(torch.nn.Module):
    def __init__(self, channels=2):
        super().__init__()
        torch.manual_seed(0)
        self.a = torch.nn.Conv2d(channels, 4, 3, padding=1, padding_mode="circular").double()
        self.drop = torch.nn.Dropout(0.0)
        self.b = torch.nn.Conv2d(4, channels, 3, padding=1, padding_mode="circular").double()

    def forward(self, x):
        return x + self.b(torch.tanh(self.drop(self.a(x))))


def _probe(n_times=5, channels=2, res=6):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(len(CLASSES) * n_times, channels, res, res, generator=g, dtype=torch.float64)
    # class c's examples share a class-specific pattern, so the class blocks differ
    for c in range(len(CLASSES)):
        x[c * n_times : (c + 1) * n_times] += 2.0 * torch.randn(1, channels, res, res, generator=g,
                                                                dtype=torch.float64)
    return x, x + 0.1 * torch.roll(x, 1, dims=-1)


def test_records_match_direct_computation_from_hat_matrix():
    model = TinyNet()
    x, y = _probe()
    monitor = CoherenceMonitor(x, y, every=1, classes=CLASSES)
    record = monitor(model, 0)
    model.eval()
    result = hat_matrix(model, x, y)
    pi = result.pi.numpy()
    T = 5
    for c, name in enumerate(CLASSES):
        off = diag = 0.0
        for i in range(T):
            for j in range(T):
                v = pi[c * T + i, c * T + j]
                if i == j:
                    diag += v
                else:
                    off += v
        assert record[f"R[{name}]"] == pytest.approx(off / diag, rel=1e-10)
    std = pi / pi.std(axis=1, ddof=1, keepdims=True)
    intra, inter = [], []
    for n in range(len(pi)):
        for m in range(len(pi)):
            if n % T - m % T == 1:
                (intra if n // T == m // T else inter).append(std[n, m])
    assert len(intra) == 3 * 4 and len(inter) == 6 * 4
    assert record["intra_lag1"] == pytest.approx(np.median(intra), rel=1e-10)
    assert record["inter_lag1"] == pytest.approx(np.median(inter), rel=1e-10)
    assert record["rank"] == result.rank and record["step"] == 0
    assert set(record) == {"step", "rank", "R[A]", "R[B]", "R[C]", "intra_lag1", "inter_lag1",
                           "seconds"}
    # the pure helper on a matrix with a known answer: block ones -> R = (T^2 - T) / T = T - 1
    assert coherence_record(np.ones((15, 15)), CLASSES)["R[B]"] == pytest.approx(4.0)


def test_schedule_modes_and_state_are_left_alone():
    model = TinyNet()
    model.train()
    model.drop.eval()  # a mixed state must come back as it was
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = _probe()
    monitor = CoherenceMonitor(x, y, every=3, classes=CLASSES)
    rng_before = torch.get_rng_state()
    returned = [monitor(model, step) for step in range(8)]
    assert [r is not None for r in returned] == [s % 3 == 0 for s in range(8)]
    assert [h["step"] for h in monitor.history] == [0, 3, 6]
    assert model.training and model.a.training and not model.drop.training
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert torch.equal(torch.get_rng_state(), rng_before)
    frame = monitor.to_dataframe()
    assert list(frame.index) == [0, 3, 6] and "R[A]" in frame.columns


def test_bad_arguments_are_refused():
    x, y = _probe()
    with pytest.raises(InputError, match="every"):
        CoherenceMonitor(x, y, every=0, classes=CLASSES)
    assert CoherenceMonitor(x, y).classes == ("probe",)  # one trajectory in time order
    with pytest.raises(InputError, match="N = 15"):
        CoherenceMonitor(x, y, classes=("A", "B"))
    with pytest.raises(InputError, match="estimator"):
        CoherenceMonitor(x, y, classes=CLASSES, estimator="exact")
    with pytest.raises(InputError, match="shapes"):
        CoherenceMonitor(x, y[:-1], classes=CLASSES)
    from pdeinf.config import pde_spec

    assert CoherenceMonitor(x, y, pde="NS").classes == pde_spec("NS").classes


def test_training_loop_with_monitor(tmp_path):
    from pdeinf.training import train as train_mod
    from pdeinf.training.train import train

    data = WaveData(n=5)  # 3 steps per epoch
    probe = torch.as_tensor(np.concatenate([data.trajectories(c, "val", 3)[0] for c in data.classes]))
    x = torch.cat([probe[i * 17 : i * 17 + 4] for i in range(3)])
    y = torch.cat([probe[i * 17 + 1 : i * 17 + 5] for i in range(3)])
    monitor = CoherenceMonitor(x, y, every=2, classes=data.classes)
    watched = train("CE", "vit", 3, tiny_profile(2), data=data, out_dir=tmp_path / "m",
                    progress=False, monitor=monitor)
    plain = train("CE", "vit", 3, tiny_profile(2), data=data, out_dir=tmp_path / "p",
                  progress=False)
    a = torch.load(watched.checkpoints[2], weights_only=True)
    b = torch.load(plain.checkpoints[2], weights_only=True)
    assert all(torch.equal(a["model_state"][k], b["model_state"][k]) for k in a["model_state"])
    assert [h["step"] for h in monitor.history] == [0, 2, 4, 6]
    on_disk = json.loads((watched.run_dir / "monitor.json").read_text())
    assert [h["step"] for h in on_disk] == [0, 2, 4, 6]
    assert (watched.run_dir / "monitor.csv").read_text().splitlines()[0].startswith("step,rank,R[A]")
    assert a["monitor_history"] == on_disk
    # resume from epoch 1: the history of epoch 1 comes back from the resume state
    state = torch.load(watched.run_dir / "ckpt_e0001.pt", weights_only=True)
    train_mod.atomic_torch_save(state, watched.run_dir / "resume.pt")
    fresh = CoherenceMonitor(x, y, every=2, classes=data.classes)
    train("CE", "vit", 3, tiny_profile(2), data=data, out_dir=tmp_path / "m", progress=False,
          monitor=fresh)
    assert [h["step"] for h in fresh.history] == [0, 2, 4, 6]
    for old, new in zip(monitor.history, fresh.history):
        assert {k: v for k, v in old.items() if k != "seconds"} == pytest.approx(
            {k: v for k, v in new.items() if k != "seconds"}, rel=1e-6)
