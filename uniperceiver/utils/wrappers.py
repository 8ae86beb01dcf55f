"""The one way to look through model wrappers: :func:`unwrap_model`.

The training loop steps a model that may be wrapped, innermost first, by ``torch.compile`` (``MODEL.COMPILE
model``: an ``OptimizedModule`` holding it as ``_orig_mod``), the engine's ``TaskForward``, and
``DistributedDataParallel`` or a DeepSpeed engine (both holding it as ``.module``).  Task heads (``logits``,
``encode_targets``), the checkpointer, the optimizer's parameter groups, EMA and evaluation want the model
itself, with its own parameter names.
"""
from __future__ import annotations

import torch.nn as nn

__all__ = ["unwrap_model"]


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module inside every ``.module`` wrapper (DDP, DeepSpeed, ``TaskForward``) and ``torch.compile``'s
    ``_orig_mod``, in any nesting; ``model`` itself when it is not wrapped.  It stops at the first object with
    neither as an ``nn.Module`` (DeepSpeed's ``ZeroModelView`` hides its module on purpose: it is the model the
    Checkpointer sees)."""
    while True:
        inner = getattr(model, "module", None)
        if not isinstance(inner, nn.Module):
            inner = getattr(model, "_orig_mod", None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner
