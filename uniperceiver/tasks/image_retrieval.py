"""Task type ``image_retrieval``: image and caption are encoded as separate sequences; each image's
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
from uniperceiver.modeling.losses import cross_entropy
from uniperceiver.tokenization import get_tokenizer
from uniperceiver.utils import comm
from uniperceiver.utils.wrappers import unwrap_model

from .base import Task, register_task


def build_pair_dataset(task: Task, split: str) -> torch.utils.data.Dataset:
    """Image-caption pairs for training, one row per image for evaluation (shared by retrieval and captioning)."""
    return build_reader(task.cfg, task.root_cfg, split, transform=task.build_transform(split),
                        mode="pairs" if split == "train" else "images")


@register_task("image_retrieval")
class ImageRetrievalTask(Task):
    default_evaluator = "RetrievalEvaluator"
    crop_scale = (0.5, 1.0)  # mild: the caption must still describe the crop
    hflip = 0.0  # captions may say left / right
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
        return self._contrastive_loss(model, img, txt)

    def _contrastive_loss(self, model, img: torch.Tensor, txt: torch.Tensor) -> Dict[str, torch.Tensor]:
        if self.synced and comm.get_world_size() > 1:
            img_all, txt_all = comm.all_gather_with_grad(img), comm.all_gather_with_grad(txt)
            offset = comm.get_rank() * img.shape[0]
        else:
            img_all, txt_all, offset = img, txt, 0
        labels = torch.arange(img.shape[0], device=img.device) + offset
        head = unwrap_model(model)
        i2t = cross_entropy(head.logits(img, txt_all, self.temp_name), labels, self.label_smoothing)
        t2i = cross_entropy(head.logits(txt, img_all, self.temp_name), labels, self.label_smoothing)
        return {f"loss_{self.name}": 0.5 * (i2t + t2i) * self.loss_weight}

    def accumulated_losses(self, engine, batches: List[Dict[str, Any]]) -> List[Dict[str, torch.Tensor]]:
        """The contrastive loss over the features of all k micro-batches (and of every rank when synced), with
        the gradients of one batch of k x b (GradCache, as open_clip's ``--accum-freq`` but with the logit
        scale counted once): (1) encode each micro-batch without grad; (2) the loss over all features, as
        leaves, backward once (logit scale gradient + each feature's gradient); (3) re-encode each micro-batch
        with grad, under the RNG state of its first pass, and back-propagate its features' gradients."""
        k, rng, feats = len(batches), [], []
        with torch.no_grad():
            for batch in batches:
                rng.append(_rng_state())
                with engine.autocast():
                    feats.append(engine.losses(_Encode(self), batch))
        engine.extra_losses()  # drop what the no-grad passes recorded (MoE aux)
        img = torch.cat([f["img"] for f in feats]).float().requires_grad_()
        txt = torch.cat([f["txt"] for f in feats]).float().requires_grad_()
        with engine.micro_step(False):
            with engine.autocast():
                loss = engine.losses(_Loss(self, img, txt), None)
            engine.backward(sum(v.float() for v in loss.values()), sync=False)
        sizes = [f["img"].shape[0] for f in feats]
        grads = list(zip(img.grad.split(sizes), txt.grad.split(sizes)))
        terms = []
        for j, batch in enumerate(batches):
            _set_rng_state(rng[j])
            with engine.micro_step(j == k - 1):
                with engine.autocast():
                    f = engine.losses(_Encode(self), batch)
                    extra = engine.extra_losses()
                surrogate = (f["img"].float() * grads[j][0]).sum() + (f["txt"].float() * grads[j][1]).sum()
                engine.backward(surrogate + sum(v.float() for v in extra.values()) / k, sync=j == k - 1)
            terms.append({**{n: v.detach().float() for n, v in loss.items()},
                          **{n: v.detach().float() for n, v in extra.items()}})
        return terms

    def predict(self, model, batch: Dict[str, Any]) -> Dict[str, Any]:
        img, txt = self._encode(model, batch)
        return {"image_feats": img, "image_ids": batch["index"], "text_feats": txt,
                "text_image_ids": batch["text_image_ids"]}


class _Encode:
    """Looks like a task to ``StepEngine.losses`` (one wrapper forward under DDP): the features of a batch."""

    def __init__(self, task: ImageRetrievalTask):
        self.task = task

    def losses(self, model, batch: Dict[str, Any]) -> Dict[str, torch.Tensor]:
        img, txt = self.task._encode(model, batch)
        return {"img": img, "txt": txt}


class _Loss:
    """Looks like a task to ``StepEngine.losses``: the contrastive loss of given features."""

    def __init__(self, task: ImageRetrievalTask, img: torch.Tensor, txt: torch.Tensor):
        self.task, self.img, self.txt = task, img, txt

    def losses(self, model, batch: Any) -> Dict[str, torch.Tensor]:
        return self.task._contrastive_loss(model, self.img, self.txt)


def _rng_state():
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    return torch.get_rng_state(), cuda


def _set_rng_state(state) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state_all(state[1])
