"""Zero-shot labels for your own images: rank class names (or any texts) for each image with a checkpoint.

    python tools/zeroshot.py --config-file configs/BERT_L12_H192_experiments/base_model_bert_l12_h192.yaml \
        --weights model_final.pth --images photos/ --classes "cat,dog,red car"
    python tools/zeroshot.py --config-file CFG --weights W --images a.jpg b.png --texts captions.txt --topk 3

Class names are wrapped in prompt templates (``--templates "a photo of a {}.|a sketch of a {}."``; default:
the templates of the config's first classification label set, else "a photo of a {}.") and the template
encodings averaged, as in zero-shot classification.  ``--texts`` ranks the lines of a file (retrieval).
Scores are the model's cosine similarities; probabilities are their softmax at the task's logit scale.
Prints, per image, the top ``--topk`` labels with probabilities (``--json``: one JSON object per image).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Dict, List, Sequence

import torch

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
DEFAULT_TEMPLATE = "a photo of a {}."


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True, metavar="FILE")
    parser.add_argument("--weights", required=True, help="checkpoint (.pth) whose model weights are loaded")
    parser.add_argument("--images", required=True, nargs="+", help="image files and/or folders of images")
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--classes", help='comma-separated class names, e.g. "cat,dog,red car"')
    group.add_argument("--texts", help="a file with one candidate text per line")
    parser.add_argument("--templates", default="", help='"|"-separated prompt templates with "{}" for the name')
    parser.add_argument("--topk", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--json", action="store_true", help="print one JSON object per image")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    return parser.parse_args(argv)


def list_images(paths: Sequence[str]) -> List[str]:
    out = []
    for p in paths:
        if os.path.isdir(p):
            out += sorted(os.path.join(p, f) for f in os.listdir(p) if f.lower().endswith(IMAGE_EXTENSIONS))
        elif os.path.isfile(p):
            out.append(p)
        else:
            raise FileNotFoundError(f"--images: no such file or folder: {p}")
    if not out:
        raise FileNotFoundError(f"--images: no images found in {', '.join(paths)}")
    return out


def _tasks_of_type(cfg, task_type: str):
    return [t for t in cfg.TASKS if t.DATASETS.TASK_TYPE == task_type]


def default_templates(cfg) -> List[str]:
    for task in _tasks_of_type(cfg, "image_classification"):
        names = task.DATASETS.TARGET_SET
        for name in [names] if isinstance(names, str) else names:
            for node in cfg.SHARED_TARGETS:
                if node.NAME == name and node.SHARED_TARGETS_CFG.TEMPLATES:
                    return list(node.SHARED_TARGETS_CFG.TEMPLATES)
    return [DEFAULT_TEMPLATE]


def temp_name(cfg, task_type: str) -> str:
    for task in _tasks_of_type(cfg, task_type):
        if task.MODEL.TEMP_NAME:
            return task.MODEL.TEMP_NAME
    return "default"


@torch.no_grad()
def encode_texts(model, texts: List[str], templates: Sequence[str], task: str, device, context_length: int = 77,
                 chunk: int = 256) -> torch.Tensor:
    """``[len(texts), D]``: each text in every template, encodings averaged and re-normalised."""
    templates = list(templates) or ["{}"]
    filled = [tpl.replace("{}", t) for t in texts for tpl in templates]
    feats = []
    for s in range(0, len(filled), chunk):
        ids, mask = model.tokenizer.tokenize(filled[s : s + chunk], context_length)
        width = max(1, int(mask.sum(1).max()))
        feats.append(model.encode_targets(ids[:, :width].to(device), mask[:, :width].to(device),
                                          attributes={"modality": "text", "task": task}).float())
    feats = torch.cat(feats).view(len(texts), len(templates), -1).mean(1)
    return torch.nn.functional.normalize(feats, dim=-1)


@torch.no_grad()
def rank_images(model, image_paths: List[str], labels: List[str], label_feats: torch.Tensor, temp: str,
                transform, device, topk: int = 5, batch_size: int = 16) -> List[Dict]:
    """Per image: ``{"image", "labels": [[label, probability, score], ...]}`` best first (top ``topk``)."""
    from PIL import Image

    results = []
    for s in range(0, len(image_paths), batch_size):
        paths = image_paths[s : s + batch_size]
        images = torch.stack([transform(Image.open(p).convert("RGB")) for p in paths]).to(device)
        query = model(images=images, attributes={"modality": "image", "task": "classification"})["spe"].float()
        scores = query @ label_feats.t()
        probs = model.logits(query, label_feats, temp).float().softmax(-1)
        k = min(topk, len(labels))
        top = probs.topk(k, dim=1)
        for row, path in enumerate(paths):
            ranked = [[labels[j], float(probs[row, j]), float(scores[row, j])] for j in top.indices[row].tolist()]
            results.append({"image": path, "labels": ranked})
    return results


def main(argv=None) -> List[Dict]:
    args = parse_args(argv)
    from uniperceiver.config import setup_cfg
    from uniperceiver.data.transforms import build_image_transform
    from uniperceiver.engine.defaults import get_device
    from uniperceiver.engine.evaluate import load_eval_weights
    from uniperceiver.modeling import build_model

    cfg = setup_cfg(args.config_file, list(args.opts or []) + ["MODEL.WEIGHTS", args.weights])
    device = get_device(cfg)
    model = build_model(cfg)
    load_eval_weights(cfg, model)
    model.to(device).eval()

    if args.classes:
        labels = [c.strip() for c in args.classes.split(",") if c.strip()]
        templates = [t for t in args.templates.split("|") if t] if args.templates else default_templates(cfg)
        task, task_type = "classification", "image_classification"
    else:
        with open(args.texts) as f:
            labels = [line.strip() for line in f if line.strip()]
        templates, task, task_type = ["{}"], "retrieval", "image_retrieval"
    if not labels:
        raise ValueError("no candidate labels given")
    label_feats = encode_texts(model, labels, templates, task, device)
    transform = build_image_transform(int(cfg.MODEL.IMG_INPUT_SIZE), is_train=False)
    results = rank_images(model, list_images(args.images), labels, label_feats, temp_name(cfg, task_type),
                          transform, device, args.topk, args.batch_size)
    for r in results:
        if args.json:
            print(json.dumps(r))
        else:
            print(r["image"])
            for label, prob, score in r["labels"]:
                print(f"  {prob:7.2%}  {score:+.3f}  {label}")
    return results


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    main()
