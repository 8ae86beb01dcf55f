"""Optimizers and LR schedules."""
from .build import build_lr_scheduler, build_optimizer, get_param_groups  # noqa: F401
from .lr_scheduler import LRScheduler, build_lr_multiplier  # noqa: F401
