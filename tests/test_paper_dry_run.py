"""The paper profile's path end to end on CPU, at paper size (128 x 128, the authors' UNet and
ViT, 13.9M / 4.5M parameters): one training step and one influence matrix on a batch of 2
examples with both estimators. Nothing is checked against the paper here (that needs a GPU and
real data); what is checked is that every piece runs at that size and returns well-formed,
finite results."""
from __future__ import annotations

import pytest
import torch

from pdeinf.config import get_profile, pde_spec
from pdeinf.influence import hat_matrix
from pdeinf.influence.fullspace import full_space_hat_matrix
from pdeinf.models import build, count_parameters
from pdeinf.training.loss import smse

pytestmark = pytest.mark.slow
PAPER = get_profile("paper")


@pytest.mark.parametrize("name", ["unet", "vit"])
def test_paper_size_training_step_and_both_estimators(name, one_torch_thread):
    spec = pde_spec("CE")
    torch.manual_seed(0)
    model = build(name, channels=spec.channels, resolution=PAPER.resolution, size=PAPER.model_size,
                  variant=PAPER.model_variant, residual=PAPER.residual)
    assert count_parameters(model) > 4_000_000
    g = torch.Generator().manual_seed(1)
    x = 1.0 + 0.1 * torch.rand(2, spec.channels, PAPER.resolution, PAPER.resolution, generator=g)
    y = x + 0.01 * torch.randn(x.shape, generator=g)

    optimizer = torch.optim.AdamW(model.parameters(), lr=PAPER.lr, weight_decay=PAPER.weight_decay)
    loss = smse(model(x), y).mean()
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss)
    model.eval()

    sub = hat_matrix(model, x, y, damping=PAPER.damping, energy_tol=PAPER.energy_tol)
    assert sub.pi.shape == (2, 2) and torch.isfinite(sub.pi).all() and 1 <= sub.rank <= 2
    full = full_space_hat_matrix(model, x, y, damping=PAPER.fullspace_damping,
                                 rtol=PAPER.rtol_for(name), maxiter=1)
    assert full.pi.shape == (2, 2) and torch.isfinite(full.pi).all()
    assert (full.iterations <= 1).all()
