"""Native (pure PyTorch) conditional-MoE layers of Uni-Perceiver-MoE: drop-in ``attn_layer`` / ``mlp_layer``
for :class:`uniperceiver.modeling.encoder.Block`.

Every MoE unit is a mixture of expert *linears* sharing one routing decision:

* :class:`MoEAttention`: ``qkv`` and ``proj`` are :class:`RoutedExperts` (each with its own gate; with the
  published gate ``MOE.ATTRIBUTE_GATE segment_row``, ``proj`` follows the routing of ``qkv``);
* :class:`MoEMlp`: ``fc1 -> GELU -> fc2`` where both linears are expert mixtures with the SAME routing
  (``y = sum_k w_k fc2_k(GELU(sum_j w_j fc1_j(x)))``; with top-1 this is exactly one FFN expert per token).

Because each expert mixture is linear in the expert weights, a token whose routing is fixed (attribute
routing in eval) sees exactly the dense layer ``W = sum_k w_k W_k, b = sum_k w_k b_k``: :meth:`merge` turns
that on ("pre-merged experts", the published deployment trick) with identical outputs up to float rounding.

Expert compute is batched: a :class:`~.routing.DispatchPlan` scatters tokens into an ``[E, C, D]`` buffer,
one ``baddbmm`` runs all experts, a scatter-add combines — no Python loop over tokens or experts.

Auxiliary (load-balancing) losses of token routing are recorded by each unit during training forwards (not
during activation-checkpoint recomputation) and popped by :func:`uniperceiver.modeling.moe.pop_aux_loss`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from .attributes import SEGMENT_ROWS_KEY, TOKEN_ATTRIBUTES_KEY, segment_rows
from .routing import AttributeGate, DispatchPlan, Routing, SegmentRowGate, TokenGate, capacity, load_balancing_loss

ATTRIBUTE_GATES = ("segment_row", "embedding")


@dataclass(frozen=True)
class MoESpec:
    """Everything an MoE layer needs (translated from ``cfg.MOE`` by :meth:`from_config`)."""

    num_experts: int = 8
    top_k: int = 2
    routing: str = "attribute"           # "attribute" | "token"
    gate: str = "embedding"              # attribute routing: "segment_row" (published) | "embedding"
    noise_policy: str = ""               # "" | "Jitter" | "RSample" | "Normal"
    noise_std: float = 1.0
    capacity_factor: float = 1.0         # token routing, training
    eval_capacity_factor: float = 1.0    # token routing, eval
    min_capacity: int = 4
    gate_dim: int = 64                   # attribute embedding width
    init_std: float = 0.02
    backend: str = "native"              # "native" | "deepspeed"
    ep_size: int = 1

    @classmethod
    def from_config(cls, cfg) -> "MoESpec":
        from uniperceiver.config import ConfigError

        moe = cfg.MOE
        if moe.MOE_TYPE not in ("attribute", "token"):
            raise ConfigError(f"MOE.MOE_TYPE {moe.MOE_TYPE!r}: expected 'attribute' or 'token'")
        if moe.BACKEND not in ("native", "deepspeed"):
            raise ConfigError(f"MOE.BACKEND {moe.BACKEND!r}: expected 'native' or 'deepspeed'")
        if not 1 <= moe.TOP_K <= moe.NUM_EXPERTS:
            raise ConfigError(f"MOE.TOP_K {moe.TOP_K} must be in [1, MOE.NUM_EXPERTS = {moe.NUM_EXPERTS}]")
        policy = "" if moe.NOISY_GATE_POLICY in ("", "None") else moe.NOISY_GATE_POLICY
        if policy not in ("", "Jitter", "RSample", "Normal"):
            raise ConfigError(f"MOE.NOISY_GATE_POLICY {moe.NOISY_GATE_POLICY!r}: expected '', 'Jitter', 'RSample' or 'Normal'")
        if moe.ATTRIBUTE_GATE not in ATTRIBUTE_GATES:
            raise ConfigError(f"MOE.ATTRIBUTE_GATE {moe.ATTRIBUTE_GATE!r}: expected one of {', '.join(ATTRIBUTE_GATES)}")
        if moe.BACKEND == "deepspeed" and moe.MOE_TYPE == "attribute" and moe.ATTRIBUTE_GATE == "segment_row":
            raise ConfigError("MOE.BACKEND deepspeed does not implement the published Uni-Perceiver-MoE gate "
                              "(MOE.ATTRIBUTE_GATE segment_row) nor load published MoE checkpoints: use MOE.BACKEND "
                              "native, or MOE.ATTRIBUTE_GATE embedding")
        if moe.BACKEND == "deepspeed" and policy == "Normal":
            raise ConfigError("MOE.NOISY_GATE_POLICY Normal needs MOE.BACKEND native (DeepSpeed's gates know Jitter "
                              "and RSample)")
        if moe.NUM_EXPERTS % max(1, moe.EP_SIZE):
            raise ConfigError(f"MOE.NUM_EXPERTS {moe.NUM_EXPERTS} is not divisible by MOE.EP_SIZE {moe.EP_SIZE}")
        if moe.BACKEND == "native" and moe.EP_SIZE != 1:
            raise ConfigError("MOE.EP_SIZE > 1 needs MOE.BACKEND deepspeed (the native backend replicates experts)")
        if moe.BACKEND == "deepspeed" and not cfg.SOLVER.DEEPSPEED.ENABLED:
            raise ConfigError("MOE.BACKEND deepspeed runs under the DeepSpeed engine: set SOLVER.DEEPSPEED.ENABLED True")
        return cls(num_experts=moe.NUM_EXPERTS, top_k=moe.TOP_K, routing=moe.MOE_TYPE, gate=moe.ATTRIBUTE_GATE,
                   noise_policy=policy,
                   noise_std=moe.NOISE_STD, capacity_factor=moe.CAPACITY_FACTOR,
                   eval_capacity_factor=moe.EVAL_CAPACITY_FACTOR, min_capacity=moe.MIN_CAPACITY,
                   gate_dim=moe.GATE_DIM, init_std=cfg.MODEL.BERT.INITIALIZER_RANGE, backend=moe.BACKEND,
                   ep_size=moe.EP_SIZE)


def token_attributes(attributes: Optional[Dict[str, Any]], seq_len: int) -> torch.Tensor:
    ids = (attributes or {}).get(TOKEN_ATTRIBUTES_KEY)
    if ids is None:
        raise ValueError("attribute-routed MoE needs attributes['token_attributes'] (UniPerceiver.encode adds it)")
    if ids.shape[0] > seq_len:
        raise ValueError(f"token_attributes cover {ids.shape[0]} positions, the sequence has {seq_len}")
    if ids.shape[0] < seq_len:  # deep prompt tokens appended by the encoder: routed like <spe> (row 0)
        ids = torch.cat([ids, ids[:1].expand(seq_len - ids.shape[0], -1)])
    return ids


def token_segment_rows(attributes: Optional[Dict[str, Any]], seq_len: int) -> torch.Tensor:
    """``[seq_len, 8]`` published attribute rows of the positions (computed once per forward, kept in
    ``attributes``); deep prompt tokens appended by the encoder take the first segment's row, as the published
    model routes its prompt keys / values with the first segment."""
    ids = token_attributes(attributes, 0 if attributes is None else len(attributes.get(TOKEN_ATTRIBUTES_KEY, ())))
    cached = attributes.get(SEGMENT_ROWS_KEY)
    if cached is None or cached[0] is not ids:
        cached = (ids, segment_rows(ids))
        attributes[SEGMENT_ROWS_KEY] = cached
    rows = cached[1]
    if rows.shape[0] > seq_len:
        raise ValueError(f"token_attributes cover {rows.shape[0]} positions, the sequence has {seq_len}")
    if rows.shape[0] < seq_len:
        rows = torch.cat([rows, rows[:1].expand(seq_len - rows.shape[0], -1)])
    return rows


def in_recomputation() -> bool:
    """True inside a backward pass (activation-checkpoint recomputation): do not record losses there."""
    return torch._C._current_graph_task_id() != -1


class AuxLossRecorder(nn.Module):
    """Base of MoE units: keeps the load-balancing losses of training forwards until they are popped."""

    def __init__(self):
        super().__init__()
        self._aux: List[torch.Tensor] = []

    def record_aux(self, loss: torch.Tensor) -> None:
        if self.training and torch.is_grad_enabled() and not in_recomputation():
            self._aux.append(loss)

    def pop_aux_loss(self) -> Optional[torch.Tensor]:
        if not self._aux:
            return None
        total = torch.stack([a.float() for a in self._aux]).sum()
        self._aux = []
        return total


class ExpertLinear(nn.Module):
    """``E`` linears ``in_dim -> out_dim`` stored as ``weight [E, in, out]`` and ``bias [E, out]``."""

    def __init__(self, num_experts: int, in_dim: int, out_dim: int, init_std: float = 0.02):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_experts, in_dim, out_dim))
        self.bias = nn.Parameter(torch.zeros(num_experts, out_dim))
        nn.init.trunc_normal_(self.weight, std=init_std)
        for p in (self.weight, self.bias):
            p.moe_expert = True  # read by the optimizer builder (expert parameter groups)

    def forward(self, x: torch.Tensor, group_sizes: Sequence[int]) -> torch.Tensor:
        """``[A, in] -> [A, out]`` for rows sorted by expert, ``group_sizes[e]`` of them for expert ``e``: one
        ``addmm`` per expert that has rows."""
        weights, biases = self.weight.to(x.dtype).unbind(0), self.bias.to(x.dtype).unbind(0)
        outs = [torch.addmm(b, rows, w) for rows, w, b in zip(x.split(list(group_sizes)), weights, biases)
                if rows.shape[0]]
        return torch.cat(outs) if outs else x.new_zeros(0, self.weight.shape[-1])

    def merged(self, experts: torch.Tensor, weights: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Dense ``(W [in, out], b [out])`` of the mixture ``sum_k weights[k] * expert[experts[k]]``."""
        w = weights.to(self.weight.dtype)
        return torch.einsum("k,kio->io", w, self.weight[experts]), w @ self.bias[experts]


class RoutedExperts(AuxLossRecorder):
    """A gate plus a chain of expert linears (GELU between them) that share its routing decision.  With
    ``gated=False`` the unit has no gate of its own: the caller hands it another unit's routing (the published
    attention output projection follows its qkv projection's routing)."""

    def __init__(self, dims: Sequence[int], spec: MoESpec, *, gated: bool = True):
        super().__init__()
        self.spec = spec
        if not gated:
            self.gate = None
        elif spec.routing == "attribute" and spec.gate == "segment_row":
            self.gate = SegmentRowGate(dims[0], spec.num_experts, spec.top_k, noise_policy=spec.noise_policy,
                                       noise_std=spec.noise_std)
        elif spec.routing == "attribute":
            self.gate = AttributeGate(spec.num_experts, spec.top_k, embed_dim=spec.gate_dim,
                                      noise_policy=spec.noise_policy, noise_std=spec.noise_std)
        else:
            self.gate = TokenGate(dims[0], spec.num_experts, spec.top_k, noise_policy=spec.noise_policy,
                                  noise_std=spec.noise_std, init_std=spec.init_std)
        self.linears = nn.ModuleList(ExpertLinear(spec.num_experts, a, b, spec.init_std) for a, b in zip(dims, dims[1:]))
        self.act = nn.GELU()
        self.merged = False
        self._merged_cache: Dict[Tuple, List[Tuple[torch.Tensor, torch.Tensor]]] = {}
        self.last_plan: Optional[DispatchPlan] = None  # for inspection (tests, statistics)

    def merge(self, enable: bool = True) -> None:
        """Use pre-merged dense weights per attribute combination in eval (attribute routing only)."""
        if enable and self.spec.routing != "attribute":
            raise ValueError("only attribute-routed experts can be pre-merged (token routing depends on content)")
        self.merged = enable
        self._merged_cache.clear()

    def train(self, mode: bool = True):
        self._merged_cache.clear()  # weights will change
        return super().train(mode)

    def position_routing(self, attributes: Optional[Dict[str, Any]], seq_len: int) -> Routing:
        """Attribute routing of the ``seq_len`` positions, ``[S, k]`` (shared by the batch)."""
        if self.gate is None:
            raise ValueError("this MoE unit has no gate of its own: pass the routing it follows")
        if isinstance(self.gate, SegmentRowGate):
            return self.gate(token_segment_rows(attributes, seq_len))
        return self.gate(token_attributes(attributes, seq_len))

    def forward(self, x: torch.Tensor, attributes: Optional[Dict[str, Any]] = None,
                routing: Optional[Routing] = None) -> torch.Tensor:
        """``routing``: a position routing ``[S, k]`` to follow (attribute routing) instead of the own gate's."""
        b, s, d = x.shape
        x2 = x.reshape(b * s, d)
        if self.spec.routing == "attribute":
            r = routing if routing is not None else self.position_routing(attributes, s)
            if self.merged and not self.training:
                return self._forward_merged(x, r)
            routing = Routing(r.experts.repeat(b, 1), r.weights.repeat(b, 1), r.probs)
            cap = None
        else:
            routing = self.gate(x2)
            factor = self.spec.capacity_factor if self.training else self.spec.eval_capacity_factor
            cap = capacity(b * s, self.spec.num_experts, self.spec.top_k, factor, self.spec.min_capacity)
            self.record_aux(load_balancing_loss(routing))
        plan = DispatchPlan(routing, self.spec.num_experts, cap)
        self.last_plan = plan
        h = x2
        for i, linear in enumerate(self.linears):
            if i:
                h = self.act(h)
            h = plan.apply(linear, h)
        return h.reshape(b, s, -1)

    def _forward_merged(self, x: torch.Tensor, r: Routing) -> torch.Tensor:
        keys = torch.cat([r.experts.to(r.weights.dtype), r.weights], dim=1)
        combos, inverse = torch.unique(keys, dim=0, return_inverse=True)
        out = None
        for u in range(combos.shape[0]):
            where = (inverse == u).nonzero().squeeze(1)
            layers = self._merged_layers(r.experts[where[0]], r.weights[where[0]])
            h = x[:, where]
            for i, (w, bias) in enumerate(layers):
                if i:
                    h = self.act(h)
                h = torch.addmm(bias.to(h.dtype), h.reshape(-1, h.shape[-1]), w.to(h.dtype)).reshape(*h.shape[:-1], -1)
            if out is None:
                out = h.new_zeros(*x.shape[:2], h.shape[-1])
            out[:, where] = h
        return out

    def _merged_layers(self, experts: torch.Tensor, weights: torch.Tensor) -> List[Tuple[torch.Tensor, torch.Tensor]]:
        key = (tuple(experts.tolist()), tuple(weights.tolist()))
        if key not in self._merged_cache:
            self._merged_cache[key] = [lin.merged(experts, weights) for lin in self.linears]
        return self._merged_cache[key]


class RoutedAttention(nn.Module):
    """Multi-head self-attention whose projections are routed: subclasses make ``proj`` (called as
    ``proj(x, attributes)``) and :meth:`project_qkv`."""

    def __init__(self, dim: int, num_heads: int, attn_drop: float = 0.0, proj_drop: float = 0.0) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"hidden size {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.attn_drop = attn_drop
        self.proj_drop = nn.Dropout(proj_drop)

    def project_qkv(self, x: torch.Tensor, attributes: Optional[Dict[str, Any]]):
        """``q, k, v``, each ``[B, heads, N, D / heads]``."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor, attn_mask: Optional[torch.Tensor] = None,
                attributes: Optional[Dict[str, Any]] = None) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.project_qkv(x, attributes)
        x = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask,
                                           dropout_p=self.attn_drop if self.training else 0.0)
        return self.proj_drop(self.proj(x.transpose(1, 2).reshape(b, n, c), attributes))


class MoEAttention(RoutedAttention):
    """Self-attention whose ``qkv`` and output ``proj`` are routed expert linears.  With the published gate
    (``segment_row``) ``proj`` has no gate: it follows the routing of ``qkv``, as in the published
    ``MoEAttentionBlock``; otherwise each has its own gate."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, attn_drop: float = 0.0,
                 proj_drop: float = 0.0, *, spec: MoESpec):
        super().__init__(dim, num_heads, attn_drop, proj_drop)
        self.shared_routing = spec.routing == "attribute" and spec.gate == "segment_row"
        self.qkv = RoutedExperts((dim, 3 * dim), spec)
        self.proj = RoutedExperts((dim, dim), spec, gated=not self.shared_routing)

    def project_qkv(self, x: torch.Tensor, attributes: Optional[Dict[str, Any]], routing: Optional[Routing] = None):
        b, n, c = x.shape
        qkv = self.qkv(x, attributes, routing)
        return qkv.view(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4).unbind(0)

    def forward(self, x: torch.Tensor, attn_mask: Optional[torch.Tensor] = None,
                attributes: Optional[Dict[str, Any]] = None) -> torch.Tensor:
        if not self.shared_routing:
            return super().forward(x, attn_mask, attributes)
        b, n, c = x.shape
        routing = self.qkv.position_routing(attributes, n)
        q, k, v = self.project_qkv(x, attributes, routing)
        x = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask,
                                           dropout_p=self.attn_drop if self.training else 0.0)
        return self.proj_drop(self.proj(x.transpose(1, 2).reshape(b, n, c), attributes, routing))


class MoEMlp(nn.Module):
    """Feed-forward network ``fc1 -> GELU -> fc2`` of routed expert linears sharing one gate."""

    def __init__(self, dim: int, hidden_dim: int, drop: float = 0.0, *, spec: MoESpec):
        super().__init__()
        self.experts = RoutedExperts((dim, hidden_dim, dim), spec)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor, attributes: Optional[Dict[str, Any]] = None) -> torch.Tensor:
        return self.drop(self.experts(x, attributes))


def expert_param_count(num_experts: int, top_k: int, dims: Sequence[int]) -> Tuple[int, int]:
    """(total, active per token) expert parameters of one routed unit with linears over ``dims``."""
    per_expert = sum(a * b + b for a, b in zip(dims, dims[1:]))
    return num_experts * per_expert, top_k * per_expert


__all__ = ["MoESpec", "MoEAttention", "MoEMlp", "RoutedExperts", "ExpertLinear", "AuxLossRecorder"]
