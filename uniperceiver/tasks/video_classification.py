"""Task type ``video_classification`` (Kinetics-400/700, Moments in Time): the clip ``[T, 3, H, W]`` is
encoded as a video (shared patch embedding + learned temporal embedding) and its ``<spe>`` is scored against
the encoded class names of ``DATASETS.TARGET_SET``, as ``image_classification`` does for images.

Data: the ``video_list`` reader (``uniperceiver/data/datasets/video.py``): ``DATALOADER.FRAMES_PER_CLIP``
frames ``STRIDE`` apart, a random temporal offset and one random crop per clip in training;
``INFERENCE.NUM_VIEWS`` evenly spaced clips per video at test time, each a row with the video's
``sample_ids``, so ``ClassificationEvaluator`` softmax-averages the views (even across ranks).  Loss:
cross-entropy with ``LOSSES.LABELSMOOTHING`` (mixup / CutMix are image-only and ignored here).
"""
from __future__ import annotations

from typing import Any, Callable, Dict, List

import torch

from uniperceiver.config import ConfigError
from uniperceiver.data.datasets.video import video_transform_from_config
from uniperceiver.utils.wrappers import unwrap_model

from .base import register_task
from .image_classification import ImageClassificationTask


def check_frames(task) -> None:
    """FRAMES_PER_CLIP must fit the model's learned temporal table (MODEL.MAX_FRAMES)."""
    frames, most = int(task.cfg.DATALOADER.FRAMES_PER_CLIP), int(task.root_cfg.MODEL.MAX_FRAMES)
    if not 1 <= frames <= most:
        raise ConfigError(f"TASKS.{task.name}.DATALOADER.FRAMES_PER_CLIP {frames} must be in 1..MODEL.MAX_FRAMES "
                          f"({most})")


class VideoInput:
    """Mixin of the video task types, listed before the image task type they extend (``class
    VideoCaptionTask(VideoInput, ImageCaptionTask)``): the image task's datasets with clips ``[T, 3, H, W]``
    for images, i.e. the clip transform (one crop / flip per clip, with the task's ``crop_scale`` /
    ``hflip``) after checking FRAMES_PER_CLIP.  The reader (``video_list`` / ``video_caption``) is the task's
    ``DATASETS`` node's, as for images."""

    def build_transform(self, split: str) -> Callable:
        check_frames(self)
        return video_transform_from_config(self.cfg, self.root_cfg, split == "train", scale=self.crop_scale,
                                           hflip=self.hflip)


@register_task("video_classification")
class VideoClassificationTask(VideoInput, ImageClassificationTask):
    default_evaluator = "ClassificationEvaluator"
    attributes = {"modality": "video", "task": "classification"}
    crop_scale = (0.25, 1.0)  # milder than for images: one crop for every frame of the clip

    def __init__(self, task_cfg, root_cfg):
        super().__init__(task_cfg, root_cfg)
        self._mixup = False  # image-only augmentation

    def collate(self, samples: List[Dict[str, Any]]) -> Dict[str, Any]:
        batch = super().collate(samples)  # "images": [B, T, 3, H, W]
        batch["sample_ids"] = torch.tensor([s["sample_id"] for s in samples], dtype=torch.long)
        return batch

    def predict(self, model, batch: Dict[str, Any]) -> Dict[str, Any]:
        query = model(images=batch["images"], attributes=self.attributes)["spe"]
        logits = unwrap_model(model).logits(query, self._class_feats(model), self.temp_name)
        return {"logits": logits, "labels": batch["labels"], "sample_ids": batch["sample_ids"]}
