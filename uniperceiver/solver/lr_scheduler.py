"""LR schedules as pure functions of training progress (fvcore param schedulers), applied per param group.

``lr(group, iter) = BASE_LR * multiplier(iter / MAX_ITER) * group["lr_scale"]``.  Only the iteration is saved;
on resume the schedule is rebuilt from the (possibly changed) config, so a larger MAX_ITER continues on the
new schedule.
"""
from __future__ import annotations

import math
from typing import Any, Dict, List

from fvcore.common.param_scheduler import (
    CompositeParamScheduler,
    ConstantParamScheduler,
    CosineParamScheduler,
    LinearParamScheduler,
    MultiStepParamScheduler,
    ParamScheduler,
)

from uniperceiver.config import ConfigError

SCHEDULES = ("WarmupCosine", "WarmupLinear", "WarmupConstant", "WarmupMultiStep")


def build_lr_multiplier(name: str, max_iter: int, base_lr: float, min_lr: float = 0.0, warmup: int = 0,
                        warmup_factor: float = 0.001, steps=(), gamma: float = 0.1) -> ParamScheduler:
    """A multiplier of ``base_lr`` over progress in [0, 1): linear warm-up from ``warmup_factor`` to 1 over
    ``warmup`` iterations, then the named schedule over the remaining iterations.  A warm-up of at least
    ``max_iter`` iterations warms up over the whole run (shortened runs, e.g. ``SOLVER.MAX_ITER 2``)."""
    if max_iter <= 0:
        raise ConfigError(f"SOLVER.MAX_ITER must be > 0, got {max_iter}")
    end = (min_lr / base_lr) if base_lr > 0 else 0.0
    if name == "WarmupCosine":
        main: ParamScheduler = CosineParamScheduler(1.0, end)
    elif name == "WarmupLinear":
        main = LinearParamScheduler(1.0, end)
    elif name == "WarmupConstant":
        main = ConstantParamScheduler(1.0)
    elif name == "WarmupMultiStep":
        steps = sorted(int(s) for s in steps)
        if any(s <= warmup for s in steps):
            raise ConfigError(f"LR_SCHEDULER.STEPS {steps} must be after LR_SCHEDULER.WARMUP {warmup}")
        steps = [s for s in steps if s < max_iter]
        # Milestones are counted in iterations after warm-up on a rescaled interval of max_iter - warmup.
        main = MultiStepParamScheduler(values=[gamma**i for i in range(len(steps) + 1)],
                                       milestones=[s - warmup for s in steps], num_updates=max_iter - warmup)
    else:
        raise ConfigError(f"LR_SCHEDULER.NAME {name!r} is unknown; choose one of {', '.join(SCHEDULES)}")
    if warmup <= 0:
        return main
    if warmup >= max_iter:  # a shortened run (validate_cfg warns once): warm up for the whole run
        return LinearParamScheduler(warmup_factor, 1.0)
    frac = warmup / max_iter
    return CompositeParamScheduler(
        [LinearParamScheduler(warmup_factor, 1.0), main],
        lengths=[frac, 1.0 - frac],
        interval_scaling=["rescaled", "rescaled"],
    )


class LRScheduler:
    """Sets ``group["lr"] = base_lr * multiplier(iter / max_iter) * group.get("lr_scale", 1)``.

    Call :meth:`step` once per optimizer step (after it).  ``state_dict`` holds only the iteration.
    """

    def __init__(self, optimizer, multiplier: ParamScheduler, max_iter: int, base_lr: float, last_iter: int = 0):
        self.optimizer = optimizer
        self.multiplier = multiplier
        self.max_iter = max_iter
        self.base_lr = base_lr
        self.last_iter = last_iter
        self._apply()

    def lr_at(self, iteration: int) -> float:
        """The un-scaled LR at ``iteration`` (clamped to the end of the schedule)."""
        where = min(max(iteration, 0), self.max_iter - 1) / self.max_iter
        value = self.base_lr * self.multiplier(where)
        return float(value) if math.isfinite(value) else 0.0

    def _apply(self) -> None:
        lr = self.lr_at(self.last_iter)
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)

    def step(self) -> None:
        self.last_iter += 1
        self._apply()

    def get_last_lr(self) -> List[float]:
        return [g["lr"] for g in self.optimizer.param_groups]

    def state_dict(self) -> Dict[str, Any]:
        return {"last_iter": int(self.last_iter)}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.last_iter = int(state["last_iter"])
        self._apply()
