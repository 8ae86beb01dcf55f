"""Lockstep evaluation (``uniperceiver/utils/lockstep.py``) on 2 real gloo processes: ranks with fewer
batches repeat a stand-in whose outputs are dropped, and caption decoding steps on until every rank is done,
with the same captions as without lockstep."""
import pytest
import torch

from conftest import free_port
from uniperceiver.evaluation import lockstep
from uniperceiver.modeling.decoding import beam_search

EOS, VOCAB = 3, 5


def _decode(rank: int, steps):
    """Greedy decoding that emits token 1 until the end token at step ``1 + 2 * rank`` (rows of rank 1 take
    3 steps, rank 0's 1); ``steps`` counts the calls of the step function."""
    def step_fn(tokens, origin):
        steps.append(tokens.shape[0])
        logp = torch.full((tokens.shape[0], VOCAB), -5.0)
        logp[:, EOS if tokens.shape[1] >= 2 * rank else 1] = 0.0
        return logp

    return beam_search(step_fn, batch_size=2, max_len=6, eos_id=EOS)[0]


def _worker(rank: int, port: int) -> None:
    import torch.distributed as dist

    from uniperceiver.utils import comm

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        alone_steps, together_steps = [], []
        alone = _decode(rank, alone_steps)
        with lockstep.lockstep():
            together = _decode(rank, together_steps)
        assert together == alone == [[1] * (2 * rank)] * 2
        assert len(alone_steps) == 1 + 2 * rank
        assert len(together_steps) == 3  # rank 0 stepped along (one row) until rank 1 was done
        assert together_steps[1:] == ([1, 1] if rank == 0 else [2, 2])

        loader = ["a"] if rank == 0 else ["b", "c", "d"]
        with lockstep.lockstep():
            got = list(lockstep.batches(loader, len(loader), stand_in=lambda: "stand-in"))
            empty = list(lockstep.batches([] if rank == 0 else ["e"], 0 if rank == 0 else 1,
                                          stand_in=lambda: "stand-in"))
        assert got == ([("a", True), ("a", False), ("a", False)] if rank == 0 else
                       [("b", True), ("c", True), ("d", True)])
        assert empty == ([("stand-in", False)] if rank == 0 else [("e", True)])
        # outside lockstep: nothing added, nothing collective
        assert list(lockstep.batches(loader, len(loader), stand_in=lambda: "x")) == [(b, True) for b in loader]
    finally:
        comm.destroy_process_group(barrier=False)


@pytest.mark.distributed
def test_lockstep_evens_out_batches_and_decoding_steps():
    torch.multiprocessing.spawn(_worker, args=(free_port(),), nprocs=2)


def test_lockstep_is_a_no_op_in_one_process():
    steps = []
    with lockstep.lockstep():
        assert not lockstep.active()
        assert _decode(0, steps) == [[], []] and len(steps) == 1
