"""DeepSpeed backend of the conditional-MoE layers (``MOE.BACKEND deepspeed``): ``deepspeed.moe.layer.MoE``
with expert parallelism ``MOE.EP_SIZE``, run under the DeepSpeed step engine (``SOLVER.DEEPSPEED.ENABLED``;
the engine creates the expert-parallel process groups).

DeepSpeed's MoE needs experts whose output width equals their input width, so the units are:

* :class:`DeepSpeedMoEAttention`: ``q``, ``k``, ``v`` and ``proj`` are each an MoE over ``Linear(D, D)``;
* :class:`DeepSpeedMoEMlp`: one MoE over the whole FFN ``Linear(D, H) -> GELU -> Linear(H, D)``.

(The native backend mixes expert *linears* with a shared routing, which makes pre-merging exact; with top-2
the two backends therefore compute different functions and their checkpoints are not interchangeable.)

Routing: ``token`` uses DeepSpeed's ``TopKGate`` (capacity ``MOE.CAPACITY_FACTOR`` / ``EVAL_CAPACITY_FACTOR``,
``MIN_CAPACITY``, token dropping, its ``l_aux`` recorded for ``loss_moe_aux``); with ``MOE.EP_SIZE`` > 1 as
:class:`GroupCapacityGate`, whose capacity is the largest of the expert-parallel group.
``attribute`` replaces the gate by :class:`AttributeLogitsGate`: the logits come from our
:class:`~.routing.AttributeGate` (fp32 attribute embedding, Jitter noise) and are handed to DeepSpeed's
top-k functions through the ``used_token`` argument of ``MoE.forward``; no capacity limit (no dropping).
The published Uni-Perceiver-MoE gate (``MOE.ATTRIBUTE_GATE segment_row``) and published MoE checkpoints are
native-only: ``MoESpec.from_config`` refuses them with this backend in one line.
``NOISY_GATE_POLICY RSample`` maps to DeepSpeed's RSample (top-1) / sampled second expert (top-2).
Expert parameters carry ``allreduce = False`` (DeepSpeed); ``solver.build_optimizer`` splits them into
DeepSpeed's expert groups.
"""
from __future__ import annotations

from typing import Any, Dict, Optional

import torch
import torch.distributed as dist
import torch.nn as nn

from uniperceiver.utils.deepspeed import import_deepspeed

from .layers import AuxLossRecorder, MoESpec, RoutedAttention, token_attributes
from .routing import AttributeGate


def _deepspeed_moe():
    import_deepspeed()
    from deepspeed.moe import sharded_moe
    from deepspeed.moe.layer import MoE

    return MoE, sharded_moe


def _attribute_gate_class():
    _, sharded_moe = _deepspeed_moe()

    class AttributeLogitsGate(sharded_moe.TopKGate):
        """DeepSpeed ``TopKGate`` that takes ready fp32 logits ``[N, E]`` in place of ``used_token``."""

        def __init__(self, num_experts: int, k: int, min_capacity: int, noisy_gate_policy: Optional[str]):
            super().__init__(1, num_experts, k, capacity_factor=0.0, eval_capacity_factor=0.0,
                             min_capacity=min_capacity, noisy_gate_policy=noisy_gate_policy, drop_tokens=False,
                             use_rts=False, top2_2nd_expert_sampling=noisy_gate_policy == "RSample")
            self.wg = None  # the logits come from the attribute gate

        def forward(self, input, used_token=None, sparse_routes=False, use_tutel=False):
            logits = used_token.float()
            policy = self.noisy_gate_policy if self.training else None
            if self.k == 1:
                return sharded_moe.top1gating(logits, 0.0, self.min_capacity, None, policy, False, False,
                                              self.ep_group, sparse_routes, use_tutel)
            if self.k == 2:
                return sharded_moe.top2gating(logits, 0.0, self.min_capacity, False, self.ep_group,
                                              self.top2_2nd_expert_sampling and self.training, sparse_routes)
            return sharded_moe.topkgating(logits, self.k, 0.0, self.min_capacity, False, self.ep_group,
                                          sparse_routes=sparse_routes)

    return AttributeLogitsGate


def _group_capacity_gate_class():
    _, sharded_moe = _deepspeed_moe()

    class GroupCapacityGate(sharded_moe.TopKGate):
        """DeepSpeed ``TopKGate`` (token routing, token dropping) whose capacity is the largest of its
        expert-parallel group.  The experts of a group exchange ``[experts, capacity, dim]`` buffers, so every
        rank needs the same capacity; DeepSpeed derives it from the rank's own token count, which differs
        between ranks whenever their text lengths do.  The group's capacity goes in as ``min_capacity``: the
        gate's ``max(ceil(factor * k * tokens / experts), min_capacity)`` then gives it on every rank."""

        def forward(self, input, used_token=None, sparse_routes=False, use_tutel=False):
            if self.ep_group is None or dist.get_world_size(self.ep_group) == 1:
                return super().forward(input, used_token, sparse_routes, use_tutel)
            factor = self.capacity_factor if self.training else self.eval_capacity_factor
            shape_only = input.new_empty(input.shape[0], self.wg.out_features)
            capacity = sharded_moe._capacity(shape_only, torch.tensor(factor * self.k),
                                             torch.tensor(self.min_capacity))
            dist.all_reduce(capacity, op=dist.ReduceOp.MAX, group=self.ep_group)
            configured, self.min_capacity = self.min_capacity, int(capacity)
            try:
                return super().forward(input, used_token, sparse_routes, use_tutel)
            finally:
                self.min_capacity = configured

    return GroupCapacityGate


class DeepSpeedRouted(AuxLossRecorder):
    """``deepspeed.moe.layer.MoE`` over ``expert`` (a ``D -> D`` module) with attribute or token routing."""

    def __init__(self, dim: int, expert: nn.Module, spec: MoESpec):
        super().__init__()
        MoE, _ = _deepspeed_moe()
        self.spec = spec
        policy = spec.noise_policy or None
        attribute = spec.routing == "attribute"
        self.moe = MoE(hidden_size=dim, expert=expert, num_experts=spec.num_experts, ep_size=spec.ep_size,
                       k=spec.top_k, capacity_factor=spec.capacity_factor,
                       eval_capacity_factor=spec.eval_capacity_factor, min_capacity=spec.min_capacity,
                       noisy_gate_policy=None if attribute else policy, drop_tokens=not attribute, use_rts=False,
                       top2_2nd_expert_sampling=policy == "RSample")
        if attribute:
            self.attr_gate = AttributeGate(spec.num_experts, spec.top_k, embed_dim=spec.gate_dim,
                                           noise_policy="Jitter" if policy == "Jitter" else "",
                                           noise_std=spec.noise_std)
            self.moe.deepspeed_moe.gate = _attribute_gate_class()(
                spec.num_experts, spec.top_k, spec.min_capacity, "RSample" if policy == "RSample" else None)
        else:
            if spec.ep_size > 1:
                self.moe.deepspeed_moe.gate = _group_capacity_gate_class()(
                    dim, spec.num_experts, spec.top_k, spec.capacity_factor, spec.eval_capacity_factor,
                    spec.min_capacity, policy, drop_tokens=True, use_rts=False,
                    top2_2nd_expert_sampling=policy == "RSample")
            nn.init.trunc_normal_(self.moe.deepspeed_moe.gate.wg.weight, std=spec.init_std)

    def forward(self, x: torch.Tensor, attributes: Optional[Dict[str, Any]] = None) -> torch.Tensor:
        b, s, _ = x.shape
        if self.spec.routing == "attribute":
            logits = self.attr_gate.logits(token_attributes(attributes, s))  # [S, E] fp32
            out, _, _ = self.moe(x, logits.repeat(b, 1))
        else:
            out, l_aux, _ = self.moe(x)
            self.record_aux(l_aux)
        return out


def _linear(dim: int, out: int, init_std: float) -> nn.Linear:
    layer = nn.Linear(dim, out)
    nn.init.trunc_normal_(layer.weight, std=init_std)
    nn.init.zeros_(layer.bias)
    return layer


class _Ffn(nn.Sequential):
    def __init__(self, dim: int, hidden_dim: int, init_std: float):
        super().__init__(_linear(dim, hidden_dim, init_std), nn.GELU(), _linear(hidden_dim, dim, init_std))


class DeepSpeedMoEAttention(RoutedAttention):
    """Multi-head self-attention with DeepSpeed-MoE ``q``, ``k``, ``v`` and output projections."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, attn_drop: float = 0.0,
                 proj_drop: float = 0.0, *, spec: MoESpec):
        super().__init__(dim, num_heads, attn_drop, proj_drop)
        self.q, self.k, self.v, self.proj = (DeepSpeedRouted(dim, _linear(dim, dim, spec.init_std), spec)
                                             for _ in range(4))

    def project_qkv(self, x: torch.Tensor, attributes: Optional[Dict[str, Any]]):
        b, n, c = x.shape
        return tuple(m(x, attributes).view(b, n, self.num_heads, c // self.num_heads).transpose(1, 2)
                     for m in (self.q, self.k, self.v))


class DeepSpeedMoEMlp(nn.Module):
    """A DeepSpeed MoE whose experts are whole FFNs."""

    def __init__(self, dim: int, hidden_dim: int, drop: float = 0.0, *, spec: MoESpec):
        super().__init__()
        self.experts = DeepSpeedRouted(dim, _Ffn(dim, hidden_dim, spec.init_std), spec)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor, attributes: Optional[Dict[str, Any]] = None) -> torch.Tensor:
        return self.drop(self.experts(x, attributes))
