"""VQAv2: the official questions / annotations JSON files, COCO images, and an answer vocabulary.

Files (``PREPARE_DATA.md``), under ``DATALOADER.ANNO_FOLDER``; ``DATASETS.TRAIN: train2014`` reads
``v2_OpenEnded_mscoco_train2014_questions.json`` and ``v2_mscoco_train2014_annotations.json``::

    questions:   {"data_subtype": "train2014",
                  "questions": [{"image_id": 458752, "question": "What is this?", "question_id": 458752000}]}
    annotations: {"annotations": [{"question_id": 458752000, "image_id": 458752,
                                   "multiple_choice_answer": "net", "answers": [{"answer": "net", ...} x 10]}]}

Images: ``<FEATS_FOLDER>/<data_subtype>/COCO_<data_subtype>_<image_id:012d>.jpg`` (the COCO 2014 release), or a
question's own ``file_name`` when it has one.  A split without an annotations file (test-dev) yields questions
with no answers.  The answer vocabulary (``tools/build_vqa_answers.py``, :func:`build_answer_vocab`) is a
class-name file of normalised answers, one per line, used as the task's label set; training targets are the
VQA soft scores ``min(#humans / 3, 1)`` of the in-vocabulary answers.
"""
from __future__ import annotations

import json
import os
from collections import Counter
from typing import Callable, Dict, Iterable, List, Optional, Sequence

from uniperceiver.evaluation.vqa import normalize_answer

from .base import ImageRecordsDataset, check_annotation_file

IMAGE_PATTERN = "{subtype}/COCO_{subtype}_{image_id:012d}.jpg"
QUESTIONS_PATTERN = "v2_OpenEnded_mscoco_{}_questions.json"
ANNOTATIONS_PATTERN = "v2_mscoco_{}_annotations.json"


def annotations_path_for(questions_path: str) -> str:
    """The annotations file next to a questions file (``..._questions.json`` -> ``v2_mscoco_..._annotations``)."""
    folder, name = os.path.split(questions_path)
    prefix, suffix = QUESTIONS_PATTERN.split("{}")
    if name.startswith(prefix) and name.endswith(suffix):
        return os.path.join(folder, ANNOTATIONS_PATTERN.format(name[len(prefix):-len(suffix)]))
    return os.path.join(folder, name.replace("questions", "annotations"))


def read_vqa(questions_path: str, annotations_path: Optional[str] = None,
             config_key: str = "DATASETS.TRAIN") -> List[dict]:
    """Records ``{"image", "image_id", "question_id", "question", "answers": [10 str]}`` in question order."""
    check_annotation_file(questions_path, config_key)
    with open(questions_path, encoding="utf-8") as f:
        qdata = json.load(f)
    if not isinstance(qdata, dict) or "questions" not in qdata:
        raise ValueError(f"{questions_path}: not a VQA questions file (needs 'questions')")
    subtype = qdata.get("data_subtype", "")
    answers: Dict[int, List[str]] = {}
    if annotations_path is None:
        annotations_path = annotations_path_for(questions_path)
    if os.path.isfile(annotations_path):
        with open(annotations_path, encoding="utf-8") as f:
            adata = json.load(f)
        if "annotations" not in adata:
            raise ValueError(f"{annotations_path}: not a VQA annotations file (needs 'annotations')")
        answers = {a["question_id"]: [x["answer"] for x in a["answers"]] for a in adata["annotations"]}
    records = []
    for q in qdata["questions"]:
        image = q.get("file_name") or IMAGE_PATTERN.format(subtype=subtype, image_id=int(q["image_id"]))
        records.append({"image": image, "image_id": q["image_id"], "question_id": q["question_id"],
                        "question": q["question"], "answers": answers.get(q["question_id"], [])})
    return records


def answer_scores(human_answers: Sequence[str], answer_index: Dict[str, int]) -> Dict[int, float]:
    """VQA soft scores ``{answer entry: min(count / 3, 1)}`` of the in-vocabulary (normalised) answers."""
    counts = Counter(normalize_answer(a) for a in human_answers)
    return {answer_index[a]: min(c / 3.0, 1.0) for a, c in counts.items() if a in answer_index}


def build_answer_vocab(annotation_files: Iterable[str], *, min_count: int = 9, top_k: int = 0) -> List[str]:
    """Normalised answers of the annotations, most frequent first (ties alphabetical).

    Every human answer counts (10 per question); answers given fewer than ``min_count`` times are dropped;
    ``top_k`` > 0 keeps only the most frequent (3129 in the published VQAv2 setup)."""
    counts: Counter = Counter()
    for path in annotation_files:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        for ann in data["annotations"]:
            counts.update(normalize_answer(a["answer"]) for a in ann["answers"])
    counts.pop("", None)
    ranked = sorted((a for a, c in counts.items() if c >= min_count), key=lambda a: (-counts[a], a))
    return ranked[:top_k] if top_k > 0 else ranked


class VQADataset(ImageRecordsDataset):
    """Samples ``{"image", "question", "answers", "question_id", "image_id", "index"}``."""

    def __init__(self, questions_path: str, image_root: str, *, annotations_path: Optional[str] = None,
                 transform: Optional[Callable] = None, max_bad_fraction: float = 0.01,
                 config_key: str = "DATASETS.TRAIN", name: str = ""):
        records = read_vqa(questions_path, annotations_path, config_key)
        super().__init__(records, image_root=image_root, transform=transform, max_bad_fraction=max_bad_fraction,
                         name=name or f"vqa:{questions_path}")

    def make_sample(self, index: int, record: dict, image) -> dict:
        return {"image": image, "question": record["question"], "answers": list(record["answers"]),
                "question_id": record["question_id"], "image_id": record["image_id"], "index": index}
