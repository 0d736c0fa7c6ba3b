"""The cached pipeline at the smoke profile: argument checks, outputs that agree with
independent recomputations, reruns that compute nothing, partial reruns that compute only
what is missing, and the `pdeinf reproduce` command line."""
from __future__ import annotations

import json
import os
from pathlib import Path

import nbformat
import numpy as np
import pytest
import torch

from pdeinf import paths, pipeline
from pdeinf.cli import main
from pdeinf.config import PDE_CLASSES, get_profile
from pdeinf.errors import InputError

SMOKE = get_profile("smoke")
PAIRS = [(pde, model) for pde in SMOKE.pdes for model in SMOKE.models]


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """``{relative path: (size, mtime_ns)}`` of every file under root."""
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if p.is_file()}


# ----------------------------------------------------------------------------- arguments

def test_profile_accepts_object_or_name():
    assert pipeline.as_profile("smoke") is SMOKE
    assert pipeline.as_profile(SMOKE) is SMOKE
    with pytest.raises(InputError, match="profile"):
        pipeline.as_profile("huge")
    with pytest.raises(InputError, match="profile"):
        pipeline.as_profile(3)


@pytest.mark.parametrize("call", [
    lambda: pipeline.ensure_training("smoke", "XX", "unet"),
    lambda: pipeline.ensure_training("smoke", "CE", "mlp"),
    lambda: pipeline.ensure_rollouts("smoke", "NS", "resnet"),
    lambda: pipeline.ensure_influence("nope", "CE", "unet"),
    lambda: pipeline.training_history("smoke", "ce", "unet"),
])
def test_bad_arguments_fail_fast(call, tmp_path, monkeypatch):
    monkeypatch.setenv("PDEINF_HOME", str(tmp_path))
    with pytest.raises(InputError):
        call()
    assert not (tmp_path / "results").exists(), "work started before the arguments were checked"


def _fake_notebooks(folder: Path, names) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        nb = nbformat.v4.new_notebook()
        nbformat.write(nb, folder / name)


def test_notebook_selection(tmp_path):
    names = ["01_data.ipynb", "02_heatmap.ipynb", "03_horizon.ipynb", "10_extra.ipynb",
             "scratch.ipynb", "4_bad.ipynb"]
    _fake_notebooks(tmp_path, names)
    every = pipeline.list_notebooks(source=tmp_path)
    assert [p.name for p in every] == ["01_data.ipynb", "02_heatmap.ipynb", "03_horizon.ipynb",
                                      "10_extra.ipynb"]
    chosen = pipeline.list_notebooks("03,01", source=tmp_path)
    assert [p.name for p in chosen] == ["01_data.ipynb", "03_horizon.ipynb"]
    chosen = pipeline.list_notebooks(["02_heatmap", "02"], source=tmp_path)
    assert [p.name for p in chosen] == ["02_heatmap.ipynb"]
    for bad in ("07", "03,99", " , "):
        with pytest.raises(InputError, match="notebooks"):
            pipeline.list_notebooks(bad, source=tmp_path)


def test_cli_rejects_unknown_notebook_before_work(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PDEINF_HOME", str(tmp_path))
    _fake_notebooks(tmp_path / "notebooks", ["01_data.ipynb"])
    assert main(["reproduce", "--profile", "smoke", "--notebooks", "42"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "notebooks" in err[0] and "42" in err[0]
    assert not (tmp_path / "results").exists()
    with pytest.raises(SystemExit) as exc:
        main(["reproduce", "--profile", "galactic"])
    assert exc.value.code == 2


# ----------------------------------------------------------------------------- notebooks

def _notebook(folder: Path, name: str, body: str) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    params = nbformat.v4.new_code_cell('profile = "quick"')
    params.metadata["tags"] = ["parameters"]
    nb.cells = [nbformat.v4.new_markdown_cell("# test"), params, nbformat.v4.new_code_cell(body)]
    folder.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, folder / name)
    return folder / name


def test_run_notebook_injects_profile_and_renames(tmp_path, monkeypatch):
    monkeypatch.setenv("PDEINF_HOME", str(tmp_path / "home"))
    body = ("import json, os\n"
            "from pdeinf import paths\n"
            "paths.results_dir().mkdir(parents=True, exist_ok=True)\n"
            "(paths.results_dir() / '01_echo.json').write_text(json.dumps(\n"
            "    {'profile': profile, 'cwd': os.getcwd(), 'mpl': os.environ.get('MPLBACKEND'),\n"
            "     'numbers': {'answer': 42.0}, 'figures': ['figures/none.png']}))\n"
            "paths.figures_dir(profile).mkdir(parents=True, exist_ok=True)\n"
            "for name in ('01_echo_plot.png', '01_echo_plot.pdf'):\n"
            "    (paths.figures_dir(profile) / name).write_bytes(b'figure')\n")
    nb_path = _notebook(tmp_path / "nbs", "01_echo.ipynb", body)
    executed = pipeline.run_notebook(nb_path, "smoke", progress=False, cache_key="k1")
    assert executed == tmp_path / "home" / "results" / "executed" / "01_echo.ipynb"
    out = nbformat.read(executed, as_version=4)
    injected = [c for c in out.cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert len(injected) == 1 and 'profile = "smoke"' in injected[0].source
    record = json.loads((tmp_path / "home" / "results" / "01_echo.json").read_text())
    assert record["profile"] == "smoke"
    assert Path(record["cwd"]).resolve() == (tmp_path / "nbs").resolve()
    assert record["mpl"] and record["mpl"].lower() == "agg"
    # the closing table takes the figures from the profile's figures folder, not the results JSON
    figure = paths.figures_dir("smoke") / "01_echo_plot.png"
    summary = pipeline.summarize_notebook(nb_path, profile="smoke")
    assert summary["figures"] == [str(figure)]
    assert summary["numbers"] == {} and summary["results"] is None  # no findings table yet
    # the executed copy records its figures: current until one of them is gone
    from pdeinf.pipeline.notebooks import _executed_is_current

    assert out.metadata["pdeinf"] == {"cache_key": "k1", "figures": [str(figure)]}
    assert _executed_is_current(nb_path, "k1") and not _executed_is_current(nb_path, "k2")
    figure.unlink()
    assert not _executed_is_current(nb_path, "k1")
    leftovers = [p.name for p in executed.parent.iterdir() if p.name != "01_echo.ipynb"]
    assert leftovers == []


def test_closing_table_numbers_come_from_the_findings_table(tmp_path, monkeypatch):
    from pdeinf.pipeline.findings import findings_path

    monkeypatch.setenv("PDEINF_HOME", str(tmp_path / "home"))
    nb_path = _notebook(tmp_path / "nbs", "09_link.ipynb", "pass")
    figures = paths.figures_dir("smoke")
    figures.mkdir(parents=True)
    for name in ("09_link_CE.pdf", "09_link_CE.png", "09_link_NS.png", "10_other.png",
                 "findings_smoke.md"):
        (figures / name).write_bytes(b"figure")
    results = paths.results_dir() / "09_link.json"  # the notebook's own output: never read
    results.write_text(json.dumps({"numbers": {"answer": 42.0}, "figures": ["x.png"]}))

    def row(notebook, estimate, **extra):
        return {"finding": "rollout_link_negative", "notebook": notebook, "pde": "CE",
                "model": "unet", "estimate": estimate, "verdict": "inconclusive", **extra}

    rows = [row("09_link", -0.5, dt=1), row("03_other", 7.0), row("09_link", None, dt=4),
            row("09_link", -0.25, dt=16), row("09_link", 0.5, cls="all", recipe="augment"),
            row("09_link", 0.125, cls="CE-RP", dt=2)]
    findings_path("smoke").write_text(json.dumps({"findings": rows}))
    summary = pipeline.summarize_notebook(nb_path, profile="smoke", max_numbers=3)
    assert summary["figures"] == [str(figures / "09_link_CE.png"), str(figures / "09_link_NS.png")]
    assert summary["numbers"] == {"rollout_link_negative CE-unet dt=1": -0.5,
                                  "rollout_link_negative CE-unet dt=16": -0.25,
                                  "rollout_link_negative CE-unet recipe=augment": 0.5}
    assert summary["results"] == str(findings_path("smoke"))
    other = pipeline.summarize_notebook(tmp_path / "nbs" / "10_other.ipynb", profile="smoke")
    assert other["figures"] == [str(figures / "10_other.png")]
    assert other["numbers"] == {} and other["results"] is None
    (figures / "09_link_CE.png").unlink()
    (figures / "09_link_NS.png").unlink()
    assert pipeline.summarize_notebook(nb_path, profile="smoke")["figures"] == [
        str(figures / "09_link_CE.pdf")]  # no PNG: the other formats


def test_failing_notebook_leaves_no_final_copy(tmp_path, monkeypatch):
    monkeypatch.setenv("PDEINF_HOME", str(tmp_path / "home"))
    nb_path = _notebook(tmp_path / "nbs", "02_boom.ipynb", "raise RuntimeError('boom')")
    with pytest.raises(Exception, match="boom"):
        pipeline.run_notebook(nb_path, "smoke", progress=False)
    executed = tmp_path / "home" / "results" / "executed"
    assert not (executed / "02_boom.ipynb").exists()
    assert sorted(p.name for p in executed.iterdir()) == ["02_boom.failed.ipynb"]


def test_report_table_lists_figures_numbers_and_times():
    report = pipeline.ReproduceReport("smoke", timings=[pipeline.StageTiming("data", 1.25)])
    report.notebooks.append({"notebook": "03_classes", "status": "ok", "seconds": 2.0,
                             "figures": ["figures/classes.png"], "numbers": {"diag": 4.5},
                             "verdicts": {"inconclusive": 1, "reproduced": 3}})
    report.notebooks.append({"notebook": "04_x", "status": "failed", "seconds": 0.5,
                             "error": "ValueError: bad", "figures": [], "numbers": {}})
    text = pipeline.format_report(report)
    assert "data" in text and "1.2" in text
    assert "figures/classes.png" in text and "diag=4.5" in text
    assert "findings 1 inconclusive, 3 reproduced" in text
    assert "[failed]" in text and "ValueError: bad" in text
    assert [nb["notebook"] for nb in report.failed] == ["04_x"]


def test_batched_rollouts_equal_one_start_at_a_time():
    """Windows of all starts in one batch (end-padded) give exactly the per-start rollouts."""
    from pdeinf.training.rollout import rollout_errors, rollouts_all_starts

    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(2, 4, 3, padding=1, padding_mode="circular"), torch.nn.Tanh(),
        torch.nn.Conv2d(4, 2, 3, padding=1, padding_mode="circular"),
    ).double()
    rng = np.random.default_rng(1)
    trajs = {"a": rng.normal(size=(3, 6, 2, 8, 8)), "b": rng.normal(size=(3, 6, 2, 8, 8))}
    reference = rollout_errors(net, trajs)
    for max_batch in (64, 7):  # one chunk, and several chunks of trajectories
        batched = rollouts_all_starts(net, trajs, max_batch=max_batch)
        assert batched.dims == reference.dims
        for dim in reference.dims:
            assert batched[dim].values.tolist() == reference[dim].values.tolist()
        np.testing.assert_allclose(batched.values, reference.values, rtol=1e-12, atol=0)
    assert np.isnan(reference.values[:, :, 4, 1:]).all() and np.isfinite(reference.values[:, :, 4, 0]).all()


# ----------------------------------------------------------------------------- smoke pipeline

@pytest.mark.slow
def test_training_history_matches_checkpoint(smoke_home):
    from pdeinf.data.datasets import PDEData
    from pdeinf.training.loss import smse
    from pdeinf.training.train import load_checkpoint

    for pde, model in PAIRS:
        hist = pipeline.training_history(SMOKE, pde, model)
        assert list(hist.columns) == ["seed", "epoch", "train_loss", "val_loss"]
        epochs = SMOKE.epochs[pde]
        for seed in SMOKE.seeds:
            rows = hist[hist.seed == seed]
            assert rows.epoch.tolist() == list(range(1, epochs + 1))
            assert np.isfinite(rows.train_loss).all() and (rows.train_loss > 0).all()
        # the recorded validation loss is the final model's mean SMSE on validation pairs
        seed = SMOKE.seeds[0]
        net, _ = load_checkpoint(pipeline.checkpoint_path(SMOKE, pde, model, seed, epochs))
        data = PDEData(paths.data_dir("smoke"), pde, t_max=SMOKE.t_max)
        losses = []
        for cls in PDE_CLASSES[pde]:
            traj = torch.from_numpy(data.trajectories(cls, "val", seed))
            if len(traj) == 0:
                continue
            x, y = traj[:, :-1].flatten(0, 1), traj[:, 1:].flatten(0, 1)
            with torch.no_grad():
                losses.append(smse(net(x), y).double())
        if losses:
            expected = torch.cat(losses).mean().item()
            last = hist[(hist.seed == seed) & (hist.epoch == epochs)].val_loss.item()
            assert last == pytest.approx(expected, rel=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("pde,model", PAIRS)
def test_rollouts_agree_with_independent_rollout(smoke_home, pde, model):
    """Shape/labels of the cached rollouts, and every entry of one trajectory recomputed
    by feeding the final model its own predictions."""
    from pdeinf.data.datasets import PDEData
    from pdeinf.training.loss import smse
    from pdeinf.training.train import load_checkpoint

    da = pipeline.ensure_rollouts(SMOKE, pde, model, progress=False)
    assert da.dims == ("seed", "class", "trajectory", "start", "horizon")
    assert da["seed"].values.tolist() == list(SMOKE.seeds)
    assert da["class"].values.tolist() == list(PDE_CLASSES[pde])
    assert da.sizes["trajectory"] == SMOKE.n_influence_batches
    steps = SMOKE.t_max - 1
    assert da["start"].values.tolist() == list(range(steps))
    assert da["horizon"].values.tolist() == list(range(1, steps + 1))
    valid = np.array([[s + h <= steps for h in range(1, steps + 1)] for s in range(steps)])
    values = da.values
    assert np.isfinite(values[..., valid]).all() and (values[..., valid] >= 0).all()
    assert np.isnan(values[..., ~valid]).all()

    seed, c = SMOKE.seeds[-1], len(PDE_CLASSES[pde]) - 1
    cls, b = PDE_CLASSES[pde][c], SMOKE.n_influence_batches - 1
    net, _ = load_checkpoint(pipeline.checkpoint_path(SMOKE, pde, model, seed, SMOKE.epochs[pde]))
    data = PDEData(paths.data_dir("smoke"), pde, t_max=SMOKE.t_max)
    traj = torch.from_numpy(data.trajectories(cls, "test", seed)[b])
    for start in (0, steps // 2):
        state, errs = traj[start : start + 1], []
        with torch.no_grad():
            for h in range(1, steps - start + 1):
                state = net(state)
                errs.append(smse(state, traj[start + h : start + h + 1]).item())
        got = da.sel(seed=seed, trajectory=b, start=start).sel({"class": cls}).values[: len(errs)]
        # float32: the batched and the one-at-a-time forward passes round differently, and an
        # autoregressive rollout amplifies that step by step; the first steps agree tightly
        np.testing.assert_allclose(got[:3], errs[:3], rtol=1e-4, atol=1e-7)
        np.testing.assert_allclose(got, errs, rtol=2e-2, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("pde,model", PAIRS)
def test_influence_covers_profile_and_matches_rollout_losses(smoke_home, pde, model):
    """The sweep holds every (seed, checkpoint, batch); Pi of each is symmetric positive
    semi-definite; and the one-step losses of influence batch b at the final checkpoint are
    the horizon-1 rollout errors of test trajectory b (same trajectories, same model)."""
    ds = pipeline.ensure_influence(SMOKE, pde, model, progress=False)
    assert set(ds["seed"].values.tolist()) >= set(SMOKE.seeds)
    assert set(ds["epoch"].values.tolist()) >= set(SMOKE.checkpoints[pde])
    assert set(ds["batch"].values.tolist()) >= set(range(SMOKE.n_influence_batches))
    for metric in ("gauss-newton", "euclidean"):  # G^T eta^-1 G and G^T G: symmetric PSD
        one = pipeline.ensure_influence(SMOKE, pde, model, metric=metric, progress=False)
        assert "variant" not in one["pi"].dims and one.attrs["metric"] == metric
        pi = one["pi"].transpose("seed", "epoch", "batch", "t_resp", "c_resp", "t_pert", "c_pert")
        n = pi.sizes["t_resp"] * pi.sizes["c_resp"]
        mats = pi.values.reshape(-1, n, n)
        assert np.isfinite(mats).all()
        for m in mats:
            scale = np.abs(m).max()
            np.testing.assert_allclose(m, m.T, atol=1e-6 * scale)
            assert np.linalg.eigvalsh(0.5 * (m + m.T)).min() >= -1e-5 * scale
    with pytest.raises(InputError, match="metric"):
        pipeline.ensure_influence(SMOKE, pde, model, metric="fisher", progress=False)

    final = SMOKE.epochs[pde]
    rollouts = pipeline.ensure_rollouts(SMOKE, pde, model, progress=False)
    losses = ds["losses"].sel(epoch=final)
    t_dim = next(d for d in losses.dims if d.startswith("t"))
    c_dim = next(d for d in losses.dims if d.startswith("c"))
    for seed in SMOKE.seeds:
        for b in range(SMOKE.n_influence_batches):
            got = losses.sel(seed=seed, batch=b).transpose(t_dim, c_dim).values
            ref = rollouts.sel(seed=seed, trajectory=b, horizon=1).transpose("start", "class")
            np.testing.assert_allclose(got, ref.values, rtol=1e-4, atol=1e-7)


@pytest.mark.slow
def test_rerun_computes_nothing(smoke_home):
    before = _snapshot(paths.results_dir())
    timings = pipeline.run_all(SMOKE, progress=False)
    assert _snapshot(paths.results_dir()) == before
    assert timings[0].stage == "data"
    stages = [t.name for t in pipeline.stage_tasks(SMOKE)]
    assert sorted(t.stage for t in timings) == sorted(stages)
    assert all(t.status == "ok" for t in timings)
    n_symmetry = len(SMOKE.pairs(SMOKE.symmetry_pairs))
    per_pair = {"training", "influence", "seed-paper influence", "rollouts"}
    assert sum(s.rsplit(" ", 1)[0] in per_pair for s in stages) == 4 * len(PAIRS)
    assert sum(s.startswith("symmetry ") for s in stages) == n_symmetry


@pytest.mark.slow
def test_missing_or_stale_rollouts_are_recomputed_alone(smoke_home):
    pde, model = PAIRS[0]
    path = pipeline.rollouts_path(SMOKE, pde, model)
    reference = pipeline.ensure_rollouts(SMOKE, pde, model, progress=False).copy(deep=True)
    path.unlink()
    before = _snapshot(paths.results_dir())
    again = pipeline.ensure_rollouts(SMOKE, pde, model, progress=False)
    after = _snapshot(paths.results_dir())
    assert set(after) - set(before) == {str(path.relative_to(paths.results_dir()))}
    assert all(after[k] == v for k, v in before.items())
    np.testing.assert_array_equal(again.values, reference.values)  # deterministic on CPU

    # a file from another configuration (cache key mismatch) is not trusted
    stale = reference.copy()
    stale.attrs["cache_key"] = "0" * 64
    stale.values[:] = 123.0
    stale.to_netcdf(path, engine="h5netcdf")
    fresh = pipeline.ensure_rollouts(SMOKE, pde, model, progress=False)
    np.testing.assert_array_equal(fresh.values, reference.values)

    # an unreadable file is recomputed too
    path.write_bytes(b"not a netcdf file")
    fresh = pipeline.ensure_rollouts(SMOKE, pde, model, progress=False)
    np.testing.assert_array_equal(fresh.values, reference.values)
    assert not list(path.parent.glob(".*.tmp"))


@pytest.mark.slow
def test_cli_only_pipeline(smoke_home, capsys):
    before = _snapshot(paths.results_dir() / "runs")
    assert main(["reproduce", "--profile", "smoke", "--only-pipeline", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "stage timings" in out and "rollouts CE-unet" in out and "total" in out
    summary = json.loads((paths.results_dir() / "reproduce_smoke.json").read_text())
    assert summary["profile"] == "smoke" and summary["notebooks"] == []
    assert {t["stage"] for t in summary["timings"]} >= {"data", "influence NS-vit"}
    assert _snapshot(paths.results_dir() / "runs") == before
    assert os.environ["PDEINF_HOME"] == str(smoke_home)


@pytest.mark.slow
def test_seed_paper_subspace_matrices_are_the_sweeps_of_the_same_batches(smoke_home):
    """With the subspace estimator, the seed-paper C / M / E matrices of a batch the follow-up
    sweep also holds are its Gauss-Newton SMSE / mass / energy variants (reused, not recomputed)."""
    assert SMOKE.seed_paper_estimator == "subspace"
    pde = "CE"
    model = next(m for p, m in PAIRS if p == pde)
    final = max(SMOKE.checkpoints[pde])
    seed_paper = pipeline.ensure_seed_paper(SMOKE, pde, model, progress=False)
    sweep = pipeline.ensure_influence(SMOKE, pde, model, progress=False)
    for bra, variant in (("C", "gauss-newton"), ("M", "gn-mass"), ("E", "gn-energy")):
        for seed in SMOKE.seeds:
            held = seed_paper["H"].sel(bra=bra, seed=seed, batch=0)
            swept = sweep["pi"].sel(variant=variant, seed=seed, epoch=final, batch=0)
            np.testing.assert_array_equal(held.transpose(*swept.dims).values, swept.values)
