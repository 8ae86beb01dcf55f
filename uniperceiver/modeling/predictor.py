"""Uni-Perceiver's unified predictor: project ``<spe>`` / query features into a shared space and score
them against encoded candidates by cosine similarity times a learnable per-task-type temperature.

The logit scales are created at build time (one per distinct ``MODEL.TEMP_NAME`` of ``cfg.TASKS`` plus
``"default"``; or, with ``MODEL.LOGIT_SCALE_NAMES``, exactly those names plus ``"default"`` whatever tasks a
config names, so one checkpoint loads strictly into every config of its size), so DDP and the optimizer see
every parameter from the start; they are named ``predictor.logit_scale.<name>`` so the optimizer's
``logit_scale`` no-decay pattern matches them.  The temperature is ``exp(s)`` capped at ``logit_scale_max``
(the published clamp: the cap replaces the value, ``s`` itself is never clipped).

Prompt tuning (``prompt_fc_weight > 0``, MODEL.PROMPT.FC_WEIGHT) adds a linear head over the query whose class
weights are the encoded candidates, ``(W q + b) . t``, initialised to the identity (so it starts equal to
the similarity), and blends it in: ``logits = scale * ((1 - w) * cos(q, t) + w * (W q + b) . t)``.  Its
parameters (``prompt_fc_weight_matrix`` / ``prompt_fc_bias``) train with the prompts.
"""
from __future__ import annotations

import math
from typing import Iterable, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

DEFAULT_TEMP_NAME = "default"


def temp_names_from_cfg(cfg) -> list:
    """``"default"`` plus every task's ``MODEL.TEMP_NAME`` (sorted, unique); with ``MODEL.LOGIT_SCALE_NAMES``
    ``"default"`` plus exactly those, and a task naming another one is a ConfigError."""
    from uniperceiver.config import ConfigError

    fixed = list(cfg.MODEL.LOGIT_SCALE_NAMES) if "LOGIT_SCALE_NAMES" in cfg.MODEL else []
    for name in fixed:
        if not isinstance(name, str) or "." in name or not name.isidentifier():
            raise ConfigError(f"MODEL.LOGIT_SCALE_NAMES: {name!r} must be an identifier (no dots)")
    names = {DEFAULT_TEMP_NAME} | set(fixed)
    for task in cfg.TASKS:
        name = task.MODEL.TEMP_NAME if "MODEL" in task and "TEMP_NAME" in task.MODEL else ""
        if name:
            if "." in name or not name.isidentifier():
                raise ConfigError(f"TASKS.{task.NAME}.MODEL.TEMP_NAME {name!r} must be an identifier (no dots)")
            if fixed and name not in names:
                raise ConfigError(f"TASKS.{task.NAME}.MODEL.TEMP_NAME {name!r} is not one of MODEL.LOGIT_SCALE_NAMES "
                                  f"({', '.join(fixed)})")
            names.add(name)
    return sorted(names)


class Predictor(nn.Module):
    """LayerNorm + Linear + L2 normalisation; ``logits`` = cosine * exp(logit_scale[name]) (clamped)."""

    def __init__(
        self,
        dim: int,
        out_dim: int = 0,
        *,
        temp_names: Iterable[str] = (DEFAULT_TEMP_NAME,),
        logit_scale_init: float = 1 / 0.07,
        logit_scale_max: float = 100.0,
        norm_eps: float = 1e-6,
        prompt_fc_weight: float = 0.0,
    ):
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=norm_eps)
        self.proj = nn.Linear(dim, out_dim or dim)
        names = sorted(set(temp_names) | {DEFAULT_TEMP_NAME})
        self.logit_scale = nn.ParameterDict(
            {n: nn.Parameter(torch.tensor(math.log(logit_scale_init))) for n in names}
        )
        self.logit_scale_init = logit_scale_init
        self.logit_scale_max = float(logit_scale_max)
        self.prompt_fc_weight = float(prompt_fc_weight)
        if not 0.0 <= self.prompt_fc_weight <= 1.0:
            raise ValueError(f"prompt_fc_weight (MODEL.PROMPT.FC_WEIGHT) must be in [0, 1], got {prompt_fc_weight}")
        if self.prompt_fc_weight > 0:
            d = out_dim or dim
            self.prompt_fc_weight_matrix = nn.Parameter(torch.eye(d))
            self.prompt_fc_bias = nn.Parameter(torch.zeros(d))

    def forward(self, x: torch.Tensor, targets: Optional[torch.Tensor] = None,
                temp_name: str = DEFAULT_TEMP_NAME) -> torch.Tensor:
        """Without ``targets``: features [..., dim] -> [..., out_dim], unit L2 norm.  With ``targets`` [N, out_dim]:
        :meth:`logits` of the queries ``x`` (outputs of the first form) against them.  Both are calls of this
        module, so DeepSpeed ZeRO-3 gathers its (partitioned) parameters for either."""
        if targets is not None:
            return self.logits(x, targets, temp_name)
        return F.normalize(self.proj(self.norm(x)), dim=-1)

    def scale(self, temp_name: str) -> torch.Tensor:
        name = temp_name or DEFAULT_TEMP_NAME
        if name not in self.logit_scale:
            raise KeyError(
                f"no logit scale named {name!r}; known: {', '.join(self.logit_scale.keys())} "
                "(scales are created from the TEMP_NAMEs of cfg.TASKS when the model is built)"
            )
        return self.logit_scale[name].exp().clamp(max=self.logit_scale_max)

    def logits(self, query: torch.Tensor, targets: torch.Tensor, temp_name: str = DEFAULT_TEMP_NAME) -> torch.Tensor:
        """[..., D] x [N, D] -> [..., N] scaled cosine similarities (blended with the prompt head if any)."""
        targets_t = targets.t().to(query.dtype)
        scores = query @ targets_t
        if self.prompt_fc_weight > 0:
            head = F.linear(query, self.prompt_fc_weight_matrix.to(query.dtype), self.prompt_fc_bias.to(query.dtype))
            w = self.prompt_fc_weight
            scores = (1.0 - w) * scores + w * (head @ targets_t)
        return scores * self.scale(temp_name).to(query.dtype)
