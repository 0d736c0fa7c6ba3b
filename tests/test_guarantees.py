"""What a rerun recomputes, what is verified on load, what two concurrent runs do,
and one-line errors for output paths, tested with real files written by the pipeline and
real processes."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from pdeinf import paths, pipeline
from pdeinf.atomic import remove_stale_temporaries, temporary_path
from pdeinf.cli import main
from pdeinf.config import get_profile

SMOKE = get_profile("smoke")


@pytest.fixture()
def copied_home(smoke_home, tmp_path, monkeypatch):
    """A private copy of the smoke results (edits here never reach the shared home)."""
    home = tmp_path / "home"
    shutil.copytree(smoke_home / "results", home / "results",
                    ignore=shutil.ignore_patterns("executed", "*.lock"))
    monkeypatch.setenv("PDEINF_HOME", str(home))
    return home


def _edit_one_value_in_place(path):
    """Change one stored density value of a PDEGym file without changing its size or shape."""
    import h5py

    size = path.stat().st_size
    with h5py.File(path, "r+") as fh:
        var = fh["data"]
        value = var[0, 1, 0, 3, 3]
        var[0, 1, 0, 3, 3] = value * 1.5 + 0.1
    assert path.stat().st_size == size


@pytest.mark.slow
def test_data_edited_in_place_retrains_and_recomputes_downstream(copied_home):
    pde, model = "CE", "unet"
    runs = pipeline.ensure_training(SMOKE, pde, model, progress=False)
    key_file = runs[SMOKE.seeds[0]] / "stage_key.json"
    before_key = json.loads(key_file.read_text())["key"]
    ds_before = pipeline.ensure_influence(SMOKE, pde, model, progress=False)
    import xarray as xr

    folder = paths.influence_dir("smoke") / f"{pde}-{model}"
    keys_before = set()
    for f in folder.glob("*.nc"):
        with xr.open_dataset(f, engine="h5netcdf") as task:
            keys_before.add(task.attrs["cache_key"])
    assert keys_before
    data_file = min((paths.data_dir("smoke") / "CE-RP").glob("data_*.nc"))
    _edit_one_value_in_place(data_file)

    ds_after = pipeline.ensure_influence(SMOKE, pde, model, progress=False)
    after_key = json.loads(key_file.read_text())["key"]
    assert after_key != before_key  # retrained from the edited data
    assert (runs[SMOKE.seeds[0]].parent / (runs[SMOKE.seeds[0]].name + ".stale")).is_dir()
    assert not np.array_equal(ds_after["pi"].values, ds_before["pi"].values)
    files = sorted(folder.glob("*.nc"))
    for f in files:
        with xr.open_dataset(f, engine="h5netcdf") as task:
            assert task.attrs["cache_key"] not in keys_before
    # and a third run computes nothing more
    stamps = {f: f.stat().st_mtime_ns for f in files}
    pipeline.ensure_influence(SMOKE, pde, model, progress=False)
    assert {f: f.stat().st_mtime_ns for f in files} == stamps


@pytest.mark.slow
def test_bit_flipped_rollouts_file_is_recomputed(copied_home):
    pde, model = "NS", "vit"
    reference = pipeline.ensure_rollouts(SMOKE, pde, model, progress=False).copy(deep=True)
    path = pipeline.rollouts_path(SMOKE, pde, model)
    raw = bytearray(path.read_bytes())
    needle = np.ascontiguousarray(reference.values[0, 0, 0, :4]).tobytes()
    at = raw.find(needle)
    assert at > 0
    raw[at:at + len(needle)] = bytes(b ^ 0x55 for b in raw[at:at + len(needle)])
    path.write_bytes(bytes(raw))
    fresh = pipeline.ensure_rollouts(SMOKE, pde, model, progress=False)
    np.testing.assert_array_equal(fresh.values, reference.values)


def test_stale_temporaries_of_dead_processes_only(tmp_path):
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        target = tmp_path / "x.nc"
        live_tmp = target.with_name(f".x.nc.{live.pid}.tmp")
        live_tmp.write_bytes(b"being written")
        dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                              capture_output=True, text=True, check=True)
        dead_tmp = target.with_name(f".x.nc.{int(dead.stdout)}.tmp")
        dead_tmp.write_bytes(b"left by a killed run")
        mine = temporary_path(target)
        mine.write_bytes(b"this process")
        removed = remove_stale_temporaries(tmp_path)
        assert removed == [dead_tmp]
        assert live_tmp.exists() and mine.exists() and not dead_tmp.exists()
    finally:
        live.kill()
        live.wait()


@pytest.mark.slow
def test_two_concurrent_reproduce_runs(smoke_home):
    """A run holding the results lock, with a live temporary file, and a second `pdeinf
    reproduce` started meanwhile: the second waits (saying who holds the lock), the first's
    temporary file survives, both succeed. The first holds the lock until the second has said
    that it waits (at most 120 s), so a slow start of the second cannot miss the lock."""
    results = smoke_home / "results"
    release = smoke_home / "release"
    holder = textwrap.dedent(f"""
        import pathlib, sys, time
        from pdeinf.atomic import temporary_path
        from pdeinf.pipeline.lock import results_lock
        with results_lock(pathlib.Path({str(results)!r})):
            tmp = temporary_path(pathlib.Path({str(results)!r}) / "influence" / "probe.nc")
            tmp.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_bytes(b"live")
            print("locked", flush=True)
            deadline = time.monotonic() + 120
            while not pathlib.Path({str(release)!r}).exists() and time.monotonic() < deadline:
                time.sleep(0.1)
            ok = tmp.exists()
            tmp.unlink()
        sys.exit(0 if ok else 3)
    """)
    env = {**os.environ, "PDEINF_HOME": str(smoke_home), "OMP_NUM_THREADS": "1"}
    first = subprocess.Popen([sys.executable, "-c", holder], env=env, stdout=subprocess.PIPE, text=True)
    assert first.stdout.readline().strip() == "locked"
    second = subprocess.Popen([sys.executable, "-m", "pdeinf", "reproduce", "--profile", "smoke",
                               "--only-pipeline", "--no-progress"], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)
    err = ""
    for line in second.stderr:  # until the second says it waits, or ends
        err += line
        if "another pdeinf run holds" in line:
            break
    waited = "another pdeinf run holds" in err and "(pid " in err and first.poll() is None
    release.touch()
    err += second.stderr.read()
    assert second.wait(timeout=600) == 0, err[-2000:]
    assert first.wait(timeout=60) == 0, "the waiting run deleted the live temporary file"
    assert waited, err[-2000:]  # it said who holds the lock while the lock was held


def test_output_paths_that_are_files_fail_in_one_line(tmp_path, capsys, monkeypatch):
    afile = tmp_path / "afile"
    afile.write_text("not a folder")
    start = time.monotonic()
    code = main(["influence", "--pde", "CE", "--model", "unet", "--profile", "smoke",
                 "--out", str(afile), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "--out" in err and "is a file" in err and len(err.strip().splitlines()) == 1
    assert time.monotonic() - start < 2  # before any computation
    monkeypatch.setenv("PDEINF_HOME", str(afile))
    code = main(["reproduce", "--profile", "smoke", "--only-pipeline", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "is a file" in err and len(err.strip().splitlines()) == 1


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through read-only permissions")
def test_read_only_results_folder_fails_in_one_line(tmp_path, capsys, monkeypatch):
    home = tmp_path / "home"
    (home / "results").mkdir(parents=True)
    (home / "results").chmod(0o500)
    monkeypatch.setenv("PDEINF_HOME", str(home))
    try:
        code = main(["reproduce", "--profile", "smoke", "--only-pipeline", "--no-progress"])
    finally:
        (home / "results").chmod(0o700)
    err = capsys.readouterr().err
    assert code == 2 and "cannot write" in err


def test_numerical_failures_exit_1_input_errors_exit_2(monkeypatch, capsys):
    from pdeinf.errors import NumericalError
    from pdeinf.pipeline import cli

    def diverging(args):
        raise NumericalError("solver diverged at t = 0.3 (batch member 2)")

    monkeypatch.setattr(cli, "_reproduce", diverging)
    code = main(["reproduce", "--profile", "smoke"])
    err = capsys.readouterr().err
    assert code == 1 and err.strip() == "pdeinf reproduce: failed: solver diverged at t = 0.3 (batch member 2)"


def test_file_system_failure_mid_run_is_one_line(monkeypatch, capsys):
    """A results folder that turns read-only (or a full disk) mid-run: one line naming the
    path, exit 2, no traceback."""
    from pdeinf.pipeline import cli

    def read_only(args):
        raise PermissionError(13, "Permission denied", "/home/u/results/influence/x.nc")

    monkeypatch.setattr(cli, "_reproduce", read_only)
    code = main(["reproduce", "--profile", "smoke"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err == "pdeinf reproduce: error: /home/u/results/influence/x.nc: Permission denied"


def test_train_out_dir_that_is_a_file_fails_before_work(tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("x")
    code = main(["train", "--pde", "CE", "--model", "unet", "--seed", "1", "--profile", "smoke",
                 "--out-dir", str(afile), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "--out-dir" in err and "is a file" in err
