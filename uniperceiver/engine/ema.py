"""Exponential moving average of the model weights (``MODEL.MODEL_EMA``, ``MODEL.MODEL_EMA_DECAY``).

* :class:`ModelEMA` keeps an fp32 copy of the model's floating-point state (parameters and buffers) and after
  every optimizer step does ``ema = d * ema + (1 - d) * weights`` with ``d = min(decay, (1 + n) / (10 + n))``
  (the usual warm-up, so early averages are not dominated by the random init); non-float buffers are copied.
  Frozen parameters are averaged too (they stay equal to the weights).
* It is a checkpointable: ``Checkpointer(..., model_ema=ema)`` saves ``{"model": ..., "updates": n}`` under
  ``model_ema`` and ``--resume`` restores it.
* :class:`EMAHook` updates it after each step; it is placed right before the PeriodicCheckpointer so the
  saved average includes the step being saved.
* ``main.py --eval-only --eval-ema`` evaluates the average (:func:`load_ema_weights`).

Every rank keeps its own copy (the weights are identical under DDP); ZeRO-3 shards parameters, so EMA is
refused there.
"""
from __future__ import annotations

import logging
from typing import Dict, List, Sequence

import torch
import torch.nn as nn

from uniperceiver.utils.wrappers import unwrap_model

from .train_loop import HookBase

logger = logging.getLogger(__name__)


class ModelEMA:
    """An EMA of ``model.state_dict()``'s floating-point entries, kept in fp32 on the model's device."""

    def __init__(self, model: nn.Module, decay: float = 0.9999, warmup: bool = True):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.model = unwrap_model(model)
        self.decay = float(decay)
        self.warmup = warmup
        self.updates = 0
        self.loaded = False  # True once load_state_dict restored a saved average
        self.shadow: Dict[str, torch.Tensor] = {}
        self.reset()

    def reset(self) -> None:
        """Restart the average at the model's current weights (after MODEL.WEIGHTS were loaded)."""
        self.shadow = {k: (v.detach().float().clone() if v.is_floating_point() else v.detach().clone())
                       for k, v in self.model.state_dict().items()}
        self.updates = 0

    def current_decay(self) -> float:
        if not self.warmup:
            return self.decay
        return min(self.decay, (1.0 + self.updates) / (10.0 + self.updates))

    @torch.no_grad()
    def update(self) -> None:
        d = self.current_decay()
        for k, v in self.model.state_dict().items():
            s = self.shadow[k]
            if s.is_floating_point():
                s.mul_(d).add_(v.detach().to(s.dtype), alpha=1.0 - d)
            else:
                s.copy_(v)
        self.updates += 1

    # ---------------------------------------------------------------------------------- checkpointable
    def state_dict(self) -> Dict[str, object]:
        return {"model": {k: v.clone() for k, v in self.shadow.items()}, "updates": self.updates,
                "decay": self.decay}

    def load_state_dict(self, state: Dict[str, object]) -> None:
        loaded = state["model"]
        missing = sorted(set(self.shadow) - set(loaded))
        unexpected = sorted(set(loaded) - set(self.shadow))
        if missing or unexpected:
            from uniperceiver.checkpoint import CheckpointError

            raise CheckpointError(f"model_ema does not match the model: missing {missing[:5]}, "
                                  f"unexpected {unexpected[:5]}")
        for k, v in loaded.items():
            self.shadow[k].copy_(v.to(self.shadow[k].dtype))
        self.updates = int(state.get("updates", 0))
        self.loaded = True

    def copy_to(self, model: nn.Module) -> None:
        """Load the averaged weights into ``model`` (same architecture), in its dtypes."""
        model = unwrap_model(model)
        current = model.state_dict()
        model.load_state_dict({k: v.to(current[k].dtype) for k, v in self.shadow.items()})


class EMAHook(HookBase):
    """Updates the EMA after every optimizer step (a skipped non-finite step leaves the weights as they were)."""

    def __init__(self, ema: ModelEMA) -> None:
        self.ema = ema

    def after_step(self) -> None:
        self.ema.update()


def build_model_ema(cfg, model: nn.Module):
    """``ModelEMA`` when MODEL.MODEL_EMA, else None."""
    if not cfg.MODEL.MODEL_EMA:
        return None
    from uniperceiver.config import ConfigError

    if cfg.SOLVER.DEEPSPEED.ENABLED and cfg.SOLVER.DEEPSPEED.ZERO_STAGE >= 3:
        raise ConfigError("MODEL.MODEL_EMA needs full parameters on every rank; it does not work with "
                          "SOLVER.DEEPSPEED.ZERO_STAGE 3")
    if not 0.0 <= cfg.MODEL.MODEL_EMA_DECAY < 1.0:
        raise ConfigError(f"MODEL.MODEL_EMA_DECAY {cfg.MODEL.MODEL_EMA_DECAY} must be in [0, 1)")
    logger.info("Keeping an EMA of the weights (decay %g)", cfg.MODEL.MODEL_EMA_DECAY)
    return ModelEMA(model, cfg.MODEL.MODEL_EMA_DECAY)


def insert_ema_hook(hooks: Sequence[HookBase], ema: ModelEMA) -> List[HookBase]:
    """``hooks`` with an EMAHook placed right before the PeriodicCheckpointer (so checkpoints and evaluation
    see the updated average); appended before the writers when there is no checkpointer."""
    from .hooks import PeriodicCheckpointer, PeriodicWriter

    hooks = list(hooks)
    for i, h in enumerate(hooks):
        if isinstance(h, (PeriodicCheckpointer, PeriodicWriter)):
            return hooks[:i] + [EMAHook(ema)] + hooks[i:]
    return hooks + [EMAHook(ema)]


def load_ema_weights(model: nn.Module, path: str) -> None:
    """Load the ``model_ema`` entry of checkpoint ``path`` into ``model`` (strict key / shape check)."""
    from uniperceiver.checkpoint import CheckpointError, load_checkpoint_file, match_state_dict

    data = load_checkpoint_file(path)
    if "model_ema" not in data:
        raise CheckpointError(f"--eval-ema: {path} has no model_ema entry (train with MODEL.MODEL_EMA True)")
    model = unwrap_model(model)
    rules = model.resize_rules() if hasattr(model, "resize_rules") else []
    state, _ = match_state_dict(model, data["model_ema"]["model"], resize_rules=rules)
    model.load_state_dict(state, strict=False)
    logger.info("Loaded the EMA weights (%d updates) from %s", int(data["model_ema"].get("updates", 0)), path)
