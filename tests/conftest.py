"""Test-suite wide settings and the shared smoke-profile fixture.

For the whole session ``PDEINF_HOME`` points at a temporary directory (results, data, runs
and figures of the tests go there; the committed ``figures/`` and the user's ``results/`` are
never written), ``PDEINF_PROFILE=smoke`` (notebooks run by nbval follow it) and matplotlib is
headless. Set ``PDEINF_TEST_HOME=/some/dir`` to keep that directory between sessions (the
smoke pipeline is then computed once and reused: handy while developing). Notebooks are
always read from the repository.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

_TEMP_HOME: Path | None = None


def pytest_configure(config):
    global _TEMP_HOME
    home = os.environ.get("PDEINF_TEST_HOME")
    if home:
        Path(home).mkdir(parents=True, exist_ok=True)
    else:
        _TEMP_HOME = Path(tempfile.mkdtemp(prefix="pdeinf-test-home-"))
        home = str(_TEMP_HOME)
        # xdist workers inherit the environment: one shared home per session
        os.environ["PDEINF_TEST_HOME"] = home
    os.environ["PDEINF_HOME"] = str(Path(home).resolve())
    os.environ["PDEINF_PROFILE"] = "smoke"
    # stages run in this process, with its threads: tests recompute a task here and compare it
    # with the cached one, and a different thread count changes the floating-point sums
    os.environ.setdefault("PDEINF_WORKERS", "1")
    os.environ.setdefault("PDEINF_TASK_THREADS", "0")  # and keep this process's thread count
    os.environ.setdefault("MPLBACKEND", "Agg")


def pytest_unconfigure(config):
    if _TEMP_HOME is not None and not hasattr(config, "workerinput"):
        shutil.rmtree(_TEMP_HOME, ignore_errors=True)


@pytest.fixture(scope="session")
def smoke_home() -> Path:
    """``PDEINF_HOME`` after the smoke pipeline (data, training, influence sweeps, rollouts
    of every PDE and model) has run once; later calls find everything cached."""
    from pdeinf import pipeline

    pipeline.run_all("smoke", progress=False)
    return Path(os.environ["PDEINF_HOME"])



@pytest.fixture(autouse=True)
def _global_torch_state_is_restored():
    """A test that changes torch's default dtype must restore it: models built later in the
    same process would otherwise draw different initial weights (and bitwise resume tests
    compare against subprocesses that start from the defaults)."""
    import torch

    before = torch.get_default_dtype()
    yield
    assert torch.get_default_dtype() == before, "a test left torch's default dtype changed"


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op thread for a module: tiny tensors gain nothing from a thread hand-off,
    a shared machine thrashes with more, and bitwise comparisons against subprocesses
    (started with OMP_NUM_THREADS=1) need equal reduction orders."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def float64_torch():
    """Float64 default dtype for a module of dense-reference checks, restored after it."""
    import torch

    dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(dtype)
