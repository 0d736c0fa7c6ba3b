"""Autoregressive rollout errors against closed forms: an exact shift model (zero error), a
constant-drift model on steady fields (error h^2 c^2 mean_c 1/s_c), NaN past the trajectory end."""
import numpy as np
import pytest
import torch
from torch import nn

from pdeinf.errors import InputError
from pdeinf.models import build
from pdeinf.training.rollout import cumulative_errors, rollout, rollout_errors

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class Shift(nn.Module):
    """Exact one-step map of fields advected by one pixel per step along x."""

    def __init__(self):
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros((), dtype=torch.float64))

    def forward(self, x):
        return torch.roll(x, 1, dims=-1) + self.dummy


class Drift(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.c = nn.Parameter(torch.tensor(c, dtype=torch.float64))

    def forward(self, x):
        return x + self.c


def _advected(n, T, C=2, R=8, seed=0):
    u0 = np.random.default_rng(seed).normal(size=(n, C, R, R))
    return np.stack([np.roll(u0, t, axis=-1) for t in range(T)], axis=1)


def test_exact_model_has_zero_error_and_labelled_dims():
    trajs = {"A": _advected(3, 6), "B": _advected(2, 6, seed=1)}
    err = rollout_errors(Shift(), trajs)
    assert err.dims == ("class", "trajectory", "start", "horizon")
    assert list(err["class"].values) == ["A", "B"]
    assert list(err.start.values) == [0, 1, 2, 3, 4] and list(err.horizon.values) == [1, 2, 3, 4, 5]
    valid = err.start + err.horizon <= 5
    assert float(abs(err.where(valid)).max()) < 1e-12
    # missing trajectories of class B and horizons past the end are NaN
    assert np.isnan(err.sel({"class": "B", "trajectory": 2})).all()
    assert np.isnan(err.sel(start=3, horizon=3)).all()
    assert np.isfinite(err.sel({"class": "A"}).where(valid, 0.0)).all()


def test_constant_drift_error_closed_form_and_cumulative():
    c, T = 0.01, 7
    field = 2.0 + np.sin(2 * np.pi * np.arange(8) / 8)[None, :] * np.ones((8, 1))
    steady = np.broadcast_to(np.stack([field, 3.0 * field])[None, None], (2, T, 2, 8, 8)).copy()
    err = rollout_errors(Drift(c), {"S": steady}, starts=[0, 2], horizon=4, batch_size=1)
    scale = np.sqrt((np.stack([field, 3.0 * field]) ** 2).mean(axis=(1, 2))) + 1e-6
    h = np.arange(1, 5)
    expected = (h * c) ** 2 * np.mean(1.0 / scale)
    np.testing.assert_allclose(err.sel({"class": "S", "start": 0}).values, np.tile(expected, (2, 1)),
                               rtol=1e-10)
    cum = cumulative_errors(err)
    np.testing.assert_allclose(cum.sel({"class": "S", "start": 2, "trajectory": 0}).values,
                               np.cumsum(expected), rtol=1e-10)


def test_batching_does_not_change_errors_of_a_trained_size_model():
    torch.manual_seed(0)
    model = build("vit", channels=2, resolution=8, size="smoke").double()
    trajs = {"A": _advected(5, 4), "B": _advected(3, 4, seed=2)}
    a = rollout_errors(model, trajs, batch_size=2)
    b = rollout_errors(model, trajs, batch_size=64)
    np.testing.assert_allclose(a.values, b.values, rtol=1e-12, equal_nan=True)
    # and it equals a hand-written autoregressive loop
    x = torch.as_tensor(trajs["A"][:, 1])
    pred = rollout(model, x, 2)
    with torch.no_grad():
        manual = model(model(x))
    torch.testing.assert_close(pred[:, 1], manual)


@pytest.mark.parametrize("kwargs,match", [
    ({"trajectories_by_class": {}}, "trajectories"),
    ({"trajectories_by_class": {"A": np.zeros((2, 5, 8, 8))}}, "A"),
    ({"starts": [4]}, "starts"),
    ({"horizon": 0}, "horizon"),
    ({"batch_size": 0}, "batch_size"),
])
def test_bad_input_raises(kwargs, match):
    args = {"trajectories_by_class": {"A": _advected(2, 5)}} | kwargs
    with pytest.raises(InputError, match=match):
        rollout_errors(Shift(), **args)


def test_non_finite_trajectory_raises():
    bad = _advected(2, 5)
    bad[1, 2, 0, 0, 0] = np.inf
    with pytest.raises(InputError, match="NaN or Inf"):
        rollout_errors(Shift(), {"X": bad})


def test_errors_land_at_their_labels():
    """Every (class, trajectory, start, horizon) entry equals a hand-made rollout from that start."""
    from pdeinf.training.loss import smse

    torch.manual_seed(0)
    model = build("vit", channels=2, resolution=8, size="smoke").double().eval()
    trajs = {"A": _advected(3, 5, seed=3), "B": _advected(2, 5, seed=4) * 2.0}
    err = rollout_errors(model, trajs, starts=[3, 0, 1], horizon=3, batch_size=4)
    for name, arr in trajs.items():
        for j in range(arr.shape[0]):
            for s in (3, 0, 1):
                state = torch.as_tensor(arr[j : j + 1, s])
                with torch.no_grad():
                    for h in range(1, 4):
                        state = model(state)
                        got = err.sel({"class": name, "trajectory": j, "start": s, "horizon": h})
                        if s + h > 4:
                            assert np.isnan(got)
                            continue
                        want = smse(state, torch.as_tensor(arr[j : j + 1, s + h])).item()
                        assert float(got) == pytest.approx(want, rel=1e-10)
