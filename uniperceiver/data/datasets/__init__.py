"""Real on-disk dataset readers, built from a task node by :func:`build_reader`.

``DATASETS.DATASET_NAME`` picks the reader (published dataset names are accepted as aliases):

=============== ======================================================= ==============================
reader          format                                                  aliases
=============== ======================================================= ==============================
imagenet        JPEG tree + ``meta/<split>.txt`` "relative/path label"   ImageNet1k, ImageNet22k
coco_caption    COCO-caption JSON (Karpathy COCO / Flickr30k splits)    MSCOCO, Flickr30k
jsonl_pairs     JSON lines ``{"image", "caption"}``                      CC3M, CC12M, SBU, VG, YFCC
text_corpus     plain text, one paragraph a line                        BooksWiki
video_list      video files + ``<split>.txt`` "relative/path.mp4 label"   K400, K700, MiT (video.py)
video_caption   videos + COCO-style caption JSON (``videos``)            MSVD, MSRVTT (video.py)
vqa             VQAv2 questions + annotations JSON, COCO images          VQAv2 (vqa.py)
=============== ======================================================= ==============================

``DATASETS.TRAIN / VAL / TEST`` name an annotation file under ``DATALOADER.ANNO_FOLDER`` (both relative to the
data root unless absolute).  A bare split name without an extension gets the reader's file pattern:
imagenet ``<split>.txt``, coco_caption ``captions_<split>.json``, jsonl_pairs ``<split>.jsonl``, text_corpus
``<split>.txt``, video_list ``<split>.txt``, video_caption ``captions_<split>.json``, vqa
``v2_OpenEnded_mscoco_<split>_questions.json`` (+ its annotations file).  Images and videos are read under
``DATALOADER.FEATS_FOLDER``.
"""
from __future__ import annotations

import os
from typing import Callable, Optional

from uniperceiver.config import ConfigError
from uniperceiver.utils.paths import get_cache_dir, resolve_data_path

from .base import (AnnotationFileError, ImageRecordsDataset, TooManyBadSamples, check_annotation_file,  # noqa: F401
                   load_json, load_rgb)
from .captions import CaptionDataset, read_coco_captions, read_jsonl_pairs  # noqa: F401
from .imagenet import ImageNetDataset, read_class_names, read_image_label_list  # noqa: F401
from .text_corpus import TextCorpusDataset  # noqa: F401
from .video import VideoCaptionDataset, VideoClassificationDataset, read_video_captions  # noqa: F401
from .vqa import VQADataset, read_vqa  # noqa: F401

READERS = ("imagenet", "coco_caption", "jsonl_pairs", "text_corpus", "video_list", "video_caption", "vqa")
_ALIASES = {
    "imagenet1k": "imagenet", "imagenet22k": "imagenet", "imagenet": "imagenet",
    "mscoco": "coco_caption", "coco": "coco_caption", "flickr30k": "coco_caption", "coco_caption": "coco_caption",
    "cc3m": "jsonl_pairs", "cc12m": "jsonl_pairs", "sbu": "jsonl_pairs", "vg": "jsonl_pairs",
    "yfcc": "jsonl_pairs", "jsonl_pairs": "jsonl_pairs",
    "bookswiki": "text_corpus", "text_corpus": "text_corpus",
    "k400": "video_list", "k700": "video_list", "kinetics400": "video_list", "kinetics700": "video_list",
    "mit": "video_list", "momentsintime": "video_list", "video_list": "video_list",
    "msvd": "video_caption", "msrvtt": "video_caption", "msr-vtt": "video_caption", "video_caption": "video_caption",
    "vqa": "vqa", "vqav2": "vqa",
}
_PATTERNS = {
    "imagenet": "{}.txt", "coco_caption": "captions_{}.json", "jsonl_pairs": "{}.jsonl", "text_corpus": "{}.txt",
    "video_list": "{}.txt", "video_caption": "captions_{}.json", "vqa": "v2_OpenEnded_mscoco_{}_questions.json",
}


def reader_name(task_cfg) -> str:
    """The reader of a task node (``DATASETS.DATASET_NAME``, aliases resolved)."""
    name = task_cfg.DATASETS.DATASET_NAME
    reader = _ALIASES.get(name.lower())
    if reader is None:
        raise ConfigError(
            f"TASKS.{task_cfg.NAME}.DATASETS.DATASET_NAME {name!r} is not a known dataset reader; "
            f"readers: {', '.join(READERS)} (aliases: {', '.join(sorted(a for a in _ALIASES if a not in READERS))})"
        )
    return reader


def split_key(task_cfg, split: str) -> str:
    return f"TASKS.{task_cfg.NAME}.DATASETS.{split.upper()}"


def annotation_path(task_cfg, root_cfg, split: str) -> str:
    """Absolute annotation path of ``split``; ConfigError naming the key when the split is not configured."""
    if split not in ("train", "val", "test"):
        raise ValueError(f"split must be train, val or test; got {split!r}")
    value = getattr(task_cfg.DATASETS, split.upper())
    if not value:
        raise ConfigError(f"{split_key(task_cfg, split)} is empty: task {task_cfg.NAME!r} has no {split} split")
    reader = reader_name(task_cfg)
    path = value if os.path.isabs(value) else os.path.join(task_cfg.DATALOADER.ANNO_FOLDER, value)
    path = resolve_data_path(root_cfg, path)
    if not os.path.splitext(value)[1] and not os.path.exists(path):
        path = os.path.join(os.path.dirname(path), _PATTERNS[reader].format(os.path.basename(path)))
    return path


def build_reader(task_cfg, root_cfg, split: str, *, transform: Optional[Callable] = None, mode: str = "pairs"):
    """The dataset of ``split`` for a task node.  ``mode`` ("pairs" / "images") applies to caption readers."""
    ds = _build_reader(task_cfg, root_cfg, split, transform=transform, mode=mode)
    if isinstance(ds, ImageRecordsDataset):
        ds.max_image_pixels = int(task_cfg.DATALOADER.MAX_IMAGE_PIXELS)  # larger images are bad samples
    return ds


def _build_reader(task_cfg, root_cfg, split: str, *, transform: Optional[Callable] = None, mode: str = "pairs"):
    reader = reader_name(task_cfg)
    key = split_key(task_cfg, split)
    path = annotation_path(task_cfg, root_cfg, split)
    image_root = resolve_data_path(root_cfg, task_cfg.DATALOADER.FEATS_FOLDER) or resolve_data_path(root_cfg, ".")
    bad = task_cfg.DATALOADER.MAX_BAD_FRACTION
    label = f"{task_cfg.NAME}/{split}"
    if reader == "imagenet":
        return ImageNetDataset(
            path, image_root, transform=transform, max_bad_fraction=bad, config_key=key, name=label
        )
    if reader in ("coco_caption", "jsonl_pairs"):
        read = read_coco_captions if reader == "coco_caption" else read_jsonl_pairs
        return CaptionDataset(
            read(path, key, max_bad_fraction=bad, name=label), image_root, mode=mode, transform=transform,
            max_bad_fraction=bad, name=label
        )
    if reader == "vqa":
        return VQADataset(path, image_root, transform=transform, max_bad_fraction=bad, config_key=key, name=label)
    if reader in ("video_list", "video_caption"):
        from .video import build_video_reader

        return build_video_reader(reader, task_cfg, path, image_root, split, transform=transform, mode=mode,
                                  max_bad_fraction=bad, config_key=key, name=label)
    max_words = max(int(task_cfg.MODEL.MAX_SEQ_LEN), 8)
    return TextCorpusDataset(path, max_words=max_words, config_key=key, name=label, cache_dir=get_cache_dir(root_cfg))
