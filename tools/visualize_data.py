#!/usr/bin/env python
"""A PNG grid of a task's samples as the model sees them (after the transforms), with their texts.

    python tools/visualize_data.py --config-file configs/quick_schedules/instant_classification.yaml --task imagenet
    python tools/visualize_data.py --config-file CFG --task mscoco_caption --split val --num 8 --out grid.png

Images are un-normalised (ImageNet mean / std) for display; texts are the sample's caption(s), its class
name (decoded from the task's label set) or, for token samples (MLM), the decoded tokens with the masked
positions shown as ``[MASK->word]`` (or ``[random->word]``).  Default output: OUTPUT_DIR/vis_<task>_<split>.png.
"""
from __future__ import annotations

import argparse
import os
import sys
import textwrap
from typing import Any, Dict, List

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)


def _decode(ids) -> str:
    from uniperceiver.tokenization import get_tokenizer

    tok = get_tokenizer()
    ids = [int(i) for i in ids if int(i) not in (0, tok.sot_id, tok.eot_id)]
    return tok.decode(ids).strip()


def sample_text(task, sample: Dict[str, Any]) -> str:
    """The text shown under a sample."""
    from uniperceiver.tokenization import get_tokenizer

    parts: List[str] = []
    if "caption" in sample:
        parts.append(str(sample["caption"]))
    if "captions" in sample:
        parts += [f"- {c}" for c in sample["captions"][:3]]
    if "label" in sample:
        label = int(sample["label"])
        name = ""
        targets = getattr(task, "targets", None)
        if targets is not None and hasattr(targets, "label_set"):
            ls = targets.label_set
            name = _decode(ls.ids[label * ls.num_templates])
        parts.append(f"label {label}: {name}" if name else f"label {label}")
    if "ids" in sample and "labels" in sample:  # masked tokens
        tok = get_tokenizer()
        words = []
        for i, lab in zip(sample["ids"], sample["labels"]):
            i, lab = int(i), int(lab)
            shown = "MASK" if i == tok.mask_id else _decode([i])
            words.append(f"[{shown}->{_decode([lab])}]" if lab >= 0 else shown)
        parts.append(" ".join(words))
    elif "text" in sample and isinstance(sample["text"], str):
        parts.append(sample["text"])
    return "\n".join(parts) or "(no text)"


def sample_image(sample: Dict[str, Any]):
    """[H, W, 3] float array in [0, 1] (first frame of a clip), or None for text-only samples."""
    image = sample.get("image")
    if not isinstance(image, torch.Tensor):
        return None
    if image.dim() == 4:
        image = image[0]
    return (image.float().cpu() * STD + MEAN).clamp(0, 1).permute(1, 2, 0).numpy()


def visualize(cfg, task_name: str, split: str = "train", num: int = 16, out: str = "", seed: int = 0) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from uniperceiver.config import ConfigError
    from uniperceiver.tasks import build_tasks

    tasks = build_tasks(cfg)
    if task_name not in tasks:
        raise ConfigError(f"--task {task_name!r} is not a task of the config; tasks: {', '.join(tasks)}")
    task = tasks[task_name]
    torch.manual_seed(seed)  # random transforms reproducible
    dataset = task.build_dataset(split)
    n = min(num, len(dataset))
    if n == 0:
        raise ConfigError(f"task {task_name} has no {split} samples")
    samples = [dataset[i] for i in range(n)]
    cols = min(4, n)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 4.2 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, sample in zip(axes.flat, samples):
        image = sample_image(sample)
        text = "\n".join(textwrap.fill(line, 40) for line in sample_text(task, sample).splitlines())
        if image is not None:
            ax.imshow(image)
            ax.set_title(text, fontsize=7, loc="left")
        else:
            ax.text(0, 1, text, fontsize=7, va="top", ha="left", wrap=True, transform=ax.transAxes)
    fig.suptitle(f"{task_name} / {split}: {n} of {len(dataset)} samples", fontsize=10)
    fig.tight_layout()
    out = out or os.path.join(cfg.OUTPUT_DIR, f"vis_{task_name}_{split}.png")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True, metavar="FILE")
    parser.add_argument("--task", required=True, help="task NAME in the config")
    parser.add_argument("--split", default="train", choices=["train", "val", "test"])
    parser.add_argument("--num", type=int, default=16, help="samples to show")
    parser.add_argument("--out", default="", help="PNG to write (default OUTPUT_DIR/vis_<task>_<split>.png)")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    args = parser.parse_args(argv)
    from uniperceiver.config import ConfigError, setup_cfg

    try:
        cfg = setup_cfg(args.config_file, args.opts)
        out = visualize(cfg, args.task, args.split, args.num, args.out)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
