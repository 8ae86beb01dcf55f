"""main.py end to end: torchrun / torch.distributed.launch / --num-gpus spawn, outputs, resume, user errors."""
import json
import os
import signal
import subprocess
import time

import pytest
import torch
import yaml

from conftest import ENGINE_SMOKE, PYTHON, REPO, clean_env, free_port, run_main
from uniperceiver.config import setup_cfg
from uniperceiver.solver import build_lr_multiplier

TWO_TASKS = f"""_BASE_: {ENGINE_SMOKE}
TASKS:
  - NAME: synthetic
    DATALOADER: {{NUM_WORKERS: 1}}
  - NAME: other
    DATASETS: {{TASK_TYPE: synthetic_regression}}
    DATALOADER: {{TRAIN_BATCH_SIZE: 4, NUM_WORKERS: 1, SAMPLING_WEIGHT: 0.5}}
"""


def _metrics(out):
    with open(out / "metrics.json") as f:
        return [json.loads(line) for line in f]


def _check_outputs(out, max_iter, ranks=1):
    names = set(os.listdir(out))
    assert {"config.yaml", "log.txt", "metrics.json", "last_checkpoint", "model_final.pth"} <= names
    assert all(f"log.txt.rank{r}" in names for r in range(1, ranks))
    assert any(n.startswith("events.out.tfevents") for n in names)
    rows = _metrics(out)
    assert rows[-1]["iteration"] == max_iter - 1 and "total_loss" in rows[-1] and "lr" in rows[-1]
    assert "loss_synthetic" in {k for r in rows for k in r}
    log = (out / "log.txt").read_text()
    assert "torch" in log and "git" in log and f"world size {ranks}" in log
    cfg = setup_cfg(str(out / "config.yaml"))
    assert yaml.safe_load(cfg.dump()) == yaml.safe_load((out / "config.yaml").read_text())
    ckpt = torch.load(out / "model_final.pth", weights_only=True)
    assert ckpt["iteration"] == max_iter - 1


def test_single_process_run_and_finished_resume(tmp_path):
    out = tmp_path / "out"
    run_main(["--config-file", ENGINE_SMOKE, "OUTPUT_DIR", out])
    _check_outputs(out, 12)
    # CHECKPOINT_PERIOD 5, CHECKPOINT_MAX_SAVE 2: model_0000004 and model_0000009 kept
    assert sorted(n for n in os.listdir(out) if n.startswith("model_")) == [
        "model_0000004.pth", "model_0000009.pth", "model_final.pth"]
    def files():  # the job lock (.lock) records its last holder: bookkeeping, not output
        return {n: (os.path.getsize(out / n), os.path.getmtime(out / n)) for n in os.listdir(out) if n != ".lock"}

    before = files()
    proc = run_main(["--config-file", ENGINE_SMOKE, "--resume", "OUTPUT_DIR", out])
    assert "nothing to do" in proc.stdout
    assert files() == before


def test_user_error_one_line_exit_2(tmp_path):
    proc = run_main(["--config-file", ENGINE_SMOKE, "SOLVER.MAX_ITERS", "3"], check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error:") and "SOLVER.MAX_ITER" in proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    proc = run_main(["--config-file", ENGINE_SMOKE, "--debug", "SOLVER.MAX_ITERS", "3"], check=False)
    assert proc.returncode != 0 and "Traceback" in proc.stderr
    proc = run_main(["--config-file", ENGINE_SMOKE, "MODEL.WEIGHTS", tmp_path / "missing.pth",
                     "OUTPUT_DIR", tmp_path / "o"], check=False)
    assert proc.returncode == 2 and "missing.pth" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_resume_is_exact(tmp_path):
    """A run resumed from its checkpoint at iteration 4 ends with the same weights as an uninterrupted one
    (two tasks, NUM_WORKERS 1: task draws, samples, optimizer, schedule and RNG are all restored)."""
    cfg_file = tmp_path / "two.yaml"
    cfg_file.write_text(TWO_TASKS)
    ref, cut = tmp_path / "ref", tmp_path / "cut"
    run_main(["--config-file", cfg_file, "OUTPUT_DIR", ref])
    run_main(["--config-file", cfg_file, "OUTPUT_DIR", cut])
    # the state a kill right after the first checkpoint leaves behind
    for name in ("model_final.pth", "model_0000009.pth"):
        os.remove(cut / name)
    (cut / "last_checkpoint").write_text("model_0000004.pth")
    run_main(["--config-file", cfg_file, "--resume", "OUTPUT_DIR", cut])
    assert "Starting training from iteration 5 to 12" in (cut / "log.txt").read_text()
    a = torch.load(ref / "model_final.pth", weights_only=True)
    b = torch.load(cut / "model_final.pth", weights_only=True)
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert a["data_loader"]["ranks"][0]["consumed"] == b["data_loader"]["ranks"][0]["consumed"]
    assert set(a["data_loader"]["ranks"][0]["consumed"]) == {"synthetic", "other"}


@pytest.mark.slow
def test_kill_then_resume_continues_at_right_iteration_and_lr(tmp_path):
    out = tmp_path / "out"
    args = ["--config-file", ENGINE_SMOKE, "OUTPUT_DIR", out, "SOLVER.MAX_ITER", "300", "SOLVER.CHECKPOINT_PERIOD", "3",
            "SOLVER.WRITE_PERIOD", "1", "LR_SCHEDULER.WARMUP", "0"]
    proc = subprocess.Popen([PYTHON, str(REPO / "main.py")] + [str(a) for a in args], cwd=REPO, env=clean_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not (out / "last_checkpoint").exists():
        time.sleep(0.2)
    time.sleep(0.5)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (out / "last_checkpoint").exists(), "no checkpoint was written before the deadline"
    last = torch.load(out / (out / "last_checkpoint").read_text(), weights_only=True)["iteration"]
    assert last < 299, "the run finished before it was killed"
    run_main(["--resume"] + args)
    log = (out / "log.txt").read_text()
    assert f"Starting training from iteration {last + 1} to 300" in log
    rows = [r for r in _metrics(out) if r["iteration"] == last + 1 and "lr" in r]
    cfg = setup_cfg(ENGINE_SMOKE)
    expected = build_lr_multiplier("WarmupCosine", 300, cfg.SOLVER.BASE_LR, min_lr=cfg.LR_SCHEDULER.MIN_LR)(
        (last + 1) / 300) * cfg.SOLVER.BASE_LR
    assert rows and rows[-1]["lr"] == pytest.approx(expected, rel=1e-6)
    assert torch.load(out / "model_final.pth", weights_only=True)["iteration"] == 299


def _launcher_run(tmp_path, launcher, extra=()):
    out = tmp_path / "out"
    run_main(["--config-file", ENGINE_SMOKE, *extra, "OUTPUT_DIR", out, "SOLVER.MAX_ITER", "6",
              "SOLVER.CHECKPOINT_PERIOD", "3"], launcher=launcher, timeout=400)
    _check_outputs(out, 6, ranks=2)
    return out


@pytest.mark.distributed
@pytest.mark.slow
def test_torchrun_two_processes(tmp_path):
    out = _launcher_run(tmp_path, [PYTHON, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                                   "--master_port", str(free_port())])
    assert "Rank 1 of 2" in (out / "log.txt.rank1").read_text()


@pytest.mark.distributed
@pytest.mark.slow
def test_torch_distributed_launch_two_processes(tmp_path):
    """The published command: python -m torch.distributed.launch --nproc_per_node=2 main.py --num-gpus 2 ..."""
    _launcher_run(tmp_path, [PYTHON, "-m", "torch.distributed.launch", "--nproc_per_node=2",
                             f"--master_port={free_port()}"], extra=["--num-gpus", "2"])


@pytest.mark.distributed
@pytest.mark.slow
def test_num_gpus_spawn_two_processes(tmp_path):
    _launcher_run(tmp_path, [], extra=["--num-gpus", "2"])


# ------------------------------------------------------------------ world detection (pure functions)
from uniperceiver.engine.defaults import default_argument_parser  # noqa: E402
from uniperceiver.engine.launch import detect_world, expand_nodelist, slurm_port  # noqa: E402


def test_expand_nodelist():
    assert expand_nodelist("node[01-03,7],gpu5") == ["node01", "node02", "node03", "node7", "gpu5"]
    assert expand_nodelist("rack[1-2]-n[08-09]") == ["rack1-n08", "rack1-n09", "rack2-n08", "rack2-n09"]
    assert expand_nodelist("single") == ["single"]


def test_detect_world_order():
    launcher = {"RANK": "3", "WORLD_SIZE": "4", "MASTER_ADDR": "h", "MASTER_PORT": "1234",
                "SLURM_PROCID": "0", "SLURM_NTASKS": "8"}
    w = detect_world(local_rank_arg=1, env=launcher)
    assert (w.source, w.rank, w.world_size, w.local_rank, w.master_port) == ("launcher", 3, 4, 1, 1234)
    w = detect_world(env=dict(launcher, LOCAL_RANK="2"), local_rank_arg=1)
    assert w.local_rank == 2  # the environment wins over --local-rank
    slurm = {"SLURM_PROCID": "5", "SLURM_NTASKS": "8", "SLURM_LOCALID": "1", "SLURM_JOB_ID": "123456",
             "SLURM_JOB_NODELIST": "gpu[10-11]"}
    w = detect_world(env=slurm)
    assert (w.source, w.rank, w.world_size, w.local_rank, w.master_addr) == ("slurm", 5, 8, 1, "gpu10")
    assert w.master_port == 10000 + 123456 % 20000
    assert slurm_port(dict(slurm, MASTER_PORT="2222")) == 2222
    assert detect_world(env={"SLURM_PROCID": "0", "SLURM_NTASKS": "1"}).source == "single"
    assert detect_world(env={}).source == "single"


@pytest.mark.parametrize("flag", ["--local-rank=1", "--local_rank=1"])
def test_parser_accepts_both_local_rank_spellings(flag):
    args = default_argument_parser().parse_args([flag, "--num-gpus", "2", "--config-file", "c.yaml",
                                                 "OUTPUT_DIR", "x", "SOLVER.ACCUM_ITER", "2"])
    assert args.local_rank == 1 and args.num_gpus == 2
    assert args.opts == ["OUTPUT_DIR", "x", "SOLVER.ACCUM_ITER", "2"]


@pytest.mark.distributed
@pytest.mark.slow
def test_spawn_user_error_exit_2(tmp_path):
    """A user error raised inside spawned workers (a checkpoint that does not exist) still exits 2."""
    proc = run_main(["--config-file", ENGINE_SMOKE, "--num-gpus", "2", "MODEL.WEIGHTS", tmp_path / "nope.pth",
                     "OUTPUT_DIR", tmp_path / "o"], check=False, timeout=300)
    assert proc.returncode == 2 and "nope.pth" in proc.stderr


def _regroup_worker(rank: int, ports) -> None:
    import gc
    import sys

    import torch.distributed as dist

    from uniperceiver.utils import comm

    for port in ports:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
        pg = dist.group.WORLD
        assert comm.all_gather({"rank": rank, "port": port}) == [{"rank": r, "port": port} for r in (0, 1)]
        assert comm.gather(rank) == ([0, 1] if rank == 0 else [])
        comm.destroy_process_group()
        gc.collect()
        # Only this frame's ``pg`` and getrefcount's argument are left: nothing of comm's keeps the group,
        # whose gloo threads would otherwise outlive it into interpreter shutdown.
        assert sys.getrefcount(pg) == 2, f"{sys.getrefcount(pg) - 2} references to a destroyed process group"
        del pg


@pytest.mark.distributed
def test_process_group_can_be_destroyed_and_made_again():
    """comm's object collectives follow a new process group and keep no reference to a destroyed one."""
    torch.multiprocessing.spawn(_regroup_worker, args=([free_port(), free_port()],), nprocs=2)


def _subgroups_worker(rank: int, port: int) -> None:
    import torch.distributed as dist

    from uniperceiver.utils import comm

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    both, only0, only1 = dist.new_group([0, 1]), dist.new_group([0]), dist.new_group([1])
    mine = only0 if rank == 0 else only1
    assert comm._all_groups() == [dist.group.WORLD, both, mine]
    dist.all_reduce(torch.ones(3), group=both, async_op=True)  # left in flight: the teardown barrier waits
    # One barrier per group this rank is in; a barrier on a group the other rank is not in would hang here.
    comm.destroy_process_group()
    assert not comm.is_dist()


@pytest.mark.distributed
def test_teardown_waits_on_every_group_including_ones_a_rank_is_not_in():
    torch.multiprocessing.spawn(_subgroups_worker, args=(free_port(),), nprocs=2)
