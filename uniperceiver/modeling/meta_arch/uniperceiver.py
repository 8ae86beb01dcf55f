"""Uni-Perceiver (Zhu et al., "Uni-Perceiver: Pre-training Unified Architecture for Generic Perception for
Zero-shot and Few-shot Tasks", CVPR 2022): light tokenizers, one shared transformer, a unified predictor.

Every input is one sequence ``[<spe>, visual tokens, text tokens, query tokens]``; the predictor's output at
``<spe>`` is the sequence representation (``MODEL.POOLING mean``: the mean output over the non-query tokens), at
text positions the MLM predictions, at query positions the captioning predictions.  Candidates (class names,
vocabulary words, paired captions) are encoded as short text sequences with
:meth:`UniPerceiver.encode_targets` and scored by :meth:`UniPerceiver.logits`.

Attention pattern (True = may attend), with ``V`` visual, ``L`` text and ``Q`` query tokens:
* everything sees ``<spe>`` and the visual tokens; nothing sees text padding;
* ``causal_text=False``: ``<spe>``, visual and text tokens see all text;
* ``causal_text=True``: ``<spe>`` and visual tokens see no text, text token j sees text tokens <= j;
* query i sees text tokens < i and itself; no other token sees a query.
No padding, no causal text and no queries -> ``attn_mask=None`` (the fused-kernel path).
"""
from __future__ import annotations

import re
from typing import Any, Callable, Dict, List, Optional, Set, Tuple

import torch
import torch.nn as nn

from uniperceiver.config import ConfigError

from ..embeddings import TYPE_SPE, UnifiedEmbedding, resize_table_1d, resize_table_2d
from ..encoder import build_encoder
from ..moe import merge_experts, pop_aux_loss, token_attribute_ids, with_token_attributes
from ..predictor import Predictor, temp_names_from_cfg
from ..registry import MODEL_REGISTRY
from uniperceiver.tokenization import SPE_ID, VOCAB_SIZE, ClipTokenizer, get_tokenizer


def attention_mask(
    batch: int,
    num_visual: int,
    num_text: int,
    num_queries: int,
    causal_text: bool,
    text_mask: Optional[torch.Tensor],
    device: torch.device,
) -> Optional[torch.Tensor]:
    """Boolean mask broadcastable to ``[B, heads, S, S]`` (True = may attend), or None when all may."""
    structured = num_queries > 0 or (causal_text and num_text > 0)
    key_valid = None
    if text_mask is not None and num_text > 0:
        ctx = torch.ones(batch, 1 + num_visual, dtype=torch.bool, device=device)
        parts = [ctx, text_mask.to(device=device, dtype=torch.bool)]
        if num_queries:
            parts.append(torch.ones(batch, num_queries, dtype=torch.bool, device=device))
        key_valid = torch.cat(parts, dim=1)  # [B, S]
    if not structured:
        return None if key_valid is None else key_valid[:, None, None, :]
    ctx, s = 1 + num_visual, 1 + num_visual + num_text + num_queries
    allowed = torch.zeros(s, s, dtype=torch.bool, device=device)
    allowed[:, :ctx] = True
    t0, q0 = ctx, ctx + num_text
    if num_text:
        if causal_text:
            allowed[t0:q0, t0:q0] = torch.ones(num_text, num_text, dtype=torch.bool, device=device).tril()
        else:
            allowed[:q0, t0:q0] = True
    if num_queries:
        # query i sees text tokens < i: strictly lower-triangular block over the first min(Q, L) text columns.
        allowed[q0:, t0:q0] = torch.ones(num_queries, num_text, dtype=torch.bool, device=device).tril(-1)
        allowed[q0:, q0:] = torch.eye(num_queries, dtype=torch.bool, device=device)
    if key_valid is None:
        return allowed[None, None]
    return (allowed[None] & key_valid[:, None, :])[:, None]


POOLINGS = ("spe", "mean")


def gather_text_positions(x: torch.Tensor, text_start: int, num_text: int, text_index: torch.Tensor) -> torch.Tensor:
    """Rows of encoder states ``x [B, S, D]`` at text position ``text_index[b]`` (0 = the first text token,
    sequence position ``text_start + text_index[b]``) -> ``[B, D]``; an index outside the text is an error."""
    index = text_index.to(device=x.device, dtype=torch.long).reshape(-1)
    if index.numel() != x.shape[0]:
        raise ValueError(f"text_index has {index.numel()} entries for a batch of {x.shape[0]}")
    if index.numel() and (int(index.min()) < 0 or int(index.max()) >= num_text):
        raise ValueError(f"text_index outside the {num_text} text positions: {index.tolist()}")
    rows = torch.arange(x.shape[0], device=x.device)
    return x[rows, text_start + index]


@MODEL_REGISTRY.register()
class UniPerceiver(nn.Module):
    """The dense Uni-Perceiver; see the module docstring and ARCHITECTURE.md ("Model")."""

    def __init__(self, *, embed: UnifiedEmbedding, encoder: nn.Module, predictor: Predictor, init_std: float = 0.02,
                 token_init_std: float = 0.0, spe_init_std: float = 0.0, pooling: str = "spe",
                 lora: Optional[Dict[str, Any]] = None, moe: bool = False, moe_aux_loss_weight: float = 0.0):
        super().__init__()
        if pooling not in POOLINGS:
            raise ConfigError(f"MODEL.POOLING {pooling!r}: expected one of {', '.join(POOLINGS)}")
        self.embed = embed
        self.encoder = encoder
        self.predictor = predictor
        self.init_std = init_std
        self.pooling = pooling
        # MoE: encode() adds per-token routing attributes; extra_losses() hands over the load-balancing loss.
        self.moe = moe
        self.moe_aux_loss_weight = float(moe_aux_loss_weight)
        self.apply(self._init_weights)
        self.embed.patch_embed.reset_stem()
        for name in ("spe_embedding", "text_pos_embed", "temporal_pos_embed", "spatial_pos_embed"):
            table = getattr(self.embed, name, None)
            if isinstance(table, nn.Parameter):
                nn.init.trunc_normal_(table, std=init_std)
        with torch.no_grad():  # MODEL.TOKEN_EMBED_INIT_STD / SPE_INIT_STD (0: keep the init above)
            if token_init_std > 0:
                nn.init.normal_(self.embed.token_embedding.weight, std=token_init_std)
            if spe_init_std > 0 and hasattr(self.embed, "spe_embedding"):
                nn.init.normal_(self.embed.spe_embedding, std=spe_init_std)
                nn.init.normal_(self.embed.type_embedding.weight[TYPE_SPE], std=spe_init_std)
        if lora:  # {"rank", "alpha", "target"}: adapters after the init, so they keep their own (B = 0)
            from ..lora import apply_lora

            try:
                apply_lora(self, **lora)
            except ValueError as e:
                raise ConfigError(f"MODEL.LORA.TARGET: {e}") from None

    @classmethod
    def from_config(cls, cfg) -> Dict[str, Any]:
        m, bert = cfg.MODEL, cfg.MODEL.BERT
        if m.VOCAB_SIZE < VOCAB_SIZE:
            raise ConfigError(f"MODEL.VOCAB_SIZE {m.VOCAB_SIZE} < the tokenizer's {VOCAB_SIZE} ids")
        if m.IMG_INPUT_SIZE % m.PATCH_SIZE:
            raise ConfigError(f"MODEL.IMG_INPUT_SIZE {m.IMG_INPUT_SIZE} is not a multiple of MODEL.PATCH_SIZE {m.PATCH_SIZE}")
        if not all(isinstance(c, int) and c > 0 for c in m.PATCH_STEM_CHANNELS):
            raise ConfigError(f"MODEL.PATCH_STEM_CHANNELS must be positive integers, got {list(m.PATCH_STEM_CHANNELS)}")
        embed = UnifiedEmbedding(
            dim=bert.HIDDEN_SIZE,
            vocab_size=m.VOCAB_SIZE,
            img_size=m.IMG_INPUT_SIZE,
            patch_size=m.PATCH_SIZE,
            patch_stem=list(m.PATCH_STEM_CHANNELS),
            max_frames=m.MAX_FRAMES,
            max_positions=m.MAX_POSITION_EMBEDDINGS,
            type_vocab_size=m.TYPE_VOCAB_SIZE,
            fixed_spatial=m.POSEMBEDFIX,
            posembed_scale=m.POSEMBED_SCALE,
            norm_eps=bert.LAYER_NORM_EPS,
            spe_token_id=SPE_ID if m.SPE_FROM_TOKEN_TABLE else None,
            visual_type=m.VISUAL_TYPE_EMBED,
        )
        predictor = Predictor(
            bert.HIDDEN_SIZE,
            temp_names=temp_names_from_cfg(cfg),
            logit_scale_init=m.LOGIT_SCALE_INIT,
            logit_scale_max=m.LOGIT_SCALE_MAX,
            norm_eps=bert.LAYER_NORM_EPS,
            prompt_fc_weight=m.PROMPT.FC_WEIGHT if m.PROMPT.ENABLED else 0.0,
        )
        lora = dict(rank=m.LORA.RANK, alpha=m.LORA.ALPHA, target=m.LORA.TARGET) if m.LORA.ENABLED else None
        return dict(embed=embed, encoder=build_encoder(cfg), predictor=predictor, init_std=bert.INITIALIZER_RANGE,
                    token_init_std=m.TOKEN_EMBED_INIT_STD, spe_init_std=m.SPE_INIT_STD, pooling=m.POOLING,
                    lora=lora, moe=cfg.MOE.MOE, moe_aux_loss_weight=cfg.MOE.AUX_LOSS_WEIGHT)

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            nn.init.trunc_normal_(module.weight, std=self.init_std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.trunc_normal_(module.weight, std=self.init_std)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    # --------------------------------------------------------------------------------------------- API
    @property
    def tokenizer(self) -> ClipTokenizer:
        """The process-wide CLIP BPE tokenizer (not a submodule: deep copies / EMA do not duplicate it)."""
        return get_tokenizer()

    @property
    def num_layers(self) -> int:
        return self.encoder.num_layers

    def encode(
        self,
        images: Optional[torch.Tensor] = None,
        text: Optional[torch.Tensor] = None,
        text_mask: Optional[torch.Tensor] = None,
        num_queries: int = 0,
        causal_text: bool = False,
        attributes: Optional[Dict[str, Any]] = None,
        *,
        side: Optional[str] = None,
    ) -> Tuple[torch.Tensor, Tuple[int, int, int]]:
        """Encoder output ``[B, S, D]`` (before the predictor) and the layout ``(V, L, Q)``.  With MoE,
        ``attributes`` gains ``token_attributes`` ``[S, 3]`` (modality / task type / side per token, see
        ``modeling/moe/attributes.py``); ``side`` is ``"target"`` for candidate sequences."""
        x = self.embed(images, text, num_queries)
        num_text = text.shape[1] if text is not None else 0
        num_visual = x.shape[1] - 1 - num_text - num_queries
        mask = attention_mask(x.shape[0], num_visual, num_text, num_queries, causal_text, text_mask, x.device)
        if self.moe:
            frames = images.shape[1] if images is not None and images.dim() == 5 else 1
            ids = token_attribute_ids(num_visual, num_text, num_queries, num_frames=frames, attributes=attributes,
                                      side=side, device=x.device)
            attributes = with_token_attributes(attributes, ids)
        return self.encoder(x, mask, attributes), (num_visual, num_text, num_queries)

    def forward(
        self,
        images: Optional[torch.Tensor] = None,
        text: Optional[torch.Tensor] = None,
        text_mask: Optional[torch.Tensor] = None,
        num_queries: int = 0,
        causal_text: bool = False,
        attributes: Optional[Dict[str, Any]] = None,
        text_index: Optional[torch.Tensor] = None,
    ) -> Dict[str, Optional[torch.Tensor]]:
        """``{"spe": [B, D], "text": [B, L, D] or None, "queries": [B, Q, D] or None}``, L2-normalised.
        With ``text_index`` (long ``[B]``, a position inside the text of each row), also ``"at_index"``
        ``[B, D]``: the output at that text token (e.g. a ``<|spe|>`` placed inside the text, GLUE)."""
        x, layout = self.encode(images, text, text_mask, num_queries, causal_text, attributes)
        num_visual, num_text, num_queries = layout
        t0 = 1 + num_visual
        out = {
            "spe": self.predictor(self.pool(x, layout, text_mask)),
            "text": self.predictor(x[:, t0 : t0 + num_text]) if num_text else None,
            "queries": self.predictor(x[:, t0 + num_text :]) if num_queries else None,
        }
        if text_index is not None:
            out["at_index"] = self.predictor(gather_text_positions(x, t0, num_text, text_index))
        return out

    def features_at(self, text: torch.Tensor, text_mask: Optional[torch.Tensor], text_index: torch.Tensor,
                    images: Optional[torch.Tensor] = None, attributes: Optional[Dict[str, Any]] = None) -> torch.Tensor:
        """``[B, D]`` L2-normalised predictor output at text position ``text_index[b]`` of each row: the
        published reading of a ``<|spe|>`` placed inside the text.  Same as ``model(..., text_index=...)
        ["at_index"]``; call the model (not this) under DistributedDataParallel."""
        return self(images=images, text=text, text_mask=text_mask, attributes=attributes,
                    text_index=text_index)["at_index"]

    def encode_targets(
        self, ids: torch.Tensor, mask: Optional[torch.Tensor] = None, attributes: Optional[Dict[str, Any]] = None
    ) -> torch.Tensor:
        """``[N, Lt]`` candidate token sequences -> ``[N, D]`` L2-normalised ``<spe>`` representations."""
        x, layout = self.encode(text=ids, text_mask=mask, attributes=attributes, side="target")
        return self.predictor(self.pool(x, layout, mask))

    def pool(self, x: torch.Tensor, layout: Tuple[int, int, int], text_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The sequence representation ``[B, D]`` of encoder outputs ``x`` (MODEL.POOLING): the ``<spe>`` output,
        or the mean output over ``<spe>``, visual and non-padding text tokens (never the queries)."""
        if self.pooling == "spe":
            return x[:, 0]
        num_visual, num_text, _ = layout
        x = x[:, : 1 + num_visual + num_text]
        if text_mask is None or not num_text:
            return x.mean(dim=1)
        weight = torch.cat([x.new_ones(x.shape[0], 1 + num_visual), text_mask.to(x.dtype)], dim=1).unsqueeze(-1)
        return (x * weight).sum(dim=1) / weight.sum(dim=1)

    def logits(self, query: torch.Tensor, targets: torch.Tensor, temp_name: str = "default") -> torch.Tensor:
        """``[..., D] x [N, D] -> [..., N]``: cosine similarity * exp(logit_scale[temp_name]) (clamped)."""
        return self.predictor(query, targets, temp_name)

    def layer_id(self, param_name: str) -> int:
        """0 = embeddings, 1..num_layers = encoder blocks, num_layers + 1 = predictor (layer-wise LR decay)."""
        if param_name.startswith("embed."):
            return 0
        if param_name.startswith("encoder."):
            return self.encoder.layer_id(param_name[len("encoder.") :])
        return self.num_layers + 1

    def no_weight_decay(self) -> Set[str]:
        """Embedding tables, logit scales and LayerScale gammas (norms and biases: the optimizer's 1-D rule)."""
        skip = {
            "embed.token_embedding.weight",
            "embed.type_embedding.weight",
            "embed.text_pos_embed",
            "embed.temporal_pos_embed",
        }
        if hasattr(self.embed, "spe_embedding"):
            skip.add("embed.spe_embedding")
        if isinstance(self.embed.spatial_pos_embed, nn.Parameter):
            skip.add("embed.spatial_pos_embed")
        for name, param in self.named_parameters():
            if name.startswith("predictor.logit_scale.") or name.endswith(".gamma"):
                skip.add(name)
            if getattr(param, "moe_expert", False) and name.endswith(".bias"):  # [E, out] expert biases
                skip.add(name)
        if self.moe:  # the MoE gates' attribute embeddings
            for prefix, module in self.named_modules():
                if module is not self and hasattr(module, "no_weight_decay"):
                    skip.update(f"{prefix}.{n}" for n in module.no_weight_decay())
        return skip

    def extra_losses(self) -> Dict[str, torch.Tensor]:
        """Losses the model recorded during the training forwards since the last call, popped:
        ``{"loss_moe_aux": MOE.AUX_LOSS_WEIGHT * sum of the MoE load-balancing losses}`` (token routing), else
        ``{}``.  The Trainer adds them to the task's losses of the micro-batch (ARCHITECTURE.md, Engine)."""
        if not self.moe:
            return {}
        aux = pop_aux_loss(self)
        return {} if aux is None else {"loss_moe_aux": self.moe_aux_loss_weight * aux}

    def merge_moe_experts(self, enable: bool = True) -> int:
        """Eval with pre-merged dense weights per attribute combination (attribute routing, native backend);
        returns the number of merged units."""
        return merge_experts(self, enable)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.encoder.set_grad_checkpointing(enable)

    @staticmethod
    def resize_rules() -> List[Tuple[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]]]:
        """``(regex over parameter names, fn(loaded, current) -> tensor)`` for learned tables whose size may
        differ between a checkpoint and this model: 1D tables resampled linearly, the learned 2D spatial
        table bilinearly.  (The frozen sin-cos table is not in the state dict: it is rebuilt.)"""
        return [
            (r"(^|\.)embed\.text_pos_embed$", resize_table_1d),
            (r"(^|\.)embed\.temporal_pos_embed$", resize_table_1d),
            (r"(^|\.)embed\.spatial_pos_embed$", resize_table_2d),
        ]


def apply_resize_rules(model: UniPerceiver, state_dict: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """A copy of ``state_dict`` with mismatched learned tables resized by ``model.resize_rules()`` (the
    checkpointer does this itself; this helper is for scripts and tests)."""
    current = model.state_dict()
    out = dict(state_dict)
    for name, tensor in state_dict.items():
        if name in current and current[name].shape != tensor.shape:
            for pattern, fn in model.resize_rules():
                if re.search(pattern, name):
                    out[name] = fn(tensor, current[name])
                    break
    return out
