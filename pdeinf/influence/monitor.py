"""`CoherenceMonitor`: gradient coherence of a fixed probe batch (n = c * T + t), recorded during
training: every `every` steps one `hat_matrix` and a record of `step`, `rank`, `seconds`,
`R[<class>]` (off-diagonal / diagonal sum of the class's block of the raw Pi) and `intra_lag1` /
`inter_lag1` (medians of the standardized Pi at t_resp - t_pert = 1, same / other class). The
model and the RNG are left as found (cost: `benchmarks/bench_monitor.py`).
"""
from __future__ import annotations

import time

import numpy as np
import torch

from pdeinf.checks import one_of, positive_int
from pdeinf.config import pde_spec
from pdeinf.errors import InputError
from pdeinf.influence.hat import ESTIMATORS, hat_matrix
from pdeinf.influence.normalize import normalize
from pdeinf.influence.untouched import untouched


def coherence_record(pi: np.ndarray, classes) -> dict:
    """`{"R[<class>]": ..., "intra_lag1": ..., "inter_lag1": ...}` of `pi` `[N, N]`, n = c * T + t."""
    pi = np.asarray(pi, dtype=np.float64)
    n_classes, n = len(classes), pi.shape[0]
    if pi.shape != (n, n) or n_classes == 0 or n % n_classes:
        raise InputError(f"pi: expected [N, N] with N a multiple of {n_classes} classes, got {pi.shape}")
    t = n // n_classes
    out = {}
    for c, name in enumerate(classes):
        block = pi[c * t : (c + 1) * t, c * t : (c + 1) * t]
        diag = np.trace(block)
        out[f"R[{name}]"] = float((block.sum() - diag) / diag)
    std = np.asarray(normalize(pi, "standard"))
    cls, time_ = np.divmod(np.arange(n), t)
    lag1 = (time_[:, None] - time_[None, :]) == 1
    same = cls[:, None] == cls[None, :]
    for key, mask in (("intra_lag1", lag1 & same), ("inter_lag1", lag1 & ~same)):
        values = std[mask]
        values = values[np.isfinite(values)]
        out[key] = float(np.median(values)) if values.size else float("nan")
    return out


class CoherenceMonitor:
    """Records the coherence of a probe batch every `every` steps (module docstring); estimator:
    "subspace" (default) or "full-space"; hat_kwargs go to `hat_matrix`."""

    def __init__(self, probe_inputs: torch.Tensor, probe_targets: torch.Tensor, *, every: int = 1,
                 estimator: str = "subspace", pde: str | None = None, classes=None, **hat_kwargs):
        positive_int(every, "every")
        hat_kwargs["estimator"] = one_of(estimator, ESTIMATORS, "estimator")
        if classes is None:
            classes = pde_spec(pde).classes if pde is not None else ("probe",)
        classes = tuple(str(c) for c in classes)
        if not isinstance(probe_inputs, torch.Tensor) or not isinstance(probe_targets, torch.Tensor):
            raise InputError("probe_inputs, probe_targets: expected torch tensors [N, C, H, W]")
        if probe_inputs.shape != probe_targets.shape or probe_inputs.dim() < 3:
            raise InputError(f"probe_inputs {tuple(probe_inputs.shape)} and probe_targets "
                             f"{tuple(probe_targets.shape)}: expected equal shapes [N, C, H, W]")
        n = probe_inputs.shape[0]
        if n == 0 or n % len(classes) or n // len(classes) < 2:
            raise InputError(f"probe_inputs: N = {n} examples is not {len(classes)} classes x T >= 2 times")
        self.inputs, self.targets = probe_inputs, probe_targets
        self.every, self.estimator, self.pde, self.classes = int(every), estimator, pde, classes
        self.hat_kwargs = hat_kwargs
        self.history: list[dict] = []

    def __call__(self, model: torch.nn.Module, step: int) -> dict | None:
        """Record at `step` when due (returns the record), else do nothing (returns None)."""
        if int(step) % self.every:
            return None
        t0 = time.perf_counter()
        with untouched(model):
            model.eval()
            device = next(model.parameters()).device
            result = hat_matrix(model, self.inputs.to(device), self.targets.to(device),
                                **self.hat_kwargs)
        record = {"step": int(step), "rank": int(result.rank),
                  **coherence_record(result.pi.detach().cpu().numpy(), self.classes),
                  "seconds": round(time.perf_counter() - t0, 4)}
        self.history.append(record)
        return record

    def to_dataframe(self):
        """`.history` as a pandas DataFrame indexed by step."""
        import pandas as pd

        return pd.DataFrame(self.history).set_index("step") if self.history else pd.DataFrame()
