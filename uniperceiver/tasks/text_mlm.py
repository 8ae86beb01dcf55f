"""Task type ``text_mlm``: masked language modelling with whole-word masking.

``DATALOADER.MLM_PROBABILITY`` (15%) of the words of a sample are chosen; a chosen word has all its BPE tokens
replaced by ``<|mask|>`` (80%), by random words of the label set (10%) or left unchanged (10%).  The text
outputs at the chosen positions are scored against the vocabulary label set (``DATASETS.TARGET_SET``) with
``MODEL.VOCAB_NEGATIVES`` sampled negatives in training and the whole set in evaluation.  Training draws a
random window of a long sample and random masks; evaluation masks deterministically from the sample index, so
``mlm_acc`` is comparable across evaluations.
"""
from __future__ import annotations

import random
from typing import Any, Dict, List, Sequence

import torch

from uniperceiver.data.datasets import build_reader
from uniperceiver.data.target_sets import TargetEncoder, task_target_encoder
from uniperceiver.tokenization import get_tokenizer
from uniperceiver.utils.wrappers import unwrap_model

from .base import Task, register_task
from .image_caption import vocab_loss

IGNORE_INDEX = -100


def whole_word_mask(words: List[List[int]], rng: random.Random, *, prob: float, mask_id: int,
                    random_ids: Sequence[int]) -> Dict[str, List[int]]:
    """BERT whole-word masking over per-word token lists -> ``{"ids", "labels"}`` (labels -100 = unmasked).

    At least one word is chosen (when there is one)."""
    if not words:
        return {"ids": [], "labels": []}
    num = max(1, int(round(prob * len(words))))
    chosen = set(rng.sample(range(len(words)), min(num, len(words))))
    ids: List[int] = []
    labels: List[int] = []
    for w, pieces in enumerate(words):
        if w not in chosen:
            ids.extend(pieces)
            labels.extend([IGNORE_INDEX] * len(pieces))
            continue
        r = rng.random()
        for p in pieces:
            if r < 0.8:
                ids.append(mask_id)
            elif r < 0.9:
                ids.append(random_ids[rng.randrange(len(random_ids))])
            else:
                ids.append(p)
            labels.append(p)
    return {"ids": ids, "labels": labels}


class MaskedTextDataset(torch.utils.data.Dataset):
    """Wraps a text dataset: samples become ``{"ids", "labels", "index"}`` lists of at most ``max_len``
    tokens (whole words only)."""

    def __init__(self, base, *, max_len: int, prob: float, random_ids: torch.Tensor, train: bool, seed: int = 0):
        self.base, self.max_len, self.prob, self.train, self.seed = base, max_len, prob, train, seed
        self.random_ids = [int(i) for i in random_ids]  # python ints: a draw is a list lookup, not a tensor read

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> Dict[str, Any]:
        tok = get_tokenizer()
        sample = self.base[index]
        rng = random.Random(random.getrandbits(64) if self.train else self.seed * 1_000_003 + index)
        words = [p for p in (tok.encode(w) for w in sample["text"].split()) if p]
        total = sum(len(p) for p in words)
        start = 0
        if self.train and total > self.max_len:
            start = rng.randrange(len(words))  # a random window; the tail below trims it to max_len
        kept, used = [], 0
        for pieces in words[start:]:
            if used + len(pieces) > self.max_len:
                break
            kept.append(pieces)
            used += len(pieces)
        if not kept and words:  # one word longer than max_len: keep its first tokens
            kept = [words[start][: self.max_len]]
        out = whole_word_mask(kept, rng, prob=self.prob, mask_id=tok.mask_id, random_ids=self.random_ids)
        out["index"] = sample["index"]
        return out


@register_task("text_mlm")
class TextMLMTask(Task):
    default_evaluator = "MLMEvaluator"
    attributes = {"modality": "text", "task": "mlm"}

    def __init__(self, task_cfg, root_cfg):
        super().__init__(task_cfg, root_cfg)
        self._targets: TargetEncoder = None

    @property
    def targets(self) -> TargetEncoder:
        if self._targets is None:
            self._targets = task_target_encoder(self, attributes={"modality": "text", "task": "mlm"})
            if not self._targets.label_set.is_vocabulary:
                raise ValueError(f"task {self.name}: DATASETS.TARGET_SET must be a vocabulary (.tokens / vocabulary)")
        return self._targets

    def build_dataset(self, split: str) -> torch.utils.data.Dataset:
        base = build_reader(self.cfg, self.root_cfg, split)
        ls = self.targets.label_set
        words = ls.token_ids[ls.token_ids != get_tokenizer().eot_id]
        return MaskedTextDataset(base, max_len=self.max_len, prob=float(self.cfg.DATALOADER.MLM_PROBABILITY),
                                 random_ids=words, train=split == "train", seed=int(self.root_cfg.SEED))

    def collate(self, samples: List[Dict[str, Any]]) -> Dict[str, Any]:
        lengths = [len(s["ids"]) for s in samples]
        width = max(1, max(lengths))
        ids = torch.tensor([s["ids"] + [0] * (width - n) for s, n in zip(samples, lengths)], dtype=torch.long)
        labels = torch.tensor([s["labels"] + [IGNORE_INDEX] * (width - n) for s, n in zip(samples, lengths)],
                              dtype=torch.long)
        mask = torch.arange(width) < torch.tensor(lengths).unsqueeze(1)
        return {"text": ids.reshape(len(samples), width), "text_mask": mask, "labels": labels.reshape(ids.shape),
                "index": torch.tensor([s["index"] for s in samples], dtype=torch.long)}

    def losses(self, model, batch: Dict[str, Any]) -> Dict[str, torch.Tensor]:
        out = model(text=batch["text"], text_mask=batch["text_mask"], attributes=self.attributes)
        return {f"loss_{self.name}": vocab_loss(model, self, out["text"], batch["labels"]) * self.loss_weight}

    def predict(self, model, batch: Dict[str, Any]) -> Dict[str, Any]:
        head = unwrap_model(model)
        labels = batch["labels"]
        keep = labels != IGNORE_INDEX
        out = model(text=batch["text"], text_mask=batch["text_mask"], attributes=self.attributes)
        feats = self.targets.encode(head, labels.device)
        logits = head.logits(out["text"][keep], feats, self.temp_name)
        token_ids = self.targets.label_set.token_ids.to(labels.device)
        return {"labels": labels[keep], "predictions": token_ids[logits.argmax(-1)]}

    def start_inference(self, model) -> None:
        self.targets.clear()

    def end_inference(self) -> None:
        self.targets.clear()
