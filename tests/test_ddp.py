"""Data-parallel training: `torchrun --nproc_per_node 2` (gloo, CPU) gives the same weights as one
process with the same global batch, up to float64 summation order, for every training recipe
(random recipes draw for the global batch; multistep makes one DDP forward per step)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

TESTS_DIR = Path(__file__).resolve().parent

DRIVER = """
import sys, torch
sys.path.insert(0, {tests!r})
from test_training import WaveData, tiny_profile
from pdeinf.training.train import train
# 3 classes x 3 trajectories x 16 transitions = 144 = 3 x 37 + 33: full batches are split
# 19/18 between the ranks, the last one 17/16.
train("CE", "vit", 10, tiny_profile({epochs}, batch_size={batch}), data=WaveData(n=5),
      out_dir=sys.argv[1], progress=False, dtype=torch.float64, recipe={recipe!r})
"""


def _run_both(tmp_path, batch, epochs, recipe):
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).with_name("torchrun"))
    script = tmp_path / "driver.py"
    script.write_text(textwrap.dedent(DRIVER.format(tests=str(TESTS_DIR), batch=batch,
                                                    epochs=epochs, recipe=recipe)))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(var, None)
    single, multi = tmp_path / "single", tmp_path / "multi"
    subprocess.run([sys.executable, str(script), str(single)], env=env, check=True, timeout=300)
    subprocess.run([torchrun, "--standalone", "--nproc_per_node", "2", str(script), str(multi)],
                   env=env, check=True, timeout=300)
    a = torch.load(single / "CE-vit-s10" / f"ckpt_e{epochs:04d}.pt", weights_only=True)
    b = torch.load(multi / "CE-vit-s10" / f"ckpt_e{epochs:04d}.pt", weights_only=True)
    return a, b


@pytest.mark.parametrize("batch", [37])
def test_torchrun_two_processes_match_one_process(tmp_path, batch):
    a, b = _run_both(tmp_path, batch, 2, "one-step")
    assert a["config"]["world_size"] == 1 and b["config"]["world_size"] == 2
    for k, v in a["model_state"].items():
        torch.testing.assert_close(b["model_state"][k], v, rtol=1e-9, atol=1e-11)
    # the two runs really trained (weights moved far more than the tolerance)
    torch.manual_seed(10)
    from pdeinf.models import build

    init = build("vit", channels=4, resolution=16, size="smoke").double().state_dict()
    moved = max((a["model_state"][k] - init[k]).abs().max().item() for k in init)
    assert moved > 1e-4
    for ha, hb in zip(a["history"], b["history"]):
        assert hb["train_smse"] == pytest.approx(ha["train_smse"], rel=1e-10)
        assert hb["val_smse"] == pytest.approx(ha["val_smse"], rel=1e-10)


@pytest.mark.slow
@pytest.mark.parametrize("recipe", ["pushforward", "noise", "multistep", "augment", "physics"])
def test_torchrun_matches_one_process_for_every_recipe(tmp_path, recipe):
    """One epoch, global batch 37 split 19/18 (last 17/16) between the ranks."""
    a, b = _run_both(tmp_path, 37, 1, recipe)
    assert a["config"]["recipe"]["name"] == recipe == b["config"]["recipe"]["name"]
    assert b["config"]["world_size"] == 2
    for k, v in a["model_state"].items():
        torch.testing.assert_close(b["model_state"][k], v, rtol=1e-9, atol=1e-11)
    assert b["history"][0]["train_smse"] == pytest.approx(a["history"][0]["train_smse"], rel=1e-10)
