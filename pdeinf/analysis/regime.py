"""The regime a finding was measured in, as a card printed beside every seed-paper figure and
stored in every findings record: P / M (parameters over the outputs M = N x C x H x W of one
influence batch; docs/method.md section 4), training data and steps, the fit and its plateau
(`plateau`), and the estimator. Pure: numbers and pandas in, dicts out.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

from pdeinf.analysis import paper_numbers as pn
from pdeinf.errors import InputError

#: The seed paper's parameters per batch output (its models at 128 x 128, N = 48).
PAPER_P_OVER_M = {("CE", "unet"): 4.4, ("CE", "vit"): 1.4, ("NS", "unet"): 8.8, ("NS", "vit"): 2.9}
PLATEAU_FRACTION = 0.2
PLATEAU_TOLERANCE = 0.1


@dataclass(frozen=True)
class Plateau:
    """The plateau criterion on a validation curve: last / before, the medians over the last
    `PLATEAU_FRACTION` of epochs and as many before them; reached: |last / before - 1| <=
    `PLATEAU_TOLERANCE` (None with fewer than 2 epochs per window)."""

    last: float
    before: float
    reached: bool | None

    @property
    def change(self) -> float:
        return self.last / self.before - 1.0 if self.before else math.nan


def plateau(val_by_epoch, *, fraction: float = PLATEAU_FRACTION,
            tolerance: float = PLATEAU_TOLERANCE) -> Plateau:
    """`Plateau` of `val_by_epoch` (one value per epoch, in order); InputError for NaN / Inf."""
    values = np.asarray(val_by_epoch, dtype=np.float64)
    if values.ndim != 1 or values.size == 0:
        raise InputError(f"val_by_epoch: expected one value per epoch, got shape {values.shape}")
    if not np.all(np.isfinite(values)):
        raise InputError("val_by_epoch: contains NaN or Inf")
    width = math.floor(fraction * values.size)
    if width < 2:
        return Plateau(float(np.median(values[-1:])), math.nan, None)
    last = float(np.median(values[-width:]))
    before = float(np.median(values[-2 * width:-width]))
    return Plateau(last, before, bool(abs(last / before - 1.0) <= tolerance))


@dataclass(frozen=True)
class RegimeCard:
    """One (PDE, model) of a profile (medians over seeds; the paper's numbers beside ours)."""

    pde: str
    model: str
    parameters: int
    outputs: int
    p_over_m: float
    paper_p_over_m: float | None
    training_pairs: int
    optimizer_steps: int
    final_val_smse: float | None
    paper_val_smse: float | None
    train_val_gap: float | None  # log10(val / train) at the last epoch, median over seeds
    plateau: bool | None
    plateau_change: float | None
    estimator: str
    tolerance: float | None
    seeds: int
    batches: int
    runs_at_plateau: int | None = None  # runs (seeds) whose own validation curve meets it
    label: str = ""  # what the profile is: the paper's regime as far as it goes, or a tour

    def to_dict(self) -> dict:
        return asdict(self)

    def stamp(self) -> str:
        """One line for a figure: P/M, steps, validation SMSE, estimator, design."""
        val = "–" if self.final_val_smse is None else f"{self.final_val_smse:.2g}"
        paper = "" if self.paper_val_smse is None else f" (paper {self.paper_val_smse:.1g})"
        word = "rtol" if self.estimator == "full-space" else "energy cut"
        tol = "" if self.tolerance is None else f", {word} {self.tolerance:g}"
        flat = {True: ", plateau", False: ", no plateau", None: ""}[self.plateau]
        if self.plateau is not None and self.runs_at_plateau is not None:
            flat += f" ({self.runs_at_plateau}/{self.seeds} runs)"
        label = f"{self.label}: " if self.label else ""
        return (f"{label}P/M {self.p_over_m:.2f}, {self.optimizer_steps} steps, val SMSE {val}{paper}"
                f"{flat}, {self.estimator}{tol}, {self.seeds} seeds x {self.batches} batches")


def optimizer_steps(pairs: int, batch_size: int, epochs: int) -> int:
    """AdamW steps of one training run: `ceil(pairs / batch_size)` per epoch."""
    return math.ceil(pairs / batch_size) * int(epochs)


def runs_at_plateau(history: pd.DataFrame | None) -> int | None:
    """How many runs (seeds) of a training history meet the plateau criterion on their own
    validation curve (None without one)."""
    if history is None or len(history) == 0:
        return None
    return sum(bool(plateau(g.sort_values("epoch")["val_loss"].to_numpy()).reached)
               for _, g in history.groupby("seed"))


def regime_card(*, pde: str, model: str, parameters: int, outputs: int, pairs: int,
                steps: int, history: pd.DataFrame | None, estimator: str,
                tolerance: float | None, seeds: int, batches: int, label: str = "") -> RegimeCard:
    """The card of one (PDE, model) from its counts and training history (columns seed, epoch,
    train_loss, val_loss): final validation SMSE and log10(val / train) at the last epoch as
    medians over seeds, the plateau of the median-over-seeds validation curve."""
    for name, value in (("parameters", parameters), ("outputs", outputs)):
        if not (isinstance(value, (int, np.integer)) and value > 0):
            raise InputError(f"{name}: expected a positive integer, got {value!r}")
    val = gap = flat = None
    if history is not None and len(history) > 0:
        last = history.sort_values("epoch").groupby("seed").tail(1)
        val = float(np.median(last["val_loss"]))
        gap = float(np.median(np.log10(last["val_loss"].to_numpy() / last["train_loss"].to_numpy())))
        flat = plateau(history.groupby("epoch")["val_loss"].median().sort_index().to_numpy())
    paper_val = pn.VALIDATION.get((pde, model))
    return RegimeCard(
        pde=pde, model=model, parameters=int(parameters), outputs=int(outputs),
        p_over_m=parameters / outputs, paper_p_over_m=PAPER_P_OVER_M.get((pde, model)),
        training_pairs=int(pairs), optimizer_steps=int(steps), final_val_smse=val,
        paper_val_smse=None if paper_val is None else 10.0 ** paper_val["last"],
        train_val_gap=gap, plateau=None if flat is None else flat.reached,
        plateau_change=None if flat is None or not math.isfinite(flat.change) else flat.change,
        estimator=estimator, tolerance=tolerance, seeds=int(seeds), batches=int(batches),
        runs_at_plateau=runs_at_plateau(history), label=label)
