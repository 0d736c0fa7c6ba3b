"""The stage scheduler: dependencies honoured in this process and across worker processes, a
failure skips only what depends on it, a bad graph is refused before anything runs."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from pdeinf.errors import InputError
from pdeinf.pipeline.schedule import (
    Task,
    check_graph,
    critical_path_order,
    default_workers,
    run_tasks,
)


def _stamp(folder: str, name: str, seconds: float = 0.0) -> None:
    """A task: sleep, then write when it started and ended and in which process."""
    start = time.monotonic()
    time.sleep(seconds)
    record = {"start": start, "end": time.monotonic(), "pid": os.getpid()}
    Path(folder, f"{name}.json").write_text(json.dumps(record))


def _fail(folder: str, name: str) -> None:
    raise RuntimeError(f"task {name} failed on purpose")


def _graph(folder: Path, *, fail: str | None = None, seconds: float = 0.0) -> list[Task]:
    """a -> (b, c) -> d, and e independent of all; `fail` names a task that raises."""
    spec = {"a": (), "b": ("a",), "c": ("a",), "d": ("b", "c"), "e": ()}
    return [Task(name, _fail if name == fail else _stamp, (str(folder), name),
                 {} if name == fail else {"seconds": seconds}, after)
            for name, after in spec.items()]


def _records(folder: Path) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in folder.glob("*.json")}


def _assert_order(tasks: list[Task], records: dict[str, dict]) -> None:
    for task in tasks:
        for before in task.after:
            assert records[before]["end"] <= records[task.name]["start"], (before, task.name)


@pytest.mark.parametrize("workers", [1, 2])
def test_every_task_runs_once_after_its_dependencies(tmp_path, workers):
    tasks = _graph(tmp_path, seconds=0.05)
    results = run_tasks(tasks, workers=workers, echo=False)
    assert sorted(r.name for r in results) == sorted(t.name for t in tasks)
    assert all(r.status == "ok" and r.seconds >= 0.0 for r in results)
    records = _records(tmp_path)
    assert set(records) == {t.name for t in tasks}
    _assert_order(tasks, records)
    pids = {r["pid"] for r in records.values()}
    if workers == 1:
        assert pids == {os.getpid()}
    else:
        assert os.getpid() not in pids


@pytest.mark.parametrize("workers", [1, 2])
def test_a_failure_skips_only_its_dependents(tmp_path, workers):
    tasks = _graph(tmp_path, fail="b")
    outcome = {}
    with pytest.raises(RuntimeError, match="task b failed on purpose"):
        run_tasks(tasks, workers=workers, echo=False,
                  on_result=lambda r: outcome.__setitem__(r.name, r.status))
    assert outcome == {"a": "ok", "b": "failed", "c": "ok", "d": "skipped", "e": "ok"}
    assert set(_records(tmp_path)) == {"a", "c", "e"}  # d never started


def _longest_path(name: str, tasks: list[Task], seconds: dict[str, float]) -> float:
    """The longest sum of `seconds` over every path from `name` to the graph's end, by
    enumerating the paths."""
    later = [t.name for t in tasks if name in t.after]
    return seconds.get(name, 0.0) + max((_longest_path(n, tasks, seconds) for n in later), default=0.0)


def test_critical_path_order_starts_the_longest_chain_first(tmp_path):
    """a -> (b, c) -> d, e alone, and a chain f -> g listed last: sorted by the longest path
    each heads (enumerated), ties in list order; a graph error is refused as by `run_tasks`."""
    tasks = _graph(tmp_path) + [Task("f", _stamp, (), {}, ()), Task("g", _stamp, (), {}, ("f",))]
    seconds = {"a": 1.0, "b": 5.0, "c": 2.0, "d": 1.0, "e": 3.0, "f": 4.0, "g": 4.0}
    order = [t.name for t in critical_path_order(tasks, seconds)]
    chains = {t.name: _longest_path(t.name, tasks, seconds) for t in tasks}
    assert order[0] == "f" and chains["f"] == 8.0 > chains["a"] == 7.0
    assert [chains[n] for n in order] == sorted(chains.values(), reverse=True)
    assert order.index("c") < order.index("e")  # both head 3 s: list order
    unestimated = [t.name for t in critical_path_order(tasks, {})]
    assert unestimated == [t.name for t in tasks]  # no estimate: the list's order
    with pytest.raises(InputError, match="unknown task"):
        critical_path_order([Task("x", _stamp, (), {}, ("y",))], {})


def test_bad_graphs_are_refused_before_anything_runs(tmp_path):
    def task(name, *after):
        return Task(name, _stamp, (str(tmp_path), name), {}, after)

    with pytest.raises(InputError, match="duplicate"):
        check_graph([task("a"), task("a")])
    with pytest.raises(InputError, match="unknown task"):
        run_tasks([task("a", "z")], echo=False)
    with pytest.raises(InputError, match="cycle"):
        run_tasks([task("e"), task("a", "b"), task("b", "a")], echo=False)
    with pytest.raises(InputError, match="workers"):
        run_tasks([task("e")], workers=0, echo=False)
    assert not list(tmp_path.iterdir())


def test_workers_from_the_environment(monkeypatch):
    monkeypatch.setenv("PDEINF_WORKERS", "3")
    assert default_workers() == 3
    monkeypatch.setenv("PDEINF_WORKERS", "none")
    with pytest.raises(InputError, match="PDEINF_WORKERS"):
        default_workers()
    monkeypatch.delenv("PDEINF_WORKERS")
    assert 1 <= default_workers() <= 2


def test_an_exclusive_task_runs_here_and_alone(tmp_path):
    tasks = _graph(tmp_path, seconds=0.05)
    tasks = [Task(t.name, t.fn, t.args, t.kwargs, t.after, exclusive=t.name == "c") for t in tasks]
    run_tasks(tasks, workers=2, echo=False)
    records = _records(tmp_path)
    _assert_order(tasks, records)
    alone = records.pop("c")
    assert alone["pid"] == os.getpid()
    for other in records.values():  # no other task overlaps it in time
        assert other["end"] <= alone["start"] or other["start"] >= alone["end"]


def test_faithful_graph_runs_each_recipe_study_as_soon_as_its_runs_exist():
    """The uncut faithful profile's interventions: one stage per recipe after that recipe's training
    and the baseline's sweep and rollouts; augment-vs-one-step orbit influence after both
    trainings and the symmetry stage whose files it reuses; the pair's study after all of them.
    The seed paper's full-space stages need only the runs and come before the sweeps; at the
    subspace estimator (quick) they read the sweep."""
    from pdeinf.config import get_profile
    from pdeinf.pipeline import stage_tasks

    prof = get_profile("faithful-full")
    order = [t.name for t in stage_tasks(prof, progress=False)]
    tasks = {t.name: set(t.after) for t in stage_tasks(prof, progress=False)}
    check_graph(list(stage_tasks(prof, progress=False)))
    for pair in ("CE-unet", "NS-vit"):
        assert tasks[f"seed-paper influence {pair}"] == {f"training {pair}"}
        assert order.index(f"seed-paper influence {pair}") < order.index(f"influence {pair}")
    quick = {t.name: set(t.after) for t in stage_tasks(get_profile("quick"), progress=False)}
    assert quick["seed-paper influence CE-unet"] == {"influence CE-unet"}
    pair = "CE-vit"
    base = {f"training {pair}", f"influence {pair}", f"rollouts {pair}"}
    for recipe in prof.recipes:
        own = set() if recipe == "one-step" else {f"training {recipe} {pair}"}
        assert tasks[f"interventions {recipe} {pair}"] == own | base
    assert tasks[f"interventions orbit {pair}"] == {
        f"training {pair}", f"training augment {pair}", f"symmetry {pair}"}
    assert tasks[f"interventions {pair}"] == {
        f"interventions {r} {pair}" for r in prof.recipes} | {f"interventions orbit {pair}"}


def test_eta_scales_the_estimates_by_the_measured_stages():
    from pdeinf.pipeline.schedule import EtaClock, format_duration

    clock = EtaClock({"a": 10.0, "b": 20.0, "c": 30.0, "d": 40.0}, workers=2)
    assert clock.seconds_left() == pytest.approx(100.0 / 2)  # no stage measured: scale 1
    clock.finish("a", 0.01)  # cached: does not rescale
    assert clock.computed == {} and clock.seconds_left() == pytest.approx(90.0 / 2)
    slow = EtaClock({"cached": 1000.0, "other": 1000.0})
    slow.finish("cached", 1.1)  # a cached stage that took a second to verify its files
    assert slow.computed == {}
    low = EtaClock({"cached": 100.0, "other": 1000.0})
    low.finish("cached", 9.0)  # many files verified against an estimate far too low
    assert low.computed == {} and low.seconds_left() == pytest.approx(1000.0)
    laws = {"a": "training", "b": "training", "c": "training", "d": "influence"}
    clock = EtaClock({"a": 10.0, "b": 20.0, "c": 30.0, "d": 40.0}, workers=2, laws=laws)
    clock.finish("a", 30.0)
    clock.finish("b", 60.0)  # the training law took 3x its estimates (90 s for 30 s)
    assert clock.scale_of("c") == pytest.approx(3.0) and clock.scale_of("d") == 1.0
    assert clock.seconds_left() == pytest.approx((3.0 * 30.0 + 40.0) / 2)
    assert clock.line() == "2/4 stages · ETA 1 min 5 s"
    assert format_duration(3 * 3600 + 12 * 60 + 5) == "3 h 12 min"
    assert format_duration(4.4) == "4 s"


def test_eta_runs_an_exclusive_stage_alone():
    """An exclusive stage holds every worker: its time is not shared among them."""
    from pdeinf.pipeline.schedule import EtaClock

    clock = EtaClock({"data": 100.0, "a": 60.0, "b": 60.0}, workers=2, exclusive={"data"})
    assert clock.seconds_left() == pytest.approx(100.0 + 120.0 / 2)
    clock.finish("data", 50.0)  # the data law's half does not rescale the others
    assert clock.seconds_left() == pytest.approx(60.0)


def test_run_tasks_prints_the_eta_after_each_stage(tmp_path, capsys):
    from pdeinf.pipeline.schedule import EtaClock

    tasks = _graph(tmp_path)
    clock = EtaClock({t.name: 1.0 for t in tasks}, workers=1)
    run_tasks(tasks, workers=1, echo=True, eta=clock)
    lines = [l for l in capsys.readouterr().err.splitlines() if " s ok" in l or "· ETA" in l]
    assert lines[-1].endswith("5/5 stages · ETA 0 s")
    assert all("· ETA" in l for l in lines)


def test_stage_eta_counts_each_task_on_its_own_threads(monkeypatch):
    """The planner's seconds use every core; a task runs on `task_threads()` of them."""
    import os
    from types import SimpleNamespace

    from pdeinf.pipeline import planner
    from pdeinf.pipeline.reproduce import stage_eta

    stages = [SimpleNamespace(stage="a", seconds=10.0), SimpleNamespace(stage="b", seconds=30.0),
              SimpleNamespace(stage="data", seconds=50.0)]
    monkeypatch.setattr(planner, "plan", lambda profile, notebooks: {"stages": stages})
    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    monkeypatch.setenv("PDEINF_TASK_THREADS", "1")
    clock = stage_eta("smoke", workers=2)
    # the data stage is exclusive: alone on every core, as the planner timed it
    assert clock.estimates == {"a": 40.0, "b": 120.0, "data": 50.0} and clock.exclusive == {"data"}
    assert clock.laws["data"] == "data" and clock.seconds_left() == 50.0 + 80.0
    monkeypatch.setenv("PDEINF_TASK_THREADS", "0")  # tasks keep the process's threads: all cores
    assert stage_eta("smoke", workers=1).estimates == {"a": 10.0, "b": 30.0, "data": 50.0}


def test_stage_eta_expects_the_last_runs_current_stages(monkeypatch, tmp_path):
    """A stage that ended ok in the last run under the key it has now is estimated at its time
    then, or at `CURRENT_SECONDS` if it was computed then, as a kind of its own; a changed key,
    a failure or no readable last run leave the planner's estimate."""
    from types import SimpleNamespace

    from pdeinf.config import get_profile
    from pdeinf.pipeline import planner
    from pdeinf.pipeline.reproduce import CURRENT_SECONDS, stage_eta, stage_tasks
    from pdeinf.pipeline.slurm import stage_keys

    monkeypatch.setenv("PDEINF_HOME", str(tmp_path))
    monkeypatch.setenv("PDEINF_TASK_THREADS", "0")
    tasks = stage_tasks("smoke")
    keys = stage_keys(get_profile("smoke"), tasks)
    names = [t.name for t in tasks]
    stages = [SimpleNamespace(stage=n, seconds=100.0) for n in names]
    monkeypatch.setattr(planner, "plan", lambda profile, notebooks: {"stages": stages})
    quick, slow, changed, failed, always = names[1], names[2], names[3], names[4], names[5]
    report = tmp_path / "results" / "reproduce_smoke.json"
    report.parent.mkdir(parents=True)
    report.write_text("{not json")
    assert stage_eta("smoke", 1, keys).estimates == {n: 100.0 for n in names}
    report.write_text(json.dumps({"timings": [
        {"stage": quick, "seconds": 3.0, "status": "ok", "key": keys[quick]},
        {"stage": slow, "seconds": 140.0, "status": "ok", "key": keys[slow]},
        {"stage": changed, "seconds": 3.0, "status": "ok", "key": "another"},
        {"stage": failed, "seconds": 3.0, "status": "failed", "key": keys[failed]},
        {"stage": always, "seconds": 25.0, "status": "ok", "key": keys[always]},  # rebuilt each run
        {"stage": "notebook 01_data", "seconds": 3.0, "status": "ok"}]}))
    clock = stage_eta("smoke", 1, keys)
    assert clock.estimates[quick] == 3.0 and clock.estimates[slow] == CURRENT_SECONDS
    assert clock.estimates[always] == 25.0
    assert clock.laws[quick] == clock.laws[slow] == "expected current"
    assert clock.estimates[changed] == clock.estimates[failed] == 100.0
    assert stage_eta("smoke", 1).estimates[quick] == 100.0  # no keys: nothing expected
