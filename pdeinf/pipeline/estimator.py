"""Stage: what the influence estimator itself does to the findings [ours].

On a stated subset (`study_subset`): per (PDE, model) and seed, the final checkpoint on the
first `times` transitions of each class of influence batch 0 (N = C * times, n = c T + t):
- subspace side (every seed): the exact subspace estimator per damping of `DAMPINGS`
  (`sub_damping`), per energy tolerance of `ENERGY_TOLS` (`sub_energy`, one engine) and per
  bra convention (`sub_bra`: SMSE; with a density channel the squared and signed mass drift,
  joint and ket basis);
- full-space side (the first `fullspace_seeds` seeds): the seed paper's block Krylov estimator
  at `fullspace_damping` for every tolerance of `estimator_rtols` (one solve continued from the
  loosest), and at the paper's rtol for every other lambda of `estimator_lambdas` (`fs_pi`,
  iterations, residuals, operator applications, seconds); at the reference solve also the
  M, E bras (`fs_bra`).
One netCDF per task, `results/estimator/<profile>/<PDE>-<model>/s<seed>.nc`, keyed on the
checkpoint, data, subset and settings. `limit_study` and `pm_table` are not cached.
"""
from __future__ import annotations

import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from pdeinf import paths
from pdeinf.config import MODELS, PDE_CLASSES, pde_spec
from pdeinf.errors import InputError
from pdeinf.pipeline.checksums import Cached, ensure_cached
from pdeinf.pipeline.common import (
    ProfileLike,
    as_profile,
    check_selection,
    content_key,
    file_digest,
    final_epoch,
    trajectory_list,
)

#: Subspace settings swept: energy tolerance at the profile's damping, damping at the
#: profile's energy tolerance.
ENERGY_TOLS: tuple[float, ...] = (1e-2, 1e-3, 1e-4, 1e-5, 1e-6)
DAMPINGS: tuple[float, ...] = (1e-8, 1e-6, 1e-4, 1e-2)
STUDY_VERSION = 2  # 2: the full-space side uses the block Krylov solver
#: The paper's sizes (docs/method.md section 4): outputs M of a 48-example batch and parameters P.
PAPER_PM = {"CE": {"M": 48 * 4 * 128**2, "unet": (13e6, 14e6), "vit": (4.5e6, 5e6)},
            "NS": {"M": 48 * 2 * 128**2, "unet": (13e6, 14e6), "vit": (4.5e6, 5e6)}}


@dataclass(frozen=True)
class Subset:
    """The study's subset (the profile's `estimator_*` fields; None: every pair, all
    transitions, the solver's default Krylov sweeps per column, every seed full-space)."""

    pairs: tuple[tuple[str, str], ...] | None
    times: int | None
    maxiter: int | None
    fullspace_seeds: int | None

    def describe(self, prof) -> str:
        pairs = self.pairs or tuple((p, m) for p in prof.pdes for m in prof.models)
        return (f"pairs {[f'{p}-{m}' for p, m in pairs]}; final checkpoint; influence batch 0 of each seed, "
                f"first {self.times or prof.t_max - 1} transitions per class; full-space on "
                f"{self.fullspace_seeds or len(prof.seeds)} seed(s) with at most "
                f"{self.maxiter or 'the default'} Krylov sweeps per column; subspace on every seed")


def study_subset(profile: ProfileLike) -> Subset:
    """The profile's stated subset; InputError naming a field out of range."""
    prof = as_profile(profile)
    bounds = (("estimator_times", prof.estimator_times, prof.t_max - 1),
              ("estimator_maxiter", prof.estimator_maxiter, None),
              ("estimator_fullspace_seeds", prof.estimator_fullspace_seeds, len(prof.seeds)))
    for field, value, high in bounds:
        valid = isinstance(value, int) and not isinstance(value, bool) and value >= 1 \
            and (high is None or value <= high)
        if value is not None and not valid:
            raise InputError(f"profile {prof.name}: {field}={value!r}; expected None or an integer "
                             f"in 1..{high if high is not None else 'any'}")
    for pair in prof.estimator_pairs or ():
        if len(pair) != 2 or pair[0] not in PDE_CLASSES or pair[1] not in MODELS:
            raise InputError(f"profile {prof.name}: estimator_pairs holds {pair!r}; expected "
                             f"(PDE, model) with PDE in {list(PDE_CLASSES)} and model in {list(MODELS)}")
    return Subset(pairs=prof.estimator_pairs, times=prof.estimator_times,
                  maxiter=prof.estimator_maxiter, fullspace_seeds=prof.estimator_fullspace_seeds)


def fullspace_seeds(profile: ProfileLike) -> tuple[int, ...]:
    """The seeds whose study task also runs the full-space solves: the first
    `estimator_fullspace_seeds` of `profile.seeds` (every seed when None)."""
    prof = as_profile(profile)
    return tuple(prof.seeds[:study_subset(prof).fullspace_seeds or len(prof.seeds)])


def study_pairs(profile: ProfileLike) -> list[tuple[str, str]]:
    prof = as_profile(profile)
    pairs = prof.pairs(study_subset(prof).pairs)
    for pde, model in pairs:
        check_selection(prof, pde, model)
    return pairs


def _subset_batch(ib, n_classes: int, times: int | None):
    n_t = ib.inputs.shape[0] // n_classes
    k = n_t if times is None else int(times)
    if not 1 <= k <= n_t:
        raise InputError(f"times={times}: must lie in 1..{n_t} (transitions per class)")
    idx = np.concatenate([c * n_t + np.arange(k) for c in range(n_classes)])
    return ib.inputs[idx], ib.targets[idx]


def _subspace(model, x, y, pde, s: dict):
    from pdeinf.influence.hat import HatEngine

    engine = HatEngine(model, x, y, energy_tol=s["energy_tol"], keep_ket_jvps=True)
    by_damping = np.stack([engine.pi(damping=d)[0].numpy() for d in s["dampings"]])
    conventions = [("smse", "smse", "joint")]  # (label, response, bra_basis) of the bra ablations
    if pde_spec(pde).density_channel is not None:
        conventions += [(f"mass_{kind}/{basis}", response, basis)
                        for kind, response in (("sq", "mass_drift_sq"), ("signed", "mass_drift"))
                        for basis in ("joint", "ket")]
    bras = [(label, engine.pi(damping=s["damping"], response=resp, bra_basis=basis)[0].numpy())
            for label, resp, basis in conventions]
    by_tol, ranks = [], []
    for tol in s["energy_tols"]:
        # Same engine: the gradients and the kept ket JVPs J G^T do not depend on the energy
        # cut; only the basis (and with it the metric) is recomputed.
        engine.energy_tol = float(tol)
        engine._span = engine._eta_raw = engine._joint = None
        by_tol.append(engine.pi(damping=s["damping"])[0].numpy())
        ranks.append(engine.span.rank)
    return {"sub_damping": (("damping", "n_resp", "n_pert"), by_damping),
            "sub_energy": (("energy_tol", "n_resp", "n_pert"), np.stack(by_tol)),
            "sub_rank": (("energy_tol",), np.asarray(ranks, dtype=np.int64)),
            "sub_bra": (("bra_convention", "n_resp", "n_pert"), np.stack([b for _, b in bras])),
            "losses": (("n",), engine.losses.to(torch.float64).numpy())}, [label for label, _ in bras]


def _fullspace(model, x, y, pde, s: dict, progress: bool):
    from pdeinf.influence.fullspace import full_space_hat_matrix
    from pdeinf.influence.task import _BRA_RESPONSE, seed_paper_bras

    solves, bra_pis = [], []
    kw = {"maxiter": s["maxiter"], "stopping": "authors", "pde": pde}

    def run(lam, rtol, state=None, response=None):
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # non-convergence is recorded per column below
            r = full_space_hat_matrix(model, x, y, damping=lam, rtol=rtol, response=response,
                                      state_path=state, **kw)
        return r, time.perf_counter() - t0

    with tempfile.TemporaryDirectory() as scratch:
        state = Path(scratch) / "cg.pt"
        for rtol in s["rtols"]:  # loosest first: the same Krylov solve continued
            r, sec = run(s["reference_lambda"], rtol, state)
            solves.append((s["reference_lambda"], rtol, r, sec))
            if rtol == s["paper_rtol"]:
                bra_pis = [run(s["reference_lambda"], rtol, state, _BRA_RESPONSE[b])[0].pi.numpy()
                           for b in seed_paper_bras(pde)]
    for lam in tqdm(s["lambdas"], desc="lambda", disable=not progress, leave=False):
        if lam != s["reference_lambda"]:
            r, sec = run(lam, s["paper_rtol"])
            solves.append((lam, s["paper_rtol"], r, sec))
    ref = next(i for i, (lam, rtol, *_) in enumerate(solves)
               if lam == s["reference_lambda"] and rtol == s["paper_rtol"])
    results = [r for *_, r, _ in solves]
    return {
        "fs_pi": (("solve", "n_resp", "n_pert"), np.stack([r.pi.numpy() for r in results])),
        "fs_iterations": (("solve", "n_pert"), np.stack([r.iterations.numpy() for r in results])),
        "fs_residual": (("solve", "n_pert"), np.stack([r.residual_norms.numpy() for r in results])),
        "fs_converged": (("solve",), np.array([int(r.converged.all()) for r in results])),
        "fs_matvecs": (("solve",), np.array([r.matvecs for r in results], dtype=np.int64)),
        "fs_seconds": (("solve",), np.array([sec for *_, sec in solves])),
        "fs_bra": (("bra", "n_resp", "n_pert"), np.stack(bra_pis)),
    }, {"solve": np.arange(len(solves)), "bra": list(seed_paper_bras(pde)),
        "fs_lambda": ("solve", [v[0] for v in solves]), "fs_rtol": ("solve", [v[1] for v in solves])}, ref


def task_file(profile, pde: str, model: str, seed: int) -> Path:
    return paths.results_dir() / "estimator" / as_profile(profile).name / f"{pde}-{model}" / f"s{seed}.nc"


def ensure_estimator_pair(profile: ProfileLike, pde: str, model: str, *, progress: bool = True):
    """{seed: xr.Dataset} of one (PDE, model) (module docstring), training and computing what
    is needed."""
    import xarray as xr

    from pdeinf.pipeline.influence import trained_sources

    prof = as_profile(profile)
    check_selection(prof, pde, model)
    subset = study_subset(prof)
    sources = trained_sources(prof, pde, model, progress)
    epoch = final_epoch(prof, pde)
    rtols = sorted({*map(float, prof.estimator_rtols), prof.rtol_for(model)}, reverse=True)
    settings = {"lambdas": [float(v) for v in prof.estimator_lambdas], "rtols": rtols,
                "reference_lambda": float(prof.fullspace_damping), "paper_rtol": float(prof.rtol_for(model)),
                "times": subset.times, "maxiter": subset.maxiter, "damping": float(prof.damping),
                "energy_tol": float(prof.energy_tol), "energy_tols": list(ENERGY_TOLS), "dampings": list(DAMPINGS),
                "stopping": "authors", "solver": "block", "version": STUDY_VERSION}
    full = fullspace_seeds(prof)
    n_c, data_key = len(pde_spec(pde).classes), sources.data_key()

    def compute_seed(task: Cached):
        seed, fullspace = task.id
        net, _ = sources.model(seed, epoch)
        ib = sources.batch(seed, 0)
        x, y = _subset_batch(ib, n_c, subset.times)
        n = x.shape[0]
        data, labels = _subspace(net, x, y, pde, settings)
        coords = {"damping": settings["dampings"], "energy_tol": settings["energy_tols"],
                  "bra_convention": labels, "n_resp": np.arange(n), "n_pert": np.arange(n),
                  "n": np.arange(n)}
        reference = -1
        if fullspace:
            fs_data, fs_coords, reference = _fullspace(net, x, y, pde, settings, progress)
            data.update(fs_data)
            coords.update(fs_coords)
        return xr.Dataset(data, coords=coords, attrs={
            "pde": pde, "n_classes": n_c, "n_times": n // n_c, "fullspace": int(fullspace),
            "stopping": "authors", "convention": "rows = response, columns = perturbation; raw; n = c T + t",
            "reference_solve": reference, "model": model, "seed": seed, "epoch": int(epoch), "batch": 0,
            "profile": prof.name, "subset": subset.describe(prof), "M": int(x.numel()),
            "P": int(sum(p.numel() for p in net.parameters() if p.requires_grad)),
            "trajectories": trajectory_list([ib])})

    tasks = [Cached((int(seed), seed in full), task_file(prof, pde, model, seed),
                    content_key(stage="estimator", checkpoint=file_digest(sources.checkpoint(seed, epoch)),
                                data=data_key, seed=int(seed), batch=0, fullspace=seed in full, **settings))
             for seed in prof.seeds]
    held = ensure_cached(tasks, compute_seed, desc=f"estimator {pde}-{model}", progress=progress)
    return {seed: ds for (seed, _), ds in held.items()}


def ensure_estimator_study(profile: ProfileLike = None, *, progress: bool = True) -> dict:
    """Every (PDE, model) of `study_pairs(profile)`: {(pde, model): {seed: xr.Dataset}}."""
    prof = as_profile(profile)
    return {pair: ensure_estimator_pair(prof, *pair, progress=progress) for pair in study_pairs(prof)}


# --------------------------------------------------------------------------- not cached


def tiny_cases() -> dict:
    """{"P > M": (model, inputs, targets), "P < M": ...}, float64, fixed seeds: an MLP on 3 x 3
    pixels (P = 85, M = 36); two circular 3x3 convolutions, 3 hidden channels (P = 113, M = 216)."""
    nn = torch.nn

    def conv(c_in, c_out):
        return nn.Conv2d(c_in, c_out, 3, padding=1, padding_mode="circular")

    models = {"P > M": (lambda: nn.Sequential(nn.Flatten(1), nn.Linear(9, 4), nn.Tanh(), nn.Linear(4, 9),
                                              nn.Unflatten(1, (1, 3, 3))), (4, 1, 3, 3), 7),
              "P < M": (lambda: nn.Sequential(conv(2, 3), nn.Tanh(), conv(3, 2)), (3, 2, 6, 6), 8)}
    cases = {}
    for name, (build, shape, seed) in models.items():
        torch.manual_seed(seed)
        model = build().double().eval()
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(*shape, generator=g, dtype=torch.float64)
        y = x + 0.3 * torch.randn(*shape, generator=g, dtype=torch.float64)
        cases[name] = (model, x, y)
    return cases


def limit_study(lambdas=(1e-1, 1e-2, 1e-4, 1e-6, 1e-8, 1e-10), *, krylov=(1e-2, 1e-6, 1e-10)) -> dict:
    """`analysis.estimator.lambda_limit` on both tiny cases: {case: xr.Dataset}; the Krylov
    solver runs at the λ of `krylov` (True: all)."""
    from pdeinf.analysis.estimator import lambda_limit

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {name: lambda_limit(*case, lambdas, krylov=krylov) for name, case in tiny_cases().items()}


def pm_table(profile: ProfileLike) -> list[dict]:
    """P and M (outputs of an influence batch and of the subset batch) of the profile's models,
    beside the paper's (docs/method.md section 4)."""
    from pdeinf.pipeline.regime import parameter_count

    prof = as_profile(profile)
    subset = study_subset(prof)
    rows = []
    for pde in prof.pdes:
        spec = pde_spec(pde)
        m_full = 3 * (prof.t_max - 1) * spec.channels * prof.resolution**2
        m_sub = 3 * (subset.times or prof.t_max - 1) * spec.channels * prof.resolution**2
        for model in prof.models:
            torch.manual_seed(0)
            p = parameter_count(prof, pde, model)
            lo, hi = PAPER_PM[pde][model]
            m_paper = PAPER_PM[pde]["M"]
            rows.append({"pde": pde, "model": model, "P": p, "M_batch": m_full, "P/M_batch": p / m_full,
                         "M_subset": m_sub, "P/M_subset": p / m_sub,
                         "paper_P": f"{lo / 1e6:.1f}-{hi / 1e6:.0f}M", "paper_M": m_paper,
                         "paper_P/M": f"{lo / m_paper:.1f}-{hi / m_paper:.1f}"})
    return rows
