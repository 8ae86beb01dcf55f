"""Preemption for real: signal a running main.py, check the checkpoint it leaves and exit status 0, resume and
end exactly where an uninterrupted run ends; under the local Slurm cluster, the job requeues itself."""
from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from conftest import ENGINE_SMOKE, PYTHON, REPO, clean_env, requires_slurm, run_main, tagged_iteration, wait_for_rows

LONG = ["SOLVER.MAX_ITER", "400", "SOLVER.WRITE_PERIOD", "1", "SOLVER.CHECKPOINT_PERIOD", "1000"]


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = torch.load(a, weights_only=True)["model"], torch.load(b, weights_only=True)["model"]
    assert wa.keys() == wb.keys()
    for key in wa:
        assert torch.equal(wa[key], wb[key]), f"{key} differs between {a} and {b}"


def children(pid: int):
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


def test_signal_checkpoints_exits_0_and_resumes_exactly(tmp_path, sig=signal.SIGUSR1):
    out = tmp_path / "cut"
    proc = subprocess.Popen([PYTHON, str(REPO / "main.py"), "--config-file", ENGINE_SMOKE, *LONG, "OUTPUT_DIR", str(out)],
                            cwd=REPO, env=clean_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wait_for_rows(out / "metrics.json", 3, proc)
    proc.send_signal(sig)
    log, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, log[-3000:]
    assert f"Preempted by {sig.name}" in log
    it = tagged_iteration(out)
    assert 2 <= it < 399 and (out / f"model_{it:07d}.pth").exists()
    assert not (out / "model_final.pth").exists()

    run_main(["--config-file", ENGINE_SMOKE, "--resume", *LONG, "OUTPUT_DIR", out])
    assert f"Resuming from {out / f'model_{it:07d}.pth'}" in (out / "log.txt").read_text()
    ref = tmp_path / "ref"
    run_main(["--config-file", ENGINE_SMOKE, *LONG, "OUTPUT_DIR", ref])
    assert_same_weights(out / "model_final.pth", ref / "model_final.pth")


@pytest.mark.distributed
def test_one_signalled_rank_stops_all_ranks_at_the_same_step(tmp_path):
    out = tmp_path / "out"
    proc = subprocess.Popen([PYTHON, str(REPO / "main.py"), "--num-gpus", "2", "--config-file", ENGINE_SMOKE, *LONG,
                             "OUTPUT_DIR", str(out)], cwd=REPO, env=clean_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    wait_for_rows(out / "metrics.json", 3, proc)
    workers = children(proc.pid)
    workers = [w for w in workers if "spawn" in Path(f"/proc/{w}/cmdline").read_text().replace("\0", " ")]
    assert len(workers) == 2, workers
    os.kill(workers[-1], signal.SIGTERM)  # only one worker: the other learns it from the all-reduce
    log, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, log[-3000:]
    it = tagged_iteration(out)
    assert it < 399
    logs = (out / "log.txt").read_text() + (out / "log.txt.rank1").read_text()
    assert "received SIGTERM" in log
    assert logs.count(f"Preempted by SIGTERM at iteration {it};") == 1
    assert logs.count(f"Preempted by a signal on another rank at iteration {it};") == 1


@pytest.mark.distributed
def test_spawning_parent_forwards_the_signal(tmp_path):
    """``main.py --num-gpus 2``: a signal to the parent (as ``kill PID`` or Slurm gives it) reaches both workers."""
    out = tmp_path / "out"
    proc = subprocess.Popen([PYTHON, str(REPO / "main.py"), "--num-gpus", "2", "--config-file", ENGINE_SMOKE, *LONG,
                             "OUTPUT_DIR", str(out)], cwd=REPO, env=clean_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    wait_for_rows(out / "metrics.json", 3, proc)
    proc.send_signal(signal.SIGUSR1)
    log, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, log[-3000:]
    it = tagged_iteration(out)
    assert it < 399 and (out / f"model_{it:07d}.pth").exists()
    logs = (out / "log.txt").read_text() + (out / "log.txt.rank1").read_text()
    # both workers stop at the same step (one may have got its signal a step later: "a signal on another rank")
    assert logs.count(f" at iteration {it}; checkpoint") == 2 and f"Preempted by SIGUSR1 at iteration {it};" in logs


# ------------------------------------------------------------------------------------------------ Slurm
def sbatch(root: Path, script: str) -> str:
    out = subprocess.run(["sbatch", "--parsable", "-p", "debug", "-n2", "-c1", "-o", str(root / "slurm-%j.out"),
                          "--open-mode=append", "--wrap", script], cwd=root, env=clean_env(), capture_output=True,
                         text=True, check=True)
    return out.stdout.strip().split(";")[0]


def job_field(job: str, field: str) -> str:
    out = subprocess.run(["scontrol", "show", "job", job], capture_output=True, text=True).stdout
    for token in out.split():
        if token.startswith(field + "="):
            return token.split("=", 1)[1]
    return ""


def wait_job(job: str, timeout: float) -> str:
    deadline = time.time() + timeout
    while time.time() < deadline:
        state = job_field(job, "JobState")
        if state in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY"):
            return state
        time.sleep(0.5)
    subprocess.run(["scancel", job])
    raise AssertionError(f"job {job} still {job_field(job, 'JobState')} after {timeout} s")


@pytest.mark.slurm
@pytest.mark.distributed
@pytest.mark.slow
@requires_slurm
def test_slurm_job_requeues_itself_and_resumes_exactly(tmp_path):

    root = tmp_path / "repo"
    root.mkdir()
    for name in ("main.py", "run.sh"):
        (root / name).write_bytes((REPO / name).read_bytes())
    for name in ("configs", "uniperceiver"):
        os.symlink(REPO / name, root / name)
    knobs = f"GPUS_PER_NODE=2 CPUS_PER_TASK=1 GRES=none PYTHON={PYTHON}"
    overrides = "SOLVER.MAX_ITER 200 SOLVER.WRITE_PERIOD 1 SOLVER.CHECKPOINT_PERIOD 1000"

    job = sbatch(root, f"{knobs} sh run.sh configs/quick_schedules/instant_placeholder.yaml pre 2 debug {overrides}")
    out = root / "work_dirs/quick_schedules/instant_placeholder/pre"
    wait_for_rows(out / "metrics.json", 3, None)
    subprocess.run(["scancel", "--signal=USR1", job], check=True)  # all tasks of the job's steps
    # The job requeues itself (restart after Slurm's requeue delay) and finishes from the checkpoint.
    assert wait_job(job, 180) == "COMPLETED", (root / f"slurm-{job}.out").read_text()[-3000:]
    assert job_field(job, "Restarts") == "1"
    log = (out / "log.txt").read_text()
    assert "Preempted by SIGUSR1" in log and "Requeued Slurm job" in log and "Resuming from" in log

    ref_job = sbatch(root, f"{knobs} sh run.sh configs/quick_schedules/instant_placeholder.yaml ref 2 debug {overrides}")
    assert wait_job(ref_job, 180) == "COMPLETED"
    assert_same_weights(out / "model_final.pth", root / "work_dirs/quick_schedules/instant_placeholder/ref/model_final.pth")
