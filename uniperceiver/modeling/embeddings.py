"""Input tokenizers of Uni-Perceiver (Zhu et al., CVPR 2022): token ids / pixels -> embedded sequences.

* Image / video: one 16x16 conv patch embedding shared by both (an image is a 1-frame video; optionally
  behind a small conv stem, ``MODEL.PATCH_STEM_CHANNELS``), a frozen 2D
  sin-cos spatial table (or a learned one, ``MODEL.POSEMBEDFIX False``), a learned temporal table over up to
  ``MODEL.MAX_FRAMES`` frames and a type embedding.
* Text: token embedding + learned position (``MODEL.MAX_POSITION_EMBEDDINGS``) + type embedding.
* ``<|spe|>``: the leading token of every sequence and the captioning query tokens use a dedicated learned
  vector ``spe_embedding`` (not a row of the 49411-row token table, so an image-only step does not produce a
  dense 49411 x D gradient); queries also get the position of the text token they predict.
  ``spe_token_id`` set (``MODEL.SPE_FROM_TOKEN_TABLE``, the published convention): ``<spe>`` is the token
  table's row ``spe_token_id`` with no type and no position, and query i = that row + position i + text type.
* ``visual_type`` False (``MODEL.VISUAL_TYPE_EMBED``, published): visual tokens get no type embedding.
One LayerNorm (``norm``) is applied to the assembled sequence, shared by all modalities.

The frozen sin-cos table is a non-persistent buffer built from the current grid and ``POSEMBED_SCALE``, so
weights trained at one resolution load into a model of another (the published 160 -> 224 stage-2 recipe).
"""
from __future__ import annotations

import math
from typing import List, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

# Token type ids (rows of ``type_embedding``).
TYPE_TEXT, TYPE_VISUAL, TYPE_SPE, TYPE_QUERY = 0, 1, 2, 3


def sincos_2d_table(grid_h: int, grid_w: int, dim: int, scale: float = 1.0) -> torch.Tensor:
    """[grid_h * grid_w, dim] 2D sin-cos table (row-major); grid coordinates are multiplied by ``scale``.

    Half of the channels encode the row, half the column; each half is sin | cos of the coordinate times
    frequencies 1 / 10000 ** (k / (dim / 4))."""
    if dim % 4:
        raise ValueError(f"sin-cos position table needs a width divisible by 4, got {dim}")
    quarter = dim // 4
    freqs = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter)
    ys = torch.arange(grid_h, dtype=torch.float64) * scale
    xs = torch.arange(grid_w, dtype=torch.float64) * scale
    ys, xs = torch.meshgrid(ys, xs, indexing="ij")
    out_y = ys.reshape(-1, 1) * freqs
    out_x = xs.reshape(-1, 1) * freqs
    table = torch.cat([out_y.sin(), out_y.cos(), out_x.sin(), out_x.cos()], dim=1)
    return table.float()


def resize_table_1d(loaded: torch.Tensor, current: torch.Tensor) -> torch.Tensor:
    """Linearly resample a learned [L, D] table to ``current``'s length."""
    if loaded.shape == current.shape:
        return loaded
    if loaded.dim() != 2 or loaded.shape[1] != current.shape[1]:
        raise ValueError(f"cannot resize a table of shape {tuple(loaded.shape)} to {tuple(current.shape)}")
    out = F.interpolate(loaded.t()[None].float(), size=current.shape[0], mode="linear", align_corners=False)
    return out[0].t().to(loaded.dtype).contiguous()


def resize_table_2d(loaded: torch.Tensor, current: torch.Tensor) -> torch.Tensor:
    """Bilinearly resample a learned square-grid [g*g, D] table to ``current``'s (square) grid."""
    if loaded.shape == current.shape:
        return loaded
    g_old, g_new = math.isqrt(loaded.shape[0]), math.isqrt(current.shape[0])
    if g_old * g_old != loaded.shape[0] or g_new * g_new != current.shape[0] or loaded.shape[1] != current.shape[1]:
        raise ValueError(f"cannot resize a 2D table of shape {tuple(loaded.shape)} to {tuple(current.shape)}")
    return _resample_grid(loaded, g_old, g_old, g_new, g_new)


def _resample_grid(table: torch.Tensor, h: int, w: int, new_h: int, new_w: int) -> torch.Tensor:
    grid = table.reshape(h, w, -1).permute(2, 0, 1)[None].float()
    grid = F.interpolate(grid, size=(new_h, new_w), mode="bilinear", align_corners=False)
    return grid[0].permute(1, 2, 0).reshape(new_h * new_w, -1).to(table.dtype).contiguous()


class PatchEmbed(nn.Module):
    """Non-overlapping ``patch_size`` conv: [N, 3, H, W] -> [N, (H/p)*(W/p), dim].

    ``stem_channels`` (``MODEL.PATCH_STEM_CHANNELS``) puts 3x3 stride-1 conv + GELU layers of those widths in
    front of it ("early convolutions", Xiao et al. 2021): a local inductive bias that makes a small model
    learn from little data much faster.  They run at full resolution, so they suit small inputs (28 px
    digits); at 224 px a 32-channel layer costs 1.6 M activations per frame.  None by default (published)."""

    def __init__(self, patch_size: int = 16, in_chans: int = 3, dim: int = 768, stem_channels: Sequence[int] = ()):
        super().__init__()
        self.patch_size = patch_size
        layers: List[nn.Module] = []
        for width in map(int, stem_channels):
            layers += [nn.Conv2d(in_chans, width, kernel_size=3, padding=1), nn.GELU()]
            in_chans = width
        self.stem = nn.Sequential(*layers)
        self.proj = nn.Conv2d(in_chans, dim, kernel_size=patch_size, stride=patch_size)

    def reset_stem(self) -> None:
        """PyTorch's default conv init for the stem and a stemmed projection (the model-wide trunc-normal 0.02
        would shrink the pixels ~30x per layer before they reach the embedding LayerNorm)."""
        if len(self.stem):
            for m in list(self.stem) + [self.proj]:
                if isinstance(m, nn.Conv2d):
                    m.reset_parameters()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.stem(x)).flatten(2).transpose(1, 2)


class UnifiedEmbedding(nn.Module):
    """Embeds ``[<spe>, visual tokens, text tokens, query tokens]`` into one normalised sequence."""

    def __init__(
        self,
        *,
        dim: int,
        vocab_size: int,
        img_size: int = 224,
        patch_size: int = 16,
        patch_stem: Sequence[int] = (),
        max_frames: int = 8,
        max_positions: int = 512,
        type_vocab_size: int = 4,
        fixed_spatial: bool = True,
        posembed_scale: float = 1.0,
        norm_eps: float = 1e-6,
        spe_token_id: Optional[int] = None,
        visual_type: bool = True,
    ):
        super().__init__()
        if type_vocab_size < 4:
            raise ValueError(f"type_vocab_size must be >= 4 (text, visual, spe, query), got {type_vocab_size}")
        self.dim = dim
        self.grid = img_size // patch_size
        self.posembed_scale = float(posembed_scale)
        self.fixed_spatial = fixed_spatial
        self.patch_embed = PatchEmbed(patch_size, 3, dim, patch_stem)
        self.token_embedding = nn.Embedding(vocab_size, dim)
        self.spe_token_id = None if spe_token_id is None else int(spe_token_id)
        if self.spe_token_id is not None and not 0 <= self.spe_token_id < vocab_size:
            raise ValueError(f"spe_token_id {spe_token_id} is outside the token table of {vocab_size} rows")
        if self.spe_token_id is None:
            self.spe_embedding = nn.Parameter(torch.zeros(dim))
        self.visual_type = bool(visual_type)
        self.type_embedding = nn.Embedding(type_vocab_size, dim)
        self.text_pos_embed = nn.Parameter(torch.zeros(max_positions, dim))
        self.temporal_pos_embed = nn.Parameter(torch.zeros(max_frames, dim))
        table = sincos_2d_table(self.grid, self.grid, dim, self.posembed_scale)
        if fixed_spatial:
            self.register_buffer("spatial_pos_embed", table, persistent=False)
        else:
            self.spatial_pos_embed = nn.Parameter(torch.zeros_like(table))
        self.norm = nn.LayerNorm(dim, eps=norm_eps)

    # ------------------------------------------------------------------------------------------ helpers
    def spatial_table(self, grid_h: int, grid_w: int) -> torch.Tensor:
        """[grid_h * grid_w, D] spatial positions for the given patch grid."""
        table = self.spatial_pos_embed
        if grid_h == grid_w == self.grid:
            return table
        if self.fixed_spatial:  # another resolution at run time: rebuild, same coordinate scale
            return sincos_2d_table(grid_h, grid_w, self.dim, self.posembed_scale).to(table)
        return _resample_grid(table, self.grid, self.grid, grid_h, grid_w)

    def embed_visual(self, images: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] or [B, T, 3, H, W] -> [B, T * N, D] (frame-major)."""
        if images.dim() == 4:
            images = images.unsqueeze(1)
        if images.dim() != 5:
            raise ValueError(f"images must be [B, 3, H, W] or [B, T, 3, H, W], got {tuple(images.shape)}")
        b, t = images.shape[:2]
        if t > self.temporal_pos_embed.shape[0]:
            raise ValueError(f"{t} frames > MODEL.MAX_FRAMES = {self.temporal_pos_embed.shape[0]}")
        p = self.patch_embed.patch_size
        gh, gw = images.shape[-2] // p, images.shape[-1] // p
        x = self.patch_embed(images.flatten(0, 1))  # [B*T, N, D]
        # One additive table [T, N, D]: spatial + temporal (+ visual type).
        pos = self.spatial_table(gh, gw)[None] + self.temporal_pos_embed[:t, None]
        if self.visual_type:
            pos = pos + self.type_embedding.weight[TYPE_VISUAL]
        x = x.unflatten(0, (b, t)) + pos.to(x.dtype)
        return x.flatten(1, 2)

    def embed_text(self, ids: torch.Tensor) -> torch.Tensor:
        """[B, L] -> [B, L, D]."""
        length = ids.shape[1]
        if length > self.text_pos_embed.shape[0]:
            raise ValueError(f"text of {length} tokens > MODEL.MAX_POSITION_EMBEDDINGS = {self.text_pos_embed.shape[0]}")
        return self.token_embedding(ids) + (self.text_pos_embed[:length] + self.type_embedding.weight[TYPE_TEXT])

    def embed_queries(self, batch: int, num: int) -> torch.Tensor:
        """[B, Q, D]: ``<|spe|>`` + the position of the text token each query predicts + query type."""
        if num > self.text_pos_embed.shape[0]:
            raise ValueError(f"{num} queries > MODEL.MAX_POSITION_EMBEDDINGS = {self.text_pos_embed.shape[0]}")
        if self.spe_token_id is None:
            q = self.spe_embedding + self.type_embedding.weight[TYPE_QUERY] + self.text_pos_embed[:num]
        else:  # published: the <|spe|> word at position i with the text type
            q = self._spe_token() + self.text_pos_embed[:num] + self.type_embedding.weight[TYPE_TEXT]
        return q.expand(batch, num, self.dim)

    def spe_vector(self) -> torch.Tensor:
        """[D] the leading ``<spe>`` token before the LayerNorm."""
        if self.spe_token_id is None:
            return self.spe_embedding + self.type_embedding.weight[TYPE_SPE]
        return self._spe_token()  # published: no type, no position

    def _spe_token(self) -> torch.Tensor:
        """[D] row ``spe_token_id`` of the token table, looked up through the module (so ZeRO-3 gathers it)."""
        ids = torch.full((1,), self.spe_token_id, dtype=torch.long, device=self.text_pos_embed.device)
        return self.token_embedding(ids)[0]

    def forward(
        self,
        images: Optional[torch.Tensor] = None,
        text: Optional[torch.Tensor] = None,
        num_queries: int = 0,
    ) -> torch.Tensor:
        """[B, 1 + T*N + L + Q, D] normalised sequence ``[<spe>, visual, text, queries]``."""
        parts: List[torch.Tensor] = []
        if images is not None:
            parts.append(self.embed_visual(images))
        if text is not None:
            parts.append(self.embed_text(text))
        if not parts:
            raise ValueError("UniPerceiver needs images and/or text")
        batch = parts[0].shape[0]
        if num_queries:
            parts.append(self.embed_queries(batch, num_queries))
        parts.insert(0, self.spe_vector().to(parts[0].dtype).expand(batch, 1, self.dim))
        return self.norm(torch.cat(parts, dim=1))
