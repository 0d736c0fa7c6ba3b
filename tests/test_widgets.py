"""The explorer's callbacks, driven from Python (no front-end): what changes, what is cached."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest
from test_analysis import make_sweep

from pdeinf import widgets
from pdeinf.analysis import coherence as co
from pdeinf.errors import InputError


@pytest.fixture()
def loader(monkeypatch):
    calls = []
    sweeps = {"CE": make_sweep(noise=0.8, inter=0.3, rng_seed=5),
              "NS": make_sweep(noise=0.4, inter=0.1, rng_seed=6, seeds=(42,), epochs=(1, 10))}

    def load(pde, model):
        calls.append((pde, model))
        return sweeps[pde]

    load.calls = calls

    # the explorer must never reach the influence engine or the pipeline
    def forbidden(*args, **kwargs):
        raise AssertionError("the explorer recomputed influence")

    from pdeinf import influence, pipeline

    monkeypatch.setattr(pipeline, "ensure_influence", forbidden, raising=False)
    monkeypatch.setattr(influence, "hat_matrix", forbidden, raising=False)
    return load


def make(loader):
    return widgets.explorer("smoke", pdes=["CE", "NS"], models=["unet", "vit"], loader=loader)


def test_slider_and_variant_change_the_image(loader):
    ex = make(loader)
    first = ex.image.value
    assert first[:8] == b"\x89PNG\r\n\x1a\n"
    ex.lag.value = 3
    after_lag = ex.image.value
    assert after_lag != first
    ex.variant.value = "euclidean"
    after_variant = ex.image.value
    assert after_variant != after_lag
    ex.normalization.value = "cosine"
    assert ex.image.value != after_variant
    assert "lag 3" in ex.status.value


def test_loads_once_per_pde_model_and_caches_analyses(loader, monkeypatch):
    counted = []
    original = co.normalized_pi

    def counting(*args, **kwargs):
        counted.append(kwargs.get("normalization"))
        return original(*args, **kwargs)

    monkeypatch.setattr(co, "normalized_pi", counting)
    ex = make(loader)
    assert loader.calls == [("CE", "unet")]
    n_initial = len(counted)  # horizon curve + heatmap + class matrix at lag 0
    for lag in (1, 2, 1, 0, 2):
        ex.lag.value = lag
    # new lags need only their class matrix (1 and 2); revisits use the cache
    assert len(counted) == n_initial + 2
    ex.pde.value = "NS"
    ex.pde.value = "CE"
    ex.model.value = "vit"
    ex.model.value = "unet"
    assert loader.calls == [("CE", "unet"), ("NS", "unet"), ("CE", "vit")]


def test_dropdowns_follow_the_dataset(loader):
    ex = make(loader)
    assert ex.seed.options == ("all", 10, 35)
    assert ex.epoch.options == (1, 5) and ex.epoch.value == 5
    assert set(ex.variant.options) == {"gauss-newton", "euclidean"}
    ex.pde.value = "NS"
    assert ex.seed.options == ("all", 42)
    assert ex.epoch.value == 10
    before = ex.image.value
    ex.epoch.value = 1
    assert ex.image.value != before


def test_seed_selection_uses_only_that_seed(loader):
    ex = make(loader)
    ex.seed.value = 35
    _, heat, _ = ex.analyses(0)
    ds = loader("CE", "unet")
    expected = co.temporal_heatmap(ds, seeds=[35])
    np.testing.assert_array_equal(heat.values, expected.values)
    assert not np.array_equal(heat.values, co.temporal_heatmap(ds).values)


def test_dom_classes_and_descriptions_for_browser_tests(loader):
    ex = make(loader)
    assert "pdeinf-explorer" in ex.widget._dom_classes
    assert "pdeinf-lag-slider" in ex.lag._dom_classes
    assert "pdeinf-figure" in ex.image._dom_classes
    assert [w.description for w in (ex.pde, ex.model, ex.seed, ex.epoch, ex.variant,
                                    ex.normalization, ex.lag)] == [
        "PDE", "model", "seed", "epoch", "variant", "normalization", "lag dt"]
    assert (ex.lag.min, ex.lag.max) == (-11, 11)
    assert "application/vnd.jupyter.widget-view+json" in ex._repr_mimebundle_()


def test_bad_arguments(loader):
    with pytest.raises(InputError, match="pdes"):
        widgets.explorer("smoke", pdes=["XX"], loader=loader)
    with pytest.raises(InputError, match="max_lag"):
        widgets.explorer("smoke", loader=loader, max_lag=-1)


# --------------------------------------------------------------------------- symmetry tab


@pytest.fixture()
def sym_loader():
    from test_symmetry_study import _synthetic

    calls = []
    studies = {"CE": _synthetic(rng_seed=1), "NS": _synthetic(rng_seed=2)}

    def load(pde, model):
        calls.append((pde, model))
        return studies[pde]

    load.calls = calls
    return load


def test_symmetry_tab_element_selector_redraws_and_caches(loader, sym_loader):
    ex = widgets.explorer("smoke", pdes=["CE", "NS"], models=["unet", "vit"], loader=loader,
                          symmetry_loader=sym_loader)
    tab = ex.symmetry
    assert isinstance(ex.widget, widgets.W.Tab) and "pdeinf-explorer" in ex.widget._dom_classes
    assert ex.widget.children[0].children[1] is ex.image  # the influence tab is unchanged
    assert tab.element.options[0] == "e" and tab.element.value == "r"
    first = tab.image.value
    assert first[:8] == b"\x89PNG\r\n\x1a\n"
    tab.element.value = "shift(1,0)"
    assert tab.image.value != first
    assert tab.status.value.startswith("shift(1,0): equivariance Q3")
    ds = sym_loader("CE", "unet")
    n = tab.numbers()
    assert n["equivariance_q3"] == pytest.approx(float(ds["equivariance"].sel(element="shift(1,0)").quantile(0.75)))
    assert n["orbit_median"] == pytest.approx(float(ds["orbit_diagonal"].sel(element="shift(1,0)").median()))
    renders = tab.renders
    tab.element.value = "r"
    assert tab.image.value == first and tab.renders == renders  # drawn once, kept
    tab.pde.value = "NS"
    assert tab.element.value == "r" and tab.image.value != first
    tab.pde.value = "CE"
    assert sym_loader.calls.count(("CE", "unet")) == 2  # one by the tab, one by this test


def test_symmetry_tab_is_optional_and_needs_a_callable(loader):
    ex = make(loader)
    assert ex.symmetry is None and isinstance(ex.widget, widgets.W.VBox)
    with pytest.raises(InputError, match="symmetry_loader"):
        widgets.explorer("smoke", loader=loader, symmetry_loader="nope")


def test_symmetry_tab_offers_only_the_studied_pairs(loader, sym_loader):
    """A loader that names its pairs (as `pipeline.symmetry.symmetry_loader` does) limits the
    dropdowns to them: the tab never asks for a study the profile does not hold."""
    sym_loader.pairs = [("CE", "vit"), ("NS", "vit")]
    ex = widgets.explorer("smoke", pdes=["CE", "NS"], models=["unet", "vit"], loader=loader,
                          symmetry_loader=sym_loader)
    tab = ex.symmetry
    assert list(tab.pde.options) == ["CE", "NS"] and list(tab.model.options) == ["vit"]
    tab.pde.value = "NS"
    assert tab.model.value == "vit" and tab.image.value[:8] == b"\x89PNG\r\n\x1a\n"
    assert set(sym_loader.calls) == {("CE", "vit"), ("NS", "vit")}
    sym_loader.pairs = [("NS", "unet")]
    with pytest.raises(InputError, match="no symmetry study"):
        widgets.explorer("smoke", pdes=["CE"], models=["vit"], loader=loader,
                         symmetry_loader=sym_loader)


def test_pipeline_symmetry_loader_names_the_profiles_pairs():
    from pdeinf.config import get_profile
    from pdeinf.pipeline.symmetry import symmetry_loader

    prof = get_profile("faithful")
    assert symmetry_loader(prof).pairs == [tuple(p) for p in prof.symmetry_pairs]
