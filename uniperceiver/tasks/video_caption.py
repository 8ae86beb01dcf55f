"""Task type ``video_caption`` (MSVD, MSR-VTT): ``[<spe>, video, caption, <spe> x L]`` with causal text,
query i predicting caption token i against the vocabulary label set — ``image_caption`` with a clip
``[T, 3, H, W]`` for the image.  Evaluation generates from the centre clip (``INFERENCE.NUM_VIEWS`` 1) and
``CaptionEvaluator`` scores against ``INFERENCE.VAL_ANNFILE / TEST_ANNFILE`` (COCO-style, ``videos`` /
``video_id`` accepted) or the references in the batch.
"""
from __future__ import annotations

from .base import register_task
from .image_caption import ImageCaptionTask
from .video_classification import VideoInput


@register_task("video_caption")
class VideoCaptionTask(VideoInput, ImageCaptionTask):
    default_evaluator = "CaptionEvaluator"
    attributes = {"modality": "video", "task": "caption"}
