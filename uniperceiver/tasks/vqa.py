"""Task type ``vqa`` (VQAv2): the sequence ``[<spe>, image, question]``; its ``<spe>`` is scored against the
encoded answers of the answer vocabulary (``DATASETS.TARGET_SET``: a class-name file of normalised answers,
``tools/build_vqa_answers.py``), so answering is classification over answer candidates.

Training: soft-target cross-entropy against the VQA soft scores ``min(#humans / 3, 1)`` of the in-vocabulary
answers (normalised to sum 1); questions with no in-vocabulary answer are left out of the loss.
Evaluation: the best-scoring answer, scored by ``VQAEvaluator`` against the ten human answers.
The published layout (data/datasets/published.py) gives each question its target scores instead of human
answers (``answer_scores``: answer -> score), used as they are; its label set is the tokenised
``VQA_Answers_CLIP_with_endoftext.pkl``, whose rows are the answers of ``<ANNO_FOLDER>/trainval_label2ans.pkl``.
"""
from __future__ import annotations

from typing import Any, Dict, List

import torch

from uniperceiver.config import ConfigError
from uniperceiver.data.datasets import build_reader, read_class_names
from uniperceiver.data.datasets.published import published_vqa_answers
from uniperceiver.data.datasets.vqa import answer_scores
from uniperceiver.data.target_sets import VOCABULARY, TargetEncoder, shared_target_node, task_target_encoder
from uniperceiver.modeling.losses import soft_target_cross_entropy
from uniperceiver.tokenization import get_tokenizer
from uniperceiver.utils.paths import resolve_data_path
from uniperceiver.utils.wrappers import unwrap_model

from .base import Task, register_task


@register_task("vqa")
class VQATask(Task):
    default_evaluator = "VQAEvaluator"
    crop_scale = (0.5, 1.0)  # mild: the question must still be answerable from the crop
    hflip = 0.0  # questions and answers may say left / right
    attributes = {"modality": "image", "task": "vqa"}

    def __init__(self, task_cfg, root_cfg):
        super().__init__(task_cfg, root_cfg)
        self._targets: TargetEncoder = None
        self._answers: List[str] = None

    @property
    def targets(self) -> TargetEncoder:
        if self._targets is None:
            self._targets = task_target_encoder(self, attributes={"modality": "text", "task": "vqa"})
        return self._targets

    @property
    def answers(self) -> List[str]:
        """The answer vocabulary (entry i = answer i of the label-set file)."""
        if self._answers is None:
            key = f"TASKS.{self.name}.DATASETS.TARGET_SET"
            names = self.cfg.DATASETS.TARGET_SET
            name = names if isinstance(names, str) else (list(names) or [""])[0]
            path = shared_target_node(self.root_cfg, name, key).SHARED_TARGETS_CFG.FILE_PATH
            if path == VOCABULARY or path.endswith(".tokens"):
                raise ConfigError(f"{key}: the VQA label set must be an answer file (.txt), got {path}")
            if path.endswith(".pkl"):  # published: tokenised answers; the strings are the reader's label2ans
                self._answers = published_vqa_answers(
                    resolve_data_path(self.root_cfg, self.cfg.DATALOADER.ANNO_FOLDER), key)
            else:
                self._answers = read_class_names(resolve_data_path(self.root_cfg, path), key)
            self._answer_index = {a: i for i, a in enumerate(self._answers)}
        return self._answers

    def build_dataset(self, split: str) -> torch.utils.data.Dataset:
        return build_reader(self.cfg, self.root_cfg, split, transform=self.build_transform(split))

    def collate(self, samples: List[Dict[str, Any]]) -> Dict[str, Any]:
        self.answers  # noqa: B018 - builds the answer index
        text, mask = get_tokenizer().tokenize([s["question"] for s in samples], self.max_len)
        soft = torch.zeros(len(samples), len(self._answers))
        for row, s in enumerate(samples):
            given = s.get("answer_scores")  # published targets: answer -> score
            scores = answer_scores(s["answers"], self._answer_index) if given is None else {
                self._answer_index[a]: v for a, v in given.items() if a in self._answer_index}
            for entry, score in scores.items():
                soft[row, entry] = score
        return {
            "images": torch.stack([s["image"] for s in samples]),
            "text": text, "text_mask": mask,
            "soft_targets": soft,
            "answers": [s["answers"] for s in samples],
            "answer_scores": [s.get("answer_scores") for s in samples],
            "question_ids": torch.tensor([s["question_id"] for s in samples], dtype=torch.long),
            "index": torch.tensor([s["index"] for s in samples], dtype=torch.long),
        }

    def _logits(self, model, batch) -> torch.Tensor:
        query = model(images=batch["images"], text=batch["text"], text_mask=batch["text_mask"],
                      attributes=self.attributes)["spe"]
        head = unwrap_model(model)
        return head.logits(query, self.targets.encode(head), self.temp_name)

    def losses(self, model, batch: Dict[str, Any]) -> Dict[str, torch.Tensor]:
        logits = self._logits(model, batch)
        soft = batch["soft_targets"].to(logits.device)
        total = soft.sum(1)
        keep = total > 0
        if bool(keep.any()):
            loss = soft_target_cross_entropy(logits[keep], soft[keep] / total[keep, None])
        else:  # no answer of this batch is in the vocabulary: a zero that still reaches every parameter used
            loss = logits.sum() * 0.0
        return {f"loss_{self.name}": loss * self.loss_weight}

    def predict(self, model, batch: Dict[str, Any]) -> Dict[str, Any]:
        best = self._logits(model, batch).argmax(-1).tolist()
        return {"predictions": [self.answers[i] for i in best], "answers": batch["answers"],
                "answer_scores": batch.get("answer_scores"), "question_ids": batch["question_ids"]}

    def start_inference(self, model) -> None:
        self.targets.clear()

    def end_inference(self) -> None:
        self.targets.clear()
