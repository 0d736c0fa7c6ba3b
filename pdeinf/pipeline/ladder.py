"""Stage: the regime ladder (ours; `pdeinf.analysis.ladder`) of `profile.ladder_pair`.

Rungs (`rungs`): every checkpoint of the profile's own runs (`progress`); the widths of
`ladder_widths` (`width`) and the first k training trajectories per class of
`ladder_trajectories` (`data`), both at the profile's optimizer steps. A rung at the
profile's own width or data size is its own final checkpoint. Files: the rungs' runs under
`results/runs/<profile>/ladder/<axis>-<value>/`; per rung, seed and estimator the seed paper's
influence of batch 0 (`results/ladder/<profile>/<PDE>-<model>/*.nc`, keyed on checkpoint, data
and settings); the table, summary and one sentence per axis in `ladder_<PDE>_<model>.json` in
the profile's figures folder.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from pdeinf import paths
from pdeinf.config import pde_spec
from pdeinf.errors import InputError
from pdeinf.pipeline.checksums import Cached, ensure_cached
from pdeinf.pipeline.common import (
    ProfileLike,
    as_profile,
    content_key,
    file_digest,
    final_epoch,
    require_checkpoints,
)

#: The build option that sets each model's width.
WIDTH_OPTION = {"unet": "base", "vit": "width"}
BATCH_INDEX = 0
STAGE_VERSION = 1
#: The data variable a rung's measurement file must hold.
MEASUREMENT_VARS = ("H",)


@dataclass(frozen=True)
class Rung:
    """One rung: `axis` ("progress" | "width" | "data"), its `value` (checkpoint epoch, width,
    training trajectories per class), the checkpoint `epoch` measured, the run's `epochs`,
    `train_per_class` and whether it is the profile's own run (`own`)."""

    axis: str
    value: int
    epoch: int
    epochs: int
    train_per_class: int
    own: bool

    @property
    def name(self) -> str:
        return f"{self.axis}-{self.value}"


def ladder_pair(profile: ProfileLike) -> tuple[str, str]:
    prof = as_profile(profile)
    if prof.ladder_pair is None:
        raise InputError(f"profile {prof.name}: no ladder_pair; the regime ladder is not part of it")
    pde, model = (str(v) for v in prof.ladder_pair)
    if (pde, model) not in prof.pairs():
        raise InputError(f"profile {prof.name}: ladder_pair {(pde, model)} is not one of its pairs")
    return pde, model


def stage_pair(profile: ProfileLike) -> tuple[str, str] | None:
    """The ladder's (PDE, model) when the profile has a ladder on one of its pairs, else None
    (a profile narrowed to other pairs runs without it)."""
    prof = as_profile(profile)
    if prof.ladder_pair is None or tuple(prof.ladder_pair) not in set(prof.pairs()):
        return None
    return ladder_pair(prof)


def own_width(profile: ProfileLike, model: str) -> int:
    """The width (ViT width / UNet base) of the profile's own `model`."""
    from pdeinf.models import size_options

    prof = as_profile(profile)
    return int(size_options(model, prof.model_variant, prof.model_size)[WIDTH_OPTION[model]])


def own_train_per_class(profile: ProfileLike) -> int:
    from pdeinf.data.datasets import split_indices

    prof = as_profile(profile)
    return len(split_indices(prof.n_trajectories, prof.seeds[0], prof.split)["train"])


def steps_per_epoch(profile, train_per_class: int, pde: str) -> int:
    prof = as_profile(profile)
    n_classes = len(pde_spec(pde).classes)
    return math.ceil(n_classes * train_per_class * (prof.t_max - 1) / prof.batch_size)


def rungs(profile: ProfileLike) -> list[Rung]:
    """The rungs of the profile's ladder, axis by axis, in increasing value."""
    prof = as_profile(profile)
    pde, model = ladder_pair(prof)
    epochs = int(prof.epochs[pde])
    own_k, own_w = own_train_per_class(prof), own_width(prof, model)
    out = [Rung("progress", int(e), int(e), epochs, own_k, True)
           for e in sorted(prof.checkpoints[pde])]
    for w in sorted({int(w) for w in prof.ladder_widths} | {own_w}):
        out.append(Rung("width", w, epochs, epochs, own_k, w == own_w))
    steps = epochs * steps_per_epoch(prof, own_k, pde)
    for k in sorted({int(k) for k in prof.ladder_trajectories} | {own_k}):
        if not 1 <= k <= own_k:
            raise InputError(f"ladder_trajectories: {k} is not between 1 and the {own_k} training "
                             "trajectories per class")
        n = math.ceil(steps / steps_per_epoch(prof, k, pde))
        out.append(Rung("data", k, n, n, k, k == own_k))
    return out


class FirstTrainingTrajectories:
    """A data object (`.classes`, `.trajectories`, `.fingerprint`) holding the first `k`
    training trajectories of each class of `data`; the other splits unchanged."""

    def __init__(self, data, k: int):
        self.data, self.k = data, int(k)
        self.classes = data.classes

    def trajectories(self, cls: str, split: str, seed: int) -> np.ndarray:
        held = self.data.trajectories(cls, split, seed)
        if split != "train":
            return held
        if len(held) < self.k:
            raise InputError(f"data {cls}: {len(held)} training trajectories, the rung needs {self.k}")
        return held[: self.k]

    def fingerprint(self) -> str:
        return f"{self.data.fingerprint()}/train-first-{self.k}"


def rung_runs_root(profile: ProfileLike, rung: Rung) -> Path:
    base = paths.runs_dir(as_profile(profile).name)
    return base if rung.own else base / "ladder" / rung.name


def _model_options(model: str, rung: Rung) -> dict | None:
    return {WIDTH_OPTION[model]: rung.value} if rung.axis == "width" and not rung.own else None


def ensure_ladder_runs(profile: ProfileLike, *, progress: bool = True) -> list[Path]:
    """Train (or find current, or resume) the width and data rungs' runs of every ladder seed."""
    from pdeinf.pipeline.training import ensure_runs

    prof = as_profile(profile)
    pde, model = ladder_pair(prof)
    done = []
    for rung in tqdm([r for r in rungs(prof) if not r.own], desc=f"ladder runs {pde}-{model}",
                     disable=not progress):
        options = _model_options(model, rung)
        done += ensure_runs(
            dataclasses.replace(prof, epochs={**prof.epochs, pde: rung.epochs},
                                checkpoints={**prof.checkpoints, pde: (rung.epochs,)}),
            pde, model, prof.ladder_seeds, rung_runs_root(prof, rung),
            lambda seed, data_key, rung=rung, options=options: content_key(
                stage="ladder-training", pde=pde, model=model, seed=int(seed), rung=rung.name,
                data=data_key, epochs=rung.epochs, options=options, lr=prof.lr,
                batch_size=prof.batch_size, model_size=prof.model_size, t_max=prof.t_max),
            {"rung": rung.name}, epochs=(rung.epochs,),
            train_data=functools.partial(FirstTrainingTrajectories, k=rung.train_per_class)
            if rung.axis == "data" else None, progress=False, model_options=options).values()
    return done


def measurement_path(profile, rung: Rung, seed: int, estimator: str) -> Path:
    """The measurement file of a rung; the profile's own checkpoints are named by their epoch
    (`own-e60-...`), so the width and data axes' own rungs share the progress axis's last file."""
    prof = as_profile(profile)
    pde, model = ladder_pair(prof)
    stem = f"own-e{rung.epoch}" if rung.own else rung.name
    return (paths.results_dir() / "ladder" / prof.name / f"{pde}-{model}"
            / f"{stem}-s{int(seed)}-{estimator}.nc")


def _statistics(ds, pde: str) -> dict:
    """ridge, decay, class_locked of the SMSE bra's standardized matrix; log10 top NTK
    eigenvalue."""
    from pdeinf.analysis import seed_paper as sp
    from pdeinf.analysis import seed_paper_findings as spf

    h = ds["H"].expand_dims(seed=[0], batch=[0])
    hn = sp.standardized(h.to_dataset(name="H"), "C")
    return {"ridge": float(spf.ridge_units(hn).sel(cls="all").values.item()),
            "decay": float(spf.decay_units(hn).values.item()),
            "class_locked": float(spf.class_locked_units(hn).values.item()),
            "log10_ntk": float(np.log10(float(ds["ntk_top_eigenvalue"].values)))}


def ladder_table(profile: ProfileLike, *, progress: bool = True) -> pd.DataFrame:
    """Measure every rung, seed and estimator (the seed paper's labelled influence of batch 0,
    cached) and return the ladder table (`analysis.ladder.COLUMNS`)."""
    from pdeinf.analysis.ladder import ESTIMATORS
    from pdeinf.influence.task import seed_paper_influence
    from pdeinf.pipeline.influence import FileSources
    from pdeinf.pipeline.regime import parameter_count

    prof = as_profile(profile)
    pde, model = ladder_pair(prof)
    outputs = 48 * pde_spec(pde).channels * prof.resolution ** 2
    sources = {rung: FileSources(prof, pde, model, runs_root=rung_runs_root(prof, rung),
                                 data_root=paths.data_dir(prof.name)) for rung in rungs(prof)}
    require_checkpoints([s.checkpoint(seed, rung.epoch) for rung, s in sources.items()
                         for seed in prof.ladder_seeds],
                        "train the ladder rungs first: `pipeline.ensure_ladder_runs`")
    data_key = next(iter(sources.values())).data_key()

    def measure(task: Cached):
        rung, seed, estimator = task.id
        net, _ = sources[rung].model(seed, rung.epoch)
        batch = sources[rung].batch(seed, BATCH_INDEX)
        full = estimator == "full-space"
        return seed_paper_influence(net, batch.inputs, batch.targets, pde=pde,
                                    damping=prof.fullspace_damping if full else prof.damping,
                                    rtol=prof.rtol_for(model), estimator=estimator,
                                    energy_tol=prof.energy_tol, attrs={"seed": int(seed)})

    tasks = [Cached((rung, seed, estimator), measurement_path(prof, rung, seed, estimator),
                    content_key(stage="ladder", seed=int(seed), estimator=estimator,
                                checkpoint=file_digest(s.checkpoint(seed, rung.epoch)), data=data_key,
                                damping=prof.damping, fullspace_damping=prof.fullspace_damping,
                                rtol=prof.rtol_for(model), energy_tol=prof.energy_tol, t_max=prof.t_max,
                                batch=BATCH_INDEX, stage_version=STAGE_VERSION))
             for rung, s in sources.items() for seed in prof.ladder_seeds for estimator in ESTIMATORS]
    measured = ensure_cached(tasks, measure, variables=MEASUREMENT_VARS, desc=f"ladder {pde}-{model}",
                             progress=progress)
    rows = []
    for rung in sources:
        p_over_m = parameter_count(prof, pde, model, **(_model_options(model, rung) or {})) / outputs
        steps = rung.epoch * steps_per_epoch(prof, rung.train_per_class, pde)
        for seed in prof.ladder_seeds:
            try:
                history = json.loads((rung_runs_root(prof, rung) / paths.run_name(pde, model, seed)
                                      / "history.json").read_text())
            except (OSError, ValueError):
                history = []
            val = next((float(r["val_smse"]) for r in history if int(r["epoch"]) == int(rung.epoch)),
                       math.nan)
            for estimator in ESTIMATORS:
                rows.append({"axis": rung.axis, "value": rung.value, "estimator": estimator,
                             "seed": int(seed), "p_over_m": p_over_m,
                             "train_per_class": rung.train_per_class, "optimizer_steps": steps,
                             "val_smse": val, **_statistics(measured[(rung, seed, estimator)], pde)})
    return pd.DataFrame(rows)


def ladder_path(profile: ProfileLike) -> Path:
    prof = as_profile(profile)
    pde, model = ladder_pair(prof)
    return paths.figures_dir(prof.name) / f"ladder_{pde}_{model}.json"


def ensure_ladder(profile: ProfileLike, *, progress: bool = True) -> dict:
    """Train what is missing, measure every rung, and write the ladder JSON (the table, its
    summary, one sentence per axis); returns what it wrote."""
    from pdeinf.analysis import ladder as al
    from pdeinf.analysis.registry import FINDING_RULES
    from pdeinf.config import REGIME_LABELS
    from pdeinf.pipeline.findings import write_json_text

    prof = as_profile(profile)
    pde, model = ladder_pair(prof)
    ensure_ladder_runs(prof, progress=progress)
    table = ladder_table(prof, progress=progress)
    paper = FINDING_RULES["lag0_ridge"].paper_values.get(f"{pde}-{model}")
    own = {"progress": final_epoch(prof, pde), "width": own_width(prof, model),
           "data": own_train_per_class(prof)}
    result = {
        "profile": prof.name, "regime_label": REGIME_LABELS.get(prof.name, "custom profile"),
        "pde": pde, "model": model, "seeds": [int(s) for s in prof.ladder_seeds],
        "batch": BATCH_INDEX, "paper_ridge": paper, "own_rung": own,
        "table": table.to_dict(orient="records"),
        "summary": al.summarize(table).to_dict(orient="records"),
        "sentences": {axis: al.axis_sentence(table, axis, paper_ridge=paper, reference=own[axis])
                      for axis in al.AXES},
    }
    write_json_text(ladder_path(prof), result)  # a warm rerun writes nothing
    return result
