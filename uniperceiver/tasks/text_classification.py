"""Task type ``text_classification``: GLUE as the published Uni-Perceiver fine-tunes it.

Each example (one sentence, or a pair) becomes one text sequence with a ``<|spe|>`` placed inside it by the
task's published prompt (``data/datasets/glue.py: glue_prompt``; SST-2: ``"<sentence> <|endoftext|> It is
<|spe|>. <|endoftext|>"``).  The model's output at that token (``model(..., text_index=spe_index)
["at_index"]``, see ``UniPerceiver.forward``) is scored against the encoded class names of the task's label
set (``DATASETS.TARGET_SET``: "bad" / "wonderful", "no" / "yes", "no" / "maybe" / "yes"; the published
``.pkl`` target sets or a class-name ``.txt``), trained with cross-entropy (``LOSSES.LABELSMOOTHING``) and
evaluated by ``GLUEEvaluator`` (accuracy; F1 for MRPC / QQP; Matthews correlation for CoLA).

``DATASETS.DATASET_NAME`` names the GLUE task (``CoLA``, ``SST-2``, ``MRPC``, ``QQP``, ``QNLI``, ``RTE``,
``MNLI_Match``, ``MNLI_Mismatch``); STS-B (regression) has no published prompt and is refused.
"""
from __future__ import annotations

from typing import Any, Dict, List

import torch

from uniperceiver.config import ConfigError
from uniperceiver.data.datasets import build_reader
from uniperceiver.data.datasets.glue import MIN_SEQ_LEN, glue_task
from uniperceiver.data.target_sets import TargetEncoder, task_target_encoder
from uniperceiver.modeling.losses import cross_entropy
from uniperceiver.tokenization import get_tokenizer
from uniperceiver.utils.wrappers import unwrap_model

from .base import Task, register_task


@register_task("text_classification")
class TextClassificationTask(Task):
    default_evaluator = "GLUEEvaluator"
    attributes = {"modality": "text", "task": "classification"}

    def __init__(self, task_cfg, root_cfg):
        super().__init__(task_cfg, root_cfg)
        key = f"TASKS.{self.name}.DATASETS.DATASET_NAME"
        self.glue_name, self.spec = glue_task(task_cfg.DATASETS.DATASET_NAME, key)
        if self.spec.regression:
            raise ConfigError(f"{key} {self.glue_name}: regression is not supported (the published code has no "
                              f"STS-B prompt); see docs/glue.md")
        if self.max_len < MIN_SEQ_LEN:
            raise ConfigError(f"TASKS.{self.name}.MODEL.MAX_SEQ_LEN {self.max_len}: GLUE prompts need >= {MIN_SEQ_LEN}")
        self._targets: TargetEncoder = None

    @property
    def targets(self) -> TargetEncoder:
        if self._targets is None:
            self._targets = task_target_encoder(self, attributes={"modality": "text", "task": "classification"})
        return self._targets

    def build_dataset(self, split: str) -> torch.utils.data.Dataset:
        dataset = build_reader(self.cfg, self.root_cfg, split)
        n = len(self.targets.label_set)
        bad = [r for r in dataset.records if r["label"] >= n]
        if bad:
            raise ConfigError(
                f"TASKS.{self.name}: {len(bad)} {self.glue_name} {split} labels are >= the {n} classes of label set "
                f"{list(self.cfg.DATASETS.TARGET_SET)} (first: label {bad[0]['label']} at line {bad[0]['line']}); "
                f"DATASETS.TARGET_SET must name this task's class names")
        dataset.tokenizer, dataset.max_seq_len = get_tokenizer(), self.max_len
        return dataset

    def collate(self, samples: List[Dict[str, Any]]) -> Dict[str, Any]:
        length = max(len(s["ids"]) for s in samples)
        text = torch.zeros(len(samples), length, dtype=torch.long)
        mask = torch.zeros(len(samples), length, dtype=torch.bool)
        for row, s in enumerate(samples):
            text[row, : len(s["ids"])] = torch.tensor(s["ids"], dtype=torch.long)
            mask[row, : len(s["ids"])] = True
        return {
            "text": text, "text_mask": mask,
            "spe_index": torch.tensor([s["spe_index"] for s in samples], dtype=torch.long),
            "labels": torch.tensor([s["label"] for s in samples], dtype=torch.long),
            "index": torch.tensor([s["index"] for s in samples], dtype=torch.long),
        }

    def _logits(self, model, batch: Dict[str, Any]) -> torch.Tensor:
        query = model(text=batch["text"], text_mask=batch["text_mask"], text_index=batch["spe_index"],
                      attributes=self.attributes)["at_index"]
        head = unwrap_model(model)
        return head.logits(query, self.targets.encode(head), self.temp_name)

    def losses(self, model, batch: Dict[str, Any]) -> Dict[str, torch.Tensor]:
        logits = self._logits(model, batch)
        loss = cross_entropy(logits, batch["labels"].to(logits.device), label_smoothing=self.label_smoothing)
        return {f"loss_{self.name}": loss * self.loss_weight}

    def predict(self, model, batch: Dict[str, Any]) -> Dict[str, Any]:
        return {"logits": self._logits(model, batch), "labels": batch["labels"], "index": batch["index"]}

    def start_inference(self, model) -> None:
        self.targets.clear()

    def end_inference(self) -> None:
        self.targets.clear()
