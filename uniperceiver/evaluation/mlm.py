"""Masked-language-modelling accuracy: the fraction of masked positions whose predicted token is right."""
from __future__ import annotations

from collections import Counter
from typing import Any, Dict


from .evaluator import EVALUATOR_REGISTRY, DatasetEvaluator, gather_list
from uniperceiver.utils import comm

IGNORE_INDEX = -100


@EVALUATOR_REGISTRY.register()
class MLMEvaluator(DatasetEvaluator):
    """``outputs``: ``labels`` (any shape, ``-100`` = not masked) and either ``predictions`` (token ids, the
    same shape) or ``logits`` (``labels.shape + [V]``, arg-maxed here).  Reports ``mlm_acc`` in percent."""

    def reset(self) -> None:
        self._correct = 0
        self._total = 0
        self._label_counts: Counter = Counter()
        self._chance: Dict[str, float] = {}

    def process(self, batch: Dict[str, Any], outputs: Dict[str, Any]) -> None:
        labels = outputs["labels"].detach().reshape(-1).cpu()
        if outputs.get("predictions") is not None:
            preds = outputs["predictions"].detach().reshape(-1).cpu()
        else:
            logits = outputs["logits"].detach()
            preds = logits.reshape(-1, logits.shape[-1]).argmax(-1).cpu()
        keep = labels != IGNORE_INDEX
        self._correct += int((preds[keep] == labels[keep]).sum())
        self._total += int(keep.sum())
        self._label_counts.update(labels[keep].tolist())

    def evaluate(self) -> Dict[str, float]:
        counts = gather_list([(self._correct, self._total, self._label_counts)])
        if not comm.is_main_process():
            return {}
        correct = sum(c[0] for c in counts)
        total = sum(c[1] for c in counts)
        labels: Counter = sum((c[2] for c in counts), Counter())
        # Baseline: always predict the split's most frequent masked token (an upper bound for any constant).
        self._chance = {"mlm_acc": 100.0 * labels.most_common(1)[0][1] / total} if total else {}
        return {"mlm_acc": 100.0 * correct / total} if total else {}
