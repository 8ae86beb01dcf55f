"""Image-text pairs: COCO-caption JSON (COCO / Flickr30k Karpathy splits) and JSON-lines web pairs.

* COCO-caption schema (``captions_train113k.json``, ``captions_val5k.json``, ``captions_test5k.json``; Flickr30k
  ``captions_{train,val,test}.json``)::

      {"images": [{"id": 391895, "file_name": "val2014/COCO_val2014_000000391895.jpg", ...}],
       "annotations": [{"id": 1, "image_id": 391895, "caption": "A man riding a bike."}], ...}

  ``file_name`` is relative to ``DATALOADER.FEATS_FOLDER``.  ``tools/convert_karpathy.py`` writes these files
  from Karpathy's ``dataset_coco.json`` / ``dataset_flickr30k.json``.  The same file is the evaluator's
  ``INFERENCE.VAL_ANNFILE`` / ``TEST_ANNFILE``.
* JSON lines (CC3M, CC12M, SBU, Visual Genome, YFCC): one ``{"image": "relative/path.jpg", "caption": "..."}``
  per line; an image may appear on several lines.

The same files serve captioning and retrieval.  ``mode="pairs"`` gives one sample per caption (training);
``mode="images"`` gives one sample per image with all its captions (evaluation).
"""
from __future__ import annotations

import json
from collections import OrderedDict
from typing import Callable, List, Optional

from .base import AnnotationProblems, ImageRecordsDataset, check_annotation_file


def _caption_ok(caption) -> bool:
    return isinstance(caption, str) and bool(caption.strip())


def read_coco_captions(path: str, config_key: str = "DATASETS.TRAIN", *,
                       max_bad_fraction: Optional[float] = None, name: str = "") -> List[dict]:
    """Records ``{"image": file_name, "image_id": id, "captions": [str, ...]}`` in file order of images.

    Annotations with an empty caption or an unknown image_id are bad records (``AnnotationProblems``: an error
    when ``max_bad_fraction`` is None, else skipped, logged and counted)."""
    check_annotation_file(path, config_key)
    problems = AnnotationProblems(path, max_bad_fraction, name)
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    if not isinstance(data, dict) or "images" not in data or "annotations" not in data:
        raise ValueError(f"{path}: not a COCO-caption file (needs 'images' and 'annotations')")
    by_id = OrderedDict()
    for img in data["images"]:
        by_id[img["id"]] = {"image": img["file_name"], "image_id": img["id"], "captions": []}
    good = 0
    for i, ann in enumerate(data["annotations"]):
        where = f"annotation {i}, id {ann.get('id')}" if isinstance(ann, dict) else f"annotation {i}"
        if not isinstance(ann, dict) or ann.get("image_id") not in by_id:
            problems.add(where, "unknown image_id", repr(ann.get("image_id") if isinstance(ann, dict) else ann))
        elif not _caption_ok(ann.get("caption")):
            problems.add(where, "empty caption", repr(ann.get("caption")))
        else:
            by_id[ann["image_id"]]["captions"].append(ann["caption"])
            good += 1
    problems.check(good)
    return list(by_id.values())


def read_jsonl_pairs(path: str, config_key: str = "DATASETS.TRAIN", *,
                     max_bad_fraction: Optional[float] = None, name: str = "") -> List[dict]:
    """Records as :func:`read_coco_captions`; lines with the same image are grouped, image_id = its path.
    Malformed lines and empty captions are bad records (as in :func:`read_coco_captions`)."""
    check_annotation_file(path, config_key)
    problems = AnnotationProblems(path, max_bad_fraction, name)
    by_image = OrderedDict()
    good = 0
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                row = json.loads(line)
                image, caption = row["image"], row["caption"]
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                problems.add(lineno, "malformed line", f"expected {{\"image\": ..., \"caption\": ...}}: {e}")
                continue
            if not isinstance(image, str) or not image:
                problems.add(lineno, "malformed line", f"image {image!r}")
                continue
            if not _caption_ok(caption):
                problems.add(lineno, "empty caption", repr(caption))
                continue
            rec = by_image.setdefault(image, {"image": image, "image_id": image, "captions": []})
            rec["captions"].append(caption)
            good += 1
    problems.check(good)
    return list(by_image.values())


class CaptionDataset(ImageRecordsDataset):
    """Image-caption samples.

    ``mode="pairs"``: ``{"image", "caption", "image_id", "index"}``, one per caption.
    ``mode="images"``: ``{"image", "captions", "image_id", "index"}``, one per image.
    """

    def __init__(
        self,
        records: List[dict],
        image_root: str,
        *,
        mode: str = "pairs",
        transform: Optional[Callable] = None,
        max_bad_fraction: float = 0.01,
        name: str = "",
    ):
        if mode not in ("pairs", "images"):
            raise ValueError(f"mode must be 'pairs' or 'images', got {mode!r}")
        self.mode = mode
        if mode == "pairs":
            records = [
                {"image": r["image"], "image_id": r["image_id"], "caption": c} for r in records for c in r["captions"]
            ]
        super().__init__(
            records, image_root=image_root, transform=transform, max_bad_fraction=max_bad_fraction, name=name
        )

    def make_sample(self, index: int, record: dict, image) -> dict:
        sample = {"image": image, "image_id": record["image_id"], "index": index}
        if self.mode == "pairs":
            sample["caption"] = record["caption"]
        else:
            sample["captions"] = list(record["captions"])
        return sample
