"""Which of our model departures from the authors mattered (the ablation): the change of
each finding's headline number when the model is trained another way, with the seed spread
beside it (pure: xarray in, xarray out).

Input: one `xr.Dataset` per (PDE, model) with a leading `config` dim (the baseline first, the
profile's default configuration, then each alternative), as `pdeinf.pipeline.ablation` builds:

- `pi` (config, seed, batch, t_resp, c_resp, t_pert, c_pert): the follow-up's raw Gauss-Newton
  influence of each influence batch at the final checkpoint (rows = response);
- `rollout` (config, seed, class, batch, start, horizon): per-step rollout SMSE of the test
  trajectories that form the influence batches (batch = trajectory index), NaN where a start
  has no such step;
- `val_smse` (config, seed): the final checkpoint's one-step validation SMSE.

The same seed means the same initialisation seed, data split and influence batches in every
configuration, so changes are **paired** by seed (and batch): the interval of a change is the
t-interval over seeds of the seed-mean changes (S - 1 df).

Findings measured (`FINDINGS`; the statistics of `pdeinf.analysis.registry.FINDING_RULES` where
a rule exists, on the row-standardized matrix like the seed paper's aggregations):

- `inter_below_intra`: intra- minus inter-class mean of Ĥ at |dt| = 1;
- `temporal_decay`: intra-class mean of Ĥ at |dt| = 1 minus at |dt| = 8;
- `class_locked`: mean diagonal minus mean off-diagonal of the time-averaged class matrix;
- `rollout_link_negative`: per-seed Pearson r, over (class, batch), of the raw-matrix ratio R
  with the cumulative rollout SMSE at dt = 1 (`coherence.rollout_link`), mean over seeds;
- `validation_smse`: log10 of the final validation SMSE (mean over seeds).

Per finding and configuration: `value` (the statistic), `change` (value minus the baseline's,
with a `ci` dim: estimate, low, high; 95% t-interval over seeds), `seed_std` (std over seeds, ddof
1, of the per-seed value: the mean over that seed's batches, its own Pearson r over (class,
batch), its log10 validation SMSE) and `exceeds_noise`: the change's interval excludes 0 **and**
|change| exceeds the larger seed std of the two configurations.
"""
from __future__ import annotations

import math

import numpy as np
import xarray as xr

from pdeinf.analysis.aggregate import pearson
from pdeinf.analysis.seed_paper import standardized
from pdeinf.analysis.seed_paper_findings import (
    class_locked_units,
    decay_units,
    inter_gap_units,
)
from pdeinf.analysis.statistics import seed_mean_ci
from pdeinf.errors import InputError

ROLLOUT_DT = 1
BASELINE = "baseline"

#: finding -> (what it measures, unit): the rows of the ablation table.
FINDINGS = {
    "inter_below_intra": "intra minus inter-class mean of standardized H at |dt| = 1",
    "temporal_decay": "intra-class mean of standardized H at |dt| = 1 minus at |dt| = 8",
    "class_locked": "class matrix: mean diagonal minus mean off-diagonal (standardized H)",
    "rollout_link_negative": "pooled Pearson r of raw-matrix R with cumulative rollout SMSE, dt = 1",
    "validation_smse": "log10 final validation SMSE (mean over seeds)",
}
UNIT_FINDINGS = {"inter_below_intra": inter_gap_units, "temporal_decay": decay_units,
                 "class_locked": class_locked_units}
_PI_DIMS = ("config", "seed", "batch", "t_resp", "c_resp", "t_pert", "c_pert")


def _check(ds) -> list[str]:
    if not isinstance(ds, xr.Dataset):
        raise InputError(f"ds: expected an xr.Dataset, got {type(ds).__name__}")
    for name, dims in (("pi", _PI_DIMS), ("rollout", ("config", "seed", "class", "batch", "start",
                                                      "horizon")), ("val_smse", ("config", "seed"))):
        if name not in ds:
            raise InputError(f"ds: missing variable {name!r}")
        if set(ds[name].dims) != set(dims):
            raise InputError(f"ds[{name!r}]: dims {ds[name].dims}, expected {dims}")
    configs = [str(c) for c in ds["config"].values]
    if len(configs) < 1:
        raise InputError("ds: no configuration")
    return configs


# --------------------------------------------------------------------------- per-unit values


def unit_values(ds: xr.Dataset) -> xr.DataArray:
    """Per (config, seed, batch) unit values of the standardized-H findings, dims (finding,
    config, seed, batch); each finding's statistic is their mean over (seed, batch)."""
    configs = _check(ds)
    per_config = []
    for c in configs:
        hn = standardized(ds["pi"].sel(config=c, drop=True))
        per_config.append(xr.concat([UNIT_FINDINGS[f](hn) for f in UNIT_FINDINGS], dim="finding"))
    out = xr.concat(per_config, dim="config").assign_coords(finding=list(UNIT_FINDINGS),
                                                            config=configs)
    return out.transpose("finding", "config", "seed", "batch")


def rollout_units(ds: xr.Dataset, dt: int = ROLLOUT_DT) -> xr.DataArray:
    """R and the cumulative rollout error at `dt` per (config, seed, class, batch), dims (seed,
    batch, config, class, var) with var ("R", "error")."""
    from pdeinf.analysis.coherence import rollout_link

    configs = _check(ds)
    parts = []
    for c in configs:
        pi = ds["pi"].sel(config=c, drop=True)
        sweep = xr.Dataset({"pi": pi.expand_dims(epoch=[0], variant=["gauss-newton"])})
        roll = ds["rollout"].sel(config=c, drop=True).rename(batch="trajectory")
        link = rollout_link(sweep, roll, variant="gauss-newton", normalization="none",
                            max_horizon=dt)
        parts.append(xr.concat([link["ratio"], link["rollout_error"].sel(dt=dt, drop=True)],
                               dim="var"))
    out = xr.concat(parts, dim="config").assign_coords(config=configs, var=["R", "error"])
    return out.transpose("seed", "batch", "config", "class", "var")


# --------------------------------------------------------------------------- the table


def _paired_change(units: xr.DataArray, configs) -> xr.DataArray:
    """Change of each configuration against the baseline (the first), paired by seed (and
    batch): the mean over seeds of the seed means with its t-interval; dims (ci, config)."""
    change = units - units.sel(config=configs[0])
    batch = "batch" if "batch" in units.dims else None
    return seed_mean_ci(change, batch_dim=batch)


def _mean_units(da: xr.DataArray) -> xr.DataArray:
    return da.mean(("seed", "batch"))


def _seed_std(per_seed: xr.DataArray) -> xr.DataArray:
    if per_seed.sizes["seed"] < 2:
        return xr.full_like(per_seed.isel(seed=0, drop=True), np.nan, dtype=np.float64)
    return per_seed.std("seed", ddof=1)


def ablation_table(ds: xr.Dataset, *, dt: int = ROLLOUT_DT) -> xr.Dataset:
    """The ablation table of one (PDE, model) (module docstring): dims (finding, config), vars
    `value`, `change` (ci, finding, config), `seed_std`, `exceeds_noise`; the baseline is the
    first configuration (its change is 0). attrs: n_seeds, n_batches, rollout_dt, baseline,
    method."""
    configs = _check(ds)
    n_seeds, n_batches = ds.sizes["seed"], ds.sizes["batch"]
    value, change, seed_std = {}, {}, {}
    units = unit_values(ds)
    for f in UNIT_FINDINGS:
        u = units.sel(finding=f, drop=True)
        value[f] = _mean_units(u)
        seed_std[f] = _seed_std(u.mean("batch"))
        change[f] = _paired_change(u, configs)
    roll = rollout_units(ds, dt)
    arr = roll.transpose("seed", "config", "var", "batch", "class").values
    arr = arr.reshape(*arr.shape[:3], -1)
    seed_r = xr.DataArray(pearson(arr[:, :, 0], arr[:, :, 1]), dims=("seed", "config"),
                          coords={"config": configs})
    value["rollout_link_negative"] = seed_r.mean("seed")
    seed_std["rollout_link_negative"] = _seed_std(seed_r)
    change["rollout_link_negative"] = _paired_change(seed_r, configs)
    logv = np.log10(ds["val_smse"].transpose("config", "seed"))
    value["validation_smse"] = logv.mean("seed")
    seed_std["validation_smse"] = _seed_std(logv)
    change["validation_smse"] = _paired_change(logv, configs)

    names = list(FINDINGS)
    value, seed_std, change = ({f: d[f].reset_coords(drop=True) for f in names}
                               for d in (value, seed_std, change))
    val = xr.concat([value[f] for f in names], dim="finding").assign_coords(finding=names)
    std = xr.concat([seed_std[f] for f in names], dim="finding").assign_coords(finding=names)
    ch = xr.concat([change[f] for f in names], dim="finding", combine_attrs="drop")
    ch = ch.assign_coords(finding=names).transpose("ci", "finding", "config")
    low, high, est = ch.sel(ci="low"), ch.sel(ci="high"), ch.sel(ci="estimate")
    noise = np.fmax(std, std.sel(config=configs[0]))
    excludes = (low > 0) | (high < 0)
    exceeds = excludes & (abs(est) > noise) & np.isfinite(noise)
    exceeds.loc[{"config": configs[0]}] = False
    out = xr.Dataset({"value": val.transpose("finding", "config"),
                      "change": ch, "seed_std": std.transpose("finding", "config"),
                      "exceeds_noise": exceeds.transpose("finding", "config")})
    out = out.assign_coords(config=configs)
    out["description"] = ("finding", [FINDINGS[f] for f in names])
    out.attrs.update(n_seeds=int(n_seeds), n_batches=int(n_batches), rollout_dt=int(dt),
                     baseline=configs[0],
                     method="paired by seed; 95% t-interval over seed means (S - 1 df)")
    return out


def table_records(table: xr.Dataset, *, pde: str, model: str) -> list[dict]:
    """The table as JSON-ready rows (one per finding and non-baseline configuration)."""
    base = table.attrs.get("baseline", str(table["config"].values[0]))
    rows = []
    for f in table["finding"].values:
        for c in table["config"].values:
            if c == base:
                continue
            cell = table.sel(finding=f, config=c)
            ch = [float(cell["change"].sel(ci=k)) for k in ("estimate", "low", "high")]
            rows.append({
                "pde": pde, "model": model, "finding": str(f), "config": str(c),
                "baseline_value": float(table["value"].sel(finding=f, config=base)),
                "value": float(cell["value"]), "change": ch[0], "low": ch[1], "high": ch[2],
                "seed_std_baseline": float(table["seed_std"].sel(finding=f, config=base)),
                "seed_std": float(cell["seed_std"]), "exceeds_noise": bool(cell["exceeds_noise"]),
                "n_seeds": int(table.attrs["n_seeds"]), "n_batches": int(table.attrs["n_batches"]),
                "description": str(cell["description"].item())})
    return rows


def describe_table(table: xr.Dataset, *, pde: str, model: str) -> list[str]:
    """One plain-words line per (configuration, finding): the change, its interval, the seed
    spread, and whether the change exceeds the noise."""
    lines = []
    for row in table_records(table, pde=pde, model=model):
        has_ci = math.isfinite(row["low"]) and math.isfinite(row["high"])
        ci = f"95% CI {row['low']:+.3g} .. {row['high']:+.3g}" if has_ci else "no interval"
        if row["exceeds_noise"]:
            word = "EXCEEDS the noise"
        elif not has_ci or not math.isfinite(row["seed_std_baseline"]):
            word = "cannot be told from noise (too few seeds x batches for a spread)"
        else:
            word = "within the noise"
        lines.append(f"{pde}-{model} {row['config']}: {row['finding']} {row['baseline_value']:.3g}"
                     f" -> {row['value']:.3g}, change {row['change']:+.3g} ({ci}; seed std "
                     f"{row['seed_std_baseline']:.2g} / {row['seed_std']:.2g}; {row['n_seeds']} "
                     f"seeds x {row['n_batches']} batches): {word}")
    return lines
