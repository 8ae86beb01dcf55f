"""Gates and token dispatch of the native MoE backend.

Gates (always in fp32, autocast off):

* :class:`AttributeGate` — logits from a learned embedding of each token's (modality, task type, side) ids
  (``moe/attributes.py``), not from its content.  Computed once per sequence position ``[S, E]`` and shared
  by the batch, so in eval the routing of a token depends on its attributes only (and can be pre-merged).
* :class:`SegmentRowGate` — the published Uni-Perceiver-MoE gate: the fixed 8-dim attribute row of the
  token's input segment (``attributes.segment_rows``) -> ``Linear(8, D)`` -> ``LayerNorm`` (eps 1e-5) ->
  ``Linear(D, E)`` without bias.  Also content-free and shared by the batch.
* :class:`TokenGate` — logits from the token's hidden state (``Linear(D, E)``).

Top-k: probabilities are the softmax over all experts; top-1 keeps the raw probability as the expert weight
(so the gate gets a gradient), top-k > 1 renormalises the k selected probabilities to sum to 1 (both as
published).  Noise in
training (``MOE.NOISY_GATE_POLICY``): ``Jitter`` multiplies the gate input by U(1 - 0.01 s, 1 + 0.01 s),
``RSample`` selects experts on ``logits + s * Gumbel`` (weights from the clean logits), ``Normal`` (the
published ``vmoe``) selects on ``logits + N(0, (s / E)^2)`` and takes the weights from those noisy logits
too; ``s = MOE.NOISE_STD``.  Eval never adds noise.

Capacity (token routing): ``C = max(min_capacity, ceil(factor * k * N / E))`` slots per expert (``factor <= 0``:
unlimited); assignments are served first choice before second choice, in token order, and the ones past
``C`` are dropped (that expert's contribution is 0).  Attribute routing never drops.  Load-balancing loss
(token routing, GShard / Switch): ``E * sum_e mean_prob_e * frac_e`` with ``frac_e`` the fraction of tokens
whose first choice is ``e`` (1.0 when perfectly balanced).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .attributes import MODALITIES, SEGMENT_ROW_LENGTH, SIDES, TASK_TYPES

NOISE_POLICIES = ("", "None", "Jitter", "RSample", "Normal")


@dataclass
class Routing:
    experts: torch.Tensor  # [N, k] long
    weights: torch.Tensor  # [N, k] fp32
    probs: torch.Tensor    # [N, E] fp32 (softmax of the clean logits)


def capacity(num_tokens: int, num_experts: int, top_k: int, factor: float, min_capacity: int) -> Optional[int]:
    """Slots per expert, or None (no dropping) when ``factor <= 0``."""
    if factor <= 0:
        return None
    return min(num_tokens, max(int(min_capacity), math.ceil(factor * top_k * num_tokens / num_experts)))


def top_k_routing(logits: torch.Tensor, k: int, noise_policy: str = "", noise_std: float = 1.0) -> Routing:
    """``logits [N, E]`` (fp32) -> top-k experts and weights (see the module docstring)."""
    probs = logits.softmax(dim=-1)
    select = logits
    if noise_policy == "RSample":
        gumbel = -torch.empty_like(logits).exponential_().log()
        select = logits + noise_std * gumbel
    elif noise_policy == "Normal":  # the published "vmoe": N(0, (s / E)^2) on the logits
        select = logits + torch.randn_like(logits) * (noise_std / logits.shape[-1])
        probs = select.softmax(dim=-1)  # published top2gating (the working path for k = 1 and 2): noisy weights
    experts = select.topk(k, dim=-1).indices
    weights = probs.gather(1, experts)
    if k > 1:
        weights = weights / weights.sum(dim=-1, keepdim=True).clamp_min(torch.finfo(weights.dtype).tiny)
    return Routing(experts, weights, probs)


def load_balancing_loss(routing: Routing) -> torch.Tensor:
    num_experts = routing.probs.shape[-1]
    first = F.one_hot(routing.experts[:, 0], num_experts).float()
    return num_experts * (routing.probs.mean(0) * first.mean(0)).sum()


def _jitter(x: torch.Tensor, noise_std: float) -> torch.Tensor:
    eps = 1e-2 * noise_std
    return x * torch.empty_like(x).uniform_(1.0 - eps, 1.0 + eps)


class AttributeGate(nn.Module):
    """Routes by a learned embedding of (modality, task type, side); see the module docstring."""

    def __init__(self, num_experts: int, top_k: int, *, embed_dim: int = 64, noise_policy: str = "",
                 noise_std: float = 1.0):
        super().__init__()
        self.num_experts, self.top_k = num_experts, top_k
        self.noise_policy, self.noise_std = noise_policy, noise_std
        # Plain parameters (not nn.Embedding / nn.Linear, which the model's weight init would reset):
        # unit-scale attribute embeddings and logits of order 1, so the initial routing already differs
        # between attribute combinations.
        self.modality = nn.Parameter(torch.randn(len(MODALITIES), embed_dim))
        self.task = nn.Parameter(torch.randn(len(TASK_TYPES), embed_dim))
        self.side = nn.Parameter(torch.randn(len(SIDES), embed_dim))
        self.proj = nn.Parameter(torch.randn(num_experts, embed_dim) * embed_dim ** -0.5)

    def no_weight_decay(self):
        return {"modality", "task", "side"}

    def embed(self, token_attributes: torch.Tensor) -> torch.Tensor:
        """``[S, 3]`` ids -> ``[S, A]`` fp32 attribute embedding (with Jitter noise in training)."""
        ids = token_attributes
        e = (self.modality[ids[:, 0]] + self.task[ids[:, 1]] + self.side[ids[:, 2]]).float()
        if self.training and self.noise_policy == "Jitter":
            e = _jitter(e, self.noise_std)
        return e

    def logits(self, token_attributes: torch.Tensor) -> torch.Tensor:
        with torch.autocast(token_attributes.device.type, enabled=False):
            return F.linear(self.embed(token_attributes), self.proj.float())

    def forward(self, token_attributes: torch.Tensor) -> Routing:
        """Per-position routing ``[S, k]`` (the caller broadcasts it over the batch)."""
        policy = self.noise_policy if self.training else ""
        with torch.autocast(token_attributes.device.type, enabled=False):
            return top_k_routing(self.logits(token_attributes), self.top_k, policy, self.noise_std)


class SegmentRowGate(nn.Module):
    """The published gate (``TopKGate`` with ``TAG_Transform``): attribute row -> Linear(8, D) -> LayerNorm ->
    bias-free Linear(D, E); computed once per distinct row, so training noise is drawn per segment row, as
    published."""

    def __init__(self, dim: int, num_experts: int, top_k: int, *, row_length: int = SEGMENT_ROW_LENGTH,
                 noise_policy: str = "", noise_std: float = 1.0):
        super().__init__()
        self.num_experts, self.top_k = num_experts, top_k
        self.noise_policy, self.noise_std = noise_policy, noise_std
        self.row_proj = nn.Linear(row_length, dim)
        self.norm = nn.LayerNorm(dim, eps=1e-5)
        self.proj = nn.Linear(dim, num_experts, bias=False)

    def logits(self, rows: torch.Tensor) -> torch.Tensor:
        """``[R, 8]`` rows -> ``[R, E]`` fp32 logits (Jitter noise on the normalised row in training)."""
        with torch.autocast(rows.device.type, enabled=False):
            h = F.linear(rows.float(), self.row_proj.weight.float(), self.row_proj.bias.float())
            h = F.layer_norm(h, h.shape[-1:], self.norm.weight.float(), self.norm.bias.float(), self.norm.eps)
            if self.training and self.noise_policy == "Jitter":
                h = _jitter(h, self.noise_std)
            return F.linear(h, self.proj.weight.float())

    def forward(self, rows: torch.Tensor) -> Routing:
        """``[S, 8]`` per-position rows -> routing ``[S, k]`` (the caller broadcasts it over the batch)."""
        distinct, inverse = torch.unique(rows, dim=0, return_inverse=True)
        policy = self.noise_policy if self.training else ""
        with torch.autocast(rows.device.type, enabled=False):
            r = top_k_routing(self.logits(distinct), self.top_k, policy, self.noise_std)
        return Routing(r.experts[inverse], r.weights[inverse], r.probs[inverse])


class TokenGate(nn.Module):
    """Routes by the token's hidden state: ``Linear(D, E)`` in fp32."""

    def __init__(self, dim: int, num_experts: int, top_k: int, *, noise_policy: str = "", noise_std: float = 1.0,
                 init_std: float = 0.02):
        super().__init__()
        self.num_experts, self.top_k = num_experts, top_k
        self.noise_policy, self.noise_std = noise_policy, noise_std
        self.proj = nn.Linear(dim, num_experts, bias=False)
        nn.init.trunc_normal_(self.proj.weight, std=init_std)

    def forward(self, x: torch.Tensor) -> Routing:
        """``x [N, D]`` -> routing ``[N, k]``."""
        with torch.autocast(x.device.type, enabled=False):
            h = x.float()
            if self.training and self.noise_policy == "Jitter":
                h = _jitter(h, self.noise_std)
            logits = F.linear(h, self.proj.weight.float())
            return top_k_routing(logits, self.top_k, self.noise_policy if self.training else "", self.noise_std)


class DispatchPlan:
    """Which of the ``N * k`` (token, expert) assignments are served: an expert takes at most ``C`` of them,
    first choices before second choices, in token order (``pos`` is an assignment's slot at its expert).

    Built once per routing decision and reused by every expert linear that shares it (the two FFN linears):
    :meth:`apply` is a gather, one matmul per expert (a loop over at most E experts, none over tokens) and a
    weighted scatter-add."""

    def __init__(self, routing: Routing, num_experts: int, capacity: Optional[int]):
        experts, weights = routing.experts, routing.weights
        n, k = experts.shape
        flat_e = experts.t().reshape(-1)  # k-major: all first choices get served before second choices
        tok = torch.arange(n, device=experts.device).repeat(k)
        w = weights.t().reshape(-1)
        onehot = F.one_hot(flat_e, num_experts)
        pos = (onehot.cumsum(0) - 1).gather(1, flat_e[:, None]).squeeze(1)
        self.counts = onehot.sum(0)  # assignments per expert before dropping
        self.capacity = int(self.counts.max()) if capacity is None else int(capacity)
        keep = pos < self.capacity
        self.num_dropped = int((~keep).sum())
        self.expert, self.pos, self.token, self.weight = flat_e[keep], pos[keep], tok[keep], w[keep]
        self.num_experts, self.num_tokens = num_experts, n
        # the kept assignments grouped by expert, for apply(): one matmul per expert over its tokens only
        order = torch.argsort(self.expert, stable=True)
        self._sorted_token, self._sorted_weight = self.token[order], self.weight[order]
        self._group_sizes = torch.bincount(self.expert, minlength=num_experts).tolist()

    def apply(self, linear, x: torch.Tensor) -> torch.Tensor:
        """``[N, in] -> [N, out]``: each token's kept assignments through their expert's linear (an
        :class:`~.layers.ExpertLinear`: one ``addmm`` per expert over the tokens assigned to it), weighted and
        summed.  (Not padded ``[E, C]`` buffers: they
        would hold ``E * max(count)`` rows, and attribute routing sends every token of a kind, all image tokens
        say, to the same experts, so most rows would be padding: the MoE-Tiny training step took 1.8x longer.)"""
        y = linear(x.index_select(0, self._sorted_token), self._group_sizes)
        y = y * self._sorted_weight[:, None].to(y.dtype)
        return y.new_zeros(self.num_tokens, y.shape[-1]).index_add(0, self._sorted_token, y)
