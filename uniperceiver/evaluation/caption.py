"""Captioning metrics through pycocoevalcap: Bleu_1..Bleu_4, METEOR, ROUGE_L, CIDEr (SPICE when possible).

pycocoevalcap's PTB tokenizer and METEOR run through Java.  SPICE needs Stanford CoreNLP, which pycocoevalcap
downloads on first use; offline it is reported as unavailable (logged, left out of the results), never
faked.  References come with the outputs (``references``) or from a COCO-style annotation file
(INFERENCE.VAL_ANNFILE / TEST_ANNFILE: ``{"annotations": [{"image_id", "caption"}]}``).
"""
from __future__ import annotations

import json
import logging
import os
import shutil
from collections import OrderedDict
from typing import Any, Dict, List, Optional

from .evaluator import EVALUATOR_REGISTRY, DatasetEvaluator, gather_list
from uniperceiver.utils import comm
from uniperceiver.utils.paths import resolve_data_path

logger = logging.getLogger(__name__)


def _id(x: Any) -> Any:
    return x.item() if hasattr(x, "item") else x


def load_coco_references(path: str) -> Dict[Any, List[str]]:
    with open(path) as f:
        data = json.load(f)
    refs: Dict[Any, List[str]] = {}
    for ann in data["annotations"] if isinstance(data, dict) else data:
        refs.setdefault(ann["image_id"] if "image_id" in ann else ann["video_id"], []).append(ann["caption"])
    return refs


def spice_available() -> bool:
    """SPICE runs only when Java and pycocoevalcap's Stanford CoreNLP jar are both present locally."""
    try:
        import pycocoevalcap.spice.spice as spice_mod
    except ImportError:
        return False
    lib = os.path.join(os.path.dirname(spice_mod.__file__), "lib")
    has_corenlp = os.path.isdir(lib) and any(n.startswith("stanford-corenlp") for n in os.listdir(lib))
    return has_corenlp and shutil.which("java") is not None


def constant_caption_baseline(gts: Dict[Any, List[str]]) -> Dict[str, float]:
    """Bleu_1..4, ROUGE_L and CIDEr of captioning every image with the split's most frequent reference
    (PTB-tokenized ``{id: [reference, ...]}``; ties: the first seen): the score a model earns without looking
    at the image.  METEOR (a Java run) is left out."""
    from collections import Counter

    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    counts = Counter(c for refs in gts.values() for c in refs)
    if not counts:
        return {}
    constant = counts.most_common(1)[0][0]
    res = {i: [constant] for i in gts}
    out = {f"Bleu_{n}": float(v) for n, v in enumerate(Bleu(4).compute_score(gts, res, verbose=0)[0], 1)}
    out["ROUGE_L"] = float(Rouge().compute_score(gts, res)[0])
    out["CIDEr"] = float(Cider().compute_score(gts, res)[0])
    return out


def coco_caption_scores(predictions: Dict[Any, str], references: Dict[Any, List[str]],
                        use_spice: Optional[bool] = None, baseline: Optional[Dict[str, float]] = None
                        ) -> Dict[str, float]:
    """pycocoevalcap scores of ``{id: caption}`` against ``{id: [reference, ...]}`` (ids of predictions).
    ``baseline``: a dict filled with ``constant_caption_baseline`` of the same references."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.meteor.meteor import Meteor
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    missing = [i for i in predictions if i not in references]
    if missing:
        raise ValueError(f"CaptionEvaluator: no references for ids {missing[:5]}")
    tokenizer = PTBTokenizer()
    gts = tokenizer.tokenize({i: [{"caption": c} for c in references[i]] for i in predictions})
    res = tokenizer.tokenize({i: [{"caption": predictions[i]}] for i in predictions})
    if baseline is not None:
        baseline.update(constant_caption_baseline(gts))
    results: Dict[str, float] = {}
    bleu, _ = Bleu(4).compute_score(gts, res)
    for n, v in enumerate(bleu, 1):
        results[f"Bleu_{n}"] = float(v)
    results["METEOR"] = float(Meteor().compute_score(gts, res)[0])
    results["ROUGE_L"] = float(Rouge().compute_score(gts, res)[0])
    results["CIDEr"] = float(Cider().compute_score(gts, res)[0])
    if use_spice is None:
        use_spice = spice_available()
    if use_spice:
        from pycocoevalcap.spice.spice import Spice

        results["SPICE"] = float(Spice().compute_score(gts, res)[0])
    else:
        logger.warning("SPICE unavailable (needs Stanford CoreNLP, downloaded on first use; offline here): "
                       "not reported")
    return results


@EVALUATOR_REGISTRY.register()
class CaptionEvaluator(DatasetEvaluator):
    """``outputs``: ``image_ids`` [B] (ints or strings), ``captions`` List[str] (generated), and
    ``references`` List[List[str]] unless an annotation file gives them.  An id seen twice is scored once.
    """

    def __init__(self, ann_file: str = "", use_spice: Optional[bool] = None):
        self.ann_file = ann_file
        self.use_spice = use_spice
        self.reset()

    @classmethod
    def from_config(cls, task_cfg, root_cfg, split: str = "val") -> "CaptionEvaluator":
        ann = task_cfg.INFERENCE.TEST_ANNFILE if split == "test" else task_cfg.INFERENCE.VAL_ANNFILE
        return cls(ann_file=resolve_data_path(root_cfg, ann) if ann else "")

    def reset(self) -> None:
        self._items: List[tuple] = []
        self._chance: Dict[str, float] = {}

    def process(self, batch: Dict[str, Any], outputs: Dict[str, Any]) -> None:
        ids = [_id(i) for i in outputs["image_ids"]]
        refs = outputs.get("references") or [None] * len(ids)
        for i, cap, ref in zip(ids, outputs["captions"], refs):
            self._items.append((i, cap, list(ref) if ref is not None else None))

    def evaluate(self) -> Dict[str, float]:
        items = gather_list(self._items)
        if not comm.is_main_process() or not items:
            return {}
        predictions: Dict[Any, str] = OrderedDict()
        references: Dict[Any, List[str]] = load_coco_references(self.ann_file) if self.ann_file else {}
        for i, cap, ref in items:
            if i in predictions:
                continue
            predictions[i] = cap
            if ref is not None and not self.ann_file:
                references[i] = ref
        self._chance = {}
        return coco_caption_scores(predictions, references, self.use_spice, baseline=self._chance)
