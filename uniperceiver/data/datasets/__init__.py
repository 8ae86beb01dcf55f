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
glue            GLUE TSVs, published ``processed/`` or benchmark files   CoLA, SST-2, MRPC, QQP, QNLI, RTE,
                (glue.py)                                               MNLI_Match, MNLI_Mismatch, STS-B
=============== ======================================================= ==============================

``DATASETS.TRAIN / VAL / TEST`` name an annotation file under ``DATALOADER.ANNO_FOLDER`` (both relative to the
data root unless absolute).  A bare split name without an extension gets the reader's file pattern:
imagenet ``<split>.txt``, coco_caption ``captions_<split>.json``, jsonl_pairs ``<split>.jsonl``, text_corpus
``<split>.txt``, video_list ``<split>.txt``, video_caption ``captions_<split>.json``, vqa
``v2_OpenEnded_mscoco_<split>_questions.json`` (+ its annotations file); glue: any value
but a ``.tsv`` file name (e.g. the published ``GLUEDataset``) reads ``<TASK>/[processed/]<train|dev|test>.tsv``
(glue.py).  Images and videos are read under ``DATALOADER.FEATS_FOLDER``.

When ``ANNO_FOLDER`` holds the published repo's files (its data/prepare_data.md: ImageNet-22k file list,
Flickr30k ``.jsonline``, CC3M / CC12M / YFCC / SBU / VG ``.json``, Kinetics / MiT ``annotation.json``, MSVD /
MSR-VTT ``*_cocostyle.json``, the VQA ``.pkl`` targets), ``published.py`` reads them as the published dataset
classes do.
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
from .published import published_reader
from .glue import DATASET_NAMES as GLUE_DATASET_NAMES, GLUEDataset, glue_file, read_glue_tsv  # noqa: F401

READERS = ("imagenet", "coco_caption", "jsonl_pairs", "text_corpus", "video_list", "video_caption", "vqa", "glue")
_ALIASES = {
    "imagenet1k": "imagenet", "imagenet22k": "imagenet", "imagenet": "imagenet",
    "mscoco": "coco_caption", "coco": "coco_caption", "flickr30k": "coco_caption", "coco_caption": "coco_caption",
    "flickr": "coco_caption",
    "cc3m": "jsonl_pairs", "cc12m": "jsonl_pairs", "sbu": "jsonl_pairs", "vg": "jsonl_pairs",
    "yfcc": "jsonl_pairs", "jsonl_pairs": "jsonl_pairs",
    "bookswiki": "text_corpus", "text_corpus": "text_corpus",
    "k400": "video_list", "k700": "video_list", "kinetics400": "video_list", "kinetics700": "video_list",
    "mit": "video_list", "momentsintime": "video_list", "video_list": "video_list",
    "msvd": "video_caption", "msrvtt": "video_caption", "msr-vtt": "video_caption", "video_caption": "video_caption",
    "msvddataset": "video_caption", "msrvttdataset": "video_caption",
    "vqa": "vqa", "vqav2": "vqa",
    **{name: "glue" for name in GLUE_DATASET_NAMES},
}
_PATTERNS = {
    "imagenet": "{}.txt", "coco_caption": "captions_{}.json", "jsonl_pairs": "{}.jsonl", "text_corpus": "{}.txt",
    "video_list": "{}.txt", "video_caption": "captions_{}.json", "vqa": "v2_OpenEnded_mscoco_{}_questions.json",
}


# Published file names of a split, tried when the reader's pattern names no file: MSCOCO's Karpathy split, the
# BooksWiki ``.doc`` files (the published code reads bookswiki.doc in multi-GPU runs, the 1000-line file alone).
_PUBLISHED_FILES = {
    "coco_caption": {"train": ("captions_train113k.json",), "val": ("captions_val5k.json",),
                     "test": ("captions_test5k.json",)},
    "text_corpus": {"train": ("bookswiki.doc", "bookswiki_v2.txt", "bookswiki-1000.doc", "bookswiki_v2-1000.doc"),
                    "val": ("bookswiki-1000.doc", "bookswiki_v2-1000.doc"),
                    "test": ("bookswiki-1000.doc", "bookswiki_v2-1000.doc")},
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
    if value.endswith(("Dataset", "DataSet")) and not os.path.splitext(value)[1]:
        value = split  # a published dataset class (DATASETS.TRAIN: 'ImageNetDataset'): this split's file
    if reader == "glue":
        anno = resolve_data_path(root_cfg, task_cfg.DATALOADER.ANNO_FOLDER) or resolve_data_path(root_cfg, ".")
        return glue_file(anno, task_cfg.DATASETS.DATASET_NAME, split, value)
    path = value if os.path.isabs(value) else os.path.join(task_cfg.DATALOADER.ANNO_FOLDER, value)
    path = resolve_data_path(root_cfg, path)
    if not os.path.splitext(value)[1] and not os.path.exists(path):
        folder = os.path.dirname(path)
        path = os.path.join(folder, _PATTERNS[reader].format(os.path.basename(path)))
        if not os.path.exists(path):  # the published layout's file names (data/prepare_data.md)
            for name in _PUBLISHED_FILES.get(reader, {}).get(value, ()):
                if os.path.exists(os.path.join(folder, name)):
                    return os.path.join(folder, name)
    return path


FORMATS = ("files", "webdataset")


def build_shard_reader(task_cfg, root_cfg, *, transform: Optional[Callable] = None):
    """The training split of a task node as tar shards (``DATASETS.FORMAT webdataset``, data/shards.py)."""
    from ..shards import ShardDataset, expand_urls

    reader = reader_name(task_cfg)
    kinds = {"imagenet": "label", "coco_caption": "pairs", "jsonl_pairs": "pairs"}
    if reader not in kinds:
        raise ConfigError(
            f"TASKS.{task_cfg.NAME}.DATASETS.FORMAT webdataset reads image classification and image-text pairs; "
            f"DATASET_NAME {task_cfg.DATASETS.DATASET_NAME!r} is read from files only (DATASETS.FORMAT files)")
    urls = expand_urls(task_cfg.DATASETS.TRAIN, lambda p: resolve_data_path(root_cfg, p))
    return ShardDataset(urls, kind=kinds[reader], transform=transform,
                        resampled=task_cfg.DATALOADER.SHARD_RESAMPLED,
                        shuffle_buffer=task_cfg.DATALOADER.SHUFFLE_BUFFER,
                        max_bad_fraction=task_cfg.DATALOADER.MAX_BAD_FRACTION, name=f"{task_cfg.NAME}/train")


def build_reader(task_cfg, root_cfg, split: str, *, transform: Optional[Callable] = None, mode: str = "pairs"):
    """The dataset of ``split`` for a task node.  ``mode`` ("pairs" / "images") applies to caption readers;
    ``DATASETS.FORMAT webdataset`` reads the training split from tar shards."""
    fmt = task_cfg.DATASETS.FORMAT
    if fmt not in FORMATS:
        raise ConfigError(f"TASKS.{task_cfg.NAME}.DATASETS.FORMAT {fmt!r} is unknown; choose one of "
                          f"{', '.join(FORMATS)}")
    if fmt == "webdataset" and split == "train":
        ds = build_shard_reader(task_cfg, root_cfg, transform=transform)
    else:
        ds = _build_reader(task_cfg, root_cfg, split, transform=transform, mode=mode)
    if hasattr(ds, "max_image_pixels"):  # image readers and shards
        ds.max_image_pixels = int(task_cfg.DATALOADER.MAX_IMAGE_PIXELS)  # larger images are bad samples
    return ds


def _build_reader(task_cfg, root_cfg, split: str, *, transform: Optional[Callable] = None, mode: str = "pairs"):
    reader = reader_name(task_cfg)
    key = split_key(task_cfg, split)
    path = annotation_path(task_cfg, root_cfg, split)
    image_root = resolve_data_path(root_cfg, task_cfg.DATALOADER.FEATS_FOLDER) or resolve_data_path(root_cfg, ".")
    bad = task_cfg.DATALOADER.MAX_BAD_FRACTION
    label = f"{task_cfg.NAME}/{split}"
    value = getattr(task_cfg.DATASETS, split.upper())
    if value.endswith(("Dataset", "DataSet")) and not os.path.splitext(value)[1]:
        value = split
    anno_folder = resolve_data_path(root_cfg, task_cfg.DATALOADER.ANNO_FOLDER) or resolve_data_path(root_cfg, ".")
    ds = published_reader(reader, task_cfg, split, value, anno_folder, image_root, transform=transform, mode=mode,
                          bad=bad, key=key, label=label)  # the published layout's files (published.py)
    if ds is not None:
        return ds
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
    if reader == "glue":
        records = read_glue_tsv(path, task_cfg.DATASETS.DATASET_NAME, split, config_key=key, max_bad_fraction=bad)
        return GLUEDataset(records, task_cfg.DATASETS.DATASET_NAME, label=label)
    if reader == "vqa":
        return VQADataset(path, image_root, transform=transform, max_bad_fraction=bad, config_key=key, name=label)
    if reader in ("video_list", "video_caption"):
        from .video import build_video_reader

        return build_video_reader(reader, task_cfg, path, image_root, split, transform=transform, mode=mode,
                                  max_bad_fraction=bad, config_key=key, name=label)
    max_words = max(int(task_cfg.MODEL.MAX_SEQ_LEN), 8)
    return TextCorpusDataset(path, max_words=max_words, config_key=key, name=label, cache_dir=get_cache_dir(root_cfg))
