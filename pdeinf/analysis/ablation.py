"""Which of our model departures from the authors mattered: the change of each finding when the
model is trained another way (`config`, baseline first; `pdeinf.pipeline.ablation`), paired by
seed, beside the seed spread; `exceeds_noise`: the interval excludes 0 and |change| exceeds the
larger seed std of the two configurations. Pure.
"""
from __future__ import annotations

import math

import numpy as np
import xarray as xr

from pdeinf.analysis.seed_paper import standardized
from pdeinf.analysis.seed_paper_findings import UNIT_STATISTICS
from pdeinf.analysis.statistics import seed_mean_ci, seed_spread
from pdeinf.errors import InputError

ROLLOUT_DT = 1
BASELINE = "baseline"
#: finding -> what it measures: the rows of the ablation table.
FINDINGS = {
    "inter_below_intra": "intra minus inter-class mean of standardized H at |dt| = 1",
    "temporal_decay": "intra-class mean of standardized H at |dt| = 1 minus at |dt| = 8",
    "class_locked": "class matrix: mean diagonal minus mean off-diagonal (standardized H)",
    "rollout_link_negative": "pooled Pearson r of raw-matrix R with cumulative rollout SMSE, dt = 1",
    "validation_smse": "log10 final validation SMSE (mean over seeds)"}
_DIMS = {"pi": ("config", "seed", "batch", "t_resp", "c_resp", "t_pert", "c_pert"),
         "rollout": ("config", "seed", "class", "batch", "start", "horizon"), "val_smse": ("config", "seed")}


def finding_units(ds: xr.Dataset, dt: int = ROLLOUT_DT) -> dict[str, xr.DataArray]:
    """Per finding of `FINDINGS`, its values per unit, dims (config, seed[, batch])."""
    from pdeinf.analysis.coherence import rollout_link
    from pdeinf.analysis.followup import seed_correlations

    if not isinstance(ds, xr.Dataset):
        raise InputError(f"ds: expected an xr.Dataset, got {type(ds).__name__}")
    for name, dims in _DIMS.items():
        if name not in ds:
            raise InputError(f"ds: missing variable {name!r}")
        if set(ds[name].dims) != set(dims):
            raise InputError(f"ds[{name!r}]: dims {ds[name].dims}, expected {dims}")
    configs = [str(c) for c in ds["config"].values]
    hns = [standardized(ds["pi"].sel(config=c, drop=True)) for c in configs]
    out = {f: xr.concat([UNIT_STATISTICS[f](hn) for hn in hns], dim="config")
           for f in FINDINGS if f in UNIT_STATISTICS}
    links = []
    for c in configs:  # per seed, Pearson r over (class, batch) of raw R with the rollout error at dt
        sweep = xr.Dataset({"pi": ds["pi"].sel(config=c, drop=True)
                            .expand_dims(epoch=[0], variant=["gauss-newton"])})
        roll = ds["rollout"].sel(config=c, drop=True).rename(batch="trajectory")
        link = rollout_link(sweep, roll, variant="gauss-newton", normalization="none", max_horizon=dt)
        links.append(seed_correlations(link["ratio"], link["rollout_error"].sel(dt=dt, drop=True),
                                       zero_spread="ieee"))
    out["rollout_link_negative"] = xr.concat(links, dim="config")
    out["validation_smse"] = np.log10(ds["val_smse"])
    return {f: u.assign_coords(config=configs).transpose("config", "seed", ...) for f, u in out.items()}


def ablation_table(ds: xr.Dataset, *, dt: int = ROLLOUT_DT) -> xr.Dataset:
    """The table of one (PDE, model) against the first (baseline) configuration: `value`,
    `seed_std`, `exceeds_noise`, `description` (finding, config), `change` (ci, finding, config)."""
    units = finding_units(ds, dt)
    configs = [str(c) for c in ds["config"].values]
    rows = [xr.Dataset({"value": u.mean([d for d in ("seed", "batch") if d in u.dims]),
                        "seed_std": seed_spread(u), "change": seed_mean_ci(u - u.sel(config=configs[0]))})
            for u in units.values()]
    out = xr.concat([r.reset_coords(drop=True) for r in rows], dim="finding",
                    combine_attrs="drop").assign_coords(finding=list(units), config=configs)
    ch, std = out["change"], out["seed_std"]
    noise = np.fmax(std, std.sel(config=configs[0]))
    exceeds = (((ch.sel(ci="low") > 0) | (ch.sel(ci="high") < 0))  # the interval excludes 0
               & (abs(ch.sel(ci="estimate")) > noise) & np.isfinite(noise))
    exceeds.loc[{"config": configs[0]}] = False
    return xr.Dataset({"value": out["value"].transpose("finding", "config"),
                       "change": ch.transpose("ci", "finding", "config"),
                       "seed_std": std.transpose("finding", "config"),
                       "exceeds_noise": exceeds.drop_vars("ci").transpose("finding", "config"),
                       "description": ("finding", [FINDINGS[f] for f in units])},
                      attrs={"n_seeds": int(ds.sizes["seed"]), "n_batches": int(ds.sizes["batch"]),
                             "rollout_dt": int(dt), "baseline": configs[0],
                             "method": "paired by seed; 95% t-interval over seed means (S - 1 df)"})


def table_records(table: xr.Dataset, *, pde: str, model: str) -> list[dict]:
    """The table as JSON-ready rows (one per finding and non-baseline configuration)."""
    base = table.attrs.get("baseline", str(table["config"].values[0]))
    rows = []
    for f in table["finding"].values:
        for c in [c for c in table["config"].values if c != base]:
            cell, ref = table.sel(finding=f, config=c), table.sel(finding=f, config=base)
            ch = [float(cell["change"].sel(ci=k)) for k in ("estimate", "low", "high")]
            rows.append({"pde": pde, "model": model, "finding": str(f), "config": str(c),
                         "baseline_value": float(ref["value"]), "value": float(cell["value"]),
                         "change": ch[0], "low": ch[1], "high": ch[2],
                         "seed_std_baseline": float(ref["seed_std"]), "seed_std": float(cell["seed_std"]),
                         "exceeds_noise": bool(cell["exceeds_noise"]), "n_seeds": int(table.attrs["n_seeds"]),
                         "n_batches": int(table.attrs["n_batches"]),
                         "description": str(cell["description"].item())})
    return rows


def describe_table(table: xr.Dataset, *, pde: str, model: str) -> list[str]:
    """One line per (configuration, finding): change, interval, seed spread, noise verdict."""
    lines = []
    for row in table_records(table, pde=pde, model=model):
        has_ci = math.isfinite(row["low"]) and math.isfinite(row["high"])
        ci = f"95% CI {row['low']:+.3g} .. {row['high']:+.3g}" if has_ci else "no interval"
        word = ("EXCEEDS the noise" if row["exceeds_noise"] else "within the noise"
                if has_ci and math.isfinite(row["seed_std_baseline"])
                else "cannot be told from noise (too few seeds x batches for a spread)")
        lines.append(f"{pde}-{model} {row['config']}: {row['finding']} {row['baseline_value']:.3g}"
                     f" -> {row['value']:.3g}, change {row['change']:+.3g} ({ci}; seed std "
                     f"{row['seed_std_baseline']:.2g} / {row['seed_std']:.2g}; {row['n_seeds']} "
                     f"seeds x {row['n_batches']} batches): {word}")
    return lines
