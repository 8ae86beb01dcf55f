"""ImageNet-style classification: a JPEG tree plus ``meta/<split>.txt`` lines "relative/path label".

Layout (``PREPARE_DATA.md``)::

    imagenet/train/n01440764/n01440764_10026.JPEG ...      # DATALOADER.FEATS_FOLDER = imagenet
    imagenet/meta/train.txt  "train/n01440764/n01440764_10026.JPEG 0"   # ANNO_FOLDER = imagenet/meta
    imagenet/meta/val.txt    "val/ILSVRC2012_val_00000001.JPEG 65"
    imagenet/classnames.txt  one class name per line, line i = label i   # a SHARED_TARGETS FILE_PATH

ImageNet-22k uses the same format with 21841 classes.
"""
from __future__ import annotations

import os
from typing import Callable, Iterator, List, Optional, Sequence

from ..records import SerializedRecords
from .base import (AnnotationFileError, AnnotationProblems, ImageRecordsDataset, check_annotation_file,
                   read_lines)


def read_image_label_list(path: str, config_key: str = "DATASETS.TRAIN", *,
                          max_bad_fraction: Optional[float] = None, name: str = "") -> Sequence[dict]:
    """Parse "relative/path label" lines (the path may contain spaces: the label is the last field) into
    ``{"image", "label", "line"}`` records, serialized as they are read (:class:`SerializedRecords`: ~100 bytes a
    record, shared by forked workers).  Malformed lines and negative labels are bad records
    (``AnnotationProblems``: an error when ``max_bad_fraction`` is None, else skipped, logged with file:line and
    counted)."""
    check_annotation_file(path, config_key)
    problems = AnnotationProblems(path, max_bad_fraction, name)

    def parse() -> Iterator[dict]:
        for lineno, line in read_lines(path, problems):  # undecodable lines are bad records too
            parts = line.rsplit(maxsplit=1)
            if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
                problems.add(lineno, "malformed line", f"expected 'relative/path label', got {line!r}")
            elif int(parts[1]) < 0:
                problems.add(lineno, "label out of range", f"negative label {parts[1]}")
            else:
                yield {"image": parts[0], "label": int(parts[1]), "line": lineno}

    records = SerializedRecords(parse())
    problems.check(len(records))
    return records


def read_class_names(path: str, config_key: str = "SHARED_TARGETS.FILE_PATH") -> List[str]:
    """One class name per line; line i names label i.  Synonyms after a comma are dropped ("tench, Tinca").
    An empty file, or a line that is not UTF-8, is an :class:`AnnotationFileError` naming the file (and line):
    a class cannot be skipped without shifting every label after it."""
    check_annotation_file(path, config_key)
    names = []
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                names.append(raw.decode("utf-8").strip())
            except UnicodeDecodeError as e:
                raise AnnotationFileError(f"{path}:{lineno}: class name is not UTF-8 (byte 0x{raw[e.start]:02x}; "
                                          f"set by {config_key})") from None
    while names and not names[-1]:
        names.pop()
    if not names:
        raise AnnotationFileError(f"{path}: empty class-name file (set by {config_key})")
    return [n.split(",")[0].strip() for n in names]


def published_split_root(records: List[dict], image_root: str, split: str) -> str:
    """``image_root/<split>`` when the list's paths are relative to it (the published ImageNet meta lists:
    ``n01440764/n01440764_10026.JPEG 0`` under ``imagenet/train/``), else ``image_root``: decided by where
    the first record's image exists."""
    if not records or os.path.isabs(records[0]["image"]):
        return image_root
    first = records[0]["image"]
    if not os.path.exists(os.path.join(image_root, first)) and os.path.exists(os.path.join(image_root, split, first)):
        return os.path.join(image_root, split)
    return image_root


class ImageNetDataset(ImageRecordsDataset):
    """Samples ``{"image": tensor, "label": int, "image_id": relative path, "index": int}``."""

    def __init__(
        self,
        meta_file: str,
        image_root: str,
        *,
        transform: Optional[Callable] = None,
        max_bad_fraction: float = 0.01,
        config_key: str = "DATASETS.TRAIN",
        name: str = "",
    ):
        self.meta_file = meta_file
        records = read_image_label_list(meta_file, config_key, max_bad_fraction=max_bad_fraction, name=name)
        image_root = published_split_root(records, image_root, os.path.splitext(os.path.basename(meta_file))[0])
        super().__init__(
            records, image_root=image_root, transform=transform, max_bad_fraction=max_bad_fraction,
            name=name or f"imagenet:{meta_file}",
        )

    @property
    def num_classes(self) -> int:
        return 1 + max((r["label"] for r in self.records), default=-1)

    def make_sample(self, index: int, record: dict, image) -> dict:
        return {"image": image, "label": record["label"], "image_id": record["image"], "index": index}
