"""Task type ``image_caption``: the sequence ``[<spe>, image, caption, <spe> x L]`` with causal text; query
i predicts caption token i (the last one ``<|endoftext|>``) against the vocabulary label set.

Training scores each query against the batch's own tokens plus ``MODEL.VOCAB_NEGATIVES`` sampled other
words of ``DATASETS.TARGET_SET`` (all words when 0), so a step stays cheap with a 49k vocabulary; tokens
outside a vocabulary *subset* are ignored.  Evaluation generates greedily or with beam search
(``DECODE_STRATEGY``, see ``modeling/decoding.py``) over the whole label set, encoded once per weights
version, and ``CaptionEvaluator`` scores the captions against ``INFERENCE.VAL_ANNFILE / TEST_ANNFILE`` (or the
references carried in the batch when no file is set).
"""
from __future__ import annotations

from typing import Any, Dict, List

import torch

from uniperceiver.config import ConfigError
from uniperceiver.data.target_sets import TargetEncoder, remap, sample_entries, task_target_encoder
from uniperceiver.modeling.decoding import CaptionGenerator, decode_strategy_from_config
from uniperceiver.modeling.losses import cross_entropy
from uniperceiver.tokenization import get_tokenizer
from uniperceiver.utils.wrappers import unwrap_model

from .base import Task, register_task
from .image_retrieval import build_pair_dataset


def vocab_loss(model, task, queries: torch.Tensor, token_labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of ``queries [..., D]`` against ``token_labels [...]`` (token ids, -100 = ignore) over
    the positives plus sampled negatives of the task's vocabulary label set."""
    targets: TargetEncoder = task.targets
    entries = targets.label_set.entry_of(token_labels.clamp(min=0))
    entries = torch.where(token_labels >= 0, entries, torch.full_like(entries, -1))
    keep = entries >= 0
    picked = sample_entries(entries[keep], len(targets.label_set), int(task.cfg.MODEL.VOCAB_NEGATIVES))
    head = unwrap_model(model)
    feats = targets.encode_entries(head, picked)
    logits = head.logits(queries[keep], feats, task.temp_name)
    labels = remap(entries[keep], picked, len(targets.label_set))
    return cross_entropy(logits, labels, label_smoothing=task.label_smoothing)


@register_task("image_caption")
class ImageCaptionTask(Task):
    default_evaluator = "CaptionEvaluator"
    crop_scale = (0.5, 1.0)  # mild: the caption must still describe the crop
    hflip = 0.0  # captions may say left / right
    attributes = {"modality": "image", "task": "caption"}

    @classmethod
    def config_errors(cls, task_cfg) -> List[str]:
        try:
            decode_strategy_from_config(task_cfg, f"TASKS.{task_cfg.NAME}.")
        except ConfigError as e:
            return [str(e)]
        return []

    def __init__(self, task_cfg, root_cfg):
        super().__init__(task_cfg, root_cfg)
        decode_strategy_from_config(task_cfg, f"TASKS.{self.name}.")  # a bad DECODE_STRATEGY fails here, not at eval
        self._targets: TargetEncoder = None
        self._table = None  # (feats, full-vocabulary table, banned ids) for generation

    @property
    def targets(self) -> TargetEncoder:
        if self._targets is None:
            self._targets = task_target_encoder(self, attributes={"modality": "text", "task": "caption"})
            if not self._targets.label_set.is_vocabulary:
                raise ValueError(f"task {self.name}: DATASETS.TARGET_SET must be a vocabulary (.tokens / vocabulary)")
        return self._targets

    def build_dataset(self, split: str) -> torch.utils.data.Dataset:
        return build_pair_dataset(self, split)

    def collate(self, samples: List[Dict[str, Any]]) -> Dict[str, Any]:
        batch = {
            "images": torch.stack([s["image"] for s in samples]),
            "index": torch.tensor([s["index"] for s in samples], dtype=torch.long),
        }
        if "caption" in samples[0]:
            text, mask = get_tokenizer().tokenize([s["caption"] for s in samples], self.max_len, add_eot=True)
            width = max(1, int(mask.sum(1).max()))
            batch["text"], batch["text_mask"] = text[:, :width], mask[:, :width]
        else:
            batch["image_ids"] = [s["image_id"] for s in samples]
            batch["references"] = [s["captions"] for s in samples]
        return batch

    def losses(self, model, batch: Dict[str, Any]) -> Dict[str, torch.Tensor]:
        text, mask = batch["text"], batch["text_mask"]
        out = model(images=batch["images"], text=text, text_mask=mask, num_queries=text.shape[1],
                    causal_text=True, attributes=self.attributes)
        labels = text.masked_fill(~mask, -100)
        return {f"loss_{self.name}": vocab_loss(model, self, out["queries"], labels) * self.loss_weight}

    def _vocab_table(self, model, device):
        """Embeddings indexed by token id (rows outside the label set are zero and banned)."""
        feats = self.targets.encode(model, device)
        if self._table is None or self._table[0] is not feats:
            ls = self.targets.label_set
            tok = get_tokenizer()
            table = feats.new_zeros(tok.vocab_size, feats.shape[1])
            table[ls.token_ids.to(device)] = feats
            inside = torch.zeros(tok.vocab_size, dtype=torch.bool)
            inside[ls.token_ids] = True
            inside[[tok.sot_id, tok.mask_id, tok.gen_id, tok.spe_id]] = False
            self._table = (feats, table, (~inside).nonzero().squeeze(1).tolist())
        return self._table[1], self._table[2]

    def predict(self, model, batch: Dict[str, Any]) -> Dict[str, Any]:
        model = unwrap_model(model)
        images = batch["images"]
        table, banned = self._vocab_table(model, images.device)
        tok = get_tokenizer()
        generator = CaptionGenerator.from_config(self.cfg, tok, banned_ids=banned, attributes=self.attributes)
        tokens, _ = generator.generate(model, images, table)
        return {"image_ids": batch["image_ids"], "captions": [tok.decode(t, skip_special=True) for t in tokens],
                "references": batch["references"]}

    def start_inference(self, model) -> None:
        self.targets.clear()
        self._table = None

    def end_inference(self) -> None:
        self.targets.clear()
        self._table = None
