"""PlaceholderModel: a tiny MLP for engine tests and the smoke-test config only (not a paper model).

Input ``features`` [B, 8] -> output [B, 1].  Widths from ``MODEL.BERT.HIDDEN_SIZE`` / ``NUM_HIDDEN_LAYERS`` so
tests exercise the same optimizer rules (layer_id, no-decay names) the real model does.
"""
from __future__ import annotations

from typing import Set

import torch
import torch.nn as nn

from ..registry import MODEL_REGISTRY


@MODEL_REGISTRY.register()
class PlaceholderModel(nn.Module):
    in_features = 8
    out_features = 1

    def __init__(self, cfg=None, *, hidden: int = 16, num_layers: int = 2):
        super().__init__()
        if cfg is not None:
            hidden, num_layers = cfg.MODEL.BERT.HIDDEN_SIZE, cfg.MODEL.BERT.NUM_HIDDEN_LAYERS
        self.embeddings = nn.Linear(self.in_features, hidden)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.LayerNorm(hidden), nn.Linear(hidden, hidden), nn.GELU()) for _ in range(num_layers)
        )
        self.norm = nn.LayerNorm(hidden)
        self.head = nn.Linear(hidden, self.out_features)
        self.num_layers = num_layers

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = self.embeddings(features)
        for block in self.blocks:
            x = x + block(x)
        return self.head(self.norm(x))

    def layer_id(self, name: str) -> int:
        """0 = embeddings, 1..num_layers = blocks, num_layers + 1 = final norm and head."""
        if name.startswith("embeddings"):
            return 0
        if name.startswith("blocks."):
            return int(name.split(".")[1]) + 1
        return self.num_layers + 1

    def no_weight_decay(self) -> Set[str]:
        return set()
