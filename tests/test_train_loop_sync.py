"""The training step's host reads and its size: one read per step that does not log (the non-finite skip
decision), ``Trainer.run_step`` within 20 statements (detectron2's ``SimpleTrainer.run_step`` holds 13)."""
from __future__ import annotations

import ast
import contextlib
import inspect
import textwrap
import traceback
from collections import Counter
from typing import Iterator, List

import pytest
import torch

from conftest import INSTANT
from uniperceiver.config import setup_cfg
from uniperceiver.data import build_train_loader
from uniperceiver.engine.defaults import build_step_engine
from uniperceiver.engine.train_loop import Trainer
from uniperceiver.modeling import build_model
from uniperceiver.solver import build_optimizer
from uniperceiver.tasks import build_tasks
from uniperceiver.utils.events import EventStorage

# Every way a tensor's value reaches Python (on CUDA each is a device -> host synchronisation).
READS = ("item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__", "__index__")


@contextlib.contextmanager
def count_host_reads() -> Iterator[List[str]]:
    """Patch the reads on ``torch.Tensor``; yields a list that gets one entry (method and call site) per read.
    Reads inside ``torch.optim`` are not counted: they are the optimizers' step counters, CPU tensors on every
    device (no synchronisation)."""
    calls: List[str] = []
    saved = {name: getattr(torch.Tensor, name) for name in READS}

    def wrap(name, fn):
        def counted(self, *args, **kwargs):
            frame = traceback.extract_stack(limit=2)[0]
            if "torch/optim/" not in frame.filename.replace("\\", "/"):
                calls.append(f"{name} at {frame.filename}:{frame.lineno}")
            return fn(self, *args, **kwargs)
        return counted

    for name, fn in saved.items():
        setattr(torch.Tensor, name, wrap(name, fn))
    try:
        yield calls
    finally:
        for name, fn in saved.items():
            setattr(torch.Tensor, name, fn)


def _trainer(log_period: int, steps: int, *opts: str):
    cfg = setup_cfg(INSTANT, ["SOLVER.GRAD_CLIP", "1.0", "MODEL.BERT.NUM_HIDDEN_LAYERS", "1", *opts])
    torch.manual_seed(0)
    model = build_model(cfg)
    tasks = build_tasks(cfg)
    loader = build_train_loader(cfg, tasks)
    batches = [next(loader) for _ in range(steps * cfg.SOLVER.ACCUM_ITER)]  # collated before: the data side is
    optimizer = build_optimizer(cfg, model)                                  # CPU work in workers, not counted
    engine = build_step_engine(cfg, model, optimizer, torch.device("cpu"))
    return Trainer(model, tasks, batches, engine, accum_iter=cfg.SOLVER.ACCUM_ITER, log_period=log_period,
                   max_nonfinite_steps=0), {n for n, _ in batches}


@pytest.mark.parametrize("accum", ["1", "2"])
def test_one_host_read_per_step_that_does_not_log(accum):
    period, steps = 3, 6
    trainer, drawn = _trainer(period, steps, "SOLVER.ACCUM_ITER", accum)
    assert len(drawn) == 2  # both tasks of the instant config ran through the counted steps
    trainer.max_iter = steps
    per_step = []
    with EventStorage() as trainer.storage:
        for trainer.iter in range(steps):
            trainer.storage.iter = trainer.iter
            with count_host_reads() as calls:
                trainer.run_step()
            per_step.append(calls)
        logged = trainer.storage.history("total_loss").values()
    for it, calls in enumerate(per_step):
        if it > 0 and (it + 1) % period:  # step 0 fills the caches (target-set chunks on the device)
            assert len(calls) == 1, f"iteration {it}: {len(calls)} host reads: {Counter(calls)}"
    assert len(per_step[period - 1]) >= 2  # a logging step reads the period's metrics (and it is counted)
    assert [i for _, i in logged] == list(range(steps))  # every step's loss reached the storage, at its iteration
    assert all(torch.isfinite(torch.tensor(v)) for v, _ in logged)


def test_metrics_of_a_logging_period_match_per_step_reads():
    """Reading once per period puts the same values at the same iterations as reading every step."""
    histories = []
    for period in (1, 4):
        trainer, _ = _trainer(period, 4)
        trainer.max_iter = 4
        with EventStorage() as trainer.storage:
            for trainer.iter in range(4):
                trainer.storage.iter = trainer.iter
                trainer.run_step()
            histories.append({k: h.values() for k, h in trainer.storage.histories().items() if k != "data_time"})
    assert histories[0].keys() == histories[1].keys() and "grad_norm" in histories[0]
    assert histories[0] == histories[1]


def test_run_step_is_small():
    tree = ast.parse(textwrap.dedent(inspect.getsource(Trainer.run_step)))
    statements = sum(isinstance(node, ast.stmt) for node in ast.walk(tree.body[0])) - 1  # the def itself
    assert statements <= 20, statements


@pytest.mark.gpu
def test_no_other_synchronisation_on_cuda():
    """On the GPU, ``set_sync_debug_mode("error")`` raises at any synchronising call except the one read."""
    cfg = setup_cfg(INSTANT, ["SOLVER.GRAD_CLIP", "1.0", "MODEL.BERT.NUM_HIDDEN_LAYERS", "1", "MODEL.DEVICE", "cuda"])
    torch.manual_seed(0)
    device = torch.device("cuda")
    model = build_model(cfg).to(device)
    tasks = build_tasks(cfg)
    loader = build_train_loader(cfg, tasks)
    batches = [next(loader) for _ in range(6)]
    engine = build_step_engine(cfg, model, build_optimizer(cfg, model), device)
    trainer = Trainer(model, tasks, batches, engine, log_period=6, device=device)
    trainer.max_iter = 6
    from uniperceiver.engine import train_loop

    reads = []
    original = train_loop.comm.reduce_int

    def the_one_read(value, op="max"):
        torch.cuda.set_sync_debug_mode(0)
        try:
            reads.append(1)
            return original(value, op)
        finally:
            torch.cuda.set_sync_debug_mode("error")

    train_loop.comm.reduce_int = the_one_read
    try:
        with EventStorage() as trainer.storage:
            trainer.iter = 0
            trainer.run_step()  # warm-up outside the check (lazy CUDA initialisation, optimizer state)
            torch.cuda.synchronize()
            torch.cuda.set_sync_debug_mode("error")
            try:
                for trainer.iter in range(1, 5):
                    trainer.storage.iter = trainer.iter
                    trainer.run_step()
            finally:
                torch.cuda.set_sync_debug_mode(0)
    finally:
        train_loop.comm.reduce_int = original
    assert len(reads) == 5
