"""Process launching and world detection.

Order (first match wins):
1. a launcher set ``RANK`` / ``WORLD_SIZE`` (``torchrun``, ``python -m torch.distributed.launch`` — which also
   passes ``--local-rank`` / ``--local_rank``); ``LOCAL_RANK`` from the environment or that flag;
2. Slurm: ``SLURM_PROCID`` set and ``SLURM_NTASKS`` > 1; the master is the first host of
   ``SLURM_JOB_NODELIST`` (``scontrol show hostnames``, else a pure-python parser), the port ``MASTER_PORT``
   or one derived from ``SLURM_JOB_ID``;
3. ``--num-gpus N`` > 1 (x ``--num-machines``): spawn N local processes (torch.multiprocessing);
4. one process, no process group.

Backend: nccl with CUDA, gloo without.  Under a launcher, ``--num-gpus`` is only compared with the world size.
"""
from __future__ import annotations

import dataclasses
import datetime
import logging
import os
import re
import socket
import subprocess
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from uniperceiver.utils import comm

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT = datetime.timedelta(minutes=30)


@dataclasses.dataclass
class World:
    """Where this process sits.  ``source``: "launcher", "slurm", "spawn" or "single"."""

    source: str
    world_size: int = 1
    rank: int = 0
    local_rank: int = 0
    master_addr: str = ""
    master_port: int = 0


# ------------------------------------------------------------------------------------------------ Slurm
def expand_nodelist(nodelist: str) -> List[str]:
    """Expand a Slurm hostlist (``node[01-03,7],gpu-a[1-2]-x``) without scontrol."""
    parts, depth, cur = [], 0, ""
    for ch in nodelist.strip():
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
            continue
        depth += ch == "["
        depth -= ch == "]"
        cur += ch
    if cur:
        parts.append(cur)
    hosts: List[str] = []
    for part in parts:
        hosts.extend(_expand_one(part))
    return hosts


def _expand_one(pattern: str) -> List[str]:
    m = re.search(r"\[([^\]]*)\]", pattern)
    if not m:
        return [pattern]
    head, tail = pattern[: m.start()], pattern[m.end():]
    out = []
    for item in m.group(1).split(","):
        if "-" in item:
            lo, hi = item.split("-", 1)
            width = len(lo)
            for i in range(int(lo), int(hi) + 1):
                out.extend(_expand_one(f"{head}{str(i).zfill(width)}{tail}"))
        else:
            out.extend(_expand_one(f"{head}{item}{tail}"))
    return out


def slurm_master_addr(nodelist: str) -> str:
    try:
        out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True,
                             timeout=20)
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.split()[0]
    except (OSError, subprocess.SubprocessError):
        pass
    return expand_nodelist(nodelist)[0]


def slurm_port(env: Dict[str, str]) -> int:
    if env.get("MASTER_PORT"):
        return int(env["MASTER_PORT"])
    job = env.get("SLURM_JOB_ID", "0")
    return 10000 + int(re.sub(r"\D", "", job) or 0) % 20000


# ------------------------------------------------------------------------------------------- detection
def detect_world(local_rank_arg: Optional[int] = None, env: Optional[Dict[str, str]] = None) -> World:
    """The world this process was started in (not counting ``--num-gpus`` spawning)."""
    env = dict(os.environ) if env is None else env
    if "RANK" in env and "WORLD_SIZE" in env:
        local = env.get("LOCAL_RANK")
        local_rank = int(local) if local is not None else int(local_rank_arg or 0)
        return World("launcher", int(env["WORLD_SIZE"]), int(env["RANK"]), local_rank,
                     env.get("MASTER_ADDR", "127.0.0.1"), int(env.get("MASTER_PORT", 29500)))
    if "SLURM_PROCID" in env and int(env.get("SLURM_NTASKS", "1")) > 1:
        nodelist = env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST") or "localhost"
        return World("slurm", int(env["SLURM_NTASKS"]), int(env["SLURM_PROCID"]), int(env.get("SLURM_LOCALID", 0)),
                     env.get("MASTER_ADDR") or slurm_master_addr(nodelist), slurm_port(env))
    return World("single")


def _find_free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _backend() -> str:
    return "nccl" if torch.cuda.is_available() else "gloo"


def _init_process_group(world: World, init_method: str) -> None:
    if torch.cuda.is_available():
        torch.cuda.set_device(world.local_rank % torch.cuda.device_count())
    dist.init_process_group(_backend(), init_method=init_method, world_size=world.world_size, rank=world.rank,
                            timeout=DEFAULT_TIMEOUT)
    # Group the ranks of each machine by host name (works for every launcher).
    hosts = comm.all_gather(socket.gethostname())
    for host in sorted(set(hosts)):
        ranks = [r for r, h in enumerate(hosts) if h == host]
        group = dist.new_group(ranks)
        if host == hosts[world.rank]:
            comm._LOCAL_PROCESS_GROUP = group
    comm.synchronize()


def launch(main_func: Callable[..., Any], num_gpus_per_machine: int = 1, num_machines: int = 1,
           machine_rank: int = 0, dist_url: str = "auto", args: Tuple = (), local_rank_arg: Optional[int] = None) -> Any:
    """Run ``main_func(*args)`` in the detected world (see the module docstring).  Returns its result in the
    single-process and launcher/Slurm cases (spawned workers' results are dropped)."""
    world = detect_world(local_rank_arg)
    if world.source in ("launcher", "slurm"):
        wanted = num_gpus_per_machine * num_machines
        if wanted > 1 and wanted != world.world_size:
            logging.getLogger("uniperceiver").warning(
                "--num-gpus x --num-machines = %d but the launcher started %d processes; using %d",
                wanted, world.world_size, world.world_size)
        if world.source == "slurm":
            os.environ.update(MASTER_ADDR=world.master_addr, MASTER_PORT=str(world.master_port),
                              RANK=str(world.rank), WORLD_SIZE=str(world.world_size),
                              LOCAL_RANK=str(world.local_rank))
        os.environ.setdefault("LOCAL_RANK", str(world.local_rank))
        _init_process_group(world, "env://")
        try:
            result = main_func(*args)
        except BaseException:
            comm.destroy_process_group(barrier=False)
            raise
        comm.destroy_process_group(barrier=not _failed(result))  # a failed rank may be alone here
        return result
    world_size = num_gpus_per_machine * num_machines
    if world_size > 1:
        if dist_url == "auto":
            if num_machines != 1:
                raise ValueError("--dist-url auto only works with one machine; pass tcp://<host>:<port>")
            dist_url = f"tcp://127.0.0.1:{_find_free_port()}"
        from .preemption import join_forwarding_signals

        try:
            context = mp.start_processes(_spawned_worker, nprocs=num_gpus_per_machine, start_method="spawn",
                                         args=(main_func, world_size, num_gpus_per_machine, machine_rank, dist_url,
                                               args), join=False)
            join_forwarding_signals(context)  # SIGUSR1/USR2/TERM reach the workers' preemption hook
        except mp.ProcessExitedException as e:  # a worker exited non-zero (e.g. 2 after a user error)
            return e.exit_code
        return 0
    return main_func(*args)


def _failed(result: Any) -> bool:
    """A nonzero exit code; any other result (None, 0, rank 0's evaluation results, others' ``{}``) is clean."""
    return isinstance(result, int) and result != 0


def _spawned_worker(local_rank: int, main_func, world_size: int, num_gpus_per_machine: int, machine_rank: int,
                    dist_url: str, args: Tuple) -> None:
    world = World("spawn", world_size, machine_rank * num_gpus_per_machine + local_rank, local_rank)
    os.environ.update(RANK=str(world.rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(local_rank))
    _init_process_group(world, dist_url)
    try:
        result = main_func(*args)
    except BaseException:
        comm.destroy_process_group(barrier=False)
        raise
    else:
        comm.destroy_process_group(barrier=not _failed(result))  # a failed rank may be alone here
    if _failed(result):
        raise SystemExit(result)


