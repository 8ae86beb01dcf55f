"""Shared test helpers: CPU-only defaults, a session cache dir, and running main.py in a subprocess."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
# The real Tiny model on demo data (two tasks): the smoke test of every feature.
INSTANT = str(REPO / "configs" / "quick_schedules" / "instant.yaml")
# The placeholder model on synthetic data: engine / launch / resume / scale-out mechanics in seconds.
ENGINE_SMOKE = str(REPO / "configs" / "quick_schedules" / "instant_placeholder.yaml")

# Tiny models on a shared 2-core machine: one intra-op thread each is much faster than contention.
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)


@pytest.fixture(scope="session", autouse=True)
def _session_cache(tmp_path_factory):
    """UNIPERCEIVER_CACHE points to a session tmp dir so tests never write into ~/.cache."""
    cache = tmp_path_factory.mktemp("uniperceiver_cache")
    old = os.environ.get("UNIPERCEIVER_CACHE")
    os.environ["UNIPERCEIVER_CACHE"] = str(cache)
    yield cache
    if old is None:
        os.environ.pop("UNIPERCEIVER_CACHE", None)
    else:
        os.environ["UNIPERCEIVER_CACHE"] = old


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def output_dir(tmp_path) -> Path:
    return tmp_path / "out"


def clean_env(extra: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    """The environment for a child run: no inherited launcher / Slurm variables, one thread."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("SLURM_") and k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                      "MASTER_PORT", "LOCAL_WORLD_SIZE")}
    env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.update(extra or {})
    return env


def run_main(args: Sequence[str], *, launcher: Sequence[str] = (), env: Optional[Dict[str, str]] = None,
             timeout: float = 240, check: bool = True) -> subprocess.CompletedProcess:
    """Run ``[launcher...] main.py args...`` from the repo root; ``check`` asserts exit code 0."""
    cmd: List[str] = list(launcher) + [str(REPO / "main.py")] + [str(a) for a in args]
    if not launcher:
        cmd = [PYTHON] + cmd
    proc = subprocess.run(cmd, cwd=REPO, env=clean_env(env), capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {proc.returncode}\nSTDOUT:\n{proc.stdout[-4000:]}\n"
                             f"STDERR:\n{proc.stderr[-6000:]}")
    return proc


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
