"""Fault injection, the training step: non-finite gradients with finite losses.

tests/test_engine.py covers non-finite LOSS skip / stop.
"""
from __future__ import annotations

import pytest
import torch

from conftest import ENGINE_SMOKE, CorruptLosses
from uniperceiver.config import setup_cfg
from uniperceiver.engine import AMPStepEngine, NonFiniteLossError, Trainer
from uniperceiver.modeling import build_model
from uniperceiver.solver import build_optimizer
from uniperceiver.tasks import build_tasks
from uniperceiver.utils.events import EventStorage


# --------------------------------------------------------------------------------------- non-finite gradients
def _nan_gradient(model, losses):
    """Adds a term that is 0 in the forward but has a NaN gradient (sqrt at 0)."""
    p = next(model.parameters())
    return {k: v + torch.sqrt(p.flatten()[0] * 0.0) for k, v in losses.items()}


def _inf_grad_trainer(max_nonfinite, bad_calls):
    from uniperceiver.data import build_train_loader

    cfg = setup_cfg(ENGINE_SMOKE, ["SOLVER.MAX_NONFINITE_STEPS", str(max_nonfinite)])
    torch.manual_seed(0)
    model = build_model(cfg)
    tasks = build_tasks(cfg)
    loader = build_train_loader(cfg, tasks)
    wrapped = {n: CorruptLosses(t, bad_calls, _nan_gradient) for n, t in tasks.items()}
    trainer = Trainer(model, wrapped, loader, AMPStepEngine(model, build_optimizer(cfg, model)),
                      max_nonfinite_steps=max_nonfinite, seed=0)
    return trainer, model


def test_nonfinite_gradient_with_finite_loss_stops_naming_iteration_task_term_and_parameter():
    trainer, model = _inf_grad_trainer(0, bad_calls=[1])
    with EventStorage() as trainer.storage:
        trainer.iter = 0
        trainer.run_step()
        before = {k: v.clone() for k, v in model.state_dict().items()}
        trainer.iter = 1
        with pytest.raises(NonFiniteLossError) as err:
            trainer.run_step()
    msg = str(err.value)
    assert "iteration 1" in msg and "task synthetic" in msg and "loss_synthetic" in msg
    assert "non-finite gradient of" in msg and "(finite)" in msg
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # nothing was stepped


def test_nonfinite_gradients_are_skipped_up_to_k_consecutive():
    trainer, model = _inf_grad_trainer(2, bad_calls=[1, 2, 4, 5, 6])
    with EventStorage() as trainer.storage:
        trainer.iter = 0
        trainer.run_step()
        before = {k: v.clone() for k, v in model.state_dict().items()}
        for trainer.iter in (1, 2):
            trainer.run_step()
        assert trainer.nonfinite_streak == 2
        assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
        assert all(torch.isfinite(v).all() for v in model.state_dict().values())
        trainer.iter = 3
        trainer.run_step()
        assert trainer.nonfinite_streak == 0
        for trainer.iter in (4, 5):
            trainer.run_step()
        trainer.iter = 6
        with pytest.raises(NonFiniteLossError, match="iteration 6"):
            trainer.run_step()


@pytest.mark.parametrize("grad_clip", [0.0, 1.0])  # without clipping: the gradients' sum; with it: the shared norm
def test_gradient_check_flags_any_nonfinite_entry_and_nothing_else(grad_clip):
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    engine = AMPStepEngine(model, torch.optim.SGD(model.parameters(), lr=0.1), grad_clip=grad_clip)

    def flag(*entries) -> bool:
        for p in model.parameters():
            p.grad = torch.full_like(p, 1e30)  # finite, and their squares overflow float32
        for index, value in entries:
            list(model.parameters())[index].grad.view(-1)[1] = value
        engine._norm = None
        return bool(engine.nonfinite([{"loss": torch.tensor(1.0)}]))

    assert flag((0, float("nan")))
    assert flag((2, float("inf")))
    assert flag((1, float("inf")), (3, -float("inf")))  # inf + (-inf) in two gradients: NaN, still flagged
    # all finite: the norm (clipping) overflows on these squares, the sum of 41 entries of 1e30 does not
    assert flag() is (grad_clip > 0)
    assert flag((0, -1e30)) is (grad_clip > 0)
