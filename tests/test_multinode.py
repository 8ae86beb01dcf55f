"""Two "nodes" on this machine: two launcher processes on loopback, 2 training processes each, train the instant
config; the result equals one launcher with 4 processes.  These are the README's multi-node commands."""
from __future__ import annotations

import subprocess
from pathlib import Path
from typing import List

import pytest
import torch

from conftest import ENGINE_SMOKE, PYTHON, REPO, clean_env, free_port, run_main

pytestmark = [pytest.mark.distributed, pytest.mark.slow]
TRAIN = ["--config-file", ENGINE_SMOKE, "SOLVER.MAX_ITER", "4"]
TORCHRUN = [PYTHON, "-m", "torch.distributed.run"]
LAUNCH = [PYTHON, "-m", "torch.distributed.launch"]


@pytest.fixture(scope="module")
def one_launcher(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("single") / "out"
    run_main([*TRAIN, "OUTPUT_DIR", out], launcher=[*TORCHRUN, "--nproc_per_node", "4",
                                                    "--master_port", str(free_port())])
    return out


def node_commands(form: str, port: int) -> List[List[str]]:
    """The launcher command of each node (without main.py and its arguments)."""
    if form == "torchrun":
        return [[*TORCHRUN, "--nnodes", "2", "--node_rank", str(n), "--master_addr", "127.0.0.1",
                 "--master_port", str(port), "--nproc_per_node", "2"] for n in range(2)]
    if form == "torchrun-c10d":
        return [[*TORCHRUN, "--nnodes", "2", "--nproc_per_node", "2", "--rdzv_backend", "c10d",
                 "--rdzv_endpoint", f"127.0.0.1:{port}", "--rdzv_id", "test"] for _ in range(2)]
    if form == "distributed.launch":
        return [[*LAUNCH, "--nnodes=2", f"--node_rank={n}", "--master_addr=127.0.0.1", f"--master_port={port}",
                 "--nproc_per_node=2"] for n in range(2)]
    raise ValueError(form)


@pytest.mark.parametrize("form", ["torchrun", "torchrun-c10d", "distributed.launch"])
def test_two_nodes_equal_one_node(form, tmp_path, one_launcher):
    out = tmp_path / "out"
    main = [str(REPO / "main.py"), "--num-gpus", "2", *TRAIN, "OUTPUT_DIR", str(out)]
    procs = [subprocess.Popen(cmd + main, cwd=REPO, env=clean_env(), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for cmd in node_commands(form, free_port())]
    logs = [p.communicate(timeout=240)[0] for p in procs]
    for p, log in zip(procs, logs):
        assert p.returncode == 0, log[-4000:]
    assert "world size 4" in (out / "log.txt").read_text()
    got = torch.load(out / "model_final.pth", weights_only=True)
    want = torch.load(one_launcher / "model_final.pth", weights_only=True)
    assert got["iteration"] == want["iteration"] == 3
    for key, value in want["model"].items():
        assert torch.equal(got["model"][key], value), f"{key}: 2 nodes x 2 differs from 1 node x 4"
