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
from collections.abc import Hashable
from typing import Callable, List, Optional

from .base import (AnnotationFileError, AnnotationProblems, ImageRecordsDataset, check_annotation_file, json_list,
                   load_json, read_lines)


def _caption_ok(caption) -> bool:
    """A string that tokenises to at least one token.  Text with a letter or digit always does; anything else
    (punctuation, control characters, combining marks...) is asked of the tokenizer, whose cleaning drops
    control characters: a caption of them trains as empty, so it counts as an empty caption."""
    if not isinstance(caption, str) or not caption.strip():
        return False
    if any(c.isalnum() for c in caption):
        return True
    from uniperceiver.tokenization import get_tokenizer  # rare: only captions without a letter / digit

    return bool(get_tokenizer().encode(caption))


def _item_ok(item) -> bool:
    """An ``images`` / ``videos`` entry with an int or str ``id`` and a non-empty ``file_name``."""
    return (isinstance(item, dict) and isinstance(item.get("id"), (int, str))
            and isinstance(item.get("file_name"), str) and bool(item["file_name"].strip()))


def group_captions(items: list, annotations: list, problems: AnnotationProblems, kind: str = "image") -> List[dict]:
    """Records ``{"image": file_name, "image_id": id, "captions": [str, ...]}`` in order of ``items``.

    ``kind`` ("image" / "video") names the entries; an annotation is keyed by ``<kind>_id`` or ``image_id``.
    Malformed entries (no ``id`` / ``file_name``) and annotations (not an object, an unknown id, an empty
    caption) go to ``problems``; the captions of a malformed entry then count as unknown ids."""
    by_id = OrderedDict()
    for i, item in enumerate(items):
        if not _item_ok(item):
            problems.add(f"{kind} {i}", f"malformed {kind} entry", repr(item))
            continue
        image = item["file_name"]
        if isinstance(item.get("file_path"), str) and item["file_path"]:  # published Karpathy split files
            image = f"{item['file_path']}/{image}"
        by_id[item["id"]] = {"image": image, "image_id": item["id"], "captions": []}
    good = 0
    for i, ann in enumerate(annotations):
        if not isinstance(ann, dict):
            problems.add(f"annotation {i}", "malformed annotation", repr(ann))
            continue
        where = f"annotation {i}, id {ann.get('id')}"
        key = ann.get(f"{kind}_id", ann.get("image_id"))
        if not isinstance(key, Hashable) or key not in by_id:
            problems.add(where, f"unknown {kind}_id", repr(key))
        elif not _caption_ok(ann.get("caption")):
            problems.add(where, "empty caption", repr(ann.get("caption")))
        else:
            by_id[key]["captions"].append(ann["caption"])
            good += 1
    problems.check(good)
    return list(by_id.values())


def read_coco_captions(path: str, config_key: str = "DATASETS.TRAIN", *,
                       max_bad_fraction: Optional[float] = None, name: str = "") -> List[dict]:
    """Records ``{"image": file_name, "image_id": id, "captions": [str, ...]}`` in file order of images.

    Malformed ``images`` entries and annotations with an empty caption or an unknown image_id are bad records
    (``AnnotationProblems``: an error when ``max_bad_fraction`` is None, else skipped, logged and counted).
    A file that is not valid JSON or not COCO-shaped is a ``ValueError`` naming it."""
    check_annotation_file(path, config_key)
    problems = AnnotationProblems(path, max_bad_fraction, name)
    data = load_json(path)
    if not isinstance(data, dict) or "images" not in data or "annotations" not in data:
        raise AnnotationFileError(f"{path}: not a COCO-caption file (needs 'images' and 'annotations')")
    return group_captions(json_list(data, "images", path), json_list(data, "annotations", path), problems)


def read_jsonl_pairs(path: str, config_key: str = "DATASETS.TRAIN", *,
                     max_bad_fraction: Optional[float] = None, name: str = "") -> List[dict]:
    """Records as :func:`read_coco_captions`; lines with the same image are grouped, image_id = its path.
    Malformed lines and empty captions are bad records (as in :func:`read_coco_captions`)."""
    check_annotation_file(path, config_key)
    problems = AnnotationProblems(path, max_bad_fraction, name)
    by_image = OrderedDict()
    good = 0
    for lineno, line in read_lines(path, problems):  # undecodable lines are bad records too
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


def caption_records(records: List[dict], mode: str) -> List[dict]:
    """The records a caption dataset (images or videos) serves: ``mode="pairs"`` one per caption
    (``{"image", "image_id", "caption"}``), ``mode="images"`` the records as read (all their ``captions``)."""
    if mode not in ("pairs", "images"):
        raise ValueError(f"mode must be 'pairs' or 'images', got {mode!r}")
    if mode == "images":
        return records
    return [{"image": r["image"], "image_id": r["image_id"], "caption": c} for r in records for c in r["captions"]]


def caption_sample(mode: str, index: int, record: dict, image) -> dict:
    """The sample of a caption dataset's ``record`` (``image``: an image or a clip): ``{"image", "image_id",
    "index"}`` and ``caption`` (mode "pairs") or a copy of ``captions`` (mode "images")."""
    sample = {"image": image, "image_id": record["image_id"], "index": index}
    if mode == "pairs":
        sample["caption"] = record["caption"]
    else:
        sample["captions"] = list(record["captions"])
    return sample


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
        self.mode = mode
        super().__init__(
            caption_records(records, mode), image_root=image_root, transform=transform,
            max_bad_fraction=max_bad_fraction, name=name
        )

    def make_sample(self, index: int, record: dict, image) -> dict:
        return caption_sample(self.mode, index, record, image)
