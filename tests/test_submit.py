"""tools/submit.py for real: submitit's local executor (2 tasks, gloo) and, where the local Slurm cluster runs,
its Slurm executor; a preemption signal during training leads to a checkpoint, submitit's checkpoint protocol
(TrainJob.checkpoint -> the same job with --resume), a requeue, and a run that finishes from the checkpoint."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import ENGINE_SMOKE, REPO, requires_slurm, wait_for_rows

pytest.importorskip("submitit")
sys.path.insert(0, str(REPO / "tools"))
import submit as submit_tool  # noqa: E402

LONG = ["SOLVER.MAX_ITER", "200", "SOLVER.WRITE_PERIOD", "1", "SOLVER.CHECKPOINT_PERIOD", "1000"]


def test_command_line_and_output_dir():
    args = submit_tool.build_parser().parse_args(
        ["--config-file", "configs/quick_schedules/instant.yaml", "--nodes", "2", "--gpus-per-node", "4",
         "--job-name", "exp", "SOLVER.MAX_ITER", "3"])
    assert submit_tool.output_dir(args) == "work_dirs/quick_schedules/instant/exp"
    assert submit_tool.main_argv(args) == ["--num-gpus", "8", "--config-file", "configs/quick_schedules/instant.yaml",
                                           "SOLVER.MAX_ITER", "3", "OUTPUT_DIR", "work_dirs/quick_schedules/instant/exp"]
    resumed = submit_tool.TrainJob(["--config-file", "x.yaml"]).checkpoint()
    assert resumed.function.argv == ["--resume", "--config-file", "x.yaml"]
    assert resumed.function.checkpoint().function.argv == ["--resume", "--config-file", "x.yaml"]


def _submit(out: Path, *extra: str):
    args = submit_tool.build_parser().parse_args(
        [*extra, "--gpus-per-node", "2", "--no-gpus", "--cpus-per-task", "1", "--timeout", "30",
         "--config-file", ENGINE_SMOKE, *LONG, "OUTPUT_DIR", str(out)])
    return submit_tool.submit(args)


def _check_preempted_and_finished(out: Path, results) -> None:
    assert results == [0, 0]
    log = (out / "log.txt").read_text()
    assert "Preempted by" in log and "Resuming from" in log
    final = torch.load(out / "model_final.pth", weights_only=True)
    assert final["iteration"] == 199
    logs = "".join(p.read_text() for p in (out / "submitit").rglob("*_0_log.*"))
    assert "Calling checkpoint method" in logs and "Requeued job" in logs


@pytest.mark.distributed
@pytest.mark.slow
def test_local_executor_requeues_on_preemption(tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    out = tmp_path / "out"
    job = _submit(out, "--cluster", "local")
    wait_for_rows(out / "metrics.json", 3, None)
    ps = subprocess.run(["ps", "-o", "pid=", "--ppid", str(job._process.pid)], capture_output=True, text=True)
    tasks = [int(p) for p in ps.stdout.split()]
    assert len(tasks) == 2
    for pid in tasks:  # as Slurm does before a time limit: every task gets the signal
        os.kill(pid, signal.SIGUSR2)
    _check_preempted_and_finished(out, job.results())


@pytest.mark.slurm
@pytest.mark.distributed
@pytest.mark.slow
@requires_slurm
def test_slurm_executor_requeues_on_preemption(tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    out = tmp_path / "out"
    job = _submit(out, "--cluster", "slurm", "--partition", "debug")
    wait_for_rows(out / "metrics.json", 3, None, timeout=180)
    job._interrupt()  # submitit's preemption: scancel --signal TERM, then USR2
    deadline = time.time() + 240
    while not job.done() and time.time() < deadline:
        time.sleep(1)
    _check_preempted_and_finished(out, job.results())
