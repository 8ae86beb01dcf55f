"""Map a published Uni-Perceiver checkpoint (the public fundamentalvision/Uni-Perceiver code) onto our model.

``tools/convert_checkpoint.py --from uniperceiver-official IN OUT`` calls :func:`convert_official_checkpoint`.
The published model (``MultiTaskTransformerEncoder``) keeps its weights under:

================================================================  ==========================================
published                                                         ours
================================================================  ==========================================
``token_embed.embeddings.weight``                                 ``embed.token_embedding.weight``
``token_embed.embeddings_pos.position_embeddings.weight``         ``embed.text_pos_embed``
``token_embed.embeddings_norm.*`` (shared with ``video_embed``)   ``embed.norm.*``
``token_embed.embeddings_token_type.weight[0]``                   ``embed.type_embedding`` rows text / <spe>
``video_embed.embeddings.*`` (conv, or linear over c*p*p)         ``embed.patch_embed.proj.*``
``video_embed.embeddings_type.weight[0]``                         ``embed.type_embedding`` row visual
``video_embed.embeddings_st_pos.temporal_pos_embed.weight``       ``embed.temporal_pos_embed``
``video_embed.embeddings_st_pos.spatial_pos_embed.weight``        ``embed.spatial_pos_embed`` (learned only)
``fused_encoder.layers.N.self_attn.in_proj_weight / _bias``       ``encoder.blocks.N.attn.qkv.*``
``fused_encoder.layers.N.self_attn.out_proj.*``                   ``encoder.blocks.N.attn.proj.*``
``fused_encoder.layers.N.linear1 / linear2``                      ``encoder.blocks.N.mlp.fc1 / fc2``
``fused_encoder.layers.N.norm1 / norm2``                          ``encoder.blocks.N.norm1 / norm2``
``fused_encoder.layers.N.gamma_1 / gamma_2``                      ``encoder.blocks.N.ls1.gamma / ls2.gamma``
``fused_encoder.layers.N.deep_prompt_embedding.embedding.weight`` ``encoder.prompt_tokens[N]``
``loss_prepare.ln_post.* / loss_prepare.proj.*``                  ``predictor.norm.* / predictor.proj.*``
``loss_prepare.logit_scale_<name>``                               ``predictor.logit_scale.logit_scale_<name>``
================================================================  ==========================================

Derived entries, so that our layout computes what the published one does.  The published model prepends
the ``<spe>`` token as a one-token text (token ``spe`` at position 0 with the text type) and gives captioning
query tokens (also ``spe``) the position of the word they predict:

* ``embed.spe_embedding = tok[spe] + pos[0]`` and type row ``<spe>`` = the text type;
* type row ``query`` = text type - ``pos[0]`` (ours adds ``spe_embedding`` + ``pos[i]`` + that row).
``spe`` is the BPE word "spe" (the published code's current convention) unless ``spe_id`` says otherwise
(``49410`` = ``<|spe|>`` for old checkpoints).  The frozen sin-cos spatial table is not stored by us (it is
rebuilt), and ``logit_scale.default`` is taken from ``logit_scale_downstream`` (else ``logit_scale_img_cls``).

MoE experts, gates and MoE attention blocks: ``official_moe.py`` (needs ``cfg``).
Not mapped (listed in the report): the published input prompt / ``s_token_bias`` /
``fc_prompt`` heads (their semantics differ from ours), memory-bank queues.  Unmapped parameters are logged.
"""
from __future__ import annotations

import logging
import re
from typing import Dict, List, Optional, Tuple

import torch

logger = logging.getLogger(__name__)

_LAYER = re.compile(r"^fused_encoder\.layers\.(\d+)\.(.+)$")
_LAYER_MAP = {
    "self_attn.in_proj_weight": "attn.qkv.weight",
    "self_attn.in_proj_bias": "attn.qkv.bias",
    "self_attn.out_proj.weight": "attn.proj.weight",
    "self_attn.out_proj.bias": "attn.proj.bias",
    "linear1.weight": "mlp.fc1.weight",
    "linear1.bias": "mlp.fc1.bias",
    "linear2.weight": "mlp.fc2.weight",
    "linear2.bias": "mlp.fc2.bias",
    "norm1.weight": "norm1.weight",
    "norm1.bias": "norm1.bias",
    "norm2.weight": "norm2.weight",
    "norm2.bias": "norm2.bias",
    "gamma_1": "ls1.gamma",
    "gamma_2": "ls2.gamma",
}
_DIRECT = {
    "token_embed.embeddings.weight": "embed.token_embedding.weight",
    "token_embed.embeddings_pos.position_embeddings.weight": "embed.text_pos_embed",
    "token_embed.embeddings_norm.weight": "embed.norm.weight",
    "token_embed.embeddings_norm.bias": "embed.norm.bias",
    "video_embed.embeddings.bias": "embed.patch_embed.proj.bias",
    "video_embed.embeddings_st_pos.temporal_pos_embed.weight": "embed.temporal_pos_embed",
    "loss_prepare.ln_post.weight": "predictor.norm.weight",
    "loss_prepare.ln_post.bias": "predictor.norm.bias",
    "loss_prepare.proj.weight": "predictor.proj.weight",
    "loss_prepare.proj.bias": "predictor.proj.bias",
}
# Consumed while deriving other entries (not "unmapped").
_CONSUMED = {
    "token_embed.embeddings_token_type.weight",
    "video_embed.embeddings_type.weight",
    "video_embed.embeddings.weight",
    "video_embed.embeddings_norm.weight",
    "video_embed.embeddings_norm.bias",
    "video_embed.embeddings_st_pos.spatial_pos_embed.weight",
}
TYPE_TEXT, TYPE_VISUAL, TYPE_SPE, TYPE_QUERY = 0, 1, 2, 3  # rows of embed.type_embedding (embeddings.py)


def official_state_dict(data) -> Dict[str, torch.Tensor]:
    """The parameter dict inside a published checkpoint (``{"model": ...}``, ``{"state_dict": ...}`` or bare),
    with a DDP ``module.`` prefix removed."""
    state = data
    for key in ("model", "state_dict", "module"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
    if not isinstance(state, dict) or not any(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError("no state dict of tensors found in the published checkpoint")
    state = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def default_spe_id() -> int:
    """Id of the BPE word "spe" (the published code encodes ``<spe>`` as that word)."""
    from uniperceiver.modeling.tokenization import get_tokenizer

    ids = get_tokenizer().encode("spe")
    if len(ids) != 1:
        raise ValueError(f"the word 'spe' is not one BPE token ({ids}); pass spe_id")
    return ids[0]


def convert_official_state_dict(state: Dict[str, torch.Tensor], spe_id: Optional[int] = None,
                                 fixed_spatial: bool = True, cfg=None) -> Tuple[Dict[str, torch.Tensor], Dict[str, List[str]]]:
    """Published parameter names -> ours; returns ``(state, {"unmapped": [...], "derived": [...]})``.

    ``fixed_spatial`` (our MODEL.POSEMBEDFIX): the published spatial table is dropped (ours is rebuilt);
    otherwise it becomes ``embed.spatial_pos_embed``."""
    out: Dict[str, torch.Tensor] = {}
    derived: List[str] = []
    unmapped: List[str] = []
    prompts: Dict[int, torch.Tensor] = {}
    # ---- MoE part: uniperceiver/checkpoint/official_moe.py (needs the config: which blocks have experts) ----
    from .official_moe import convert_moe_state_dict, has_moe_tensors, is_moe_key

    moe_dropped: List[Tuple[str, str]] = []
    if has_moe_tensors(state):
        if cfg is None:
            raise ValueError("a published MoE checkpoint: pass the config it goes into (--config-file)")
        moe_out, moe_dropped, moe_unmapped = convert_moe_state_dict(state, cfg)
        if moe_unmapped:
            raise ValueError(f"{len(moe_unmapped)} published MoE tensors fit no mapping rule, e.g. {moe_unmapped[0]}")
        out.update(moe_out)
        state = {k: v for k, v in state.items() if not is_moe_key(k)}
    # ---- end MoE part ----
    for key, value in state.items():
        m = _LAYER.match(key)
        if m:
            idx, rest = int(m.group(1)), m.group(2)
            if rest in _LAYER_MAP:
                out[f"encoder.blocks.{idx}.{_LAYER_MAP[rest]}"] = value
            elif rest == "deep_prompt_embedding.embedding.weight":
                prompts[idx] = value
            else:
                unmapped.append(key)
        elif key in _DIRECT:
            out[_DIRECT[key]] = value
        elif key.startswith("loss_prepare.logit_scale_"):
            out["predictor.logit_scale." + key[len("loss_prepare."):]] = value.reshape(())
        elif key not in _CONSUMED:
            unmapped.append(key)

    tok = state.get("token_embed.embeddings.weight")
    pos = state.get("token_embed.embeddings_pos.position_embeddings.weight")
    text_type = state.get("token_embed.embeddings_token_type.weight")
    if tok is None or pos is None or text_type is None:
        raise ValueError("not a published Uni-Perceiver checkpoint: token_embed.embeddings / embeddings_pos / "
                         "embeddings_token_type are missing")
    dim = tok.shape[1]
    spe = default_spe_id() if spe_id is None else int(spe_id)
    visual_type = state.get("video_embed.embeddings_type.weight")
    types = torch.zeros(4, dim, dtype=tok.dtype)
    types[TYPE_TEXT] = text_type[0]
    types[TYPE_SPE] = text_type[0]
    types[TYPE_QUERY] = text_type[0] - pos[0]
    if visual_type is not None:
        types[TYPE_VISUAL] = visual_type[0]
    out["embed.type_embedding.weight"] = types
    out["embed.spe_embedding"] = tok[spe] + pos[0]
    derived += ["embed.type_embedding.weight", "embed.spe_embedding"]

    patch = state.get("video_embed.embeddings.weight")
    if patch is not None:
        if patch.dim() == 2:  # a linear over (c, p1, p2)-flattened patches
            p = int(round((patch.shape[1] / 3) ** 0.5))
            patch = patch.reshape(patch.shape[0], 3, p, p)
        out["embed.patch_embed.proj.weight"] = patch
    vnorm = state.get("video_embed.embeddings_norm.weight")
    if vnorm is not None and "token_embed.embeddings_norm.weight" in state:
        same = torch.equal(vnorm, state["token_embed.embeddings_norm.weight"]) and torch.equal(
            state["video_embed.embeddings_norm.bias"], state["token_embed.embeddings_norm.bias"])
        if not same:
            raise ValueError("the checkpoint has separate text and visual embedding LayerNorms "
                             "(MODEL.SHARE_LAYERNORM False); our model shares one")
    spatial = state.get("video_embed.embeddings_st_pos.spatial_pos_embed.weight")
    if spatial is not None and not fixed_spatial:
        out["embed.spatial_pos_embed"] = spatial
    if prompts:
        out["encoder.prompt_tokens"] = torch.stack([prompts[i] for i in sorted(prompts)])
    if "predictor.logit_scale.default" not in out:
        for name in ("logit_scale_downstream", "logit_scale_img_cls"):
            if f"predictor.logit_scale.{name}" in out:
                out["predictor.logit_scale.default"] = out[f"predictor.logit_scale.{name}"].clone()
                derived.append(f"predictor.logit_scale.default (from {name})")
                break
    out = {k: v.detach().clone().contiguous() for k, v in out.items()}
    if unmapped:
        logger.warning("%d published entries are not mapped: %s", len(unmapped), ", ".join(unmapped[:20]))
    return out, {"unmapped": unmapped, "derived": derived, "dropped": moe_dropped}


def convert_official_checkpoint(src: str, dst: str, spe_id: Optional[int] = None,
                                fixed_spatial: bool = True, cfg=None) -> Dict[str, List[str]]:
    """Read published checkpoint ``src`` (weights only), write ``{"model": ours}`` to ``dst`` atomically."""
    import os

    data = torch.load(src, map_location="cpu", weights_only=True)
    state, report = convert_official_state_dict(official_state_dict(data), spe_id=spe_id, fixed_spatial=fixed_spatial,
                                                cfg=cfg)
    os.makedirs(os.path.dirname(os.path.abspath(dst)), exist_ok=True)
    tmp = dst + ".tmp"
    torch.save({"model": state}, tmp)
    os.replace(tmp, dst)
    report["written"] = sorted(state)
    return report
