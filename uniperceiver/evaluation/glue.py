"""GLUE metrics, as the published ``GLUEEvaler`` reports them: accuracy for every task, F1 of the positive
class for MRPC and QQP, Matthews correlation for CoLA.  Percentages (0..100), like our other accuracies;
the published evaluator reports fractions.  Predictions are the argmax over the class scores; rows without a
label (-1: test files) are left out.
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Sequence

import torch

from uniperceiver.data.datasets.glue import glue_task
from uniperceiver.utils import comm

from .evaluator import EVALUATOR_REGISTRY, DatasetEvaluator, all_gather_cat, as_long_tensor

METRICS = ("accuracy", "f1", "mcc")


def confusion(preds: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``[C, C]`` counts, row = true label, column = prediction."""
    flat = labels.long() * num_classes + preds.long()
    return torch.bincount(flat, minlength=num_classes * num_classes).view(num_classes, num_classes)


def accuracy(preds: torch.Tensor, labels: torch.Tensor) -> float:
    return 100.0 * (preds == labels).float().mean().item() if labels.numel() else 0.0


def binary_f1(preds: torch.Tensor, labels: torch.Tensor, positive: int = 1) -> float:
    """F1 of class ``positive`` (percent); 0 when it is never predicted nor true (as scikit-learn)."""
    tp = int(((preds == positive) & (labels == positive)).sum())
    fp = int(((preds == positive) & (labels != positive)).sum())
    fn = int(((preds != positive) & (labels == positive)).sum())
    return 100.0 * 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0


def matthews_corrcoef(preds: torch.Tensor, labels: torch.Tensor) -> float:
    """Matthews correlation (percent), multi-class form (Gorodkin 2004; scikit-learn's): 0 when a side is
    constant."""
    num_classes = int(max(int(preds.max()), int(labels.max()))) + 1 if labels.numel() else 1
    c = confusion(preds, labels, num_classes).double()
    true, pred, s, correct = c.sum(1), c.sum(0), c.sum(), c.trace()
    cov_tp = correct * s - (true * pred).sum()
    cov_pp = s * s - (pred * pred).sum()
    cov_tt = s * s - (true * true).sum()
    if cov_pp * cov_tt == 0:
        return 0.0
    return 100.0 * float(cov_tp / math.sqrt(float(cov_pp * cov_tt)))


_FUNCTIONS = {"accuracy": accuracy, "f1": binary_f1, "mcc": matthews_corrcoef}


def glue_metrics(preds: torch.Tensor, labels: torch.Tensor, metrics: Sequence[str]) -> Dict[str, float]:
    keep = labels >= 0
    preds, labels = preds[keep], labels[keep]
    if not labels.numel():
        return {}
    return {m: _FUNCTIONS[m](preds, labels) for m in metrics}


@EVALUATOR_REGISTRY.register()
class GLUEEvaluator(DatasetEvaluator):
    """``metrics`` of ``argmax(outputs["logits"])`` against ``outputs["labels"]``."""

    def __init__(self, metrics: Sequence[str] = ("accuracy",)):
        unknown = [m for m in metrics if m not in METRICS]
        if unknown:
            raise ValueError(f"unknown GLUE metrics {unknown}; known: {', '.join(METRICS)}")
        self.metrics = tuple(metrics)
        self.reset()

    @classmethod
    def from_config(cls, task_cfg, root_cfg, split: str = "val") -> "GLUEEvaluator":
        _, spec = glue_task(task_cfg.DATASETS.DATASET_NAME, f"TASKS.{task_cfg.NAME}.DATASETS.DATASET_NAME")
        return cls(metrics=spec.metrics or ("accuracy",))

    def reset(self) -> None:
        self._preds: List[torch.Tensor] = []
        self._labels: List[torch.Tensor] = []

    def process(self, batch: Dict[str, Any], outputs: Dict[str, Any]) -> None:
        self._preds.append(outputs["logits"].detach().float().argmax(-1).reshape(-1).long().cpu())
        self._labels.append(as_long_tensor(outputs["labels"]))

    def evaluate(self) -> Dict[str, float]:
        preds = all_gather_cat(self._preds, dtype=torch.long)
        labels = all_gather_cat(self._labels, dtype=torch.long)
        if not comm.is_main_process():
            return {}
        return glue_metrics(preds, labels, self.metrics)


# The published name (INFERENCE.NAME: 'GLUEEvaler' in the published GLUE configs) names the same evaluator.
EVALUATOR_REGISTRY.register(GLUEEvaluator, name="GLUEEvaler")
