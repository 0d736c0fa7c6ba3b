"""Runs that survive failures, with real files and real processes: corrupt, truncated or lost
checkpoints are moved aside and rebuilt; non-finite results are never cached; SIGTERM and
repeated SIGINT stop the workers before the lock is released; a full disk is one line; the
results do not depend on the number of workers; recipe settings are bounded by the data."""
from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from pdeinf.cli import main

REPO = Path(__file__).resolve().parents[1]
RUN = "runs/smoke/CE-unet-s10"
#: data, one training run and its influence sweep: the smallest part of the smoke profile
#: that trains and computes influence
STAGES = ("data", "training CE-unet", "influence CE-unet")
PART = textwrap.dedent("""
    import sys
    from pdeinf.pipeline.reproduce import stage_tasks
    from pdeinf.pipeline.schedule import run_tasks
    if __name__ == "__main__":
        names = sys.argv[2].split(",")
        tasks = [t for t in stage_tasks("smoke", progress=False) if t.name in names]
        run_tasks(tasks, workers=int(sys.argv[1]), echo=False)
""")


def _env(home: Path) -> dict:
    """A child's environment: its own home, this tree's package, the product's thread policy."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PDEINF_TASK_THREADS", "PDEINF_WORKERS", "OMP_NUM_THREADS")}
    return {**env, "PDEINF_HOME": str(home), "PYTHONPATH": str(REPO), "PDEINF_PROFILE": "smoke"}


def _with_data(source: Path, home: Path) -> Path:
    """`home` holding the generated data of `source` only (the data stage then finds it)."""
    for part in ("data", "cache"):
        if (source / "results" / part).is_dir():
            shutil.copytree(source / "results" / part, home / "results" / part)
    return home


def _run_part(home: Path, workers: int, stages=STAGES, tmp: Path | None = None) -> None:
    script = (tmp or home) / "part.py"
    script.parent.mkdir(parents=True, exist_ok=True)
    script.write_text(PART)
    subprocess.run([sys.executable, str(script), str(workers), ",".join(stages)], env=_env(home),
                   check=True, timeout=300, cwd=REPO)


def _pi(home: Path) -> dict:
    import xarray as xr

    out = {}
    for f in sorted((home / "results/influence/smoke/CE-unet").glob("*.nc")):
        with xr.open_dataset(f, engine="h5netcdf") as ds:
            out[f.name] = ds["pi"].values.copy()
    return out


@pytest.fixture(scope="module")
def homes(tmp_path_factory):
    """The same stages run from scratch with 1 worker (here, in order) and with 2 workers (from
    the same data: the data stage always runs alone in the main process)."""
    one, two = tmp_path_factory.mktemp("one-worker"), tmp_path_factory.mktemp("two-workers")
    _run_part(one, 1)
    _with_data(one, two)
    _run_part(two, 2)
    return one, two


def _weights(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)["model_state"]


@pytest.mark.slow
def test_results_do_not_depend_on_the_number_of_workers(homes):
    one, two = homes
    for epoch in (1, 2):
        a = _weights(one / "results" / RUN / f"ckpt_e{epoch:04d}.pt")
        b = _weights(two / "results" / RUN / f"ckpt_e{epoch:04d}.pt")
        assert all(torch.equal(a[k], b[k]) for k in a), f"epoch {epoch} weights differ"
    pi_one, pi_two = _pi(one), _pi(two)
    assert pi_one and pi_one.keys() == pi_two.keys()
    for name in pi_one:
        np.testing.assert_array_equal(pi_one[name], pi_two[name])


@pytest.fixture()
def home(homes, tmp_path, monkeypatch):
    """A private copy of the one-worker home, used in this process."""
    copy = tmp_path / "home"
    shutil.copytree(homes[0] / "results", copy / "results", ignore=shutil.ignore_patterns("*.lock"))
    monkeypatch.setenv("PDEINF_HOME", str(copy))
    monkeypatch.delenv("PDEINF_TASK_THREADS", raising=False)
    return copy


def _flip_tensor_bytes(path: Path, n: int = 16) -> None:
    """Invert `n` bytes inside the largest tensor record of a checkpoint (same size)."""
    raw = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as archive:
        info = max((i for i in archive.infolist() if "/data/" in i.filename),
                   key=lambda i: i.file_size)
    local = info.header_offset
    start = local + 30 + int.from_bytes(raw[local + 26:local + 28], "little") + \
        int.from_bytes(raw[local + 28:local + 30], "little")
    at = start + info.file_size // 2
    size = len(raw)
    raw[at:at + n] = bytes(b ^ 0xFF for b in raw[at:at + n])
    path.write_bytes(bytes(raw))
    assert path.stat().st_size == size


def _damage(path: Path, how: str) -> None:
    if how == "flip":
        _flip_tensor_bytes(path)
    elif how == "truncate":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    else:
        path.unlink()


@pytest.mark.slow
@pytest.mark.parametrize("how", ["flip", "truncate", "delete"])
def test_damaged_checkpoint_is_moved_aside_and_rebuilt(home, how, capsys):
    from pdeinf.pipeline.reproduce import stage_tasks
    from pdeinf.pipeline.schedule import run_tasks
    from pdeinf.training.checkpoints import CorruptCheckpoint, read_checkpoint

    run = home / "results" / RUN
    first = run / "ckpt_e0001.pt"  # before resume.pt's epoch: resuming needs a rollback
    reference = _weights(first)
    pi_before = _pi(home)
    _damage(first, how)
    if how != "delete":
        with pytest.raises(CorruptCheckpoint, match="corrupt checkpoint"):
            read_checkpoint(first)
    tasks = [t for t in stage_tasks("smoke", progress=False) if t.name in STAGES]
    run_tasks(tasks, workers=1, echo=False)
    rebuilt = _weights(first)
    assert all(torch.equal(reference[k], rebuilt[k]) for k in reference)
    aside = sorted(run.glob("ckpt_e0001.pt.corrupt-*"))
    if how == "delete":
        assert not aside
    else:
        assert [p.name for p in aside] == ["ckpt_e0001.pt.corrupt-1"]
        err = capsys.readouterr().err
        assert f"{first}: corrupt checkpoint" in err and "moved aside" in err
    pi_after = _pi(home)
    assert pi_after.keys() == pi_before.keys()
    for name, values in pi_after.items():
        assert np.isfinite(values).all()
        np.testing.assert_array_equal(values, pi_before[name])


def test_verify_reads_each_version_of_a_checkpoint_once(home, tmp_path, monkeypatch, capsys):
    """Stages that check the same checkpoint in one process read it once; a checkpoint damaged
    after it was verified (same size, rewritten) is read again and moved aside."""
    from pdeinf.training import checkpoints as ck

    path = tmp_path / "ckpt.pt"
    shutil.copy(home / "results" / RUN / "ckpt_e0002.pt", path)
    reads, read = [], ck.read_checkpoint
    monkeypatch.setattr(ck, "read_checkpoint", lambda p: reads.append(p) or read(p))
    assert ck.verify(path) and ck.verify(str(path)) and len(reads) == 1
    _flip_tensor_bytes(path)
    assert not ck.verify(path) and len(reads) == 2
    assert not path.exists() and (tmp_path / "ckpt.pt.corrupt-1").is_file()
    assert "corrupt checkpoint" in capsys.readouterr().err
    assert not ck.verify(path) and len(reads) == 2  # absent: nothing to read


def test_influence_on_a_corrupt_checkpoint_says_how_to_rebuild_it(home, capsys):
    first = home / "results" / RUN / "ckpt_e0001.pt"
    _flip_tensor_bytes(first)
    shutil.rmtree(home / "results/influence")
    code = main(["influence", "--pde", "CE", "--model", "unet", "--profile", "smoke",
                 "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert f"{first}: corrupt checkpoint (CRC mismatch" in err and "rerun its training" in err


def test_checkpoint_content_is_verified_beyond_the_archive(home, tmp_path):
    """A state edited in a valid archive (the CRCs match; the saved SHA-256 does not), and a
    state whose optimizer holds NaN: both refused on load; such a state is never saved."""
    from pdeinf.atomic import torch_save
    from pdeinf.errors import NumericalError
    from pdeinf.training.checkpoints import CorruptCheckpoint, read_checkpoint, save_checkpoint

    state = read_checkpoint(home / "results" / RUN / "ckpt_e0002.pt")
    edited = {**state, "epoch": state["epoch"]}
    exp_avg = edited["optimizer_state"]["state"][0]["exp_avg"]
    exp_avg.view(-1)[0] = -2.46e4
    torch_save(edited, tmp_path / "edited.pt")
    with pytest.raises(CorruptCheckpoint, match="SHA-256"):
        read_checkpoint(tmp_path / "edited.pt")
    exp_avg.view(-1)[0] = float("nan")
    without = {k: v for k, v in edited.items() if k != "sha256"}
    torch_save(without, tmp_path / "nan.pt")
    with pytest.raises(CorruptCheckpoint, match="optimizer_state holds NaN"):
        read_checkpoint(tmp_path / "nan.pt")
    with pytest.raises(NumericalError, match="not written"):
        save_checkpoint(without, tmp_path / "never.pt")
    assert not (tmp_path / "never.pt").exists() and not list(tmp_path.glob(".*.tmp"))


@pytest.mark.slow
def test_non_finite_influence_is_refused_and_never_cached(home):
    import xarray as xr

    from pdeinf.errors import NumericalError
    from pdeinf.pipeline.influence import run_sweep, sweep_dir

    folder = sweep_dir("smoke", "CE", "unet")
    shutil.rmtree(folder)

    def poisoned(model, optimizer_state, inputs, targets, **kwargs):
        """What an Adam variant gives from an optimizer state of garbage: NaN."""
        n = len(inputs)
        pi = np.eye(n)
        pi[0, 0] = np.nan
        return xr.Dataset({"pi": (("t_resp", "t_pert"), pi)}, attrs=kwargs["attrs"])

    with pytest.raises(NumericalError, match=r"ckpt_e0001\.pt.*NaN or Inf; not cached"):
        run_sweep("smoke", "CE", "unet", progress=False, compute=poisoned)
    assert not list(folder.glob("*.nc")) and not list(folder.glob(".*.tmp"))


# ---- signals ----------------------------------------------------------------------------
def _workers(pid: int) -> list:
    import psutil

    return [p for p in psutil.Process(pid).children(recursive=True)
            if "spawn_main" in " ".join(p.cmdline())]


def _first_free_lock(lock: Path, workers: list, seen: dict) -> None:
    """Take the results lock as soon as it is free; record which workers were alive then."""
    import psutil

    with open(lock, "a+") as fh:
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                time.sleep(0.01)
                continue
            seen["alive"] = [w.pid for w in workers
                             if w.is_running() and w.status() != psutil.STATUS_ZOMBIE]
            fcntl.flock(fh, fcntl.LOCK_UN)
            return


@pytest.mark.slow
@pytest.mark.parametrize("signals", [(signal.SIGTERM,), (signal.SIGINT, signal.SIGINT)],
                         ids=["sigterm", "two-sigint"])
def test_signal_stops_workers_before_the_lock_is_released(homes, tmp_path, signals):
    pytest.importorskip("psutil")
    home = _with_data(homes[0], tmp_path / "home")
    proc = subprocess.Popen([sys.executable, "-m", "pdeinf", "reproduce", "--profile", "smoke",
                             "--only-pipeline", "--workers", "2", "--no-progress"],
                            env=_env(home), cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        while len(workers := _workers(proc.pid)) < 2:
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "no workers started"
            time.sleep(0.1)
        time.sleep(1.0)  # a few seconds into training
        seen: dict = {}
        watcher = threading.Thread(target=_first_free_lock,
                                   args=(home / "results/.pdeinf.lock", workers, seen))
        watcher.start()
        for signum in signals:
            proc.send_signal(signum)
            time.sleep(0.2)
        _, err = proc.communicate(timeout=60)
        watcher.join(timeout=30)
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
    name = signal.Signals(signals[0]).name
    assert proc.returncode == 128 + signals[0], err
    assert err.strip().splitlines() == [
        f"pdeinf reproduce: stopped by {name}; rerun the same command to resume"]
    assert seen == {"alive": []}, "workers outlived the lock"
    assert not [w.pid for w in workers if w.is_running() and w.status() != "zombie"]
    assert not list(home.rglob(".*.tmp"))
    if signals == (signal.SIGTERM,):  # a rerun resumes and completes the interrupted training
        from pdeinf.training.checkpoints import read_checkpoint

        trainings = ["data"] + [f"training {p}-{m}" for p in ("CE", "NS") for m in ("unet", "vit")]
        _run_part(home, 2, trainings)
        for run in (home / "results/runs/smoke").glob("*-s10"):
            for epoch in (1, 2):
                assert read_checkpoint(run / f"ckpt_e{epoch:04d}.pt")["epoch"] == epoch


# ---- full disk, unwritable output, recipe bounds ---------------------------------------
@pytest.fixture()
def small_disk(tmp_path):
    """A 5 MB tmpfs (root only): skipped with the reason when it cannot be mounted."""
    where = tmp_path / "small"
    where.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=5m", "tmpfs", str(where)],
                             capture_output=True, text=True, check=False)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.strip() or 'not root'}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


@pytest.mark.slow
def test_full_disk_is_one_line_naming_the_folder(homes, small_disk):
    _with_data(homes[0], small_disk)
    proc = subprocess.run([sys.executable, "-m", "pdeinf", "reproduce", "--profile", "smoke",
                           "--only-pipeline", "--workers", "2", "--no-progress"],
                          env=_env(small_disk), cwd=REPO, capture_output=True, text=True,
                          timeout=300, check=False)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert len(lines) == 1, proc.stderr[-3000:]
    assert lines[0].startswith(f"pdeinf reproduce: failed: no space left in {small_disk}/results/")
    assert "needs" in lines[0] and "free" in lines[0]
    assert not [p for p in small_disk.rglob(".*") if p.name.endswith(".tmp") or ".partial-" in p.name]


def test_atomic_write_checks_the_space_it_needs(tmp_path):
    from pdeinf.atomic import write_bytes
    from pdeinf.storage import DiskFullError, free_bytes

    huge = free_bytes(tmp_path) + (1 << 40)

    class Huge(bytes):
        def __len__(self):
            return huge

    with pytest.raises(DiskFullError, match=f"no space left in {tmp_path}: the write needs"):
        write_bytes(tmp_path / "x.bin", Huge(b"x"))
    assert list(tmp_path.iterdir()) == []


def test_unwritable_out_is_said_before_its_size(capsys):
    code = main(["data", "generate", "--dataset", "CE-RP", "--n-trajectories", "2",
                 "--resolution", "16", "--out", "/proc/forbidden"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.endswith("is not writable") and "too large" not in err


@pytest.mark.parametrize("recipe,k,bound", [("multistep", 1000, 16), ("pushforward", 16, 15)])
def test_recipe_settings_bounded_by_the_trajectory(tmp_path, capsys, recipe, k, bound):
    code = main(["train", "--pde", "CE", "--model", "unet", "--seed", "10", "--profile", "smoke",
                 "--recipe", recipe, "--recipe-setting", f"k={k}", "--out-dir", str(tmp_path),
                 "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert f"recipe {recipe}: setting k={k} exceeds {bound}" in err
    assert list(tmp_path.iterdir()) == []  # refused before any work
