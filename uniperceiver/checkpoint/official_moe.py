"""Map the MoE part of a published Uni-Perceiver-MoE checkpoint (fundamentalvision/Uni-Perceiver) onto our
native MoE with the published gate (``MOE.ATTRIBUTE_GATE segment_row``, ``MOE.BACKEND native``).

With ``MOE.MOE`` every published block is a ``MoETransformerEncoderLayer``; its attention is a
``MoEAttentionBlock`` (``qkv_proj``, ``dense``) and the blocks with experts (published
``MOE_EXPERT_LOCATION``, ``MOE_EXPERT_TYPE 'FFN,SA'``) wrap ``qkv_proj``, ``dense``, ``linear1`` and ``linear2``
each in a ``TaskMoE``: ``experts.deepspeed_experts.<e>`` (``nn.Linear``) and a ``gate`` (``TopKGate``:
``tag_transform`` = Linear(8, D), LayerNorm; ``wg`` = Linear(D, E) without bias).  Under
``fused_encoder.layers.<N>.``:

=================================================  =========================================================
published                                          ours (``encoder.blocks.<N>.``)
=================================================  =========================================================
``self_attn.qkv_proj.weight / bias`` (dense)       ``attn.qkv.weight / bias``
``self_attn.dense.weight / bias`` (dense)          ``attn.proj.weight / bias``
``self_attn.qkv_proj.experts.deepspeed_experts.e``  ``attn.qkv.linears.0.weight[e]`` (transposed) / ``.bias[e]``
``self_attn.dense.experts.deepspeed_experts.e``     ``attn.proj.linears.0``
``linear1.experts.deepspeed_experts.e``             ``mlp.experts.linears.0``
``linear2.experts.deepspeed_experts.e``             ``mlp.experts.linears.1``
``self_attn.qkv_proj.gate.tag_transform.0 / .1``    ``attn.qkv.gate.row_proj / norm``
``self_attn.qkv_proj.gate.wg.weight``               ``attn.qkv.gate.proj.weight``
``linear1.gate.*``                                  ``mlp.experts.gate.*``
=================================================  =========================================================

Dropped, by rule (the published model never reads them):

* ``self_attn.dense.gate.*`` — :data:`RULE_DENSE_GATE`;
* ``linear2.gate.*`` — :data:`RULE_LINEAR2_GATE`.

Anything else under those modules (a gate with ``TAG_Transform_ACT``'s GELU, an expert index past
``MOE.NUM_EXPERTS``, experts in a block our config has dense, ...) is returned as unmapped: the caller refuses
the checkpoint.  The dense rest of a block (``linear1.weight`` of a block without experts, ``norm1``,
``gamma_1``, ...) is left to ``official.py``.
"""
from __future__ import annotations

import re
from typing import Dict, List, Tuple

import torch

RULE_DENSE_GATE = ("published MoEAttentionBlock: the attention output projection (dense) follows the routing "
                   "of qkv_proj (gate_decision); its own gate is never read")
RULE_LINEAR2_GATE = ("published FFN_SHARE_GATE_DECISION True (every published MoE config): linear2 follows the "
                     "routing of linear1; its own gate is never read")

_KEY = re.compile(r"^fused_encoder\.layers\.(\d+)\.(self_attn\.qkv_proj|self_attn\.dense|linear1|linear2)\.(.+)$")
_UNIT = {  # published module -> (our routed unit, index of its linear)
    "self_attn.qkv_proj": ("attn.qkv", 0),
    "self_attn.dense": ("attn.proj", 0),
    "linear1": ("mlp.experts", 0),
    "linear2": ("mlp.experts", 1),
}
_DENSE = {"self_attn.qkv_proj": "attn.qkv", "self_attn.dense": "attn.proj"}
_EXPERT = re.compile(r"^experts\.deepspeed_experts\.(\d+)\.(weight|bias)$")
_GATE = {
    "gate.tag_transform.0.weight": "gate.row_proj.weight",
    "gate.tag_transform.0.bias": "gate.row_proj.bias",
    "gate.tag_transform.1.weight": "gate.norm.weight",
    "gate.tag_transform.1.bias": "gate.norm.bias",
    "gate.wg.weight": "gate.proj.weight",
}


def is_moe_key(key: str) -> bool:
    """Whether a published key belongs to the MoE layout this module maps (``qkv_proj`` / ``dense`` of the
    MoE attention block, or the experts and gates of ``linear1`` / ``linear2``)."""
    m = _KEY.match(key)
    if not m:
        return False
    return m.group(2).startswith("self_attn.") or m.group(3).startswith(("experts.", "gate."))


def has_moe_tensors(state: Dict[str, torch.Tensor]) -> bool:
    """Whether a published state dict comes from a model with ``MOE.MOE`` (experts or MoE attention blocks)."""
    return any(is_moe_key(k) for k in state)


def convert_moe_state_dict(published_sd: Dict[str, torch.Tensor], cfg
                           ) -> Tuple[Dict[str, torch.Tensor], List[Tuple[str, str]], List[str]]:
    """The MoE keys of ``published_sd`` (:func:`is_moe_key`; others are ignored) -> ``(mapped, dropped,
    unmapped)``: our parameters, ``(published key, rule)`` for the tensors the published model never reads, and
    the published keys that fit neither (the caller refuses the checkpoint when there are any).

    Raises ``ValueError`` (one line) when ``cfg`` cannot hold a published MoE checkpoint, or when a block our
    config gives experts lacks some in the checkpoint."""
    from uniperceiver.modeling.moe import is_moe_layer

    moe = cfg.MOE
    if not moe.MOE or moe.MOE_TYPE != "attribute" or moe.ATTRIBUTE_GATE != "segment_row" or moe.BACKEND != "native":
        raise ValueError(f"a published MoE checkpoint needs MOE.MOE True, MOE.MOE_TYPE attribute, MOE.ATTRIBUTE_GATE "
                         f"segment_row, MOE.BACKEND native (the config has {moe.MOE}, {moe.MOE_TYPE}, "
                         f"{moe.ATTRIBUTE_GATE}, {moe.BACKEND})")
    num_experts = moe.NUM_EXPERTS
    mapped: Dict[str, torch.Tensor] = {}
    dropped: List[Tuple[str, str]] = []
    unmapped: List[str] = []
    experts: Dict[Tuple[int, str, str], Dict[int, torch.Tensor]] = {}  # (block, unit, weight|bias) -> e -> tensor
    for key, value in published_sd.items():
        if not is_moe_key(key):
            continue
        m = _KEY.match(key)
        block, module, rest = int(m.group(1)), m.group(2), m.group(3)
        routed = is_moe_layer(cfg, block)
        unit, _ = _UNIT[module]
        ours = f"encoder.blocks.{block}.{unit}"
        if rest in ("weight", "bias") and module in _DENSE and not routed:
            mapped[f"encoder.blocks.{block}.{_DENSE[module]}.{rest}"] = value
        elif rest.startswith("gate.") and routed and module == "self_attn.dense":
            dropped.append((key, RULE_DENSE_GATE))
        elif rest.startswith("gate.") and routed and module == "linear2":
            dropped.append((key, RULE_LINEAR2_GATE))
        elif rest in _GATE and routed:
            mapped[f"{ours}.{_GATE[rest]}"] = value
        elif _EXPERT.match(rest) and routed and int(_EXPERT.match(rest).group(1)) < num_experts:
            e, kind = _EXPERT.match(rest).groups()
            experts.setdefault((block, module, kind), {})[int(e)] = value
        else:
            unmapped.append(key)
    if unmapped:  # refused anyway: report what fits no rule before anything else
        return mapped, dropped, unmapped
    for (block, module, kind), per_expert in sorted(experts.items()):
        missing = sorted(set(range(num_experts)) - set(per_expert))
        if missing:
            raise ValueError(f"fused_encoder.layers.{block}.{module}: the checkpoint has {len(per_expert)} experts, "
                             f"MOE.NUM_EXPERTS is {num_experts} (expert {missing[0]} missing)")
        unit, index = _UNIT[module]
        stacked = torch.stack([per_expert[e] for e in range(num_experts)])
        if kind == "weight":  # nn.Linear [out, in] -> ExpertLinear [E, in, out]
            stacked = stacked.transpose(1, 2)
        mapped[f"encoder.blocks.{block}.{unit}.linears.{index}.{kind}"] = stacked.contiguous()
    for block in range(cfg.MODEL.BERT.NUM_HIDDEN_LAYERS):
        if is_moe_layer(cfg, block):
            for need in ("attn.qkv.gate.proj.weight", "attn.qkv.linears.0.weight", "attn.proj.linears.0.weight",
                         "mlp.experts.gate.proj.weight", "mlp.experts.linears.0.weight", "mlp.experts.linears.1.weight"):
                if f"encoder.blocks.{block}.{need}" not in mapped:
                    raise ValueError(f"the config ({cfg.MOE.MOE_EXPERT_LOCATION!r} MOE_EXPERT_LOCATION) gives block "
                                     f"{block} experts; the checkpoint has none for encoder.blocks.{block}.{need}")
    return mapped, dropped, unmapped
