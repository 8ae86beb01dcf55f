"""Uni-Perceiver-MoE (Zhu et al., "Uni-Perceiver-MoE: Learning Sparse Generalist Models with Conditional
MoEs", NeurIPS 2022): conditional mixture-of-experts on the attention projections (qkv, output) and the FFN
of the shared encoder's blocks selected by ``MOE.MOE_EXPERT_LOCATION``.

* ``attributes.py``: per-token (modality, task type, side) ids built by the model from the task's attributes,
  and the published 8-dim attribute row of each position's segment derived from them;
* ``routing.py``: attribute gates (the published segment-row gate, our learned embedding gate), the token
  gate, top-k, capacity and the per-expert dispatch;
* ``layers.py``: the native backend (pure PyTorch, one process or DDP);
* ``deepspeed_layers.py``: the DeepSpeed backend (``deepspeed.moe.layer.MoE``, expert parallelism).

Model-level helpers: :func:`moe_layer_factories` (used by ``encoder.layer_factories``), :func:`pop_aux_loss`
(the load-balancing losses recorded since the last call; ``UniPerceiver.extra_losses`` weights it and the
Trainer adds it to the step's losses as ``loss_moe_aux``) and :func:`merge_experts`.
"""
from __future__ import annotations

import functools
from typing import Callable, Optional, Tuple

import torch
import torch.nn as nn

from .attributes import (MODALITIES, SEGMENT_ROW_OF, SEGMENT_ROWS, SIDES, TASK_TYPES, TOKEN_ATTRIBUTES_KEY,
                         segment_rows, token_attribute_ids, with_token_attributes)
from .layers import ATTRIBUTE_GATES, AuxLossRecorder, MoEAttention, MoEMlp, MoESpec, RoutedExperts

LOCATIONS = ("odd", "four", "all", "none")


def is_moe_layer(cfg, layer_index: int) -> bool:
    """Whether block ``layer_index`` (0-based) has experts, with the published meanings of
    ``MOE.MOE_EXPERT_LOCATION`` (published ``unified_bert_encoder.py``): ``odd`` = blocks 0, 2, 4, ... (the
    odd-numbered blocks counting from 1), ``four`` = blocks 0, 4, 8, ..., ``all`` = every block, ``none`` = no
    block."""
    from uniperceiver.config import ConfigError

    if not cfg.MOE.MOE:
        return False
    where = cfg.MOE.MOE_EXPERT_LOCATION
    if where not in LOCATIONS:
        hint = " ('odd' is blocks 0, 2, 4, ... as published)" if where == "even" else ""
        raise ConfigError(f"MOE.MOE_EXPERT_LOCATION {where!r}: expected one of {', '.join(LOCATIONS)}{hint}")
    if where == "none":
        return False
    return where == "all" or layer_index % (2 if where == "odd" else 4) == 0


def moe_layer_factories(spec: MoESpec) -> Tuple[Callable[..., nn.Module], Callable[..., nn.Module]]:
    """``(attn_layer, mlp_layer)`` factories with the Block's call signature for ``spec.backend``."""
    if spec.backend == "deepspeed":
        from .deepspeed_layers import DeepSpeedMoEAttention, DeepSpeedMoEMlp

        return functools.partial(DeepSpeedMoEAttention, spec=spec), functools.partial(DeepSpeedMoEMlp, spec=spec)
    return functools.partial(MoEAttention, spec=spec), functools.partial(MoEMlp, spec=spec)


def pop_aux_loss(model: nn.Module) -> Optional[torch.Tensor]:
    """Sum of the (unweighted) load-balancing losses every MoE unit recorded since the last call, or None."""
    total = None
    for m in model.modules():
        if isinstance(m, AuxLossRecorder):
            loss = m.pop_aux_loss()
            if loss is not None:
                total = loss if total is None else total + loss
    return total


def merge_experts(model: nn.Module, enable: bool = True) -> int:
    """Switch every native attribute-routed unit to pre-merged dense weights in eval; returns how many."""
    units = [m for m in model.modules() if isinstance(m, RoutedExperts)]
    for m in units:
        m.merge(enable)
    return len(units)


__all__ = [
    "ATTRIBUTE_GATES", "MODALITIES", "SEGMENT_ROWS", "SEGMENT_ROW_OF", "SIDES", "TASK_TYPES", "segment_rows", "TOKEN_ATTRIBUTES_KEY", "MoESpec", "MoEAttention", "MoEMlp",
    "RoutedExperts", "is_moe_layer", "merge_experts", "moe_layer_factories", "pop_aux_loss",
    "token_attribute_ids", "with_token_attributes",
]
