"""Fault injection, OUTPUT_DIR: a training run writes only under OUTPUT_DIR / CACHE_DIR / the demo root;
two jobs on one OUTPUT_DIR (lock); an OUTPUT_DIR that cannot be used.
"""
from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from conftest import CLS, ENGINE_SMOKE, PYTHON, REPO, clean_env, restored_loggers, run_main, start_main, wait_for


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


# ------------------------------------------------------------------------------------------- OUTPUT_DIR lock
LONG = ["SOLVER.MAX_ITER", "400", "SOLVER.WRITE_PERIOD", "1", "SOLVER.CHECKPOINT_PERIOD", "1000"]


def test_second_job_on_a_busy_output_dir_is_refused_naming_the_holder(tmp_path):
    """A job submitted twice: the second training run and an --eval-only into the same OUTPUT_DIR are refused
    in one line naming host, pid and Slurm job of the first (exit 2, nothing written); once the first is
    SIGKILLed, the lock is free."""
    out = tmp_path / "out"
    first = start_main(["--config-file", ENGINE_SMOKE, *LONG], out)
    try:
        wait_for(lambda: (out / "metrics.json").exists(), first, "the first job's first step")
        config = (out / "config.yaml").read_text()
        for extra in ([], ["--eval-only", "MODEL.WEIGHTS", "none.pth"]):
            proc = run_main(["--config-file", ENGINE_SMOKE, *extra, "SOLVER.MAX_ITER", "7", "OUTPUT_DIR", out],
                            check=False)
            err = proc.stderr.strip().splitlines()
            assert proc.returncode == 2 and len(err) == 1, proc.stderr
            assert err[0].startswith(f"error: OUTPUT_DIR {out} is in use by another job (host=")
            assert f"pid={first.pid} slurm_job=-" in err[0]
        assert (out / "config.yaml").read_text() == config  # the first job's config, untouched
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.communicate(timeout=60)
    run_main(["--config-file", ENGINE_SMOKE, "SOLVER.MAX_ITER", "3", "OUTPUT_DIR", out])  # released by the kill


_HOLD = r"""
import os, sys, time
from uniperceiver.utils.output_lock import OutputDirLock
OutputDirLock(sys.argv[1]).acquire()
if sys.argv[2] == "fork-then-exit":       # a data-loader worker that outlives its parent for a while
    if os.fork() == 0:
        time.sleep(20)
        os._exit(0)
    print("locked", flush=True)
    time.sleep(1)
    os._exit(0)
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
"""


def _kill(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # the holder and its forked child
    except ProcessLookupError:
        pass
    proc.communicate(timeout=60)


def _holder(out: Path, arg: str, job: str) -> subprocess.Popen:
    proc = subprocess.Popen([PYTHON, "-c", _HOLD, str(out), arg], cwd=REPO, env=clean_env({"SLURM_JOB_ID": job}),
                            stdout=subprocess.PIPE, text=True, start_new_session=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_slurm_requeue_of_the_same_job_waits_for_the_lock_another_job_does_not(tmp_path, monkeypatch):
    from uniperceiver.utils.output_lock import OutputDirLock, OutputDirLocked

    out = tmp_path / "out"
    out.mkdir()
    holder = _holder(out, "3", job="77")
    try:
        monkeypatch.setenv("SLURM_JOB_ID", "78")
        with pytest.raises(OutputDirLocked, match=r"in use by another job \(host=\S+ pid=\d+ slurm_job=77;"):
            OutputDirLock(str(out)).acquire()
        monkeypatch.setenv("SLURM_JOB_ID", "77")  # the requeued run of job 77: waits for the ending one
        start = time.monotonic()
        lock = OutputDirLock(str(out), poll_s=0.1).acquire()
        assert holder.poll() is not None and time.monotonic() - start > 0.5
        assert (out / ".lock").read_text().strip().endswith(f"pid={os.getpid()} slurm_job=77")
        lock.release()
    finally:
        _kill(holder)


def test_lock_is_released_when_the_holder_dies_though_a_forked_child_lives(tmp_path):
    from uniperceiver.utils.output_lock import OutputDirLock

    out = tmp_path / "out"
    out.mkdir()
    holder = _holder(out, "fork-then-exit", job="5")
    try:
        holder.wait(timeout=60)
        OutputDirLock(str(out), wait_s=0).acquire().release()  # the child (still sleeping) holds nothing
    finally:
        _kill(holder)


@pytest.mark.parametrize("kind", ["a_file", "under_a_file"])
def test_unusable_output_dir_is_one_line_exit_2(tmp_path, capsys, kind):
    import main

    (tmp_path / "file").write_text("not a directory")
    out = tmp_path / "file" if kind == "a_file" else tmp_path / "file" / "sub"
    with restored_loggers():
        code = main.run(["--config-file", ENGINE_SMOKE, "OUTPUT_DIR", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.splitlines() == [err] and err.startswith(f"error: OUTPUT_DIR {out} is not usable: ")
