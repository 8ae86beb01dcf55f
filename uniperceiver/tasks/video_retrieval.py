"""Task type ``video_retrieval`` (MSVD, MSR-VTT): video and caption encoded as separate sequences, scored
both ways against the batch (``image_retrieval``'s symmetric loss, synced negatives across ranks included).

Data: the ``video_caption`` reader: one clip per caption in training (random offset), and at evaluation one
row per video view with all its captions; views of a video share its id, and ``RetrievalEvaluator`` keeps
the first row of each id (so ``INFERENCE.NUM_VIEWS`` should stay 1 for retrieval).
"""
from __future__ import annotations

from typing import Any, Dict, List

import torch

from .base import register_task
from .image_retrieval import ImageRetrievalTask
from .video_classification import VideoInput


@register_task("video_retrieval")
class VideoRetrievalTask(VideoInput, ImageRetrievalTask):
    default_evaluator = "RetrievalEvaluator"
    attributes = {"modality": "video", "task": "retrieval"}

    def collate(self, samples: List[Dict[str, Any]]) -> Dict[str, Any]:
        batch = super().collate(samples)
        if "text_image_ids" in batch:  # evaluation: key videos (and their captions) by video, not by view row
            ids = [s["sample_id"] for s in samples]
            batch["index"] = torch.tensor(ids, dtype=torch.long)
            batch["text_image_ids"] = torch.tensor([i for s, i in zip(samples, ids) for _ in s["captions"]],
                                                   dtype=torch.long)
        return batch
