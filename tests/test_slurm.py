"""run.sh on a real Slurm cluster (``tools/slurm_cluster.sh start``; ``.ci/run`` starts it): 2 srun tasks train
the instant config over gloo, leave checkpoints and metrics in work_dirs/, and a second run resumes (finished).

Runs in a temporary copy of the repository (main.py, run.sh; configs/ and uniperceiver/ linked), so
``work_dirs/`` never lands in the shared working tree.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from conftest import PYTHON, REPO, clean_env, requires_slurm


@pytest.fixture
def repo_copy(tmp_path) -> Path:
    """main.py and run.sh copied, configs/ and uniperceiver/ linked: a checkout whose work_dirs/ is private."""
    root = tmp_path / "repo"
    root.mkdir()
    for name in ("main.py", "run.sh"):
        shutil.copy(REPO / name, root / name)
    for name in ("configs", "uniperceiver"):
        os.symlink(REPO / name, root / name)
    return root


def run_sh(root: Path, args, env=None, timeout=240) -> subprocess.CompletedProcess:
    full_env = clean_env(dict(GPUS_PER_NODE="2", CPUS_PER_TASK="1", GRES="none", PYTHON=PYTHON))
    full_env.update(env or {})
    return subprocess.run(["sh", "run.sh", *args], cwd=root, env=full_env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.slurm
@pytest.mark.distributed
@requires_slurm
def test_run_sh_trains_two_tasks_and_resumes(repo_copy):
    proc = run_sh(repo_copy, ["configs/quick_schedules/instant.yaml", "test", "2", "debug"])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = repo_copy / "work_dirs" / "quick_schedules" / "instant" / "test"
    names = set(os.listdir(out))
    assert {"config.yaml", "log.txt", "log.txt.rank1", "metrics.json", "last_checkpoint", "model_final.pth",
            "model_0000009.pth"} <= names
    log = (out / "log.txt").read_text()
    assert "Rank 0 of 2" in log  # two Slurm tasks formed one process group
    rank1 = (out / "log.txt.rank1").read_text()
    assert "Rank 1 of 2" in rank1
    rows = [json.loads(line) for line in (out / "metrics.json").read_text().splitlines()]
    assert rows[-1]["iteration"] == 11 and rows[-1]["total_loss"] > 0
    ckpt = torch.load(out / "model_final.pth", weights_only=True)
    assert ckpt["iteration"] == 11 and ckpt["model"]

    # run.sh always passes --resume: the same command again finds the finished run and does nothing.
    mtime = os.path.getmtime(out / "model_final.pth")
    again = run_sh(repo_copy, ["configs/quick_schedules/instant.yaml", "test", "2", "debug"])
    assert again.returncode == 0, again.stderr[-3000:]
    assert "nothing to do" in again.stdout
    assert os.path.getmtime(out / "model_final.pth") == mtime


@pytest.mark.slurm
@requires_slurm
def test_run_sh_passes_gres_and_srun_args(repo_copy):
    # The default GRES is gpu:<tasks per node>; this CPU cluster has no GPUs, so Slurm itself rejects it.
    proc = run_sh(repo_copy, ["configs/quick_schedules/instant.yaml", "gres", "2", "debug"], env={"GRES": ""})
    assert proc.returncode != 0 and "gres" in proc.stderr.lower()
    assert not (repo_copy / "work_dirs").exists()
    # SRUN_ARGS reach srun (--label prefixes each line with the task id); KEY VALUE pairs reach main.py.
    proc = run_sh(repo_copy, ["configs/quick_schedules/instant.yaml", "label", "1", "debug", "SOLVER.MAX_ITER", "3"],
                  env={"SRUN_ARGS": "--label"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert any(line.startswith("0: ") for line in (proc.stdout + proc.stderr).splitlines())
    ckpt = torch.load(repo_copy / "work_dirs/quick_schedules/instant/label/model_final.pth", weights_only=True)
    assert ckpt["iteration"] == 2


def test_run_sh_usage_errors(repo_copy):
    """Argument checks happen before srun, so they run without a cluster."""
    proc = run_sh(repo_copy, ["configs/quick_schedules/instant.yaml", "x"])
    assert proc.returncode == 2 and "usage" in proc.stderr
    proc = run_sh(repo_copy, ["configs/quick_schedules/instant.yaml", "x", "two", "debug"])
    assert proc.returncode == 2 and "GPUS must be a positive integer" in proc.stderr
