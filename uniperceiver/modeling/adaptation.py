"""Which parameters train: ``MODEL.TRAINABLE`` regexes (prompt tuning, LoRA, partial fine-tuning).

``apply_trainable(model, patterns)`` sets ``requires_grad`` from the patterns (``re.search`` over parameter
names; empty = everything trains) and logs ``trainable parameters: N / total M``.  The optimizer
(``solver.build.get_param_groups``) leaves frozen parameters out, so they never change: no gradient, no
weight decay, no optimizer state.  Called once, by the engine right after the model is built.
"""
from __future__ import annotations

import logging
import re
from typing import Sequence, Tuple

import torch.nn as nn

from uniperceiver.config import ConfigError
from uniperceiver.utils.wrappers import unwrap_model

logger = logging.getLogger(__name__)


def apply_trainable(model: nn.Module, patterns: Sequence[str]) -> Tuple[int, int]:
    """Freeze every parameter whose name matches none of ``patterns``; ``(trainable, total)`` element counts.

    Empty ``patterns``: all parameters train.  A bad regex, or patterns that match no parameter, raise
    :class:`ConfigError` naming them (with a few parameter names to pick from)."""
    model = unwrap_model(model)
    named = list(model.named_parameters())
    if patterns:
        compiled = []
        for p in patterns:
            try:
                compiled.append(re.compile(p))
            except re.error as e:
                raise ConfigError(f"MODEL.TRAINABLE pattern {p!r} is not a valid regex: {e}") from None
        unused = [p.pattern for p in compiled if not any(p.search(n) for n, _ in named)]
        if len(unused) == len(compiled):
            sample = ", ".join(n for n, _ in named[:6])
            raise ConfigError(f"MODEL.TRAINABLE {list(patterns)} matches no parameter of {type(model).__name__} "
                              f"(names look like: {sample}, ...)")
        if unused:
            logger.warning("MODEL.TRAINABLE patterns matching no parameter: %s", unused)
        for name, param in named:
            param.requires_grad_(any(r.search(name) for r in compiled))
    else:
        for _, param in named:
            param.requires_grad_(True)
    trainable = sum(p.numel() for _, p in named if p.requires_grad)
    total = sum(p.numel() for _, p in named)
    logger.info("trainable parameters: %d / total %d (%.2f%%)", trainable, total, 100.0 * trainable / max(total, 1))
    if patterns:
        tensors = [n for n, p in named if p.requires_grad]
        shown = ", ".join(tensors[:10]) + (f", ... ({len(tensors) - 10} more)" if len(tensors) > 10 else "")
        logger.info("trainable tensors (%d): %s", len(tensors), shown)
    return trainable, total
