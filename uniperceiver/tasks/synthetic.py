"""Task type ``synthetic_regression``: deterministic synthetic data + per-sample MSE, for engine tests and the
smoke-test config only.  Pairs with ``PlaceholderModel`` (features [B, 8] -> [B, 1]).

Sample ``i`` of split s is drawn from a generator seeded with (split, i), so it never depends on the run seed
or the order of reading; ``y = x . w + 0.1 * noise`` with a fixed ``w``.
"""
from __future__ import annotations

from typing import Any, Dict

import torch
from torch.utils.data import Dataset

from .base import Task, register_task

_SPLIT_SIZES = {"train": 256, "val": 64, "test": 64}
_SPLIT_SEEDS = {"train": 0, "val": 1, "test": 2}


class SyntheticRegressionDataset(Dataset):
    def __init__(self, split: str, size: int = 0, in_features: int = 8):
        self.split, self.in_features = split, in_features
        self.size = size or _SPLIT_SIZES[split]
        g = torch.Generator().manual_seed(1234)
        self.w = torch.randn(in_features, generator=g)

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> Dict[str, Any]:
        g = torch.Generator().manual_seed(_SPLIT_SEEDS[self.split] * 10_000_019 + int(index))
        x = torch.randn(self.in_features, generator=g)
        y = (x @ self.w + 0.1 * torch.randn((), generator=g)).reshape(1)
        return {"features": x, "target": y, "index": torch.tensor(index)}


@register_task("synthetic_regression")
class SyntheticRegressionTask(Task):
    default_evaluator = ""
    attributes = {"modality": "vector", "task": "regression"}

    def build_dataset(self, split: str) -> Dataset:
        return SyntheticRegressionDataset(split)

    def losses(self, model, batch: Dict[str, Any]) -> Dict[str, torch.Tensor]:
        pred = model(batch["features"]).float()
        per_sample = ((pred - batch["target"].float()) ** 2).mean(dim=1)
        return {f"loss_{self.name}": per_sample.mean() * self.loss_weight}

    def predict(self, model, batch: Dict[str, Any]) -> Dict[str, Any]:
        return {"pred": model(batch["features"]), "target": batch["target"], "index": batch["index"]}

