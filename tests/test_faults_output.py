"""Fault injection, OUTPUT_DIR: a training run writes only under OUTPUT_DIR / CACHE_DIR / the demo root;
two jobs on one OUTPUT_DIR (lock); an OUTPUT_DIR that cannot be used.
"""
from __future__ import annotations

import subprocess

import pytest

from conftest import CLS, PYTHON, REPO, clean_env


@pytest.mark.slow
def test_training_writes_only_under_output_cache_and_demo_root(tmp_path):
    """HOME, the working directory and TMPDIR point at empty temp dirs; after a short training with evaluation,
    checkpoints and a data-loader worker, they are still empty (all output went to OUTPUT_DIR and CACHE_DIR, which
    holds the demo root), except python multiprocessing's socket dir in TMPDIR."""
    dirs = {name: tmp_path / name for name in ("home", "cwd", "tmp", "cache", "out")}
    for d in dirs.values():
        d.mkdir()
    env = clean_env({"HOME": str(dirs["home"]), "TMPDIR": str(dirs["tmp"]), "UNIPERCEIVER_CACHE": str(dirs["cache"]),
                     "PYTHONDONTWRITEBYTECODE": "1", "XDG_CACHE_HOME": "", "XDG_CONFIG_HOME": ""})
    for key in ("XDG_CACHE_HOME", "XDG_CONFIG_HOME", "MPLCONFIGDIR", "TORCH_HOME", "HF_HOME"):
        env.pop(key, None)
    cmd = [PYTHON, str(REPO / "main.py"), "--config-file", CLS, "SOLVER.MAX_ITER", "3", "LR_SCHEDULER.WARMUP", "0",
           "SOLVER.CHECKPOINT_PERIOD", "2", "SOLVER.EVAL_PERIOD", "3", "DATALOADER.NUM_WORKERS", "1",
           "OUTPUT_DIR", str(dirs["out"])]
    proc = subprocess.run(cmd, cwd=dirs["cwd"], env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (dirs["out"] / "model_final.pth").exists() and (dirs["cache"] / "demo").is_dir()
    for name in ("home", "cwd", "tmp"):
        left = [str(p.relative_to(dirs[name])) for p in dirs[name].rglob("*")]
        if name == "tmp":  # python multiprocessing's own socket dir of the data-loader worker (pymp-*/listener-*)
            left = [p for p in left if not p.split("/")[0].startswith("pymp-")]
        assert not left, f"files written under {name}: {left[:10]}"
