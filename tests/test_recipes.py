"""Training recipes (`pdeinf.training.recipes`): each changes exactly what it claims.

one-step is today's loop bitwise; pushforward trains on the model's own (gradient-free) input;
noise adds per-channel scaled Gaussian noise drawn from (seed, epoch, step); multistep
back-propagates through the unroll; augment's pairs are images of one group element applied to
x and y (for Navier-Stokes: again a solution of the PDE); the physics penalty vanishes on the
solvers' output. Every recipe resumes bitwise, stops on a non-finite loss, and is refused on
resume under another recipe."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pdeinf.errors import InputError
from pdeinf.models import build
from pdeinf.training import recipes as R
from pdeinf.training import train as train_mod
from pdeinf.training.loss import smse
from pdeinf.training.train import TrainingError, Transitions, train

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_training import WaveData, tiny_profile

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ALL = tuple(R.RECIPES)


class TinyNet(torch.nn.Module):
    """A small nonlinear periodic convolution (float64): cheap and exact enough for references."""

    def __init__(self, channels: int, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.a = torch.nn.Conv2d(channels, 6, 3, padding=1, padding_mode="circular").double()
        self.b = torch.nn.Conv2d(6, channels, 3, padding=1, padding_mode="circular").double()

    def forward(self, x):
        return x + 0.1 * self.b(torch.tanh(self.a(x)))


def _transitions(n_traj=3, t_max=6, channels=2, res=8, seed=0) -> Transitions:
    g = torch.Generator().manual_seed(seed)
    traj = 1.0 + torch.randn(n_traj, t_max, channels, res, res, generator=g, dtype=torch.float64)
    return Transitions(traj, torch.arange(n_traj) % 3)


def _batch(data, net, index, *, model=None, global_index=None, positions=None, step=0):
    index = torch.as_tensor(index)
    global_index = index if global_index is None else torch.as_tensor(global_index)
    positions = torch.arange(len(index)) if positions is None else torch.as_tensor(positions)
    return R.StepBatch(data=data, index=index, global_index=global_index, positions=positions,
                       net=net, model=model if model is not None else net, loss_fn=smse,
                       device=torch.device("cpu"), seed=5, epoch=2, step=step)


# ----------------------------------------------------------------------------- registry


def test_registry_settings_and_errors():
    assert set(R.RECIPES) == {"one-step", "pushforward", "noise", "multistep", "augment", "physics"}
    assert R.make_recipe(None).identity() == {"name": "one-step"}
    assert R.make_recipe("pushforward", k="3").identity() == {"name": "pushforward", "k": 3}
    assert R.make_recipe("augment", d4="false").d4 is False
    assert R.parse_settings(["k=2", " sigma = 0.5 "]) == {"k": "2", "sigma": "0.5"}
    for args, match in [(("nope",), {}), (("pushforward",), {"k": 0}), (("noise",), {"scale": "x"}),
                        (("multistep",), {"horizon": 2}), (("physics",), {"weight": "heavy"})]:
        with pytest.raises(InputError, match="recipe"):
            R.make_recipe(*args, **match)
    with pytest.raises(InputError, match="KEY=VALUE"):
        R.parse_settings(["k"])


# ----------------------------------------------------------------------------- one-step


def test_one_step_recipe_is_todays_loop_bitwise(tmp_path):
    """The pre-recipe loop written out (float32, sum * 1/B, AdamW): bitwise equal weights."""
    data, seed = WaveData(n=5), 4
    result = train("CE", "vit", seed, tiny_profile(2), data=data, out_dir=tmp_path, progress=False,
                   recipe="one-step")
    trans = train_mod.load_transitions(data, "train", seed, 17, 4)
    torch.manual_seed(seed)
    model = build("vit", channels=4, resolution=16, size="smoke")
    opt = torch.optim.AdamW(model.parameters(), lr=5e-4, weight_decay=1e-4)
    model.train()
    for epoch in (1, 2):
        perm = train_mod.epoch_permutation(seed, epoch, len(trans))
        for i in range(0, len(trans), 48):
            idx = perm[i : i + 48]
            x, y = trans.batch(idx, torch.device("cpu"))
            loss = smse(model(x), y).sum() * (1 / len(idx))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    final = torch.load(result.checkpoints[2], weights_only=True)
    assert final["config"]["recipe"] == {"name": "one-step"}
    for k, v in model.state_dict().items():
        assert torch.equal(final["model_state"][k], v), k


# ----------------------------------------------------------------------------- pushforward


def test_pushforward_trains_on_the_models_own_gradient_free_input():
    data, k = _transitions(), 2
    model = TinyNet(2)
    seen = {}

    def net(x):
        seen["x"] = x
        return model(x)

    index = torch.tensor([0, 1, 2, 3, 4, 6, 12])  # t = 0, 1, 2, 3, 4, 1, 2 (5 steps / trajectory)
    recipe = R.make_recipe("pushforward", k=k)
    stored = data.trajectories.clone()
    loss = recipe.per_example_loss(_batch(data, net, index, model=model))
    assert torch.equal(data.trajectories, stored)  # the unroll works on copies
    traj, t = data.locate(index)
    for i in range(len(index)):
        m = min(k, int(t[i]))
        u = data.trajectories[traj[i], t[i] - m][None]
        with torch.no_grad():
            for _ in range(m):
                u = model(u)
        torch.testing.assert_close(seen["x"][i : i + 1], u, rtol=1e-12, atol=1e-12)
        if m == 0:  # t = 0: nothing to unroll, the true u_0
            assert torch.equal(seen["x"][i], data.trajectories[traj[i], 0])
        else:
            assert (seen["x"][i] - data.trajectories[traj[i], t[i]]).abs().max() > 1e-3
    assert not seen["x"].requires_grad
    y = data.trajectories[traj, t + 1]
    torch.testing.assert_close(loss, smse(model(seen["x"]), y), rtol=1e-12, atol=0)
    # the gradient is that of the last step alone (nothing flows through the unroll)
    grads = torch.autograd.grad(loss.sum(), list(model.parameters()))
    direct = torch.autograd.grad(smse(model(seen["x"].clone()), y).sum(), list(model.parameters()))
    for a, b in zip(grads, direct):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


# ----------------------------------------------------------------------------- multistep


def test_multistep_sums_the_unroll_and_backpropagates_through_it():
    data, k = _transitions(), 3
    model = TinyNet(2, seed=1)
    index = torch.tensor([0, 2, 3, 4, 9])  # t = 0, 2, 3, 4, 4: the last ones run past T - 1 = 5
    loss = R.make_recipe("multistep", k=k).per_example_loss(_batch(data, model, index))
    traj, t = data.locate(index)
    params = list(model.parameters())
    grads = torch.autograd.grad(loss.sum(), params)
    ref_total, detached_total = 0.0, 0.0
    for i in range(len(index)):
        u = data.trajectories[traj[i], t[i]][None]
        ud = u
        expected = 0.0
        for j in range(1, k + 1):
            u, ud = model(u), model(ud.detach())
            if int(t[i]) + j <= data.steps:
                y = data.trajectories[traj[i], t[i] + j][None]
                expected = expected + smse(u, y)
                detached_total = detached_total + smse(ud, y).sum()
        torch.testing.assert_close(loss[i : i + 1], expected, rtol=1e-12, atol=0)
        ref_total = ref_total + expected.sum()
    ref = torch.autograd.grad(ref_total, params)
    cut = torch.autograd.grad(detached_total, params)
    for a, b in zip(grads, ref):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-13)
    # the unroll contributes: the gradient with the graph cut between steps is different
    diff = max((a - c).abs().max().item() / c.abs().max().item() for a, c in zip(grads, cut))
    assert diff > 1e-3


# ----------------------------------------------------------------------------- noise


@pytest.mark.parametrize("scale", ["train", "batch"])
def test_noise_is_scaled_per_channel_and_reproducible(scale):
    g = torch.Generator().manual_seed(3)
    traj = torch.randn(40, 6, 2, 8, 8, generator=g, dtype=torch.float64)
    traj[:, :, 1] = 5.0 + 20.0 * traj[:, :, 1]  # channel stds 1 and 20
    data = Transitions(traj, torch.zeros(40, dtype=torch.long))
    recipe = R.make_recipe("noise", sigma=0.1, scale=scale)
    recipe.prepare(data, "NS")
    index = torch.arange(len(data))
    x_noisy, y = recipe.noisy_inputs(_batch(data, None, index))
    x, y0 = data.batch(index)
    assert torch.equal(y, y0)
    pool = traj[:, 1:].transpose(0, 2) if scale == "train" else y.transpose(0, 1)
    std = pool.reshape(2, -1).std(dim=1)
    torch.testing.assert_close(recipe.channel_std(_batch(data, None, index)), std)
    xi = (x_noisy - x) / (0.1 * std[None, :, None, None])
    for c in range(2):  # 12800 standard normal draws per channel
        assert abs(xi[:, c].mean().item()) < 0.05 and abs(xi[:, c].std().item() - 1) < 0.05
    # same (seed, epoch, step) -> same noise; another step -> other noise
    again, _ = recipe.noisy_inputs(_batch(data, None, index))
    other, _ = recipe.noisy_inputs(_batch(data, None, index, step=1))
    assert torch.equal(again, x_noisy) and not torch.equal(other, x_noisy)
    # a rank holding rows 1::2 of the global batch gets exactly those rows (DDP = one process)
    part, _ = recipe.noisy_inputs(_batch(data, None, index[1::2], global_index=index,
                                         positions=torch.arange(len(index))[1::2]))
    assert torch.equal(part, x_noisy[1::2])


# ----------------------------------------------------------------------------- augment


def _ns_trajectories(n=2, res=16, times=(0.0, 0.02)):
    from pdeinf.solvers import initial_conditions, navier_stokes

    v0 = initial_conditions.sample("NS-Sines", n, res, seed=0)
    return navier_stokes.solve(v0, list(times), progress=False)  # [n, T, 2, H, W] float64


def test_augment_applies_one_element_to_x_and_y_and_keeps_ns_solutions():
    from pdeinf.solvers import navier_stokes
    from pdeinf.symmetry.actions import act

    traj = _ns_trajectories()
    data = Transitions(traj, torch.zeros(len(traj), dtype=torch.long))
    recipe = R.make_recipe("augment")
    recipe.prepare(data, "NS")
    index = torch.arange(len(data))
    batches = [_batch(data, None, index, step=s) for s in range(8)]
    elements = [e for b in batches for e in recipe.draw(b, (16, 16))]
    assert len({e[0] for e in elements}) >= 5 and any(e[1] or e[2] for e in elements)
    for b in batches[:3]:
        xa, ya = recipe.augmented_pairs(b)
        x, y = b.pairs()
        for i, (d4, a, c) in enumerate(recipe.draw(b, (16, 16))):
            assert torch.equal(xa[i], act(x[i], ("affine", d4, a, c), pde="NS"))
            assert torch.equal(ya[i], act(y[i], ("affine", d4, a, c), pde="NS"))
        # valid images: still divergence-free, and the solver maps g.x to g.y
        # (|du/dx| reaches ~ 2 pi k_max |u| ~ 50 |u| on this grid)
        assert navier_stokes.divergence(xa).abs().max() < 1e-10 * xa.abs().max()
        evolved = navier_stokes.solve(xa, [0.0, 0.02], progress=False)[:, 1]
        torch.testing.assert_close(evolved, ya, rtol=1e-9, atol=1e-10)


# ----------------------------------------------------------------------------- physics


def test_physics_penalty_vanishes_on_solver_output_and_not_elsewhere():
    from pdeinf.solvers import euler, initial_conditions

    u0 = initial_conditions.sample("CE-CRP", 2, 16, seed=1)
    ce = euler.solve(u0, [0.0, 0.01], progress=False)
    x, y = ce[:, 0], ce[:, 1]
    assert (y - x).abs().max() > 1e-3  # the state did change
    assert R.physics_penalty(x, y, "CE").max() < 1e-26  # (relative drift ~ 1e-14)^2
    bumped = y.clone()
    bumped[:, 0] *= 1.01  # 1 % more mass
    torch.testing.assert_close(R.physics_penalty(x, bumped, "CE"), torch.full((2,), 1e-4,
                               dtype=torch.float64), rtol=1e-6, atol=0)
    ns = _ns_trajectories()
    assert R.physics_penalty(ns[:, 0], ns[:, 1], "NS").max() < 1e-24
    # a gradient field (curl-free) is all divergence: penalty 1
    g = torch.arange(16, dtype=torch.float64) / 16
    sy, cy = torch.sin(2 * np.pi * g)[:, None], torch.cos(2 * np.pi * g)[:, None]
    sx, cx = torch.sin(4 * np.pi * g)[None, :], torch.cos(4 * np.pi * g)[None, :]
    phi = sy * cx  # phi(y, x) = sin(2 pi y) cos(4 pi x)
    # channel 0 (u) along W = x: d phi/dx; channel 1 (v) along H = y: d phi/dy
    grad_field = torch.stack([-4 * np.pi * sy * sx, 2 * np.pi * cy * cx])
    div, _ = R.spectral_divergence(grad_field[None], {0: -1, 1: -2})
    lap = -(2 * np.pi) ** 2 * (1 + 4) * phi
    torch.testing.assert_close(div[0], lap, rtol=1e-9, atol=1e-9)
    assert R.physics_penalty(ns[:, 0], ns[:, 1] + 0.1 * grad_field, "NS").min() > 1e-4
    # the recipe's loss: SMSE + weight * penalty, the penalty on the prediction
    model = TinyNet(4)
    data = Transitions(ce, torch.zeros(2, dtype=torch.long))
    recipe = R.make_recipe("physics", weight=0.5)
    recipe.prepare(data, "CE")
    loss = recipe.per_example_loss(_batch(data, model, torch.arange(2)))
    pred = model(x)
    torch.testing.assert_close(loss, smse(pred, y) + 0.5 * R.physics_penalty(x, pred, "CE"))
    assert R.physics_penalty(x, pred, "CE").min() > 0


# ----------------------------------------------------------------------------- in the loop


@pytest.mark.parametrize("name", [n for n in ALL if n != "one-step"])
def test_every_recipe_resumes_bitwise_and_is_tied_to_its_run(tmp_path, name):
    """Kill after epoch 1 (simulated: epoch 1's resume state restored, later files removed),
    rerun: bitwise the uninterrupted weights. Another recipe on that directory: refused."""
    data = WaveData(n=5)
    kwargs = {"data": data, "progress": False, "recipe": name}
    full = train("CE", "vit", 7, tiny_profile(2), out_dir=tmp_path / "a", **kwargs)
    assert full.history[-1]["train_smse"] < full.history[0]["train_smse"] * 1.5
    run = full.run_dir
    a = torch.load(full.checkpoints[2], weights_only=True)
    state = torch.load(run / "ckpt_e0001.pt", weights_only=True)
    assert state["config"]["recipe"]["name"] == name
    train_mod.atomic_torch_save(state, run / "resume.pt")
    (run / "ckpt_e0002.pt").unlink()
    resumed = train("CE", "vit", 7, tiny_profile(2), out_dir=tmp_path / "a", **kwargs)
    assert resumed.history[0] == full.history[0]
    b = torch.load(resumed.checkpoints[2], weights_only=True)
    for k in a["model_state"]:
        assert torch.equal(a["model_state"][k], b["model_state"][k]), k
    for pid, st in a["optimizer_state"]["state"].items():
        for k, v in st.items():
            assert torch.equal(v, b["optimizer_state"]["state"][pid][k]), (pid, k)
    with pytest.raises(InputError, match="recipe=.*another recipe"):
        train("CE", "vit", 7, tiny_profile(2), out_dir=tmp_path / "a", data=data, progress=False)


@pytest.mark.parametrize("name", ALL)
def test_every_recipe_stops_on_a_non_finite_loss(tmp_path, monkeypatch, name):
    data = WaveData(n=5)  # 144 transitions, 3 steps per epoch
    calls = {"n": 0, "epoch2": False}

    def poisoned(pred, target):
        out = smse(pred, target)
        if pred.requires_grad:
            calls["n"] += 1
            if calls["epoch2"]:
                out = out * float("nan")
        return out

    real = train_mod.evaluate_smse

    def after_epoch(*args, **kwargs):  # validation ends epoch 1: poison from epoch 2 on
        calls["epoch2"] = True
        return real(*args, **kwargs)

    monkeypatch.setattr(train_mod, "smse", poisoned)
    monkeypatch.setattr(train_mod, "evaluate_smse", after_epoch)
    with pytest.raises(TrainingError, match=r"epoch 2, step 1/3.*ckpt_e0001\.pt"):
        train("CE", "vit", 10, tiny_profile(3, (1, 3)), data=data, out_dir=tmp_path,
              progress=False, recipe=name)
    state = torch.load(tmp_path / "CE-vit-s10" / "resume.pt", weights_only=True)
    assert state["epoch"] == 1 and calls["n"] > 0


def test_legacy_run_without_recipe_is_one_step(tmp_path):
    data = WaveData(n=5)
    result = train("CE", "vit", 2, tiny_profile(1, (1,)), data=data, out_dir=tmp_path,
                   progress=False)
    state = torch.load(result.run_dir / "resume.pt", weights_only=True)
    del state["config"]["recipe"]  # as written before recipes existed (and checksums)
    del state["sha256"]
    train_mod.atomic_torch_save(state, result.run_dir / "resume.pt")
    again = train("CE", "vit", 2, tiny_profile(1, (1,)), data=data, out_dir=tmp_path, progress=False)
    assert again.history == result.history
    with pytest.raises(InputError, match="recipe={'name': 'one-step'}"):
        train("CE", "vit", 2, tiny_profile(1, (1,)), data=data, out_dir=tmp_path, progress=False,
              recipe="noise")


def test_default_run_directories_keep_recipes_apart(tmp_path, monkeypatch):
    monkeypatch.setenv("PDEINF_HOME", str(tmp_path))
    data = WaveData(n=5)
    a = train("CE", "vit", 1, tiny_profile(1, (1,)), data=data, progress=False)
    b = train("CE", "vit", 1, tiny_profile(1, (1,)), data=data, progress=False, recipe="noise",
              recipe_settings={"sigma": 0.05})
    assert b.run_dir.parent == a.run_dir.parent / "recipe-noise"
    cfg = torch.load(b.run_dir / "resume.pt", weights_only=True)["config"]
    assert cfg["recipe"] == {"name": "noise", "sigma": 0.05, "scale": "train"}
    with pytest.raises(InputError, match="sigma"):
        train("CE", "vit", 1, tiny_profile(1, (1,)), data=data, progress=False, recipe="noise")


def test_cli_passes_recipe_and_settings(monkeypatch):
    import argparse

    from pdeinf.training import cli

    seen = {}

    def fake_train(*args, **kwargs):
        seen.update(kwargs)
        return train_mod.RunResult(run_dir=Path("x"), history=[{"epoch": 1}])

    monkeypatch.setattr(train_mod, "train", fake_train)
    parser = argparse.ArgumentParser()
    cli.add_parser(parser.add_subparsers())
    args = parser.parse_args(["train", "--pde", "CE", "--model", "vit", "--seed", "1",
                              "--profile", "smoke", "--recipe", "multistep",
                              "--recipe-setting", "k=3", "--no-progress"])
    assert args.func(args) == 0
    assert seen["recipe"] == "multistep" and seen["recipe_settings"] == {"k": "3"}
    assert seen["monitor"] is None
    args = parser.parse_args(["train", "--pde", "CE", "--model", "vit", "--seed", "1",
                              "--monitor-every", "3"])
    with pytest.raises(InputError, match="--monitor"):
        args.func(args)
