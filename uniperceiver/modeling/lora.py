"""LoRA (Hu et al., "LoRA: Low-Rank Adaptation of Large Language Models", ICLR 2022) on the encoder's linears.

``apply_lora(model, rank, alpha, target)`` swaps every ``nn.Linear`` whose module name matches the ``target``
regex (``re.search``) for a :class:`LoRALinear`: the same ``weight`` / ``bias`` (so pre-trained weights load
unchanged) plus ``lora_A`` [r, in] (Kaiming-uniform) and ``lora_B`` [out, r] (zeros, so the model starts
equal to the base one), computing ``x W^T + b + (alpha / r) * x A^T B^T``.  ``lora_scaling`` is a persistent
buffer, so a checkpoint alone says how to merge it.

Train only the adapters with ``MODEL.TRAINABLE ["lora_"]``.  :func:`merge_lora_state_dict` folds the
adapters into the base weights (``W + (alpha / r) B A``) and drops the LoRA entries: the result loads into
the same model built without ``MODEL.LORA``.  ``tools/merge_lora.py IN OUT`` does that on a checkpoint file.
"""
from __future__ import annotations

import logging
import math
import re
from typing import Dict, List

import torch
import torch.nn as nn
import torch.nn.functional as F

logger = logging.getLogger(__name__)

LORA_SUFFIXES = (".lora_A", ".lora_B", ".lora_scaling")


class LoRALinear(nn.Linear):
    """``nn.Linear`` plus a low-rank update ``(alpha / rank) * B A`` (B starts at zero)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, rank: int = 8,
                 alpha: float = 16.0, device=None, dtype=None):
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        if rank <= 0:
            raise ValueError(f"LoRA rank must be positive, got {rank}")
        self.rank = int(rank)
        self.lora_A = nn.Parameter(torch.empty(rank, in_features, device=device, dtype=dtype))
        self.lora_B = nn.Parameter(torch.zeros(out_features, rank, device=device, dtype=dtype))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.register_buffer("lora_scaling", torch.tensor(float(alpha) / rank))

    @classmethod
    def from_linear(cls, linear: nn.Linear, rank: int, alpha: float) -> "LoRALinear":
        """A LoRALinear sharing ``linear``'s weight and bias tensors (same device / dtype)."""
        w = linear.weight
        out = cls(linear.in_features, linear.out_features, bias=linear.bias is not None, rank=rank, alpha=alpha,
                  device=w.device, dtype=w.dtype)
        out.weight = linear.weight
        if linear.bias is not None:
            out.bias = linear.bias
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        base = F.linear(x, self.weight, self.bias)
        update = F.linear(F.linear(x, self.lora_A.to(x.dtype)), self.lora_B.to(x.dtype))
        return base + update * self.lora_scaling.to(x.dtype)

    def merged_weight(self) -> torch.Tensor:
        return merge_weight(self.weight, self.lora_A, self.lora_B, self.lora_scaling)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, rank={self.rank}, scaling={float(self.lora_scaling):g}"


def merge_weight(weight: torch.Tensor, lora_a: torch.Tensor, lora_b: torch.Tensor, scaling) -> torch.Tensor:
    """``W + scaling * B A`` computed in float32, returned in ``weight``'s dtype."""
    delta = lora_b.float() @ lora_a.float()
    return (weight.float() + float(scaling) * delta).to(weight.dtype)


def apply_lora(model: nn.Module, rank: int = 8, alpha: float = 16.0, target: str = r"attn\.(qkv|proj)$") -> List[str]:
    """Replace the ``nn.Linear`` modules whose names match ``target`` by LoRALinear; returns their names.
    Raises ValueError when nothing matches (a LoRA that adapts nothing is a configuration mistake)."""
    pattern = re.compile(target)
    names = [n for n, m in model.named_modules() if type(m) is nn.Linear and pattern.search(n)]
    if not names:
        linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)][:8]
        raise ValueError(f"LoRA target {target!r} matches no nn.Linear module; some linears: {', '.join(linears)}")
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, LoRALinear.from_linear(getattr(parent, child), rank, alpha))
    logger.info("LoRA (rank %d, alpha %g) on %d linear layers matching %r", rank, alpha, len(names), target)
    return names


def merge_lora_state_dict(state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """A plain state dict: every ``<m>.weight`` with ``<m>.lora_A/B/scaling`` becomes ``W + s B A``; the LoRA
    entries are dropped.  Other entries are returned unchanged (same tensors)."""
    out: Dict[str, torch.Tensor] = {}
    prefixes = {k[: -len(".lora_A")] for k in state if k.endswith(".lora_A")}
    for prefix in prefixes:
        missing = [prefix + s for s in (".weight", ".lora_B", ".lora_scaling") if prefix + s not in state]
        if missing:
            raise KeyError(f"LoRA entries of {prefix} are incomplete: missing {', '.join(missing)}")
    for key, value in state.items():
        if key.endswith(LORA_SUFFIXES):
            continue
        prefix = key[: -len(".weight")] if key.endswith(".weight") else None
        if prefix in prefixes:
            value = merge_weight(value, state[prefix + ".lora_A"], state[prefix + ".lora_B"],
                                 state[prefix + ".lora_scaling"])
        out[key] = value
    return out
