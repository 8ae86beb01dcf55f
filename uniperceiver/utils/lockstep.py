"""Lockstep evaluation, for models whose forward is itself collective, so that every rank must run the same
forwards: DeepSpeed ZeRO-3 (each module gathers its partitioned parameters when it runs) and DeepSpeed-MoE
expert parallelism (every MoE layer exchanges tokens within its expert-parallel group).

Sharded evaluation normally lets every rank go its own way: shards differ by one sample, so by one batch, and
caption decoding stops when a rank's own beams are done.  Inside :func:`lockstep` ranks instead run as many
batches as the rank with the most (the others repeat a stand-in batch whose outputs are dropped) and decode
until every rank is done (a finished rank keeps stepping one row whose result is dropped).
"""
from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterable, Iterator, Tuple

from uniperceiver.utils import comm

_ACTIVE = False


@contextlib.contextmanager
def lockstep(enabled: bool = True):
    """Run the evaluation inside in lockstep across ranks (no-op when not ``enabled`` or in one process)."""
    global _ACTIVE
    previous, _ACTIVE = _ACTIVE, bool(enabled) and comm.get_world_size() > 1
    try:
        yield
    finally:
        _ACTIVE = previous


def active() -> bool:
    return _ACTIVE


def all_done(done: bool) -> bool:
    """Whether every rank is done (collective inside :func:`lockstep`; this rank's ``done`` outside)."""
    return bool(comm.reduce_int(done, "min")) if _ACTIVE else done


def batches(loader: Iterable, num_batches: int, stand_in: Callable[[], Any]) -> Iterator[Tuple[Any, bool]]:
    """``(batch, real)`` pairs: the loader's batches, then (inside :func:`lockstep`) its last batch again,
    or ``stand_in()`` for an empty shard, until every rank has had as many as the rank with the most."""
    total = comm.reduce_int(num_batches, "max") if _ACTIVE else num_batches
    last = None
    for last in loader:
        yield last, True
    for _ in range(total - num_batches):
        if last is None:
            last = stand_in()
        yield last, False
