"""Map a published Uni-Perceiver checkpoint (github fundamentalvision/Uni-Perceiver, ``MultiTaskTransformerEncoder``)
onto our model, tensor by tensor.

``tools/convert_checkpoint.py --from uniperceiver-official IN OUT [--config CFG]`` calls
:func:`convert_official_checkpoint`.  The result loads strictly into a model built with the published
conventions, which the shipped published-size configs (``configs/*/base_model_bert_l*_h*.yaml``) set:
``MODEL.SPE_FROM_TOKEN_TABLE True`` (published ``OLD_CHECKPONT``), ``MODEL.VISUAL_TYPE_EMBED False``
(published ``VIDEO_EMBED.ADD_TYPE_EMBED``), ``MODEL.BERT.LAYER_NORM_EPS 1e-5``, the 11 published logit
scales in ``MODEL.LOGIT_SCALE_NAMES``, ``MODEL.POSEMBED_SCALE`` equal to the scale of the stored sin-cos table.

================================================================  ==========================================
published                                                         ours
================================================================  ==========================================
``token_embed.embeddings.weight``                                 ``embed.token_embedding.weight``
``token_embed.embeddings_pos.position_embeddings.weight``         ``embed.text_pos_embed``
``token_embed.embeddings_norm.*``                                 ``embed.norm.*``
``token_embed.embeddings_token_type.weight[0]``                   ``embed.type_embedding.weight[0]`` (text)
``video_embed.embeddings_type.weight[0]``                         ``embed.type_embedding.weight[1]`` (visual)
``video_embed.embeddings.*`` (conv, or linear over c*p*p)         ``embed.patch_embed.proj.*``
``video_embed.embeddings_st_pos.temporal_pos_embed.weight``       ``embed.temporal_pos_embed``
``video_embed.embeddings_st_pos.spatial_pos_embed.weight``        rebuilt (sin-cos), or ``embed.spatial_pos_embed``
``fused_encoder.layers.N.self_attn.in_proj_weight / _bias``       ``encoder.blocks.N.attn.qkv.*``
``fused_encoder.layers.N.self_attn.out_proj.*``                   ``encoder.blocks.N.attn.proj.*``
``fused_encoder.layers.N.linear1 / linear2``                      ``encoder.blocks.N.mlp.fc1 / fc2``
``fused_encoder.layers.N.norm1 / norm2``                          ``encoder.blocks.N.norm1 / norm2``
``fused_encoder.layers.N.gamma_1 / gamma_2``                      ``encoder.blocks.N.ls1.gamma / ls2.gamma``
``fused_encoder.layers.N.deep_prompt_embedding.embedding.weight`` ``encoder.prompt_tokens[N]``
``loss_prepare.ln_post.* / loss_prepare.proj.*``                  ``predictor.norm.* / predictor.proj.*``
``loss_prepare.logit_scale_<name>`` (the 11 published names)      ``predictor.logit_scale.logit_scale_<name>``
================================================================  ==========================================

Derived: ``predictor.logit_scale.default`` (the scale of tasks that name none) = ``logit_scale_downstream``;
type rows 2 and 3 (our own ``<spe>`` / query rows, not read with ``SPE_FROM_TOKEN_TABLE``) are zero.
Dropped, each by a named rule listed in the report (:data:`DROP_RULES`): tensors the published model never
reads at evaluation.  Anything else is refused (:class:`OfficialCheckpointError`, one line naming the tensor):
nothing is written then.  MoE tensors go to ``uniperceiver/checkpoint/official_moe.py``
(``convert_moe_state_dict(published_sd, cfg) -> (mapped, dropped, unmapped)``) when that module exists.
"""
from __future__ import annotations

import math
import os
import re
from typing import Any, Dict, List, Optional, Tuple

import torch

from uniperceiver.config.published import PUBLISHED_LOGIT_SCALE_NAMES

from .official_moe import convert_moe_state_dict, is_moe_key

PUBLISHED_LOGIT_SCALES = PUBLISHED_LOGIT_SCALE_NAMES  # the 11 published names
TYPE_TEXT, TYPE_VISUAL, TYPE_SPE, TYPE_QUERY = 0, 1, 2, 3  # rows of embed.type_embedding (embeddings.py)

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
# (regex over published names, rule): tensors the published model never reads when it evaluates.
DROP_RULES = (
    (r"^loss_prepare\.queue_(h1|h2|ptr1|ptr2)_", "memory-bank queue (training-time negatives; never read in evaluation)"),
    (r"^video_embed\.embeddings_norm\.(weight|bias)$",
     "visual embedding LayerNorm shared with token_embed.embeddings_norm (published MODEL.SHARE_LAYERNORM True)"),
    (r"^video_embed\.embeddings_st_pos\.spatial_pos_embed\.weight$",
     "frozen 2D sin-cos table (published MODEL.POSEMBEDFIX True): rebuilt from IMG_INPUT_SIZE and POSEMBED_SCALE"),
)
_MOE_KEY = re.compile(r"(deepspeed_moe|\.experts?\.|\.gate\.|tag_transform|moe)")


class OfficialCheckpointError(ValueError):
    """A published checkpoint we cannot map exactly; the message is one line naming the tensor at fault."""


def official_state_dict(data) -> Dict[str, torch.Tensor]:
    """The parameter dict inside a published checkpoint (``{"model": ...}``, ``{"state_dict": ...}`` or bare),
    with a DDP ``module.`` prefix removed."""
    state = data
    for key in ("model", "state_dict", "module"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
    if not isinstance(state, dict) or not any(isinstance(v, torch.Tensor) for v in state.values()):
        raise OfficialCheckpointError("no state dict of tensors found in the published checkpoint")
    state = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def sincos_scale(table: torch.Tensor) -> Optional[float]:
    """The grid scale of a published frozen 2D sin-cos table ``[g*g, D]``, or None if it is not one.

    The published table is ``[sin(r s w), cos(r s w), sin(c s w), cos(c s w)]`` over row r / column c,
    ``w = 1 / 10000 ** (k / (D/4))``, so row 1 column 0 holds ``sin(s), ..., cos(s), ...`` in channels 0 and D/4."""
    from uniperceiver.modeling.embeddings import sincos_2d_table

    n, dim = table.shape
    g = math.isqrt(n)
    if g * g != n or g < 2 or dim % 4:
        return None
    q = dim // 4
    scale = math.atan2(float(table[g, 0]), float(table[g, q]))
    if scale <= 0:
        return None
    rebuilt = sincos_2d_table(g, g, dim, scale)
    return scale if torch.allclose(table.float(), rebuilt, atol=1e-4, rtol=0) else None


def _drop_rule(key: str) -> Optional[str]:
    return next((rule for pattern, rule in DROP_RULES if re.search(pattern, key)), None)


def is_moe_checkpoint(state: Dict[str, torch.Tensor]) -> Optional[str]:
    """The first MoE tensor name of a published checkpoint, or None for a dense one."""
    return next((k for k in state if is_moe_key(k) or _MOE_KEY.search(k)), None)


def _moe_part(state: Dict[str, torch.Tensor], cfg) -> Tuple[Dict[str, torch.Tensor], List[Tuple[str, str]], set]:
    """(our MoE tensors, dropped, the published keys left for the dense mapping): official_moe.py maps the MoE
    layout (experts, gates, MoE attention blocks) and needs the config (which blocks have experts)."""
    first = is_moe_checkpoint(state)
    if first is None:
        return {}, [], set(state)
    if cfg is None:
        raise OfficialCheckpointError(f"a published MoE checkpoint (first MoE tensor {first}): pass the config it "
                                      f"goes into (--config)")
    try:
        mapped, dropped, unmapped = convert_moe_state_dict(state, cfg)
    except ValueError as e:
        raise OfficialCheckpointError(str(e)) from None
    if unmapped:
        raise OfficialCheckpointError(f"{len(unmapped)} published MoE tensors fit no mapping rule of "
                                      f"uniperceiver/checkpoint/official_moe.py, e.g. {unmapped[0]}")
    return dict(mapped), [(k, r) for k, r in dropped], {k for k in state if not is_moe_key(k)}


def convert_official_state_dict(state: Dict[str, torch.Tensor], cfg=None, learned_spatial: bool = False,
                                copy: bool = True) -> Tuple[Dict[str, torch.Tensor], Dict[str, Any]]:
    """Published parameter names -> ours; returns ``(state, report)`` with report keys ``mapped`` (number of
    published tensors mapped), ``derived`` (our names), ``dropped`` (``[(published name, rule)]``) and
    ``notes``.  Raises :class:`OfficialCheckpointError` on any tensor it cannot account for.

    ``learned_spatial``: keep the published spatial table as ``embed.spatial_pos_embed`` (``MODEL.POSEMBEDFIX
    False``) even when it is a sin-cos table; a table that is not sin-cos is always kept.  ``copy`` False
    returns views of the inputs where it can (a check of names and shapes only)."""
    out, dropped, todo = _moe_part(state, cfg)  # first: a MoE tensor the config cannot place is named as such
    for key in ("token_embed.embeddings.weight", "token_embed.embeddings_pos.position_embeddings.weight",
                "token_embed.embeddings_token_type.weight"):
        if key not in state:
            first = next(iter(state), "nothing")
            raise OfficialCheckpointError(f"not a published Uni-Perceiver checkpoint: no {key} "
                                          f"(first tensor: {first})")
    moe_mapped = len(state) - len(todo) - len(dropped)
    derived: List[str] = []
    notes: List[str] = []
    prompts: Dict[int, torch.Tensor] = {}

    def put(name: str, value: torch.Tensor, source: str) -> None:
        if name in out:
            raise OfficialCheckpointError(f"{source}: maps onto {name}, which another tensor already filled")
        out[name] = value

    tok = state["token_embed.embeddings.weight"]
    dim = tok.shape[1]
    for key in sorted(todo):
        value = state[key]
        m = _LAYER.match(key)
        rule = _drop_rule(key)
        if m and m.group(2) in _LAYER_MAP:
            put(f"encoder.blocks.{int(m.group(1))}.{_LAYER_MAP[m.group(2)]}", value, key)
        elif m and m.group(2) == "deep_prompt_embedding.embedding.weight":
            prompts[int(m.group(1))] = value
        elif key in _DIRECT:
            put(_DIRECT[key], value, key)
        elif key.startswith("loss_prepare.logit_scale_") and key[len("loss_prepare."):] in PUBLISHED_LOGIT_SCALES:
            put("predictor.logit_scale." + key[len("loss_prepare."):], value.reshape(()), key)
        elif key == "token_embed.embeddings_token_type.weight":
            if value.shape[0] > 1:
                dropped.append((f"{key}[1:]", "text type rows >= 1 (the published text embedding reads row 0 only)"))
        elif key == "video_embed.embeddings_type.weight":
            if value.shape[0] > 1:
                dropped.append((f"{key}[1:]", "visual type rows >= 1 (the published visual embedding reads row 0 only)"))
            notes.append("visual type row read only with MODEL.VISUAL_TYPE_EMBED True (published ADD_TYPE_EMBED)")
        elif key == "video_embed.embeddings.weight":
            patch = value
            if patch.dim() == 2:  # a linear over (c, p1, p2)-flattened patches
                p = math.isqrt(patch.shape[1] // 3)
                if 3 * p * p != patch.shape[1]:
                    raise OfficialCheckpointError(f"{key}: linear patch embedding of shape {tuple(patch.shape)} "
                                                  f"is not over 3 x p x p pixels")
                patch = patch.reshape(patch.shape[0], 3, p, p)
            put("embed.patch_embed.proj.weight", patch, key)
        elif key.startswith("video_embed.embeddings_norm."):
            twin = state.get("token_embed.embeddings_norm." + key.rsplit(".", 1)[1])
            if twin is None or not torch.equal(value, twin):
                raise OfficialCheckpointError(f"{key}: separate text and visual embedding LayerNorms (published "
                                              f"MODEL.SHARE_LAYERNORM False); our model shares one")
            dropped.append((key, rule))
        elif key == "video_embed.embeddings_st_pos.spatial_pos_embed.weight":
            scale = sincos_scale(value)
            if scale is None or learned_spatial:
                put("embed.spatial_pos_embed", value, key)
                notes.append("spatial table kept as embed.spatial_pos_embed: load with MODEL.POSEMBEDFIX False")
            else:
                dropped.append((key, f"{rule} (this table: {math.isqrt(value.shape[0])}x{math.isqrt(value.shape[0])} "
                                     f"grid, POSEMBED_SCALE {scale:.6g})"))
                notes.append(f"sin-cos spatial table: {math.isqrt(value.shape[0])}^2 patches, scale {scale:.6g}")
        elif rule is not None:
            dropped.append((key, rule))
        else:
            raise OfficialCheckpointError(f"{key} {tuple(value.shape)}: no mapping and no drop rule for this "
                                          f"published tensor (refused; nothing written)")

    types = torch.zeros(4, dim, dtype=tok.dtype)
    types[TYPE_TEXT] = state["token_embed.embeddings_token_type.weight"][0]
    if "video_embed.embeddings_type.weight" in state:
        types[TYPE_VISUAL] = state["video_embed.embeddings_type.weight"][0]
    put("embed.type_embedding.weight", types, "token_embed.embeddings_token_type.weight")
    derived.append("embed.type_embedding.weight (rows: text, visual, 0, 0)")
    if prompts:
        put("encoder.prompt_tokens", torch.stack([prompts[i] for i in sorted(prompts)]),
            "fused_encoder.layers.*.deep_prompt_embedding.embedding.weight")
    missing = [n for n in PUBLISHED_LOGIT_SCALES if f"predictor.logit_scale.{n}" not in out]
    if missing:
        raise OfficialCheckpointError(f"published logit scale loss_prepare.{missing[0]} is missing "
                                      f"({len(missing)} of the 11 published scales missing)")
    out["predictor.logit_scale.default"] = out["predictor.logit_scale.logit_scale_downstream"].clone()
    derived.append("predictor.logit_scale.default (= logit_scale_downstream)")
    if copy:
        out = {k: v.detach().clone().contiguous() for k, v in out.items()}
    mapped = len(state) - len([d for d in dropped if d[0] in state])
    return out, {"mapped": mapped, "moe_mapped": moe_mapped, "derived": derived, "dropped": dropped, "notes": notes}


ADAPTER_PATTERNS = (r"prompt", r"lora_")  # our adapters: the only keys a published checkpoint may lack


def check_against_config(state: Dict[str, torch.Tensor], cfg, config_name: str, checkpoint_name: str) -> List[str]:
    """Build ``cfg``'s model (on the meta device: names and shapes only) and match ``state`` strictly (adapters
    ``*prompt*`` / ``*lora_*`` may be missing); returns the missing adapter keys.  Raises
    :class:`OfficialCheckpointError` naming the config, the checkpoint and the first mismatching tensor."""
    from uniperceiver.modeling import build_model

    with torch.device("meta"):
        model = build_model(cfg)
    current = model.state_dict()
    errors: List[str] = []
    adapters = []
    for key, target in current.items():  # in the model's order
        if key not in state:
            if any(re.search(p, key) for p in ADAPTER_PATTERNS):
                adapters.append(key)
            else:
                errors.append(f"{key} is missing from the checkpoint")
        elif tuple(state[key].shape) != tuple(target.shape):
            errors.append(f"{key} has shape {tuple(state[key].shape)} in the checkpoint, {tuple(target.shape)} in the model")
    errors += [f"{key} is not in the model" for key in state if key not in current]
    if errors:
        more = f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""
        raise OfficialCheckpointError(f"config {config_name} does not fit checkpoint {checkpoint_name}: first "
                                      f"mismatching tensor: {errors[0]}{more}")
    return adapters


def convert_official_checkpoint(src: str, dst: str, cfg=None, config_name: str = "", learned_spatial: bool = False
                                ) -> Dict[str, Any]:
    """Read published checkpoint ``src`` (weights only), convert it, check it against ``cfg`` (when given)
    and only then write ``{"model": ours}`` to ``dst`` atomically.  Raises :class:`OfficialCheckpointError`
    before writing anything."""
    try:
        data = torch.load(src, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated, not a torch file, unsafe pickle...
        raise OfficialCheckpointError(f"cannot read {src}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
    published = official_state_dict(data)
    state, report = convert_official_state_dict(published, cfg=cfg, learned_spatial=learned_spatial)
    report["adapters_missing"] = []
    if cfg is not None:
        report["adapters_missing"] = check_against_config(state, cfg, config_name, src)
        spatial = published.get("video_embed.embeddings_st_pos.spatial_pos_embed.weight")
        scale = sincos_scale(spatial) if spatial is not None and "embed.spatial_pos_embed" not in state else None
        if scale is not None and abs(scale - float(cfg.MODEL.POSEMBED_SCALE)) > 1e-4:
            raise OfficialCheckpointError(f"config {config_name} does not fit checkpoint {src}: its frozen sin-cos table "
                                          f"has POSEMBED_SCALE {scale:.6g}, the config {float(cfg.MODEL.POSEMBED_SCALE):.6g}")
    os.makedirs(os.path.dirname(os.path.abspath(dst)), exist_ok=True)
    tmp = dst + ".tmp"
    try:
        torch.save({"model": state}, tmp)
        os.replace(tmp, dst)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    report["written"] = sorted(state)
    return report
