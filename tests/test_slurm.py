"""`pdeinf reproduce --executor slurm` against a real single-node Slurm on localhost (installed
with apt-get where missing, started and stopped by `slurm_cluster`): a part of the smoke graph
(data, the CE-UNet training run and its sweep, notebook 01) through Slurm gives the same outputs
as the local run, and so does `--executor node` for its training run; a rerun submits nothing; a training job signalled as preempted is requeued and
resumes from its checkpoint, ending with the same weights as an uninterrupted run; a failing
stage leaves its dependents unsubmitted and names its job and log in one line."""
from __future__ import annotations

import dataclasses
import json
import os
import threading
import time
from pathlib import Path

import pytest
import slurm_cluster
import torch
import xarray as xr

from pdeinf import paths
from pdeinf.cli import main
from pdeinf.config import get_profile
from pdeinf.errors import InputError
from pdeinf.pipeline.common import final_epoch, run_dir
from pdeinf.pipeline.notebooks import list_notebooks
from pdeinf.pipeline.reproduce import run_notebooks, stage_tasks
from pdeinf.pipeline.schedule import run_tasks
from pdeinf.pipeline.slurm import (
    END_GRACE_SECONDS,
    SlurmOptions,
    SlurmRun,
    StageFailed,
    _Running,
    load_options,
    reproduce_slurm,
    select_stages,
)
from pdeinf.pipeline.slurm_job import completed_epochs
from pdeinf.pipeline.training import ensure_training

pytestmark = pytest.mark.slow

SMOKE = get_profile("smoke")
STAGES = ["influence CE-unet"]  # with what it needs: data, training CE-unet
NOTEBOOK = "01"
OPTIONS = SlurmOptions(cpus_per_task=1, poll_seconds=0.5)
# one (PDE, model) pair trained long enough to be interrupted mid-run
LONG = dataclasses.replace(SMOKE, name="slurm-long", pdes=("CE",), models=("unet",),
                           epochs={"CE": 30}, checkpoints={"CE": (15, 30)})


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """The running cluster; its clients' environment (SLURM_CONF, PATH) set for the module."""
    started = slurm_cluster.start(tmp_path_factory.mktemp("slurm"))
    saved = {k: os.environ.get(k) for k in ("SLURM_CONF", "PATH")}
    os.environ.update({k: started.env[k] for k in saved})
    yield started
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    pids = dict(started.pids)
    started.stop()
    assert not [name for name, pid in pids.items() if slurm_cluster._alive(pid)]


@pytest.fixture
def home(tmp_path, monkeypatch):
    """A fresh PDEINF_HOME; `home(name)` switches to ``tmp_path/name``."""

    def switch(name: str) -> Path:
        monkeypatch.setenv("PDEINF_HOME", str(tmp_path / name))
        return tmp_path / name

    return switch


def _log_text(job_id: str) -> str:
    return next((paths.results_dir() / "slurm").rglob(f"{job_id}_0_log.out")).read_text()


def _datasets(root: Path, pattern: str) -> dict[str, xr.Dataset]:
    return {str(p.relative_to(root)): xr.load_dataset(p) for p in sorted(root.rglob(pattern))}


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["model_state"]


def _assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    for name in wa:
        assert torch.equal(wa[name], wb[name]), name


def _outputs(root: Path) -> dict:
    """What the selected smoke stages and notebook produce, without paths or wall times."""
    results = root / "results"
    notebook = json.loads((results / "01_data.json").read_text())
    return {"data": _datasets(results / "data", "*.nc"),
            "influence": _datasets(results / "influence", "*.nc"),
            "checkpoints": sorted(p.relative_to(results) for p in results.glob("runs/**/ckpt_*.pt")),
            "statistics": notebook["statistics"], "ratios": notebook["std_ratio_to_pdegym"]}


def test_smoke_through_slurm_equals_local_and_rerun_submits_nothing(cluster, home, one_torch_thread):
    local = home("local")
    tasks = select_stages(stage_tasks(SMOKE, progress=False), STAGES)
    run_tasks(tasks, workers=1, echo=False)
    assert run_notebooks(SMOKE, list_notebooks([NOTEBOOK]), [], progress=False)[0]["status"] == "ok"

    remote = home("slurm")
    submitted: dict[str, str] = {}
    results = reproduce_slurm(SMOKE, OPTIONS, notebooks=[NOTEBOOK], stages=STAGES, progress=False,
                              on_submit=submitted.__setitem__)
    assert [r.status for r in results] == ["ok"] * 4
    assert list(submitted) == ["data", "training CE-unet", "influence CE-unet", "notebook 01_data"]
    logs = {name: paths.results_dir() / "slurm" / "smoke" / "logs" / f"{job}_0_log.out"
            for name, job in submitted.items()}
    assert all(f"stage {name!r} done" in log.read_text() for name, log in logs.items())
    script = (logs["influence CE-unet"].parent / f"{submitted['influence CE-unet']}_submission.sh")
    assert f"--dependency=afterok:{submitted['training CE-unet']}" in script.read_text()

    mine, theirs = _outputs(local), _outputs(remote)
    assert mine["checkpoints"] == theirs["checkpoints"] and mine["checkpoints"]
    for ckpt in mine["checkpoints"]:
        _assert_same_weights(local / "results" / ckpt, remote / "results" / ckpt)
    for kind in ("data", "influence"):
        assert mine[kind].keys() == theirs[kind].keys() and mine[kind]
        for name in mine[kind]:
            xr.testing.assert_equal(mine[kind][name], theirs[kind][name])
    assert mine["statistics"] == theirs["statistics"] and mine["ratios"] == theirs["ratios"]

    again: dict[str, str] = {}
    rerun = reproduce_slurm(SMOKE, OPTIONS, notebooks=[NOTEBOOK], stages=STAGES, progress=False,
                            on_submit=again.__setitem__)
    assert again == {} and {r.status for r in rerun} == {"cached"}

    node = home("node")  # the same jobs as local processes, no scheduler
    ran = reproduce_slurm(SMOKE, OPTIONS, only_pipeline=True, stages=["training CE-unet"],
                          progress=False, executor="node")
    assert [r.status for r in ran] == ["ok", "ok"]
    for ckpt in mine["checkpoints"]:
        _assert_same_weights(local / "results" / ckpt, node / "results" / ckpt)


def _wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.2)


def test_preempted_training_job_requeues_and_resumes(cluster, home, one_torch_thread):
    home("slurm")
    submitted: dict[str, str] = {}
    outcome: dict = {}

    def drive():
        try:
            outcome["results"] = reproduce_slurm(LONG, OPTIONS, only_pipeline=True,
                                                 stages=["training CE-unet"], progress=False,
                                                 on_submit=submitted.__setitem__)
        except BaseException as err:  # noqa: BLE001 - re-raised in the test's thread
            outcome["error"] = err

    driver = threading.Thread(target=drive)
    driver.start()
    run = run_dir(LONG, "CE", "unet", LONG.seeds[0])
    _wait_for(lambda: 3 <= completed_epochs(run) or "error" in outcome, 240, "3 epochs")
    interrupted_after = completed_epochs(run)
    assert interrupted_after < LONG.epochs["CE"], "training ended before it could be preempted"
    job = submitted["training CE-unet"]
    cluster.run("scancel", "--signal=USR2", job)  # what Slurm sends before preemption/time limit
    # Slurm holds a requeued job for two minutes (its begin time); release it at once
    _wait_for(lambda: "Reason=BeginTime" in cluster.run("scontrol", "show", "job", job), 60,
              "the requeued job")
    # slurmd refuses a credential issued within the second its old one was revoked ("Job
    # credential revoked"): release the requeued job only after that second has passed
    time.sleep(2)
    cluster.run("scontrol", "update", f"jobid={job}", "StartTime=now")
    driver.join(600)
    assert not driver.is_alive()
    if "error" in outcome:
        raise outcome["error"]
    assert [r.status for r in outcome["results"]] == ["ok", "ok"]

    log = _log_text(job)
    assert "(restart 1)" in log
    resumed = [int(line.rsplit(" ", 1)[1]) for line in log.splitlines()
               if line.startswith(f"[pdeinf] resuming {run.name} after epoch")]
    assert resumed and resumed[0] >= interrupted_after > 0
    history = json.loads((run / "history.json").read_text())
    assert [h["epoch"] for h in history] == list(range(1, LONG.epochs["CE"] + 1))

    home("local")
    ensure_training(LONG, "CE", "unet", progress=False)
    final = paths.checkpoint_path(run_dir(LONG, "CE", "unet", LONG.seeds[0]), final_epoch(LONG, "CE"))
    _assert_same_weights(final, paths.checkpoint_path(run, final_epoch(LONG, "CE")))


def test_failing_stage_leaves_dependents_unsubmitted(cluster, home, capsys):
    home("slurm")
    broken = dataclasses.replace(SMOKE, name="slurm-broken", pdes=("CE",), models=("unet",),
                                 lr=float("nan"))
    submitted: dict[str, str] = {}
    with pytest.raises(StageFailed) as failure:
        reproduce_slurm(broken, OPTIONS, notebooks=[NOTEBOOK], stages=["seed-paper influence CE-unet"],
                        progress=False, on_submit=submitted.__setitem__)
    assert list(submitted) == ["data", "training CE-unet"]
    job = submitted["training CE-unet"]
    message = str(failure.value)
    assert len(message.splitlines()) == 1
    assert f"'training CE-unet' failed in Slurm job {job}" in message
    log = Path(message.rsplit("log: ", 1)[1])
    assert log.is_file() and "Invalid learning rate: nan" in log.read_text()
    assert message in capsys.readouterr().err
    _wait_for(lambda: not cluster.run("squeue", "-h").strip(), 60, "an empty queue")


def test_a_job_counts_as_failed_only_after_looking_ended_for_the_grace_period(monkeypatch):
    """A requeue passes through states squeue may not list: one poll without the job is not a
    failure; a failure is declared once the job has looked ended for the grace period."""
    run = SlurmRun.__new__(SlurmRun)
    run.options = SlurmOptions(poll_seconds=0.5)
    clock = [100.0]
    monkeypatch.setattr("pdeinf.pipeline.slurm.time.monotonic", lambda: clock[0])
    entry = _Running(task=None, job=None, start=0.0)
    gone = ("gone", "ended without a result (cancelled or killed)")
    assert run._settled(entry, gone) is None
    clock[0] += 5.0
    assert run._settled(entry, None) is None and entry.ended_since is None  # back: requeued
    assert run._settled(entry, gone) is None
    clock[0] += END_GRACE_SECONDS - 0.1
    assert run._settled(entry, gone) is None
    clock[0] += 0.2
    assert run._settled(entry, gone) == ("failed", gone[1])
    assert run._settled(_Running(None, None, 0.0), ("ok", "")) == ("ok", "")


def test_squeue_states_conclude_nothing_from_a_controller_error(monkeypatch):
    """A busy controller (an error other than an unknown job id) gives None: no job is taken
    for gone; an unknown job id is gone, asked one by one when several are listed."""
    import subprocess

    from pdeinf.pipeline import slurm

    known = {"7": "RUNNING", "8": "REQUEUED"}
    busy = [False]

    def fake_squeue(argv, **kwargs):
        ids = argv[argv.index("-j") + 1].split(",")
        assert argv[argv.index("-t") + 1] == "all"
        if busy[0]:
            return subprocess.CompletedProcess(argv, 1, "", "slurm_load_jobs error: Socket timed out")
        if any(i not in known for i in ids) and len(ids) == 1:
            return subprocess.CompletedProcess(argv, 1, "", "slurm_load_jobs error: Invalid job id specified")
        if any(i not in known for i in ids):
            return subprocess.CompletedProcess(argv, 1, "", "Invalid job id specified")
        return subprocess.CompletedProcess(argv, 0, "".join(f"{i} {known[i]}\n" for i in ids), "")

    monkeypatch.setattr(slurm.subprocess, "run", fake_squeue)
    assert slurm._squeue_states(["7", "8"]) == known
    assert slurm._squeue_states(["9"]) == {}
    assert slurm._squeue_states(["7", "9", "8"]) == known
    busy[0] = True
    assert slurm._squeue_states(["7", "8"]) is None


def test_options_from_file_and_flags(tmp_path):
    config = tmp_path / "slurm.toml"
    config.write_text('[slurm]\npartition = "gpu"\ngpus_per_task = 4\nextra = ["--qos=high"]\n')
    options = load_options(config, cpus_per_task=8, partition=None)
    assert (options.partition, options.gpus_per_task, options.cpus_per_task) == ("gpu", 4, 8)
    assert options.extra_parameters() == {"qos": "high"}
    assert [options.gpus_for(s) for s in ("data", "training CE-unet", "rollouts CE-unet",
                                          "notebook 01_data")] == [0, 4, 1, 0]
    config.write_text("gpus = 2\n")
    with pytest.raises(InputError, match="unknown key"):
        load_options(config)
    with pytest.raises(InputError, match="cpus_per_task"):
        load_options(None, cpus_per_task=0)
    with pytest.raises(InputError, match="unknown stage"):
        select_stages(stage_tasks(SMOKE, progress=False), ["training XX"])


@pytest.mark.parametrize("argv, message", [
    (["--stages", "training CE-unet"], "--stages: only with"),
    (["--executor", "slurm", "--slurm-config", "missing.toml"], "cannot read missing.toml"),
    (["--executor", "slurm", "--cpus-per-task", "0"], "cpus_per_task"),
    (["--executor", "slurm", "--stages", "training XX-unet"], "unknown stage"),
    (["--executor", "node", "--gpus-per-task", "64"], "64 GPU(s) per stage"),
])
def test_cli_refuses_bad_cluster_arguments_before_work(argv, message, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PDEINF_HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    assert main(["reproduce", "--profile", "smoke", "--only-pipeline", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "results" / "slurm").exists()
