"""Autoregressive rollouts `p_s = u_s`, `p_{s+h} = f(p_{s+h-1})` and their per-step errors
`SMSE(p_{s+h}, u_{s+h})` (docs/method.md section 2; cumulated over h = 1..dt for the paper's
rollout link, figure 7), as labelled xarray objects.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
import xarray as xr
from tqdm.auto import tqdm

from pdeinf.checks import positive_int
from pdeinf.errors import InputError
from pdeinf.training.loss import smse


@torch.no_grad()
def rollout(model: torch.nn.Module, u0: torch.Tensor, steps: int) -> torch.Tensor:
    """Predictions `[B, steps, C, H, W]` for times start+1 .. start+steps from `u0 [B, C, H, W]`."""
    positive_int(steps, "steps")
    out, state = [], u0
    for _ in range(steps):
        state = model(state)
        out.append(state)
    return torch.stack(out, dim=1)


def rollout_errors(model: torch.nn.Module, trajectories_by_class: Mapping[str, np.ndarray], *,
                   starts: Sequence[int] | None = None, horizon: int | None = None,
                   batch_size: int = 64, progress: bool = False) -> xr.DataArray:
    """Per-step SMSE of rollouts from `starts` (default all, in [0, T-2]) over `horizon` steps
    (default T - 1 - min(starts)) of `trajectories_by_class` {class: `[n, T, C, H, W]`}, dims
    `(class, trajectory, start, horizon)`, NaN past the end or a class's n. The model runs in
    eval mode, in its dtype and device, on `batch_size` rollouts at a time."""
    if not trajectories_by_class:
        raise InputError("trajectories: no classes given")
    trajs, shape = {}, None
    for name, traj in trajectories_by_class.items():
        arr = np.asarray(traj.detach().cpu() if torch.is_tensor(traj) else traj)
        what = f"trajectories[{name!r}]"
        if arr.ndim != 5 or arr.shape[0] == 0 or arr.shape[1] < 2:
            raise InputError(f"{what}: expected [n>0, T>=2, C, H, W], got {arr.shape}")
        if shape is not None and arr.shape[1:] != shape:
            raise InputError(f"{what}: shape {arr.shape[1:]} differs from {shape}")
        if not np.isfinite(arr).all():
            raise InputError(f"{what}: contains NaN or Inf")
        shape, trajs[name] = arr.shape[1:], arr
    n_times = next(iter(trajs.values())).shape[1]
    starts = list(range(n_times - 1)) if starts is None else [int(s) for s in starts]
    if not starts or min(starts) < 0 or max(starts) > n_times - 2:
        raise InputError(f"starts: must lie in [0, {n_times - 2}], got {starts}")
    horizon = positive_int(int(n_times - 1 - min(starts) if horizon is None else horizon), "horizon")
    positive_int(batch_size, "batch_size")
    n_max = max(a.shape[0] for a in trajs.values())
    values = np.full((len(trajs), n_max, len(starts), horizon), np.nan)
    weight = next(model.parameters())
    dtype, device = weight.dtype, weight.device
    was_training = model.training
    model.eval()
    # All (start, trajectory) pairs of a class go through the model together, ordered by start
    # so that each chunk stops at the horizon its earliest start still has data for.
    for ci, arr in enumerate(tqdm(list(trajs.values()), disable=not progress, desc="rollouts")):
        all_s = np.repeat(np.arange(len(starts)), arr.shape[0])
        all_j = np.tile(np.arange(arr.shape[0]), len(starts))
        for lo in range(0, len(all_s), batch_size):
            s_idx, j_idx = all_s[lo : lo + batch_size], all_j[lo : lo + batch_size]
            s_val = np.array(starts)[s_idx]
            steps = min(horizon, n_times - 1 - int(s_val.min()))
            u0 = torch.as_tensor(arr[j_idx, s_val], dtype=dtype, device=device)
            pred = rollout(model, u0, steps)  # [b, steps, C, H, W]
            h = np.arange(1, steps + 1)
            t_idx = np.minimum(s_val[:, None] + h[None, :], n_times - 1)  # clipped; masked below
            truth = torch.as_tensor(arr[j_idx[:, None], t_idx], dtype=dtype, device=device)
            err = smse(pred.flatten(0, 1), truth.flatten(0, 1)).reshape(len(s_idx), steps)
            err = err.double().cpu().numpy()
            err[s_val[:, None] + h[None, :] > n_times - 1] = np.nan
            values[ci, j_idx, s_idx, :steps] = err
    model.train(was_training)
    return _errors_array(values, list(trajs), starts)


def cumulative_errors(errors: xr.DataArray) -> xr.DataArray:
    """Cumulative rollout error: sum of per-step SMSE over horizons 1..dt (NaN past the end)."""
    return errors.cumsum("horizon", skipna=False).rename("cumulative_smse")


def rollouts_all_starts(net, trajectories_by_class: Mapping[str, np.ndarray], *, max_batch: int = 64):
    """`rollout_errors` for every start, batched over starts: the windows ``u[s:]`` of all
    starts s (padded at the end with the last snapshot, whose errors are discarded) are the
    members of one batch, so each class takes T-1 model calls of up to ``max_batch`` states.
    Same values and dims; NaN where ``start + horizon > T - 1``."""
    classes = list(trajectories_by_class)
    n_traj, n_times = next(iter(trajectories_by_class.values())).shape[:2]
    steps = n_times - 1
    chunk = max(1, max_batch // steps)
    values = np.full((len(classes), n_traj, steps, steps), np.nan)
    for ci, cls in enumerate(classes):
        arr = np.asarray(trajectories_by_class[cls])
        for lo in range(0, arr.shape[0], chunk):
            part = arr[lo : lo + chunk]  # [m, T, C, H, W]
            windows = np.stack(
                [np.concatenate([part[:, s:], np.repeat(part[:, -1:], s, axis=1)], axis=1)
                 for s in range(steps)], axis=1)  # [m, S, T, C, H, W]
            flat = windows.reshape(-1, *windows.shape[2:])
            err = rollout_errors(net, {cls: flat}, starts=[0], horizon=steps, batch_size=max_batch)
            values[ci, lo : lo + len(part)] = err.values[0, :, 0, :].reshape(len(part), steps, steps)
    values[..., np.arange(steps)[:, None] + np.arange(1, steps + 1)[None, :] > steps] = np.nan
    return _errors_array(values, classes, np.arange(steps))


def _errors_array(values: np.ndarray, classes, starts) -> xr.DataArray:
    """Per-step SMSE `[class, trajectory, start, horizon]` as the labelled `smse` array."""
    return xr.DataArray(
        values, dims=("class", "trajectory", "start", "horizon"),
        coords={"class": classes, "trajectory": np.arange(values.shape[1]), "start": starts,
                "horizon": np.arange(1, values.shape[3] + 1)},
        name="smse", attrs={"description": "per-step SMSE of autoregressive rollouts"},
    )
