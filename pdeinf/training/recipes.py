"""Training recipes: the per-example loss of one optimizer step of `pdeinf.training.train`
(same data, mini-batches and steps for all). `RECIPES` (name -> class), `make_recipe`:

- `one-step`: teacher forcing, `SMSE(f(u_t), u_{t+1})` (the baseline);
- `pushforward` (k; Brandstetter, Worrall & Welling, ICLR 2022): `SMSE(f(u~), u_{t+1})`,
  `u~ = f^m(u_{t-m})` unrolled without gradient, `m = min(k, t)`;
- `noise` (sigma, scale): `SMSE(f(u_t + sigma * s_c * xi), u_{t+1})`, xi ~ N(0, 1), s_c the
  per-channel std of the training set's (`"train"`) or the global mini-batch's targets;
- `multistep` (k): `sum_{j<=min(k, T-1-t)} SMSE(f^j(u_t), u_{t+j})`, through the whole unroll;
- `augment` (d4, shift): pairs moved by g = shift(a, b) o d, d and (a, b) uniform;
- `physics` (weight): `SMSE + weight * physics_penalty(u_t, f(u_t))`.
Random draws come from (seed, epoch, step) for the whole global mini-batch, each rank taking
its rows: resume is bitwise and a DDP run draws what a one-process run draws.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

from pdeinf.config import pde_spec
from pdeinf.errors import InputError
from pdeinf.symmetry.actions import ELEMENTS, act


@dataclass
class StepBatch:
    """Everything a recipe may use for one optimizer step on one rank. `net`, the (possibly
    DDP-wrapped) model, is called exactly once per step, with gradient; extra forward passes go
    through `model`, the same parameters unwrapped. `index` `[B]`: this rank's transitions;
    `global_index` `[G]`: the global mini-batch; `positions` `[B]`: rows of `index` in it."""

    data: object  # pdeinf.training.train.Transitions
    index: torch.Tensor
    global_index: torch.Tensor
    positions: torch.Tensor
    net: Callable
    model: torch.nn.Module
    loss_fn: Callable
    device: torch.device
    seed: int
    epoch: int
    step: int

    def pairs(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.data.batch(self.index, self.device)

    def generator(self) -> torch.Generator:
        """CPU generator seeded from (seed, epoch, step) alone."""
        state = np.random.default_rng([self.seed, self.epoch, self.step, 13]).integers(2**62)
        return torch.Generator().manual_seed(int(state))


class Recipe:
    """Base class: subclasses set `name`, `defaults` (settings and their types), the settings
    that must be `positive` or `non_negative`, and override `inputs` or `per_example_loss`.
    `identity()` is part of the run's identity; `prepare` runs once before the first step."""

    name: ClassVar[str] = ""
    defaults: ClassVar[dict] = {}
    positive: ClassVar[tuple[str, ...]] = ()
    non_negative: ClassVar[tuple[str, ...]] = ()

    def __init__(self, **settings):
        unknown = sorted(set(settings) - set(self.defaults))
        if unknown:
            allowed = ", ".join(self.defaults) or "none"
            raise InputError(f"recipe {self.name}: unknown setting(s) {unknown}; allowed: {allowed}")
        self._settings = {k: self._coerce(k, settings.get(k, v)) for k, v in self.defaults.items()}
        self.__dict__.update(self._settings)  # each setting is also an attribute
        self.pde: str | None = None
        for key in (*self.positive, *self.non_negative):
            value = self._settings[key]
            if not (value > 0 or (key in self.non_negative and value == 0)):
                raise InputError(f"recipe {self.name}: setting {key}={value!r} must be "
                                 f"{'non-negative' if key in self.non_negative else 'positive'}")

    def _coerce(self, key, value):
        """`value` (a CLI string or a Python value) as the type of the setting's default."""
        default = self.defaults[key]
        wrong = InputError(f"recipe {self.name}: setting {key}={value!r} is not a "
                           f"{type(default).__name__}")
        if isinstance(default, bool):
            if isinstance(value, str):
                if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise wrong
                return value.lower() in ("true", "1", "yes")
            return bool(value)
        if isinstance(value, bool):
            raise wrong
        try:
            return type(default)(value)
        except (TypeError, ValueError):
            raise wrong from None

    def identity(self) -> dict:
        """`{"name": ..., **settings}`: stored in the run config, compared on resume."""
        return {"name": self.name, **self._settings}

    def prepare(self, train_set, pde: str) -> None:
        self.check_horizon(train_set.steps)
        self.pde = pde

    def check_horizon(self, steps: int) -> None:
        """InputError when a setting asks for more than a training trajectory of `steps`
        transitions holds (called before any work)."""

    def _at_most(self, key: str, bound: int, why: str) -> None:
        value = getattr(self, key)
        if value > bound:
            raise InputError(f"recipe {self.name}: setting {key}={value} exceeds {bound}, {why}; "
                             f"use {key} <= {bound}")

    def inputs(self, b: StepBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """`(x, y)` the step trains `f(x) ~ y` on (default: the mini-batch's pairs)."""
        return b.pairs()

    def per_example_loss(self, b: StepBatch) -> torch.Tensor:
        """`[B]` losses of this rank's examples: by default `SMSE(f(x), y)` on `inputs`."""
        x, y = self.inputs(b)
        return b.loss_fn(b.net(x), y)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self._settings.items())
        return f"{type(self).__name__}({args})"


class OneStep(Recipe):
    name = "one-step"


class Pushforward(Recipe):
    name = "pushforward"
    defaults: ClassVar[dict] = {"k": 1}
    positive = ("k",)

    def check_horizon(self, steps: int) -> None:
        self._at_most("k", max(1, steps - 1),
                      f"the deepest unroll a trajectory of {steps} transitions allows (its last "
                      f"transition starts at t={steps - 1})")

    def inputs(self, b: StepBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """`(u~, y)`: the model's own m-step prediction of u_t (no gradient) and u_{t+1}."""
        traj, t = b.data.locate(b.index)
        depth = torch.clamp(t, max=self.k)
        cur = b.data.snapshots(traj, t - depth, b.device)
        with torch.no_grad():
            for j in range(int(depth.max()) if len(depth) else 0):
                active = (depth > j).to(cur.device)
                cur[active] = b.model(cur[active])
        return cur.detach(), b.data.snapshots(traj, t + 1, b.device)


class Noise(Recipe):
    name = "noise"
    defaults: ClassVar[dict] = {"sigma": 0.01, "scale": "train"}
    non_negative = ("sigma",)

    def __init__(self, **settings):
        super().__init__(**settings)
        if self.scale not in ("train", "batch"):
            raise InputError(f"recipe noise: setting scale={self.scale!r}; expected train or batch")
        self._train_std: torch.Tensor | None = None

    def prepare(self, train_set, pde: str) -> None:
        super().prepare(train_set, pde)
        targets = train_set.trajectories[:, 1:]  # every target snapshot u_{t+1}
        self._train_std = targets.transpose(0, 2).reshape(targets.shape[2], -1).std(dim=1)

    def channel_std(self, b: StepBatch) -> torch.Tensor:
        """`[C]` per-channel std that scales the noise."""
        if self.scale == "train":
            if self._train_std is None:
                raise RuntimeError("Noise.prepare was not called")
            return self._train_std
        _, y = b.data.batch(b.global_index)
        return y.transpose(0, 1).reshape(y.shape[1], -1).std(dim=1)

    def noisy_inputs(self, b: StepBatch) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = b.pairs()
        xi = torch.randn((len(b.global_index), *x.shape[1:]), generator=b.generator(),
                         dtype=b.data.trajectories.dtype)[b.positions]
        std = self.channel_std(b).to(xi.dtype)
        noise = self.sigma * std[None, :, None, None] * xi
        return x + noise.to(device=x.device, dtype=x.dtype), y

    inputs = noisy_inputs


class Multistep(Recipe):
    name = "multistep"
    defaults: ClassVar[dict] = {"k": 2}
    positive = ("k",)

    def check_horizon(self, steps: int) -> None:
        self._at_most("k", steps, f"the {steps} transitions of a training trajectory (k steps "
                                  "need k + 1 snapshots)")

    def per_example_loss(self, b: StepBatch) -> torch.Tensor:
        traj, t = b.data.locate(b.index)
        steps = b.data.steps
        cur = b.data.snapshots(traj, t, b.device)
        total = 0
        for j in range(1, self.k + 1):
            # the first forward goes through `net` (DDP), later ones through the same
            # parameters unwrapped: one DDP forward per backward, gradients summed by autograd
            cur = (b.net if j == 1 else b.model)(cur)
            valid = (t + j <= steps).to(cur.device)
            y = b.data.snapshots(traj, torch.clamp(t + j, max=steps), b.device)
            total = total + torch.where(valid, b.loss_fn(cur, y), 0.0)
        return total


class Augment(Recipe):
    name = "augment"
    defaults: ClassVar[dict] = {"d4": True, "shift": True}

    def draw(self, b: StepBatch, shape: tuple[int, int]) -> list[tuple[str, int, int]]:
        """This rank's group elements `(d4 element, shift along H, shift along W)`."""
        g = b.generator()
        n = len(b.global_index)
        d = torch.randint(len(ELEMENTS), (n,), generator=g)
        a = torch.randint(shape[0], (n,), generator=g)
        c = torch.randint(shape[1], (n,), generator=g)
        return [(ELEMENTS[int(d[p])] if self.d4 else "e", int(a[p]) if self.shift else 0,
                 int(c[p]) if self.shift else 0) for p in b.positions.tolist()]

    def augmented_pairs(self, b: StepBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """Each pair moved by its element `shift(a, b) o d` (`act`'s ("affine", d, a, b))."""
        x, y = b.pairs()
        elements = self.draw(b, tuple(x.shape[-2:]))
        return tuple(torch.cat([act(u[i : i + 1], ("affine", *g), pde=self.pde)
                                for i, g in enumerate(elements)]) for u in (x, y))

    inputs = augmented_pairs


def spectral_divergence(u: torch.Tensor, vector_axes: dict[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """`(div [B, H, W], parts [B, n_vector, H, W])` of the vector channels of `u` `[B, C, H, W]`
    on the periodic unit square: the spectral derivatives d_{axis(c)} u_c (Nyquist mode dropped)
    and their sum. Units 1/length."""
    parts = []
    for channel, axis in sorted(vector_axes.items()):
        field = u[:, channel]  # [B, H, W]; grid axis -1 = W, -2 = H
        n = field.shape[axis]
        k = torch.fft.fftfreq(n, d=1.0 / n, dtype=field.dtype, device=field.device)
        if n % 2 == 0:
            k[n // 2] = 0.0
        shape = [1] * field.dim()
        shape[axis] = n
        spec = torch.fft.fft(field, dim=axis) * (2j * torch.pi * k.reshape(shape))
        parts.append(torch.fft.ifft(spec, dim=axis).real)
    parts = torch.stack(parts, dim=1)
    return parts.sum(dim=1), parts


def physics_penalty(inputs: torch.Tensor, pred: torch.Tensor, pde: str, eps: float = 1e-12
                    ) -> torch.Tensor:
    """Per-example physics residual `[B]` of a predicted state (dimensionless, >= 0), per
    `pde_spec(pde)`. Compressible PDEs: sum over the density and energy channels of
    `((<pred_c> - <input_c>) / |<input_c>|)^2`, <.> the spatial mean (conserved on the periodic
    domain). Otherwise the relative squared spectral divergence of the vector channels,
    `<(div pred)^2> / (sum_c <(d_axis(c) pred_c)^2> + eps)` (axes from `vector_axes`)."""
    spec = pde_spec(pde)
    if spec.compressible:
        total = torch.zeros(pred.shape[0], dtype=pred.dtype, device=pred.device)
        for channel in (c for c in (spec.density_channel, spec.energy_channel) if c is not None):
            before = inputs[:, channel].mean(dim=(-2, -1))
            after = pred[:, channel].mean(dim=(-2, -1))
            total = total + ((after - before) / (before.abs() + eps)).pow(2)
        return total
    if not spec.vector_axes:
        raise InputError(f"recipe physics: PDE {pde} has neither conserved channels nor vector channels")
    div, parts = spectral_divergence(pred, spec.vector_axes)
    return div.pow(2).mean(dim=(-2, -1)) / (parts.pow(2).mean(dim=(-2, -1)).sum(dim=1) + eps)


class Physics(Recipe):
    name = "physics"
    defaults: ClassVar[dict] = {"weight": 0.1}
    non_negative = ("weight",)

    def per_example_loss(self, b: StepBatch) -> torch.Tensor:
        x, y = b.pairs()
        pred = b.net(x)
        return b.loss_fn(pred, y) + self.weight * physics_penalty(x, pred, self.pde)


RECIPES: dict[str, type[Recipe]] = {
    cls.name: cls for cls in (OneStep, Pushforward, Noise, Multistep, Augment, Physics)}


def make_recipe(recipe=None, **settings) -> Recipe:
    """A Recipe from a name (None: one-step) and settings, or a Recipe passed through."""
    if isinstance(recipe, Recipe):
        if settings:
            raise InputError("recipe: settings given beside a Recipe instance; set them on it")
        return recipe
    name = "one-step" if recipe is None else recipe
    if name not in RECIPES:
        raise InputError(f"recipe: unknown {name!r}; expected one of {', '.join(RECIPES)}")
    return RECIPES[name](**settings)


def parse_settings(items) -> dict:
    """`["k=2", "sigma=0.05"]` (CLI `--recipe-setting`) -> `{"k": "2", "sigma": "0.05"}`;
    values are converted by the recipe to the type of its default."""
    out = {}
    for item in items or ():
        key, sep, value = str(item).partition("=")
        if not sep or not key:
            raise InputError(f"--recipe-setting: expected KEY=VALUE, got {item!r}")
        out[key.strip()] = value.strip()
    return out
