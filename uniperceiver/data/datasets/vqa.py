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
VQA soft scores ``min(#humans / 3, 1)`` of the in-vocabulary answers.  Malformed questions and annotations
are bad records (:func:`read_vqa`; skipped and counted up to ``DATALOADER.MAX_BAD_FRACTION``).
"""
from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Hashable
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence

from uniperceiver.utils.vqa_text import normalize_answer

from .base import (AnnotationFileError, AnnotationProblems, ImageRecordsDataset, check_annotation_file, json_list,
                   load_json)

logger = logging.getLogger(__name__)

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


def _human_answers(ann) -> Optional[List[str]]:
    """The answer strings of a VQA annotation, or None when it is malformed (answers not [{"answer": str}])."""
    if not isinstance(ann, dict) or not isinstance(ann.get("answers"), list):
        return None
    if not all(isinstance(x, dict) and isinstance(x.get("answer"), str) for x in ann["answers"]):
        return None
    return [x["answer"] for x in ann["answers"]]


def _annotations(path: str) -> list:
    """The ``annotations`` list of a VQA annotations file (``ValueError`` naming the file if it has none)."""
    data = load_json(path)
    if not isinstance(data, dict) or "annotations" not in data:
        raise AnnotationFileError(f"{path}: not a VQA annotations file (needs 'annotations')")
    return json_list(data, "annotations", path)


def _read_answers(path: str, max_bad_fraction: Optional[float], name: str) -> Dict[Any, Optional[List[str]]]:
    """``{question_id: [answers]}`` of an annotations file; None for a malformed annotation's question id."""
    problems = AnnotationProblems(path, max_bad_fraction, name)
    answers: Dict[Any, Optional[List[str]]] = {}
    good = 0
    for i, ann in enumerate(_annotations(path)):
        qid = ann.get("question_id") if isinstance(ann, dict) else None
        qid_ok = qid is not None and isinstance(qid, Hashable)
        human = _human_answers(ann)
        if human is None or not qid_ok:
            problems.add(f"annotation {i}, question_id {qid}", "malformed annotation", repr(ann))
            if qid_ok:
                answers[qid] = None
            continue
        answers[qid] = human
        good += 1
    problems.check(good)
    return answers


def _question_ok(q, where: str, problems: AnnotationProblems) -> bool:
    """Whether a question entry is usable; a bad one goes to ``problems``."""
    if not isinstance(q, dict):
        problems.add(where, "malformed question", repr(q))
        return False
    missing = [k for k in ("question", "question_id") if k not in q]
    if "file_name" in q:
        if not isinstance(q["file_name"], str) or not q["file_name"].strip():
            problems.add(where, "malformed question", f"file_name {q['file_name']!r}")
            return False
    elif "image_id" not in q:
        missing.append("image_id")
    else:
        try:
            int(q["image_id"])
        except (TypeError, ValueError):
            problems.add(where, "malformed question", f"image_id {q['image_id']!r}")
            return False
    if missing:
        problems.add(where, "malformed question", f"no {' / '.join(missing)}")
        return False
    if not isinstance(q["question_id"], Hashable):
        problems.add(where, "malformed question", f"question_id {q['question_id']!r}")
        return False
    if not isinstance(q["question"], str) or not q["question"].strip():
        problems.add(where, "empty question", repr(q["question"]))
        return False
    return True


def read_vqa(questions_path: str, annotations_path: Optional[str] = None,
             config_key: str = "DATASETS.TRAIN", *, max_bad_fraction: Optional[float] = None,
             name: str = "") -> List[dict]:
    """Records ``{"image", "image_id", "question_id", "question", "answers": [10 str]}`` in question order.

    Bad records (``AnnotationProblems`` of each file: an error when ``max_bad_fraction`` is None, else skipped,
    logged and counted): a question without ``question`` / ``question_id`` / ``image_id`` (unless it has a
    ``file_name``) or with an empty question; an annotation without ``question_id`` or whose ``answers`` are
    not ``[{"answer": str}, ...]`` (its question is then dropped too)."""
    check_annotation_file(questions_path, config_key)
    problems = AnnotationProblems(questions_path, max_bad_fraction, name)
    qdata = load_json(questions_path)
    if not isinstance(qdata, dict) or "questions" not in qdata:
        raise AnnotationFileError(f"{questions_path}: not a VQA questions file (needs 'questions')")
    questions = json_list(qdata, "questions", questions_path)
    subtype = qdata.get("data_subtype", "")
    answers: Dict[Any, Optional[List[str]]] = {}
    if annotations_path is None:
        annotations_path = annotations_path_for(questions_path)
    if os.path.isfile(annotations_path):
        answers = _read_answers(annotations_path, max_bad_fraction, name)
    records = []
    for i, q in enumerate(questions):
        where = f"question {i}, question_id {q.get('question_id')}" if isinstance(q, dict) else f"question {i}"
        if not _question_ok(q, where, problems):
            continue
        qid = q["question_id"]
        if qid in answers and answers[qid] is None:  # its annotation was malformed (counted there)
            continue
        image = q.get("file_name") or IMAGE_PATTERN.format(subtype=subtype, image_id=int(q["image_id"]))
        records.append({"image": image, "image_id": q.get("image_id", image), "question_id": qid,
                        "question": q["question"], "answers": answers.get(qid) or []})
    problems.check(len(records))
    return records


def answer_scores(human_answers: Sequence[str], answer_index: Dict[str, int]) -> Dict[int, float]:
    """VQA soft scores ``{answer entry: min(count / 3, 1)}`` of the in-vocabulary (normalised) answers."""
    counts = Counter(normalize_answer(a) for a in human_answers)
    return {answer_index[a]: min(c / 3.0, 1.0) for a, c in counts.items() if a in answer_index}


def build_answer_vocab(annotation_files: Iterable[str], *, min_count: int = 9, top_k: int = 0) -> List[str]:
    """Normalised answers of the annotations, most frequent first (ties alphabetical).

    Every human answer counts (10 per question); answers given fewer than ``min_count`` times are dropped;
    ``top_k`` > 0 keeps only the most frequent (3129 in the published VQAv2 setup).  Malformed annotations
    are skipped, with one warning per file giving their count."""
    counts: Counter = Counter()
    for path in annotation_files:
        num_bad = 0
        for ann in _annotations(path):
            human = _human_answers(ann)
            if human is None:
                num_bad += 1
                continue
            counts.update(normalize_answer(a) for a in human)
        if num_bad:
            logger.warning("skipped %d malformed annotations (answers not [{\"answer\": str}, ...]) of %s",
                           num_bad, path)
    counts.pop("", None)
    ranked = sorted((a for a, c in counts.items() if c >= min_count), key=lambda a: (-counts[a], a))
    return ranked[:top_k] if top_k > 0 else ranked


class VQADataset(ImageRecordsDataset):
    """Samples ``{"image", "question", "answers", "question_id", "image_id", "index"}``."""

    def __init__(self, questions_path: str, image_root: str, *, annotations_path: Optional[str] = None,
                 transform: Optional[Callable] = None, max_bad_fraction: float = 0.01,
                 config_key: str = "DATASETS.TRAIN", name: str = ""):
        records = read_vqa(questions_path, annotations_path, config_key, max_bad_fraction=max_bad_fraction,
                           name=name)
        super().__init__(records, image_root=image_root, transform=transform, max_bad_fraction=max_bad_fraction,
                         name=name or f"vqa:{questions_path}")

    def make_sample(self, index: int, record: dict, image) -> dict:
        return {"image": image, "question": record["question"], "answers": list(record["answers"]),
                "question_id": record["question_id"], "image_id": record["image_id"], "index": index}
