"""Task family ``image_retrieval``: image and caption are encoded as separate sequences; each image's
``<spe>`` is scored against every caption of the batch and vice versa (symmetric cross-entropy).

Data: COCO-caption JSON (COCO / Flickr30k Karpathy splits) or JSON-lines web pairs.  Training reads one
sample per caption; evaluation one sample per image with all its captions (R@K by ``RetrievalEvaluator``,
images keyed by their dataset index).  With ``DATALOADER.STRATEGY synced`` and several ranks, the negatives
come from every rank through ``comm.all_gather_with_grad`` (every rank runs this task in the same step).
"""
from __future__ import annotations

from typing import Any, Dict, List

import torch

from uniperceiver.data.datasets import build_reader
from uniperceiver.data.transforms import transform_from_config
from uniperceiver.modeling.losses import cross_entropy
from uniperceiver.tokenization import get_tokenizer
from uniperceiver.utils import comm

from .base import TASK_REGISTRY, Task
from .image_classification import unwrap


def build_pair_dataset(task: Task, split: str) -> torch.utils.data.Dataset:
    """Image-caption pairs for training, one row per image for evaluation (shared by retrieval and captioning)."""
    transform = transform_from_config(task.cfg, task.root_cfg, split == "train", "caption")
    return build_reader(task.cfg, task.root_cfg, split, transform=transform,
                        mode="pairs" if split == "train" else "images")


class ImageRetrievalTask(Task):
    family = "image_retrieval"
    default_evaluator = "RetrievalEvaluator"
    attributes = {"modality": "image", "task": "retrieval"}
    text_attributes = {"modality": "text", "task": "retrieval"}

    def __init__(self, task_cfg, root_cfg):
        super().__init__(task_cfg, root_cfg)
        self.synced = task_cfg.DATALOADER.STRATEGY == "synced"

    def build_dataset(self, split: str) -> torch.utils.data.Dataset:
        return build_pair_dataset(self, split)

    def collate(self, samples: List[Dict[str, Any]]) -> Dict[str, Any]:
        tok = get_tokenizer()
        batch = {
            "images": torch.stack([s["image"] for s in samples]),
            "index": torch.tensor([s["index"] for s in samples], dtype=torch.long),
        }
        if "caption" in samples[0]:  # training pairs
            batch["text"], batch["text_mask"] = tok.tokenize([s["caption"] for s in samples], self.max_len)
        else:  # evaluation: every caption of every image
            captions = [c for s in samples for c in s["captions"]]
            batch["text"], batch["text_mask"] = tok.tokenize(captions, self.max_len)
            batch["text_image_ids"] = torch.tensor(
                [s["index"] for s in samples for _ in s["captions"]], dtype=torch.long
            )
        return batch

    def _encode(self, model, batch):
        img = model(images=batch["images"], attributes=self.attributes)["spe"]
        txt = model(text=batch["text"], text_mask=batch["text_mask"], attributes=self.text_attributes)["spe"]
        return img, txt

    def losses(self, model, batch: Dict[str, Any]) -> Dict[str, torch.Tensor]:
        img, txt = self._encode(model, batch)
        if self.synced and comm.get_world_size() > 1:
            img_all, txt_all = comm.all_gather_with_grad(img), comm.all_gather_with_grad(txt)
            offset = comm.get_rank() * img.shape[0]
        else:
            img_all, txt_all, offset = img, txt, 0
        labels = torch.arange(img.shape[0], device=img.device) + offset
        head = unwrap(model)
        i2t = cross_entropy(head.logits(img, txt_all, self.temp_name), labels, self.label_smoothing)
        t2i = cross_entropy(head.logits(txt, img_all, self.temp_name), labels, self.label_smoothing)
        return {f"loss_{self.name}": 0.5 * (i2t + t2i) * self.loss_weight}

    def predict(self, model, batch: Dict[str, Any]) -> Dict[str, Any]:
        img, txt = self._encode(model, batch)
        return {"image_feats": img, "image_ids": batch["index"], "text_feats": txt,
                "text_image_ids": batch["text_image_ids"]}


TASK_REGISTRY._do_register(ImageRetrievalTask.family, ImageRetrievalTask)
