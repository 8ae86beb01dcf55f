"""Importing DeepSpeed the same way everywhere (solver, MoE layers, the step engine, tools)."""
import os

import torch

from .errors import ConfigError


def import_deepspeed():
    """Import DeepSpeed, choosing its CPU accelerator where there is no CUDA (unless DS_ACCELERATOR is set)."""
    if "DS_ACCELERATOR" not in os.environ and not torch.cuda.is_available():
        os.environ["DS_ACCELERATOR"] = "cpu"
    try:
        import deepspeed
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ConfigError(f"SOLVER.DEEPSPEED.ENABLED needs the deepspeed package ({e})") from None
    return deepspeed
