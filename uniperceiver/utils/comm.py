"""Distributed helpers that degrade to one process: world size 1 and rank 0 without a process group."""
from __future__ import annotations

import gc
import sys
from typing import Any, Dict, List

import torch
import torch.distributed as dist

_LOCAL_PROCESS_GROUP = None  # set by engine.launch when processes of one machine are known
_CPU_GROUP = None  # the gloo group object collectives use under nccl; made on first use


def is_dist() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_world_size() -> int:
    return dist.get_world_size() if is_dist() else 1


def get_rank() -> int:
    return dist.get_rank() if is_dist() else 0


def get_local_rank() -> int:
    if not is_dist() or _LOCAL_PROCESS_GROUP is None:
        return 0
    return dist.get_rank(group=_LOCAL_PROCESS_GROUP)


def get_local_size() -> int:
    if not is_dist() or _LOCAL_PROCESS_GROUP is None:
        return 1
    return dist.get_world_size(group=_LOCAL_PROCESS_GROUP)


def is_main_process() -> bool:
    return get_rank() == 0


def synchronize() -> None:
    """Barrier across all processes (no-op in one process)."""
    if get_world_size() > 1:
        dist.barrier()


def _cpu_group():
    """A gloo group for object collectives, so they never touch the GPU (nccl) backend; ``None`` (the
    default group) when that already is gloo.  Never caches the default group itself: a reference that
    outlives ``destroy_process_group`` makes its gloo threads die in interpreter shutdown (SIGABRT)."""
    global _CPU_GROUP
    if dist.get_backend() != "nccl":
        return None
    if _CPU_GROUP is None:
        _CPU_GROUP = dist.new_group(backend="gloo")
    return _CPU_GROUP


def _all_groups() -> List[Any]:
    """Every process group this rank belongs to, in creation order (the same on every rank): the default
    one, ours and those libraries made (DeepSpeed's ZeRO groups)."""
    pg_map = getattr(getattr(dist.distributed_c10d, "_world", None), "pg_map", None)
    if pg_map is None:  # a torch without the registry: the default group only
        return [dist.group.WORLD]
    return [g for g in list(pg_map) if dist.get_rank(g) >= 0]


def destroy_process_group(barrier: bool = True) -> None:
    """Tear down every process group and drop the references to them that this module and DeepSpeed keep
    (no-op without one).

    ``barrier`` (for a clean exit; never after an error, where a peer may be gone) first waits on every
    group, with the GIL released, so no collective of any group is still running when the interpreter shuts
    down: a gloo worker thread that frees a Python-owned tensor then needs the GIL and aborts the process
    ("terminate called without an active exception") after all the work is done.  A barrier only orders the
    collectives of its own group, and DeepSpeed ZeRO runs its own; ZeRO-3 also keeps its groups alive in
    module-level state past teardown, so they are only joined at exit.  DeepSpeed, when it set up its
    communication backend, tears down through ``deepspeed.comm``, which forgets the groups it cached."""
    global _LOCAL_PROCESS_GROUP, _CPU_GROUP
    _LOCAL_PROCESS_GROUP = _CPU_GROUP = None
    if not is_dist():
        return
    if barrier and get_world_size() > 1:
        for group in _all_groups():
            dist.barrier(group=group)
    ds_comm = sys.modules.get("deepspeed.comm")
    if ds_comm is not None and ds_comm.is_initialized():
        ds_comm.destroy_process_group()
    else:
        dist.destroy_process_group()
    gc.collect()  # engines left in reference cycles hold groups: join those threads now, not at exit


def all_gather(obj: Any) -> List[Any]:
    """Gather a picklable object from every rank; returns the list on every rank."""
    if get_world_size() == 1:
        return [obj]
    out: List[Any] = [None] * get_world_size()
    dist.all_gather_object(out, obj, group=_cpu_group())
    return out


def gather(obj: Any, dst: int = 0) -> List[Any]:
    """Gather a picklable object to rank ``dst``; other ranks get ``[]``."""
    if get_world_size() == 1:
        return [obj]
    if get_rank() == dst:
        out: List[Any] = [None] * get_world_size()
        dist.gather_object(obj, out, dst=dst, group=_cpu_group())
        return out
    dist.gather_object(obj, None, dst=dst, group=_cpu_group())
    return []


def broadcast_object(obj: Any, src: int = 0) -> Any:
    if get_world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src, group=_cpu_group())
    return box[0]


def all_gather_tensors(tensor: torch.Tensor) -> List[torch.Tensor]:
    """All-gather tensors whose first dimension may differ across ranks (no autograd)."""
    world = get_world_size()
    if world == 1:
        return [tensor]
    size = torch.tensor([tensor.shape[0]], device=tensor.device)
    sizes = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes, size)
    sizes = [int(s.item()) for s in sizes]
    max_size = max(sizes)
    padded = tensor.new_zeros((max_size,) + tuple(tensor.shape[1:]))
    padded[: tensor.shape[0]] = tensor
    out = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(out, padded)
    return [o[:s] for o, s in zip(out, sizes)]


class _AllGatherGrad(torch.autograd.Function):
    """All-gather along dim 0 whose backward returns this rank's slice of the summed gradient."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        ctx.batch = tensor.shape[0]
        out = [torch.empty_like(tensor) for _ in range(get_world_size())]
        dist.all_gather(out, tensor.contiguous())
        return torch.cat(out, dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad = grad.contiguous()
        dist.all_reduce(grad)
        rank = get_rank()
        return grad[rank * ctx.batch : (rank + 1) * ctx.batch]


def all_gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate ``tensor`` (same shape on every rank) from all ranks, keeping autograd to the local part."""
    if get_world_size() == 1:
        return tensor
    return _AllGatherGrad.apply(tensor)


def reduce_dict(values: Dict[str, float], average: bool = True) -> Dict[str, float]:
    """Reduce a dict of floats over ranks (mean by default); returned on every rank."""
    if get_world_size() == 1 or not values:
        return dict(values)
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t)
    if average:
        t /= get_world_size()
    return {k: float(v) for k, v in zip(keys, t.tolist())}


_REDUCE_OPS = {"max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN, "sum": dist.ReduceOp.SUM}


def reduce_int(value, op: str = "max") -> int:
    """``value`` (an int, or a device scalar tensor: reduced where it is, then read once) reduced over ranks with
    ``op`` (``max``, ``min`` or ``sum``); returned on every rank (``value`` itself in one process).  For flags and
    counts: "any rank" is ``max``, "every rank" is ``min``."""
    if get_world_size() == 1:
        return int(value)
    device = "cuda" if dist.get_backend() == "nccl" else "cpu"
    if isinstance(value, torch.Tensor):
        t = value.detach().reshape(1).to(device=device, dtype=torch.int64)
    else:
        t = torch.tensor([int(value)], dtype=torch.int64, device=device)
    dist.all_reduce(t, op=_REDUCE_OPS[op])
    return int(t.item())


def shared_random_seed() -> int:
    """A random int in [0, 2**31) that is the same on every rank."""
    seed = int(torch.randint(2**31, (1,)).item())
    return int(broadcast_object(seed))
