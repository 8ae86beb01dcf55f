"""The shared Uni-Perceiver encoder: a stack of pre-LN transformer blocks with LayerScale and DropPath.

Blocks take explicit keyword arguments (timm style) and are built from ``attn_layer`` / ``mlp_layer``
factories, so a mixture-of-experts projection can replace the dense one per layer (``layer_factories``)
without touching the block; ``attributes`` (the task's routing attributes) flow through every block to
those layers.  Attention is ``F.scaled_dot_product_attention`` with a boolean mask (True = may attend) or
``None``, so PyTorch can pick its fused kernels.
"""
from __future__ import annotations

import re
from typing import Any, Callable, Dict, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import DropPath
from torch.utils.checkpoint import checkpoint

from uniperceiver.utils.registry import lookup

from .registry import ENCODER_REGISTRY

Attributes = Optional[Dict[str, Any]]


class Attention(nn.Module):
    """Multi-head self-attention with a fused qkv projection."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, attn_drop: float = 0.0, proj_drop: float = 0.0):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"hidden size {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor, attn_mask: Optional[torch.Tensor] = None, attributes: Attributes = None) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4).unbind(0)
        x = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, dropout_p=self.attn_drop if self.training else 0.0
        )
        return self.proj_drop(self.proj(x.transpose(1, 2).reshape(b, n, c)))


class Mlp(nn.Module):
    """Dense feed-forward network: Linear -> GELU -> Linear."""

    def __init__(self, dim: int, hidden_dim: int, drop: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor, attributes: Attributes = None) -> torch.Tensor:
        return self.drop(self.fc2(self.act(self.fc1(x))))


class LayerScale(nn.Module):
    """Per-channel learnable residual scale (CaiT), initialised to ``init_value``."""

    def __init__(self, dim: int, init_value: float = 1e-3):
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), float(init_value)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class Block(nn.Module):
    """Pre-LN block: ``x + drop_path(ls1(attn(norm1(x))))``, then the same with the MLP."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_hidden_dim: int,
        *,
        drop_path: float = 0.0,
        layer_scale_init: Optional[float] = 1e-3,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        norm_eps: float = 1e-6,
        attn_layer: Callable[..., nn.Module] = Attention,
        mlp_layer: Callable[..., nn.Module] = Mlp,
    ):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = attn_layer(dim, num_heads, attn_drop=attn_drop, proj_drop=proj_drop)
        self.ls1 = LayerScale(dim, layer_scale_init) if layer_scale_init else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = mlp_layer(dim, mlp_hidden_dim, drop=proj_drop)
        self.ls2 = LayerScale(dim, layer_scale_init) if layer_scale_init else nn.Identity()
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, attn_mask: Optional[torch.Tensor] = None, attributes: Attributes = None) -> torch.Tensor:
        x = x + self.drop_path(self.ls1(self.attn(self.norm1(x), attn_mask=attn_mask, attributes=attributes)))
        x = x + self.drop_path(self.ls2(self.mlp(self.norm2(x), attributes=attributes)))
        return x


def layer_factories(cfg, layer_index: int) -> Tuple[Callable[..., nn.Module], Callable[..., nn.Module]]:
    """``(attn_layer, mlp_layer)`` of block ``layer_index``: dense, or with ``MOE.MOE`` on the blocks chosen by
    ``MOE.MOE_EXPERT_LOCATION`` the conditional-MoE layers of ``MOE.BACKEND`` (``modeling/moe``)."""
    from .moe import MoESpec, is_moe_layer, moe_layer_factories

    if not is_moe_layer(cfg, layer_index):
        return Attention, Mlp
    return moe_layer_factories(MoESpec.from_config(cfg))


@ENCODER_REGISTRY.register()
class UnifiedBertEncoder(nn.Module):
    """The shared transformer: ``depth`` pre-LN blocks, DropPath rising linearly to ``drop_path_rate``
    (every block ``drop_path_rate`` with ``drop_path_fixed``)."""

    def __init__(
        self,
        *,
        dim: int,
        depth: int,
        num_heads: int,
        mlp_hidden_dim: int,
        drop_path_rate: float = 0.0,
        drop_path_fixed: bool = False,
        layer_scale_init: Optional[float] = 1e-3,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        norm_eps: float = 1e-6,
        grad_checkpointing: bool = False,
        block_layers: Optional[Callable[[int], Tuple[Callable[..., nn.Module], Callable[..., nn.Module]]]] = None,
        num_prompt_tokens: int = 0,
    ):
        super().__init__()
        rates = [drop_path_rate if drop_path_fixed else drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]
        blocks = []
        for i in range(depth):
            attn_layer, mlp_layer = block_layers(i) if block_layers else (Attention, Mlp)
            blocks.append(
                Block(
                    dim,
                    num_heads,
                    mlp_hidden_dim,
                    drop_path=rates[i],
                    layer_scale_init=layer_scale_init,
                    attn_drop=attn_drop,
                    proj_drop=proj_drop,
                    norm_eps=norm_eps,
                    attn_layer=attn_layer,
                    mlp_layer=mlp_layer,
                )
            )
        self.blocks = nn.ModuleList(blocks)
        self.grad_checkpointing = grad_checkpointing
        # Prompt tuning (MODEL.PROMPT): deep prompts, ``num_prompt_tokens`` learned tokens per block, and a
        # learned bias on the leading <spe> token (raw Parameters, so the model's Linear init leaves them be).
        self.num_prompt_tokens = int(num_prompt_tokens)
        if self.num_prompt_tokens > 0:
            self.prompt_tokens = nn.Parameter(torch.zeros(depth, self.num_prompt_tokens, dim))
            nn.init.trunc_normal_(self.prompt_tokens, std=0.02)
            self.prompt_spe_bias = nn.Parameter(torch.zeros(dim))

    @classmethod
    def from_config(cls, cfg) -> Dict[str, Any]:
        """Constructor keyword arguments from ``cfg.MODEL`` (the one place config meets the encoder)."""
        bert = cfg.MODEL.BERT
        if bert.HIDDEN_ACT != "gelu":
            from uniperceiver.config import ConfigError

            raise ConfigError(f"MODEL.BERT.HIDDEN_ACT {bert.HIDDEN_ACT!r}: only 'gelu' is supported")
        return dict(
            dim=bert.HIDDEN_SIZE,
            depth=bert.NUM_HIDDEN_LAYERS,
            num_heads=bert.NUM_ATTENTION_HEADS,
            mlp_hidden_dim=bert.INTERMEDIATE_SIZE,
            drop_path_rate=bert.DROP_PATH_PROB,
            drop_path_fixed=bert.DROP_PATH_PROB_FIXED,
            layer_scale_init=cfg.MODEL.LAYER_SCALE_INIT if cfg.MODEL.LAYER_SCALE else None,
            attn_drop=bert.ATTENTION_PROBS_DROPOUT_PROB,
            proj_drop=bert.HIDDEN_DROPOUT_PROB,
            norm_eps=bert.LAYER_NORM_EPS,
            grad_checkpointing=cfg.MODEL.ACTIVATION_CHECKPOINTING,
            block_layers=lambda i: layer_factories(cfg, i),
            num_prompt_tokens=cfg.MODEL.PROMPT.NUM_TOKENS if cfg.MODEL.PROMPT.ENABLED else 0,
        )

    @property
    def num_layers(self) -> int:
        return len(self.blocks)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    def layer_id(self, param_name: str) -> int:
        """1-based block index of a parameter name relative to this encoder (``blocks.3.attn...`` -> 4)."""
        match = re.match(r"blocks\.(\d+)\.", param_name)
        return int(match.group(1)) + 1 if match else self.num_layers + 1

    def forward(self, x: torch.Tensor, attn_mask: Optional[torch.Tensor] = None, attributes: Attributes = None) -> torch.Tensor:
        """``x`` [B, S, D] (``x[:, 0]`` is <spe>) -> [B, S, D].  With deep prompts, block i sees ``S + P``
        tokens: the sequence followed by its own P prompt tokens (the previous block's prompt outputs are
        dropped, VPT-deep style); every token may attend to the prompts, and they leave before the return."""
        checkpointing = self.grad_checkpointing and self.training and torch.is_grad_enabled()
        num_prompts = self.num_prompt_tokens
        if num_prompts:
            seq_len = x.shape[1]
            x = torch.cat([x[:, :1] + self.prompt_spe_bias.to(x.dtype), x[:, 1:]], dim=1)
            attn_mask = prompt_attention_mask(attn_mask, seq_len, num_prompts)
        for i, block in enumerate(self.blocks):
            if num_prompts:
                prompts = self.prompt_tokens[i].to(x.dtype).expand(x.shape[0], -1, -1)
                x = torch.cat([x[:, :seq_len], prompts], dim=1)
            if checkpointing:
                x = checkpoint(block, x, attn_mask, attributes, use_reentrant=False)
            else:
                x = block(x, attn_mask, attributes)
        return x[:, :seq_len] if num_prompts else x


def prompt_attention_mask(attn_mask: Optional[torch.Tensor], seq_len: int, num_prompts: int) -> Optional[torch.Tensor]:
    """Extend a boolean mask over ``seq_len`` tokens (None, key padding ``[B, 1, 1, S]`` or full
    ``[B|1, 1, S, S]``) to ``S + P`` tokens with P prompt tokens appended: every token may attend to every
    prompt; prompt rows may attend to everything (their outputs are replaced before the next block)."""
    if attn_mask is None:
        return None
    lead = attn_mask.shape[:-2]
    rows, cols = attn_mask.shape[-2], attn_mask.shape[-1]
    if cols != seq_len or rows not in (1, seq_len):
        raise ValueError(f"attention mask of shape {tuple(attn_mask.shape)} does not fit {seq_len} tokens")
    out = attn_mask.new_ones(*lead, rows if rows == 1 else seq_len + num_prompts, seq_len + num_prompts)
    out[..., :rows, :seq_len] = attn_mask
    return out


def build_encoder(cfg) -> nn.Module:
    """Build ``cfg.MODEL.ENCODER`` from ENCODER_REGISTRY via its ``from_config``."""
    cls = lookup(ENCODER_REGISTRY, cfg.MODEL.ENCODER, "MODEL.ENCODER")
    return cls(**cls.from_config(cfg))
