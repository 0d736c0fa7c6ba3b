"""Initial-condition samplers of the six PDEGym data sets (Poseidon, arXiv 2405.19101, App. B).

`sample(dataset, n, resolution, *, seed, ...)` returns `[n, C, R, R]` on the unit torus, x
along W: CE-* conserved `(rho, rho*vx, rho*vy, E)` (gamma 1.4), piecewise-constant states at
cell centres `((i + 1/2) / R, (j + 1/2) / R)`; NS-* divergence-free velocity `(u, v)` on the
spectral grid `(i / R, j / R)`, Leray-projected (`navier_stokes.project`); NS-BB is evolved
from t = -0.5 to t = 0. Sample k has its own generator, seeded from `(seed, data set, k)`, so
it does not depend on `n` or `start`.

State ranges are keyword arguments: `DEFAULT_RANGES`, or the appendix's `PAPER_RANGES`.
Departures: CE-RP states fit the released data's mean/std, with p >= 0.06 keeping the worst
star pressure above 1 % of the smallest (`worst_star_pressure`); CE-RPUI defaults to the
CE-CRP states with p = 1 (the appendix's states can generate vacuum); CE-CRP's unstated
partition p is 2; interfaces use `sin(2 pi i x + j y + beta)` literally
(`periodic_interfaces=True`: `2 pi j y`); NS-Gauss's Gaussians are periodised.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from tqdm.auto import tqdm

from pdeinf.checks import finite_float, one_of, positive_int
from pdeinf.config import DATASETS
from pdeinf.errors import InputError
from pdeinf.solvers import navier_stokes
from pdeinf.solvers.euler import primitive_to_conserved

__all__ = ["DEFAULT_RANGES", "PAPER_RANGES", "gauss_vorticity", "primitive_to_conserved", "sample",
           "sample_parameters", "worst_star_pressure"]

GAMMA = 1.4

DEFAULT_RANGES: dict[str, dict] = {
    "CE-RP": {"rho": (0.3, 2.2), "vx": (-0.45, 0.45), "vy": (-0.45, 0.45), "pressure": (0.06, 0.4),
              "partitions": 2, "gamma": GAMMA},
    "CE-CRP": {"rho": (0.1, 1.0), "vx": (-1.0, 1.0), "vy": (-1.0, 1.0), "pressure": (0.1, 1.0),
               "partitions": 2, "alpha": (-0.1, 0.1), "beta": (0.0, 1.0),
               "periodic_interfaces": False, "gamma": GAMMA},
    "CE-RPUI": {"rho": (0.1, 1.0), "vx": (-1.0, 1.0), "vy": (-1.0, 1.0), "pressure": (0.1, 1.0),
                "partitions": 1, "alpha": (-0.01, 0.01), "beta": (0.0, 1.0),
                "periodic_interfaces": False, "gamma": GAMMA},
    "NS-BB": {"alpha": (-1.0, 1.0), "hurst": 0.5, "evolve_time": 0.5, "viscosity": "spectral",
              "nu": 4e-4, "cfl": 0.5, "chunk_size": 16},
    "NS-Gauss": {"n_gaussians": 100, "alpha": (-1.0, 1.0), "sigma": (0.01, 0.1)},
    "NS-Sines": {"modes": 10, "alpha": (-1.0, 1.0), "phase": (0.0, 2.0 * math.pi)},
}

PAPER_RANGES: dict[str, dict] = {
    **{name: dict(ranges) for name, ranges in DEFAULT_RANGES.items()},
    "CE-RP": {**DEFAULT_RANGES["CE-RP"], "rho": (0.1, 1.0), "vx": (-1.0, 1.0), "vy": (-1.0, 1.0),
              "pressure": (0.1, 1.0)},
    "CE-RPUI": {**DEFAULT_RANGES["CE-RPUI"], "rho": (1.0, 3.0), "vx": (-10.0, 10.0),
                "vy": (-10.0, 10.0), "pressure": (5.0, 7.0)},
}

#: interval keyword -> "positive" (lower bound > 0) or "any", for validation
_INTERVALS = {"rho": "positive", "pressure": "positive", "vx": "any", "vy": "any", "alpha": "any",
              "beta": "any", "phase": "any", "sigma": "positive"}
#: scalar keyword -> its bounds (`pdeinf.checks.finite_float`)
_SCALARS = {"gamma": {"above": 1.0}, "evolve_time": {"minimum": 0.0}, "nu": {"minimum": 0.0},
            "cfl": {"positive": True}}
_COUNTS = ("partitions", "modes", "n_gaussians", "chunk_size")
_DATASET_KEY = {name: i for i, name in enumerate(DATASETS)}


def _resolve_ranges(dataset: str, overrides: dict) -> dict:
    """Defaults of `dataset` updated by `overrides`, validated (InputError names the key)."""
    defaults = DEFAULT_RANGES[dataset]
    unknown = sorted(set(overrides) - set(defaults))
    if unknown:
        raise InputError(f"{unknown[0]}: not a parameter of {dataset}; expected one of {', '.join(defaults)}")
    ranges = {**defaults, **overrides}
    for key, value in ranges.items():
        if key in _INTERVALS:
            try:
                lo, hi = (float(v) for v in value)
            except (TypeError, ValueError):
                raise InputError(f"{key}: expected an interval (lo, hi), got {value!r}") from None
            if not (math.isfinite(lo) and math.isfinite(hi) and lo <= hi):
                raise InputError(f"{key}: expected finite lo <= hi, got {value!r}")
            if _INTERVALS[key] == "positive" and lo <= 0:
                raise InputError(f"{key}: lower bound must be positive, got {lo}")
            ranges[key] = (lo, hi)
        elif key in _COUNTS:
            ranges[key] = positive_int(value, key)
        elif key in _SCALARS:
            ranges[key] = finite_float(value, key, **_SCALARS[key])
        elif key == "hurst" and not (isinstance(value, (int, float)) and 0 < value < 1):
            raise InputError(f"hurst: must be in (0, 1), got {value!r}")
        elif key == "viscosity":
            one_of(value, navier_stokes.VISCOSITIES, "viscosity")
        elif key == "periodic_interfaces" and not isinstance(value, bool):
            raise InputError(f"periodic_interfaces: expected True or False, got {value!r}")
    return ranges


def _rng(seed: int, dataset: str, index: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, _DATASET_KEY[dataset], index]))


def sample_parameters(
    dataset: str, seed: int, index: int, resolution: int | None = None, **ranges
) -> dict[str, np.ndarray]:
    """The random parameters of sample `index` (float64 arrays, the paper's symbols).

    CE: region states `rho, vx, vy, pressure` `[regions]` (row-major over (iy, ix)); CE-CRP/RPUI
    also `alpha_x, alpha_y, beta_x, beta_y` `[p, p]` (index [i-1, j-1]). NS-Sines: `alpha, beta,
    gamma` `[p, p]`. NS-Gauss: `alpha, sigma, xc, yc` `[n_gaussians]`. NS-BB (needs
    `resolution`): `coeff` `[2, K+1, K+1, 4]` (component, k1 along x, k2 along y, (cc, cs, sc,
    ss)), K = resolution // 2.
    """
    dataset = one_of(dataset, DEFAULT_RANGES, "dataset")
    r = _resolve_ranges(dataset, ranges)
    return _draw(dataset, _rng(positive_int(seed, "seed", minimum=0), dataset, int(index)), r, resolution)


def _draw(dataset: str, rng: np.random.Generator, r: dict, resolution: int | None) -> dict:
    if dataset.startswith("CE"):
        p = r["partitions"]
        regions = p * p if dataset == "CE-RP" else (p + 1) ** 2
        draws = [(key, r[key], regions) for key in ("rho", "vx", "vy", "pressure")]
        if dataset != "CE-RP":
            draws += [(f"{key}_{axis}", r[key], (p, p)) for key in ("alpha", "beta") for axis in "xy"]
    elif dataset == "NS-Sines":
        m = r["modes"]
        draws = [("alpha", r["alpha"], (m, m)), ("beta", r["phase"], (m, m)), ("gamma", r["phase"], (m, m))]
    elif dataset == "NS-Gauss":
        m = r["n_gaussians"]
        draws = [("alpha", r["alpha"], m), ("sigma", r["sigma"], m), ("xc", (0.0, 1.0), m),
                 ("yc", (0.0, 1.0), m)]
    elif resolution is None:
        raise InputError("resolution: NS-BB parameters depend on the grid; pass resolution")
    else:
        k = int(resolution) // 2
        draws = [("coeff", r["alpha"], (2, k + 1, k + 1, 4))]
    return {key: rng.uniform(*bounds, size=size) for key, bounds, size in draws}


def _frac(z: np.ndarray) -> np.ndarray:
    """The paper's fractional part {z} = z - floor(|z|) sgn(z)."""
    return z - np.floor(np.abs(z)) * np.sign(z)


def _interface_shift(a: np.ndarray, b: np.ndarray, x, y, offset: int, periodic: bool) -> np.ndarray:
    """sum_{i,j=1..p} a_ij sin(2 pi (i + offset) x + c (j + offset) y + b_ij), c = 1 or 2 pi."""
    idx = np.arange(1, a.shape[0] + 1) + offset
    cy = 2.0 * math.pi if periodic else 1.0
    phase = (
        2.0 * math.pi * idx[:, None, None, None] * x
        + cy * idx[None, :, None, None] * y
        + b[:, :, None, None]
    )
    return (a[:, :, None, None] * np.sin(phase)).sum(axis=(0, 1))


def _region_labels(dataset: str, prm: dict, r: dict, res: int) -> np.ndarray:
    """Integer region index `[R, R]` (row = y, column = x) at cell centres."""
    c = (np.arange(res) + 0.5) / res
    y, x = np.meshgrid(c, c, indexing="ij")
    p = r["partitions"]
    if dataset == "CE-RP":
        ix = np.minimum((x * p).astype(int), p - 1)
        iy = np.minimum((y * p).astype(int), p - 1)
        return iy * p + ix
    offset = 2 * p * p if dataset == "CE-RPUI" else 0
    sx = _interface_shift(prm["alpha_x"], prm["beta_x"], x, y, offset, r["periodic_interfaces"])
    sy = _interface_shift(prm["alpha_y"], prm["beta_y"], x, y, offset, r["periodic_interfaces"])
    ix = np.clip(np.floor((p + 1) * _frac(x + sx + 1.0)).astype(int), 0, p)
    iy = np.clip(np.floor((p + 1) * _frac(y + sy + 1.0)).astype(int), 0, p)
    return iy * (p + 1) + ix


def _sines_field(prm, r, res) -> np.ndarray:
    i = np.arange(1, prm["alpha"].shape[0] + 1)
    amp = prm["alpha"] / np.sqrt(2.0 * math.pi * (i[:, None] + i[None, :]))  # [i, j]
    g = np.arange(res) / res
    ax = 2.0 * math.pi * i[:, None, None] * g[None, None, :] + prm["beta"][:, :, None]  # [i, j, x]
    ay = 2.0 * math.pi * i[None, :, None] * g[None, None, :] + prm["gamma"][:, :, None]  # [i, j, y]
    return np.stack((np.einsum("ij,ijy,ijx->yx", amp, np.sin(ay), np.sin(ax)),
                     np.einsum("ij,ijy,ijx->yx", amp, np.cos(ay), np.cos(ax))))


def gauss_vorticity(prm: dict, res: int) -> np.ndarray:
    """Periodised vorticity `sum_i alpha_i / sigma_i exp(-|x - x_i|^2 / (2 sigma_i^2))` `[R, R]`
    (images n = -1, 0, 1 of the minimum-image offset; the next are < exp(-112) for sigma <= 0.1)."""
    s = np.arange(res) / res

    def gaussian(centres):  # [m, R]
        d = (s[None, :] - centres[:, None] + 0.5) % 1.0 - 0.5
        return sum(np.exp(-((d + n) ** 2) / (2.0 * prm["sigma"][:, None] ** 2)) for n in (-1.0, 0.0, 1.0))

    return np.einsum("m,my,mx->yx", prm["alpha"] / prm["sigma"], gaussian(prm["yc"]), gaussian(prm["xc"]))


def _bb_field(prm, r, res) -> np.ndarray:
    coeff = prm["coeff"]  # [2, K+1, K+1, 4]
    k = np.arange(coeff.shape[1])
    knorm = np.hypot(k[:, None], k[None, :])
    knorm[0, 0] = 1.0
    # azeban's fac = (2 pi |k|)^-(H+1); the factor 4 turns its complex coefficients into the
    # real product form (4 f cos cos ...) used here.
    fac = 4.0 * (2.0 * math.pi * knorm) ** (-(r["hurst"] + 1.0))
    fac[0, 0] = 0.0
    g = 2.0 * math.pi * k[:, None] * (np.arange(res) / res)[None, :]  # [k, grid]
    c, s = np.cos(g), np.sin(g)
    bases = ((c, c), (s, c), (c, s), (s, s))  # (along y, along x) of (cc, cs, sc, ss)
    comps = []
    for d in range(2):
        a = coeff[d] * fac[:, :, None]  # [k1 (x), k2 (y), 4]
        terms = [np.einsum("ab,by,ax->yx", a[..., i], *basis) for i, basis in enumerate(bases)]
        comps.append(terms[0] + terms[1] + terms[2] + terms[3])
    return np.stack(comps)


def sample(dataset: str, n: int, resolution: int, *, seed: int, dtype: torch.dtype = torch.float64,
           start: int = 0, device=None, progress: bool = False, **ranges) -> torch.Tensor:
    """`n` initial conditions of `dataset` on an R x R grid -> `[n, C, R, R]` (`dtype`, `device`).

    CE: C = 4 conserved `(rho, rho vx, rho vy, E)`; NS: C = 2 divergence-free velocity (NS-BB:
    the t = 0 state after evolving from t = -0.5). Samples `start .. start+n-1` of the stream of
    `seed`. `ranges`: overrides of `DEFAULT_RANGES[dataset]` (unknown keys raise InputError).
    """
    dataset = one_of(dataset, DEFAULT_RANGES, "dataset")
    n = positive_int(n, "n")
    resolution = positive_int(resolution, "resolution")
    seed = positive_int(seed, "seed", minimum=0)
    positive_int(start, "start", minimum=0)
    if dtype not in (torch.float32, torch.float64):
        raise InputError(f"dtype: must be torch.float32 or torch.float64, got {dtype}")
    min_res = 2 if dataset.startswith("CE") else 4
    if resolution < min_res:
        raise InputError(f"resolution: must be at least {min_res} for {dataset}, got {resolution}")
    r = _resolve_ranges(dataset, ranges)
    device = torch.device("cpu") if device is None else torch.device(device)

    fields = []
    for index in tqdm(range(start, start + n), disable=not progress, desc=dataset, leave=False):
        prm = _draw(dataset, _rng(seed, dataset, index), r, resolution)
        if dataset.startswith("CE"):
            labels = torch.as_tensor(_region_labels(dataset, prm, r, resolution), device=device)
            prim = [torch.as_tensor(prm[key], dtype=torch.float64, device=device)[labels]
                    for key in ("rho", "vx", "vy", "pressure")]
            fields.append(primitive_to_conserved(*prim, gamma=r["gamma"]).to(dtype))
        elif dataset == "NS-Gauss":
            w = torch.as_tensor(gauss_vorticity(prm, resolution), device=device)
            fields.append(navier_stokes.velocity_from_vorticity(w))
        else:
            make = _sines_field if dataset == "NS-Sines" else _bb_field
            fields.append(torch.as_tensor(make(prm, r, resolution), device=device))
    out = torch.stack(fields)
    if dataset.startswith("CE"):
        return out
    out = navier_stokes.project(out)
    if dataset == "NS-BB" and r["evolve_time"] > 0:  # evolved in chunks of `chunk_size` samples
        out = torch.cat([navier_stokes.solve(out[lo : lo + r["chunk_size"]].to(dtype), [0.0],
                                             t0=-r["evolve_time"], nu=r["nu"], viscosity=r["viscosity"],
                                             cfl=r["cfl"], progress=progress)[:, 0]
                         for lo in range(0, n, r["chunk_size"])])
    return out.to(dtype)


def worst_star_pressure(dataset: str = "CE-RP", **ranges) -> tuple[float, float]:
    """Worst 1D Riemann problem between two regions of `dataset`: both states at the lowest
    pressure and highest density, normal velocities at the two ends of the range (two receding
    rarefactions, Toro eq. 4.46). Returns `(p_star, p_min)`; `p_star = 0`: vacuum possible."""
    dataset = one_of(dataset, DEFAULT_RANGES, "dataset")
    if not dataset.startswith("CE"):
        raise InputError(f"dataset: {dataset} is not a compressible Euler data set")
    r = _resolve_ranges(dataset, ranges)
    gamma = float(r["gamma"])
    rho, p = r["rho"][1], r["pressure"][0]
    du = max(r["vx"][1] - r["vx"][0], r["vy"][1] - r["vy"][0])
    a = math.sqrt(gamma * p / rho)
    z = (gamma - 1.0) / (2.0 * gamma)
    num = 2.0 * a - 0.5 * (gamma - 1.0) * du
    if num <= 0:
        return 0.0, p
    return (num / (2.0 * a / p**z)) ** (1.0 / z), p
