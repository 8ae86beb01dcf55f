"""Task type ``image_classification``: score the image's ``<spe>`` against the encoded class names.

Data: the ImageNet reader (``DATASETS.DATASET_NAME imagenet``); candidates: the class-name label set in
``DATASETS.TARGET_SET`` (``MODEL.LABELS_NUM`` > 0 keeps its first that many classes).  Training applies timm
RandAugment (``DATALOADER.RAND_AUGMENT``) per image and mixup / CutMix (``DATALOADER.MIXUP / CUTMIX``) per
batch with soft-target cross-entropy; otherwise cross-entropy with ``LOSSES.LABELSMOOTHING``.  Class-name
encodings are recomputed every training step (the text side learns) and cached during evaluation.
"""
from __future__ import annotations

import logging
from typing import Any, Dict, List

import torch

from uniperceiver.config import ConfigError
from uniperceiver.data.datasets import build_reader
from uniperceiver.data.target_sets import TargetEncoder, task_target_encoder
from uniperceiver.data.transforms import build_mixup
from uniperceiver.modeling.losses import cross_entropy, soft_target_cross_entropy
from uniperceiver.utils.wrappers import unwrap_model

from .base import Task, register_task

logger = logging.getLogger(__name__)


@register_task("image_classification")
class ImageClassificationTask(Task):
    default_evaluator = "ClassificationEvaluator"
    attributes = {"modality": "image", "task": "classification"}

    def __init__(self, task_cfg, root_cfg):
        super().__init__(task_cfg, root_cfg)
        self._targets: TargetEncoder = None
        self._mixup = None
        self._odd_batch_warned = False

    @property
    def targets(self) -> TargetEncoder:
        if self._targets is None:
            self._targets = task_target_encoder(self, attributes={"modality": "text", "task": "classification"})
            n, want = len(self._targets.label_set), int(self.cfg.MODEL.LABELS_NUM)
            if want > n:
                raise ConfigError(f"TASKS.{self.name}.MODEL.LABELS_NUM {want} > the {n} classes of its label set")
        return self._targets

    @property
    def num_classes(self) -> int:
        return int(self.cfg.MODEL.LABELS_NUM) or len(self.targets.label_set)

    def build_dataset(self, split: str) -> torch.utils.data.Dataset:
        dataset = build_reader(self.cfg, self.root_cfg, split, transform=self.build_transform(split))
        n = self.num_classes
        # labels the label set has no class for: skipped like other bad records (file:line logged, counted,
        # a clear stop above MAX_BAD_FRACTION, e.g. when the label set does not fit the data at all)
        dataset.drop_records(lambda r: not 0 <= r["label"] < n, f"label out of range [0, {n}) of the label set "
                             f"{list(self.cfg.DATASETS.TARGET_SET)}", path=getattr(dataset, "meta_file", ""))
        return dataset

    def collate(self, samples: List[Dict[str, Any]]) -> Dict[str, Any]:
        return {
            "images": torch.stack([s["image"] for s in samples]),
            "labels": torch.tensor([s["label"] for s in samples], dtype=torch.long),
            "index": torch.tensor([s["index"] for s in samples], dtype=torch.long),
        }

    def _class_feats(self, model) -> torch.Tensor:
        return self.targets.encode(unwrap_model(model))[: self.num_classes]

    def losses(self, model, batch: Dict[str, Any]) -> Dict[str, torch.Tensor]:
        images, labels = batch["images"], batch["labels"]
        soft = None
        if self._mixup is None:
            self._mixup = build_mixup(self.cfg, self.num_classes) or False
        if self._mixup:
            if images.shape[0] % 2 == 0:
                images, soft = self._mixup(images.clone(), labels)  # timm mixes in place
            elif not self._odd_batch_warned:
                logger.warning("task %s: mixup/cutmix skipped for odd batch sizes", self.name)
                self._odd_batch_warned = True
        query = model(images=images, attributes=self.attributes)["spe"]
        logits = unwrap_model(model).logits(query, self._class_feats(model), self.temp_name)
        if soft is not None:
            loss = soft_target_cross_entropy(logits, soft)
        else:
            loss = cross_entropy(logits, labels, label_smoothing=self.label_smoothing)
        return {f"loss_{self.name}": loss * self.loss_weight}

    def predict(self, model, batch: Dict[str, Any]) -> Dict[str, Any]:
        query = model(images=batch["images"], attributes=self.attributes)["spe"]
        logits = unwrap_model(model).logits(query, self._class_feats(model), self.temp_name)
        return {"logits": logits, "labels": batch["labels"], "index": batch["index"]}

    def start_inference(self, model) -> None:
        self.targets.clear()

    def end_inference(self) -> None:
        self.targets.clear()
