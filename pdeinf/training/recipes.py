"""Training recipes: what one optimizer step of `pdeinf.training.train` minimises.

Every recipe sees the same data (the one-step transitions of the training split, shuffled per
epoch from (seed, epoch)), the same mini-batches and the same number of optimizer steps as the
baseline; only the per-example loss of a mini-batch changes. A recipe is a small strategy
object: `per_example_loss(batch: StepBatch) -> [B]` tensor (the loop sums it, scales it to the
global batch mean and back-propagates), `settings()` (part of the run's identity: a run
directory trained with other settings is refused on resume) and `prepare(train_set, pde)`
(statistics of the training set, called once before the first step).

Registry `RECIPES` (name -> class), `make_recipe(name, **settings)`:

- `one-step`: teacher forcing, `SMSE(f(u_t), u_{t+1})` (the baseline; bitwise today's loop).
- `pushforward` (k): Brandstetter, Worrall & Welling, ICLR 2022. The transition
  (u_t -> u_{t+1}) is trained on the model's own input: `u~ = f^m(u_{t-m})` unrolled without
  gradient, `m = min(k, t)` (at t < k only the t available steps), then `SMSE(f(u~), u_{t+1})`.
  Every transition of the epoch is still a target exactly once; cost 1 + m forward passes.
- `noise` (sigma, scale): `SMSE(f(u_t + sigma * s_c * xi), u_{t+1})`, xi ~ N(0, 1), s_c the
  per-channel standard deviation of the training set's targets (`scale="train"`) or of the
  global mini-batch's targets (`scale="batch"`).
- `multistep` (k): `sum_{j=1..m} SMSE(f^j(u_t), u_{t+j})`, `m = min(k, T-1-t)` (steps past the
  trajectory's end are masked), gradients through the whole unroll; cost k forward passes.
- `augment` (d4, shift): each pair (x, y) is replaced by (g x, g y) with g = shift(a, b) o d,
  d uniform in D4, (a, b) uniform on the grid, acted with `pdeinf.symmetry.actions.act`
  (vector channels rotate with the grid, `pde_spec(pde).vector_axes`).
- `physics` (weight): `SMSE + weight * P(u_t, f(u_t))`; P per `pdeinf.config.pde_spec`:
  compressible (a density channel): squared relative drifts of the spatial means of the
  density and energy channels between input and prediction (periodic domain: both conserved);
  otherwise the relative squared spectral divergence of the vector channels
  `<(div u)^2> / sum_c <(d_axis(c) u_c)^2>` (axes from `vector_axes`).

Randomness (noise, augment) comes from a generator seeded by (seed, epoch, step) and is drawn
for the whole global mini-batch, each rank taking its rows: resume is bitwise and a DDP run
draws what a one-process run draws.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

from pdeinf.config import pde_spec
from pdeinf.errors import InputError

#: D4 elements, as named by `pdeinf.symmetry.actions`.
D4_ELEMENTS: tuple[str, ...] = ("e", "r", "r2", "r3", "s", "sr", "sr2", "sr3")


@dataclass
class StepBatch:
    """Everything a recipe may use for one optimizer step on one rank.

    `net` is the (possibly DDP-wrapped) model: call it exactly once per step, with gradient
    (DDP registers one forward per backward); extra forward passes go through `model`, the
    same parameters unwrapped. `index` `[B]`: this rank's transition indices; `global_index`
    `[G]`: the whole global mini-batch (same on every rank); `positions` `[B]`: rows of
    `index` in `global_index`. `loss_fn(pred, target) -> [B]` is the SMSE.
    """

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
    """Base class: subclasses set `name`, `defaults` and implement `per_example_loss`."""

    name: ClassVar[str] = ""
    defaults: ClassVar[dict] = {}

    def __init__(self, **settings):
        unknown = sorted(set(settings) - set(self.defaults))
        if unknown:
            allowed = ", ".join(self.defaults) or "none"
            raise InputError(f"recipe {self.name}: unknown setting(s) {unknown}; allowed: {allowed}")
        self._settings = {k: self._coerce(k, settings.get(k, v)) for k, v in self.defaults.items()}
        self.pde: str | None = None

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

    def __getattr__(self, key):
        settings = self.__dict__.get("_settings", {})
        if key in settings:
            return settings[key]
        raise AttributeError(key)

    def settings(self) -> dict:
        return dict(self._settings)

    def identity(self) -> dict:
        """`{"name": ..., **settings}`: stored in the run config, compared on resume."""
        return {"name": self.name, **self._settings}

    def prepare(self, train_set, pde: str) -> None:
        self.check_horizon(train_set.steps)
        self.pde = pde

    def check_horizon(self, steps: int) -> None:
        """InputError when a setting asks for more than a training trajectory of `steps`
        transitions holds (called before any work). Recipes without such a setting: no-op."""

    def inputs(self, b: StepBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """`(x, y)` the step trains `f(x) ~ y` on: the mini-batch's pairs, unless a recipe
        changes them."""
        return b.pairs()

    def per_example_loss(self, b: StepBatch) -> torch.Tensor:
        """`[B]` losses of this rank's examples: by default `SMSE(f(x), y)` on `inputs`."""
        x, y = self.inputs(b)
        return b.loss_fn(b.net(x), y)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self._settings.items())
        return f"{type(self).__name__}({args})"


def _positive(recipe: Recipe, key: str, value, *, allow_zero: bool = False):
    if not (value > 0 or (allow_zero and value == 0)):
        raise InputError(f"recipe {recipe.name}: setting {key}={value!r} must be "
                         f"{'non-negative' if allow_zero else 'positive'}")


def _at_most(recipe: Recipe, key: str, bound: int, why: str) -> None:
    value = getattr(recipe, key)
    if value > bound:
        raise InputError(f"recipe {recipe.name}: setting {key}={value} exceeds {bound}, {why}; "
                         f"use {key} <= {bound}")


class OneStep(Recipe):
    name = "one-step"


class Pushforward(Recipe):
    name = "pushforward"
    defaults: ClassVar[dict] = {"k": 1}

    def __init__(self, **settings):
        super().__init__(**settings)
        _positive(self, "k", self.k)

    def check_horizon(self, steps: int) -> None:
        _at_most(self, "k", max(1, steps - 1),
                 f"the deepest unroll a trajectory of {steps} transitions allows (its last "
                 f"transition starts at t={steps - 1})")

    def unrolled_inputs(self, b: StepBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """`(u~, y)`: the model's own m-step prediction of u_t (no gradient) and u_{t+1}."""
        traj, t = b.data.locate(b.index)
        depth = torch.clamp(t, max=self.k)
        cur = b.data.snapshots(traj, t - depth, b.device)
        with torch.no_grad():
            for j in range(int(depth.max()) if len(depth) else 0):
                active = (depth > j).to(cur.device)
                cur[active] = b.model(cur[active])
        return cur.detach(), b.data.snapshots(traj, t + 1, b.device)

    inputs = unrolled_inputs


class Noise(Recipe):
    name = "noise"
    defaults: ClassVar[dict] = {"sigma": 0.01, "scale": "train"}

    def __init__(self, **settings):
        super().__init__(**settings)
        _positive(self, "sigma", self.sigma, allow_zero=True)
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
        g = b.generator()
        xi = torch.randn((len(b.global_index), *x.shape[1:]), generator=g,
                         dtype=b.data.trajectories.dtype)[b.positions]
        std = self.channel_std(b).to(xi.dtype)
        noise = self.sigma * std[None, :, None, None] * xi
        return x + noise.to(device=x.device, dtype=x.dtype), y

    inputs = noisy_inputs


class Multistep(Recipe):
    name = "multistep"
    defaults: ClassVar[dict] = {"k": 2}

    def __init__(self, **settings):
        super().__init__(**settings)
        _positive(self, "k", self.k)

    def check_horizon(self, steps: int) -> None:
        _at_most(self, "k", steps, f"the {steps} transitions of a training trajectory (k steps "
                                   "need k + 1 snapshots)")

    def per_example_loss(self, b: StepBatch) -> torch.Tensor:
        traj, t = b.data.locate(b.index)
        steps = b.data.steps
        cur = b.data.snapshots(traj, t, b.device)
        total = None
        for j in range(1, self.k + 1):
            # the first forward goes through `net` (DDP), later ones through the same
            # parameters unwrapped: one DDP forward per backward, gradients summed by autograd
            cur = (b.net if j == 1 else b.model)(cur)
            valid = (t + j <= steps).to(cur.device)
            y = b.data.snapshots(traj, torch.clamp(t + j, max=steps), b.device)
            term = torch.where(valid, b.loss_fn(cur, y), torch.zeros((), dtype=cur.dtype,
                                                                      device=cur.device))
            total = term if total is None else total + term
        return total


class Augment(Recipe):
    name = "augment"
    defaults: ClassVar[dict] = {"d4": True, "shift": True}

    def draw(self, b: StepBatch, shape: tuple[int, int]) -> list[tuple[str, int, int]]:
        """This rank's group elements `(d4 element, shift along H, shift along W)`."""
        g = b.generator()
        n = len(b.global_index)
        d = torch.randint(len(D4_ELEMENTS), (n,), generator=g)
        a = torch.randint(shape[0], (n,), generator=g)
        c = torch.randint(shape[1], (n,), generator=g)
        return [(D4_ELEMENTS[int(d[p])] if self.d4 else "e", int(a[p]) if self.shift else 0,
                 int(c[p]) if self.shift else 0) for p in b.positions.tolist()]

    def transform(self, u: torch.Tensor, element: tuple[str, int, int]) -> torch.Tensor:
        """`shift(a, b) o d` on `u` `[B, C, H, W]` (`act`'s ("affine", d, a, b))."""
        from pdeinf.symmetry.actions import act  # lazily: only this recipe needs it

        d4, a, c = element
        return act(u, ("affine", d4, a, c), pde=self.pde)

    def augmented_pairs(self, b: StepBatch) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = b.pairs()
        elements = self.draw(b, tuple(x.shape[-2:]))
        return tuple(torch.cat([self.transform(u[i : i + 1], g) for i, g in enumerate(elements)])
                     for u in (x, y))

    inputs = augmented_pairs


def spectral_divergence(u: torch.Tensor, vector_axes: dict[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """`(div, parts)` of the vector channels of `u` `[B, C, H, W]` on the periodic unit square.

    div `[B, H, W]` = sum_c d_{axis(c)} u_c, spectral derivative (Nyquist mode dropped);
    parts `[B, n_vector, H, W]` the individual terms d_{axis(c)} u_c. Units 1/length.
    """
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
    """Per-example physics residual `[B]` of a predicted state (dimensionless, >= 0).

    Compressible PDEs: sum over the density and energy channels of
    `((<pred_c> - <input_c>) / |<input_c>|)^2`, <.> the spatial mean (conserved on the periodic
    domain). Otherwise: `<(div pred)^2> / (sum_c <(d_axis(c) pred_c)^2> + eps)`.
    """
    spec = pde_spec(pde)
    if spec.compressible:
        total = torch.zeros(pred.shape[0], dtype=pred.dtype, device=pred.device)
        for channel in (spec.density_channel, spec.energy_channel):
            if channel is None:
                continue
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

    def __init__(self, **settings):
        super().__init__(**settings)
        _positive(self, "weight", self.weight, allow_zero=True)

    def per_example_loss(self, b: StepBatch) -> torch.Tensor:
        x, y = b.pairs()
        pred = b.net(x)
        return b.loss_fn(pred, y) + self.weight * physics_penalty(x, pred, self.pde)


RECIPES: dict[str, type[Recipe]] = {
    cls.name: cls for cls in (OneStep, Pushforward, Noise, Multistep, Augment, Physics)
}


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
