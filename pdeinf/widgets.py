"""ipywidgets explorer of the influence sweeps: decay curves, heatmap and class matrix at a lag.

`explorer(profile, loader=...)` returns an `Explorer` (displayed as its `widget`): dropdowns pick
PDE, model, seed, epoch, variant and normalisation, a slider the lag; the panel is a PNG in an
`ipywidgets.Image`. Each `loader(pde, model)` result and each analysis is computed once and
kept (the slider only redraws; no influence is recomputed here). `symmetry_loader` adds a tab.
CSS classes for front-end tests: "pdeinf-explorer", "pdeinf-lag-slider", "pdeinf-figure", and
"pdeinf-<name>" on each dropdown (pde, model, seed, epoch, variant, normalization).
"""
from __future__ import annotations

import io
from collections.abc import Callable
from contextlib import contextmanager

import ipywidgets as W

from pdeinf.analysis import coherence as co
from pdeinf.checks import one_of
from pdeinf.config import PDE_CLASSES, get_profile
from pdeinf.errors import InputError
from pdeinf.viz import figures as vf

ALL_SEEDS = "all"


class _Tab:
    """What both tabs share: a loader called once per (pde, model), dropdowns with a CSS class,
    a PNG image with a status line, and redraws only on a user's change."""

    css_prefix = "pdeinf-"

    def __init__(self, loader: Callable, image_class: str):
        self.loader = loader
        self._datasets: dict = {}
        self._updating = False
        self.renders = 0
        self.image = W.Image(format="png", layout=W.Layout(width="100%"))
        self.image.add_class(image_class)
        self.status = W.HTML(value="")

    def dropdown(self, name: str, options) -> W.Dropdown:
        w = W.Dropdown(options=options, description="PDE" if name == "pde" else name,
                       layout=W.Layout(width="250px"), style={"description_width": "95px"})
        w.add_class(f"{self.css_prefix}{name}")
        return w

    def dataset(self, pde: str, model: str):
        """The dataset of (pde, model), loaded once."""
        if (pde, model) not in self._datasets:
            self._datasets[pde, model] = self.loader(pde, model)
        return self._datasets[pde, model]

    @contextmanager
    def _quietly(self):
        """Change widgets without a redraw per change."""
        self._updating = True
        try:
            yield
        finally:
            self._updating = False

    def _on_view_change(self, change=None):
        if not self._updating:
            self.render()

    @staticmethod
    def png(fig) -> bytes:
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=80)
        return buffer.getvalue()


class Explorer(_Tab):
    """The explorer: the influence tab, its widgets, datasets and analysis cache.
    `loader(pde, model) -> xr.Dataset`: `pdeinf.pipeline.sweep_loader(profile)`, or your own
    (e.g. a `combine_variants` output); `symmetry_loader(pde, model)` (optional) adds the
    symmetry tab."""

    def __init__(self, profile=None, *, pdes=None, models=None, loader: Callable | None = None,
                 max_lag: int = 11, symmetry_loader: Callable | None = None):
        self.profile = get_profile(profile) if profile is None or isinstance(profile, str) else profile
        pdes = list(pdes or self.profile.pdes)
        models = list(models or self.profile.models)
        for pde in pdes:
            one_of(pde, PDE_CLASSES, "pdes")
        if not pdes or not models:
            raise InputError("pdes/models: at least one of each is needed")
        if max_lag < 0:
            raise InputError(f"max_lag: must be >= 0, got {max_lag}")
        if not callable(loader):
            raise InputError("loader: a callable (pde, model) -> sweep dataset is required, e.g. "
                             "pdeinf.pipeline.sweep_loader(profile)")
        super().__init__(loader, "pdeinf-figure")
        self.max_lag = max_lag
        self._analyses: dict = {}
        for name, options in (("pde", pdes), ("model", models), ("seed", [ALL_SEEDS]),
                              ("epoch", [0]), ("variant", ["gauss-newton"]),
                              ("normalization", list(co.NORMALIZATIONS))):
            setattr(self, name, self.dropdown(name, options))
        self.normalization.value = "standard"
        self.lag = W.IntSlider(value=0, min=-max_lag, max=max_lag, step=1, description="lag dt",
                               continuous_update=False, layout=W.Layout(width="450px"))
        self.lag.add_class("pdeinf-lag-slider")
        self.status.add_class("pdeinf-status")
        influence_box = W.VBox([W.VBox([W.HBox([self.pde, self.model, self.seed]),
                                        W.HBox([self.epoch, self.variant, self.normalization]),
                                        self.lag]),
                                self.image, self.status])
        self.symmetry = None
        self.widget = influence_box
        if symmetry_loader is not None:
            self.symmetry = SymmetryTab(symmetry_loader, pdes, models)
            self.widget = W.Tab(children=[influence_box, self.symmetry.widget],
                                titles=("influence", "symmetry"))
        self.widget.add_class("pdeinf-explorer")
        self.pde.observe(self._on_dataset_change, names="value")
        self.model.observe(self._on_dataset_change, names="value")
        for w in (self.seed, self.epoch, self.variant, self.normalization, self.lag):
            w.observe(self._on_view_change, names="value")
        self._on_dataset_change()

    def analyses(self, lag: int):
        """(horizon curve, heatmap, class matrix at `lag`) of the current selection, cached."""
        key = (self.pde.value, self.model.value, self.seed.value, self.epoch.value,
               self.variant.value, self.normalization.value)
        ds = self.dataset(key[0], key[1])
        kw = {"variant": key[4], "normalization": key[5], "epoch": key[3],
              "seeds": None if key[2] == ALL_SEEDS else [key[2]]}
        if key not in self._analyses:
            self._analyses[key] = {"curve": co.horizon_curve(ds, max_lag=self.max_lag, **kw),
                                   "heat": co.temporal_heatmap(ds, **kw), "class": {}}
        entry = self._analyses[key]
        if lag not in entry["class"]:
            entry["class"][lag] = co.class_matrix(ds, lag=lag, **kw)
        return entry["curve"], entry["heat"], entry["class"][lag]

    def _on_dataset_change(self, change=None):
        ds = self.dataset(self.pde.value, self.model.value)
        with self._quietly():
            self.seed.options = [ALL_SEEDS] + [int(s) for s in ds["seed"].values]
            self.seed.value = ALL_SEEDS
            self.epoch.options = sorted(int(e) for e in ds["epoch"].values)
            self.epoch.value = self.epoch.options[-1]
            names, current = co.variants(ds), self.variant.value
            self.variant.options = names
            self.variant.value = current if current in names else names[0]
            limit = min(self.max_lag, ds.sizes["t_resp"] - 1)
            self.lag.min, self.lag.max = -limit, limit
        self.render()

    def render(self) -> bytes:
        """Redraw the panel for the current selection; returns the PNG bytes shown."""
        lag = int(self.lag.value)
        curve, heat, cm = self.analyses(lag)
        title = (f"{self.pde.value} {self.model.value}, seed {self.seed.value}, "
                 f"epoch {self.epoch.value}, {self.variant.value} / {self.normalization.value}")
        self.image.value = self.png(vf.explorer_figure(curve, heat, cm, lag=lag, title=title))
        self.renders += 1
        if lag in curve["dt"].values:
            q = curve.sel(dt=lag, quantile=0.5)
            self.status.value = (f"lag {lag}: intra median {float(q.sel(pair='intra')):.3g}, "
                                 f"inter median {float(q.sel(pair='inter')):.3g}")
        return self.image.value

    def _repr_mimebundle_(self, **kwargs):
        return self.widget._repr_mimebundle_(**kwargs)


class SymmetryTab(_Tab):
    """The symmetry tab: PDE, model and group element dropdowns -> that element's per-example
    equivariance error and orbit-influence diagonal (`viz.symmetry.symmetry_panel_figure`), each
    study loaded and each panel drawn once. A loader with a `pairs` attribute limits the
    dropdowns to those pairs. CSS classes: "pdeinf-symmetry", "pdeinf-symmetry-figure",
    "pdeinf-sym-<name>" on the dropdowns (pde, model, element)."""

    css_prefix = "pdeinf-sym-"

    def __init__(self, loader: Callable, pdes, models):
        if not callable(loader):
            raise InputError("symmetry_loader: a callable (pde, model) -> symmetry study is required, "
                             "e.g. pdeinf.pipeline.symmetry.symmetry_loader(profile)")
        super().__init__(loader, "pdeinf-symmetry-figure")
        self._panels: dict = {}
        studied = getattr(loader, "pairs", None)
        held = None if studied is None else set(map(tuple, studied))
        self.pairs = [(p, m) for p in pdes for m in models if held is None or (p, m) in held]
        if not self.pairs:
            raise InputError(f"symmetry_loader: no symmetry study for any of the pairs of "
                             f"{list(pdes)} x {list(models)} (the loader holds {studied})")
        self.pde = self.dropdown("pde", list(dict.fromkeys(p for p, _ in self.pairs)))
        self.model = self.dropdown("model", self._models_of(self.pde.value))
        self.element = self.dropdown("element", [])
        self.widget = W.VBox([W.HBox([self.pde, self.model, self.element]), self.image, self.status])
        self.widget.add_class("pdeinf-symmetry")
        self.pde.observe(self._on_dataset_change, names="value")
        self.model.observe(self._on_dataset_change, names="value")
        self.element.observe(self._on_view_change, names="value")
        self._on_dataset_change()

    def _models_of(self, pde: str) -> list[str]:
        return [m for p, m in self.pairs if p == pde]

    def _on_dataset_change(self, change=None):
        if self._updating:
            return
        with self._quietly():  # only the models studied on this PDE: no study starts unasked
            models = self._models_of(self.pde.value)
            if list(self.model.options) != models:
                self.model.options = models
                self.model.value = models[0]
            labels = [str(e) for e in self.dataset(self.pde.value, self.model.value)["element"].values]
            current = self.element.value
            self.element.options = labels
            self.element.value = current if current in labels else labels[min(1, len(labels) - 1)]
        self.render()

    def numbers(self) -> dict:
        """Q3 (over seeds, batches, examples) of the selected element's equivariance ratio and
        the median of its orbit diagonal and of the identity's."""
        ds = self.dataset(self.pde.value, self.model.value)
        g = self.element.value
        return {"equivariance_q3": float(ds["equivariance"].sel(element=g).quantile(0.75)),
                "orbit_median": float(ds["orbit_diagonal"].sel(element=g).median()),
                "identity_median": float(ds["orbit_diagonal"].sel(element="e").median())}

    def render(self) -> bytes:
        from pdeinf.viz import symmetry as vs

        key = (self.pde.value, self.model.value, self.element.value)
        if key not in self._panels:
            self._panels[key] = self.png(vs.symmetry_panel_figure(
                self.dataset(*key[:2]), key[2], title=f"{key[0]} {key[1]}, g = {key[2]}"))
            self.renders += 1
        self.image.value = self._panels[key]
        n = self.numbers()
        self.status.value = (f"{key[2]}: equivariance Q3 {n['equivariance_q3']:.3g}, orbit diagonal "
                             f"median {n['orbit_median']:.3g} (identity {n['identity_median']:.3g})")
        return self.image.value


#: Build the explorer (see the module docstring and `Explorer`).
explorer = Explorer
