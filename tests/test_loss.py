"""SMSE, relative L1 and VRMSE against closed forms on grid fields with exact grid means."""
import numpy as np
import pytest
import torch

from pdeinf.training.loss import relative_l1, smse, vrmse

R = 16


def _sine(amplitude, offset=0.0, k=(1, 2)):
    """`offset + A sin(2 pi (k1 x + k2 y))` on an R x R periodic grid (grid mean of sin^2 = 1/2)."""
    g = torch.arange(R, dtype=torch.float64) / R
    yy, xx = torch.meshgrid(g, g, indexing="ij")
    return offset + amplitude * torch.sin(2 * np.pi * (k[0] * xx + k[1] * yy))


def test_smse_zero_on_exact_prediction():
    y = torch.randn(4, 3, R, R, dtype=torch.float64)
    assert torch.equal(smse(y.clone(), y), torch.zeros(4, dtype=torch.float64))


def test_smse_divides_by_channel_rms_not_mean_square():
    # channel 0: A sin(.), RMS = A / sqrt(2); channel 1: constant a, RMS = |a|.
    amp, a, e0, e1 = 3.0, -2.0, 0.3, 0.1
    target = torch.stack([_sine(amp), torch.full((R, R), a, dtype=torch.float64)])[None]
    pred = target + torch.tensor([e0, e1], dtype=torch.float64)[None, :, None, None]
    expected = 0.5 * (e0**2 / (amp / np.sqrt(2) + 1e-6) + e1**2 / (abs(a) + 1e-6))
    torch.testing.assert_close(smse(pred, target), torch.tensor([expected], dtype=torch.float64),
                               rtol=1e-12, atol=0)


def test_smse_is_per_example_and_scale_covariant():
    torch.manual_seed(0)
    y = torch.randn(5, 2, R, R, dtype=torch.float64)
    p = y + 0.1 * torch.randn_like(y)
    batch = smse(p, y)
    singles = torch.cat([smse(p[i : i + 1], y[i : i + 1]) for i in range(5)])
    torch.testing.assert_close(batch, singles, rtol=1e-14, atol=0)
    # (c p - c y)^2 / (c s) = c * (p - y)^2 / s for c > 0 (up to the 1e-6 guard)
    torch.testing.assert_close(smse(10 * p, 10 * y), 10 * batch, rtol=1e-5, atol=0)


def test_smse_zero_target_uses_guard():
    y = torch.zeros(1, 1, R, R, dtype=torch.float64)
    p = torch.full_like(y, 1e-3)
    torch.testing.assert_close(smse(p, y), torch.tensor([1e-6 / 1e-6], dtype=torch.float64))


def test_relative_l1_closed_form():
    y = torch.stack([_sine(2.0, offset=3.0), _sine(1.0, offset=-4.0, k=(2, 1))])[None]
    assert torch.allclose(relative_l1(1.1 * y, y), torch.tensor([0.1], dtype=torch.float64),
                          rtol=1e-12)
    assert relative_l1(y, y).item() == 0.0


def test_vrmse_closed_form_unbiased_std():
    amp, c = 2.0, 0.5
    y = torch.stack([_sine(amp, offset=7.0), _sine(3 * amp, offset=-1.0)])[None]
    p = y + c
    n = R * R
    var = torch.tensor([amp**2 / 2, 9 * amp**2 / 2], dtype=torch.float64) * n / (n - 1)
    expected = c / torch.sqrt(var + 1e-7)
    torch.testing.assert_close(vrmse(p, y, per_channel=True)[0], expected, rtol=1e-12, atol=0)
    torch.testing.assert_close(vrmse(p, y), expected.mean()[None], rtol=1e-12, atol=0)


def test_shape_mismatch_raises():
    with pytest.raises(ValueError, match="shape"):
        smse(torch.zeros(1, 2, 4, 4), torch.zeros(1, 2, 4, 5))
