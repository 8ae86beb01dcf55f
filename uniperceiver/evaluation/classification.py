"""Classification accuracy (Acc@1 / Acc@5) over candidate-class scores, with multi-view (video) averaging.

Ties count against the prediction: the rank of the true class is the number of *other* classes scoring at
least as high, so a model that scores every class equally gets Acc@1 = 0, not 100.
"""
from __future__ import annotations

from typing import Any, Dict, List, Sequence

import torch

from .evaluator import EVALUATOR_REGISTRY, DatasetEvaluator, all_gather_cat, as_long_tensor
from uniperceiver.utils import comm


def label_ranks(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """0-based rank of each true label among the classes ([N, C] scores, [N] labels); ties rank it lower."""
    scores = scores.float()
    true = scores.gather(1, labels.view(-1, 1))
    return (scores >= true).sum(1) - 1


def average_views(probs: torch.Tensor, labels: torch.Tensor, sample_ids: torch.Tensor):
    """Average the rows sharing a sample id: -> (mean probs [S, C], labels [S]) in ascending id order."""
    uniq, inverse = torch.unique(sample_ids, return_inverse=True)
    sums = probs.new_zeros((uniq.numel(), probs.shape[1])).index_add_(0, inverse, probs)
    counts = torch.bincount(inverse, minlength=uniq.numel()).to(probs.dtype)
    first = torch.full((uniq.numel(),), probs.shape[0], dtype=torch.long)
    first = first.scatter_reduce(0, inverse, torch.arange(probs.shape[0]), reduce="amin")
    return sums / counts[:, None], labels[first]


@EVALUATOR_REGISTRY.register()
class ClassificationEvaluator(DatasetEvaluator):
    """Acc@k of ``outputs["logits"]`` against ``outputs["labels"]``.

    ``logits``: [B, C] scores, or [B, V, C] for V views of each sample (softmax-averaged over V).
    ``sample_ids`` (optional, [B]): rows with the same id are views of one sample (possibly on different
    ranks); their softmax probabilities are averaged before ranking.
    """

    def __init__(self, topk: Sequence[int] = (1, 5)):
        self.topk = tuple(int(k) for k in topk)
        self.reset()

    def reset(self) -> None:
        self._ranks: List[torch.Tensor] = []
        self._probs: List[torch.Tensor] = []
        self._labels: List[torch.Tensor] = []
        self._ids: List[torch.Tensor] = []
        self._num_classes = 0
        self._chance: Dict[str, float] = {}

    def process(self, batch: Dict[str, Any], outputs: Dict[str, Any]) -> None:
        logits = outputs["logits"].detach().float().cpu()
        labels = as_long_tensor(outputs["labels"])
        self._num_classes = max(self._num_classes, int(logits.shape[-1]))
        if logits.dim() == 3:  # [B, V, C]: views of one sample in one row
            logits = logits.softmax(-1).mean(1).log()
        if outputs.get("sample_ids") is None:
            self._ranks.append(label_ranks(logits, labels))
        else:
            self._probs.append(logits.softmax(-1))
            self._labels.append(labels)
            self._ids.append(as_long_tensor(outputs["sample_ids"]))

    def evaluate(self) -> Dict[str, float]:
        ranks = all_gather_cat(self._ranks, dtype=torch.long)
        # Multi-view rows: views of one sample may sit on different ranks, so gather before averaging.
        probs = all_gather_cat(self._probs)
        labels = all_gather_cat(self._labels, dtype=torch.long)
        ids = all_gather_cat(self._ids, dtype=torch.long)
        num_classes = max(comm.all_gather(self._num_classes)) if comm.get_world_size() > 1 else self._num_classes
        if not comm.is_main_process():
            return {}
        if ids.numel():
            mean_probs, sample_labels = average_views(probs, labels, ids)
            ranks = torch.cat([ranks, label_ranks(mean_probs, sample_labels)])
        if ranks.numel() == 0:
            return {}
        # Chance: a uniformly random ranking of C classes puts the true one in the top k with p = min(k, C) / C.
        self._chance = {f"Acc@{k}": 100.0 * min(k, num_classes) / num_classes for k in self.topk} if num_classes else {}
        return {f"Acc@{k}": 100.0 * (ranks < k).float().mean().item() for k in self.topk}
