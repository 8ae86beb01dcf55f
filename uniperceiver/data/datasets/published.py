"""Readers of the published Uni-Perceiver on-disk formats (its data/prepare_data.md and the dataset classes of
its ``uniperceiver/datasets/task_dataset``), used when ``DATALOADER.ANNO_FOLDER`` holds the published files.

:func:`published_reader` is asked first by ``build_reader``; it returns ``None`` when the task's folder holds
our own layout, so both layouts work with the same task node.  Folders and file names are those the published
dataset classes read, relative to ``DATA_PATH`` as written in the published configs:

=================== ==================================================================================
DATASET_NAME        files under ANNO_FOLDER (images / videos under FEATS_FOLDER)
=================== ==================================================================================
ImageNet22k         ``imagenet_22k_filelist_short.txt``: "wnid number label" -> ``wnid/wnid_number.JPEG``
FLICKR, Flickr30k   ``all_data_final_{train,val_set0,test_set0}_2014.jsonline``: JSON lines
                    ``{"id", "img_path", "sentences": [...]}``; train = train + val_set0, test = test_set0
CC3M, CC12M, YFCC   ``DATASETS.TRAIN`` (``train_spacy.json`` ...): JSON lines ``{"image", "caption"}``,
                    caption a token list (joined with spaces) or a string; ``x.zip@/y.jpg`` is ``x/y.jpg``
SBU                 one JSON object ``{"relative/image.jpg": "caption", ...}`` (``subcaption.json``)
VG                  ``{"phrase": {image_id: [captions]}, "subset": {image_id: "relative/image.jpg"}}``
K400, K700, MiT     ``annotation.json`` ``{"database": {name: {"subset": "training"|"validation",
                    "annotations": {"label": class}}}}`` + ``category_mapping.txt`` "class<TAB>index";
                    videos ``FEATS_FOLDER/{training,validation}/<class>/<name>``; ``exclude_list.txt``
MSVD                ``caption_msvd_{train,val,test}_cocostyle.json`` (COCO style, ``images``); videos
                    ``FEATS_FOLDER/<file_name>.avi``; train = train + val
MSRVTT              ``caption_msrvtt_1k_{trainval,test}_cocostyle.json``; videos ``<file_name>.mp4``
VQA                 ``v2_OpenEnded_mscoco_{train2014,val2014,test2015}_questions.json``, the targets
                    ``{train,val}_target.pkl`` (``[{"question_id", "image_id", "labels", "scores"}]``),
                    ``trainval_label2ans.pkl`` (the answer list), ``coco_map.json`` (image id -> path);
                    train = train + val[:-3000] (+ ``VG_questions2.json`` / ``vg_target.pkl`` when present),
                    val = val[-3000:] (the published SMALL_VAL), test = test2015 questions
=================== ==================================================================================

Captions get the published text normalisation: web pairs and VG end with a period when they end in a letter or
digit, ``<PERSON>`` (CC12M) reads "person".  ``.pkl`` files go through the restricted unpickler.  Bad records
(malformed lines or entries, empty captions, unknown classes, targets without a question) are skipped and
counted (``AnnotationProblems``); a file that cannot be used at all is one line naming it.
"""
from __future__ import annotations

import json
import os
from typing import Callable, Dict, List, Optional

from ..safe_pickle import load_pickle
from .base import (AnnotationFileError, AnnotationProblems, ImageRecordsDataset, check_annotation_file, json_list,
                   load_json, read_lines)
from .captions import CaptionDataset, _caption_ok, group_captions
from .imagenet import ImageNetDataset
from .video import VideoCaptionDataset, VideoClassificationDataset, VideoRecordsDataset
from .vqa import VQADataset

FLICKR_FILES = {"train": ("all_data_final_train_2014.jsonline", "all_data_final_val_set0_2014.jsonline"),
                "val": ("all_data_final_val_set0_2014.jsonline",),
                "test": ("all_data_final_test_set0_2014.jsonline",)}
IMAGENET22K_LIST = "imagenet_22k_filelist_short.txt"
VIDEO_ANNOTATION, VIDEO_CATEGORIES = "annotation.json", "category_mapping.txt"
MSVD_FILES = {"train": ("caption_msvd_train_cocostyle.json", "caption_msvd_val_cocostyle.json"),
              "val": ("caption_msvd_val_cocostyle.json",), "test": ("caption_msvd_test_cocostyle.json",)}
MSRVTT_FILES = {"train": ("caption_msrvtt_1k_trainval_cocostyle.json",),
                "val": ("caption_msrvtt_1k_test_cocostyle.json",), "test": ("caption_msrvtt_1k_test_cocostyle.json",)}
VQA_QUESTIONS = "v2_OpenEnded_mscoco_{}_questions.json"
VQA_SMALL_VAL = 3000  # the published val split: the last 3000 val questions; training uses the others


def _period(text: str) -> str:
    """The published caption ending: a period after a final letter or digit."""
    return text + " ." if text and text[-1].lower() in "qwertyuiopasdfghjklzxcvbnm1234567890" else text


def _web_caption(caption) -> Optional[str]:
    """A published web-pair caption (token list or string) as text, or None when malformed."""
    if isinstance(caption, str):
        tokens = caption.split("\t")
    elif isinstance(caption, list) and all(isinstance(t, str) for t in caption):
        tokens = list(caption)
    else:
        return None
    tokens = [t.replace("<PERSON>", "person") for t in tokens]
    return _period(" ".join(tokens).strip())


def _image_path(raw: str) -> str:
    """``train_image.zip@/0001.jpg`` -> ``train_image/0001.jpg`` (the published non-zip mode), leading ``./``
    and ``/`` dropped as the published reader does."""
    return raw.replace(".zip@", "").strip("./")


def _add(records: Dict, image: str, caption: str) -> None:
    records.setdefault(image, {"image": image, "image_id": image, "captions": []})["captions"].append(caption)


def read_web_pairs(path: str, dataset_name: str, *, config_key: str = "DATASETS.TRAIN",
                   max_bad_fraction: Optional[float] = None, name: str = "") -> List[dict]:
    """Records ``{"image", "image_id", "captions"}`` of a published CC3M / CC12M / YFCC (JSON lines), SBU (one
    object, path -> caption) or VG (``phrase`` / ``subset``) annotation file."""
    check_annotation_file(path, config_key)
    problems = AnnotationProblems(path, max_bad_fraction, name)
    records: Dict[str, dict] = {}
    kind = dataset_name.upper()
    if kind in ("SBU", "VG"):
        data = load_json(path)
        if kind == "SBU":
            if not isinstance(data, dict):
                raise AnnotationFileError(f"{path}: not a published SBU file (one object: image path -> caption)")
            items = data.items()
        else:
            if not isinstance(data, dict) or not isinstance(data.get("phrase"), dict) \
                    or not isinstance(data.get("subset"), dict):
                raise AnnotationFileError(f"{path}: not a published VG file (needs 'phrase' and 'subset' objects)")
            items = ((data["subset"].get(k), v) for k, v in data["phrase"].items())
        for i, (image, caps) in enumerate(items):
            caps = [caps] if isinstance(caps, str) else caps
            if not isinstance(image, str) or not image.strip() or not isinstance(caps, list):
                problems.add(f"entry {i}", "malformed entry", repr((image, caps))[:200])
                continue
            for cap in caps:
                text = _period(cap.strip()) if isinstance(cap, str) else None
                if not _caption_ok(text):
                    problems.add(f"entry {i}", "empty caption", repr(cap))
                else:
                    _add(records, _image_path(image.strip()), text)
    else:
        for lineno, line in read_lines(path, problems):
            try:
                row = json.loads(line)
                image, caption = row["image"], _web_caption(row["caption"])
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                problems.add(lineno, "malformed line", f"expected {{\"image\": ..., \"caption\": ...}}: {e}")
                continue
            if not isinstance(image, str) or not image.strip():
                problems.add(lineno, "malformed line", f"image {image!r}")
            elif not _caption_ok(caption):
                problems.add(lineno, "empty caption", repr(row["caption"]))
            else:
                _add(records, _image_path(image.strip()), caption)
    good = sum(len(r["captions"]) for r in records.values())
    problems.check(good)
    return list(records.values())


def read_flickr_jsonlines(paths: List[str], *, config_key: str = "DATASETS.TRAIN",
                          max_bad_fraction: Optional[float] = None, name: str = "") -> List[dict]:
    """Records ``{"image": img_path, "image_id": id, "captions": sentences}`` of the published Flickr30k files."""
    records: List[dict] = []
    for path in paths:
        check_annotation_file(path, config_key)
        problems = AnnotationProblems(path, max_bad_fraction, name)
        good = 0
        for lineno, line in read_lines(path, problems):
            try:
                row = json.loads(line)
                image, image_id, sentences = row["img_path"], row["id"], row["sentences"]
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                problems.add(lineno, "malformed line", f"expected {{\"id\", \"img_path\", \"sentences\"}}: {e}")
                continue
            caps = [s for s in sentences if _caption_ok(s)] if isinstance(sentences, list) else []
            if not isinstance(image, str) or not image or not caps:
                problems.add(lineno, "malformed line" if not caps else "no image", repr(row)[:200])
                continue
            records.append({"image": image, "image_id": image_id, "captions": caps})
            good += 1
        problems.check(good)
    return records


def read_imagenet22k_list(path: str, *, config_key: str = "DATASETS.TRAIN",
                          max_bad_fraction: Optional[float] = None, name: str = "") -> List[dict]:
    """``{"image": "wnid/wnid_number.JPEG", "label", "line"}`` of the published ImageNet-22k file list."""
    check_annotation_file(path, config_key)
    problems = AnnotationProblems(path, max_bad_fraction, name)
    records = []
    for lineno, line in read_lines(path, problems):
        parts = line.split(" ")
        if len(parts) < 3 or not parts[2].isdigit() or not parts[0]:
            problems.add(lineno, "malformed line", f"expected 'wnid number label', got {line!r}")
            continue
        records.append({"image": f"{parts[0]}/{parts[0]}_{parts[1]}.JPEG", "label": int(parts[2]), "line": lineno})
    problems.check(len(records))
    return records


class _ListImageNet(ImageNetDataset):
    """An ImageNet reader over records already read (the published 22k list)."""

    def __init__(self, records: List[dict], image_root: str, **kwargs):
        ImageRecordsDataset.__init__(self, records, image_root=image_root, **kwargs)


class _ListVideoClassification(VideoClassificationDataset):
    """A video classification reader over records already read (the published ``annotation.json``)."""

    def __init__(self, records: List[dict], video_root: str, meta_file: str, **kwargs):
        VideoRecordsDataset.__init__(self, records, image_root=video_root, **kwargs)
        self.meta_file = meta_file


def read_video_classes(anno_folder: str, split: str, file_extension: str = "", *, config_key: str,
                       max_bad_fraction: Optional[float] = None, name: str = "") -> List[dict]:
    """``{"image": "<class>/<name>", "label"}`` of the published Kinetics / MiT ``annotation.json`` for
    ``split`` (train: subset "training"; val / test: "validation"), labels from ``category_mapping.txt``."""
    mapping = os.path.join(anno_folder, VIDEO_CATEGORIES)
    check_annotation_file(mapping, config_key)
    classes: Dict[str, int] = {}
    with open(mapping, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            text = raw.decode("utf-8", "replace").strip()
            if not text:
                continue
            cls, _, idx = text.rpartition("\t")
            if not cls or not idx.strip().isdigit():
                raise AnnotationFileError(f"{mapping}:{lineno}: expected 'class<TAB>index', got {text!r}")
            classes[cls.replace(" ", "_")] = int(idx)
    path = os.path.join(anno_folder, VIDEO_ANNOTATION)
    check_annotation_file(path, config_key)
    data = load_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("database"), dict):
        raise AnnotationFileError(f"{path}: not a published video annotation file (needs a 'database' object)")
    exclude = set()
    excl = os.path.join(anno_folder, "exclude_list.txt")
    if os.path.isfile(excl):
        with open(excl) as f:
            exclude = {line.strip() for line in f if line.strip()}
    subset = "training" if split == "train" else "validation"
    problems = AnnotationProblems(path, max_bad_fraction, name)
    records = []
    for vid, info in data["database"].items():
        try:
            sub, label = info["subset"], info["annotations"]["label"]
        except (KeyError, TypeError):
            problems.add(f"video {vid}", "malformed entry", repr(info)[:200])
            continue
        if sub != subset or os.path.basename(vid + file_extension) in exclude:
            continue
        if not isinstance(label, str) or label.replace(" ", "_") not in classes:
            problems.add(f"video {vid}", "unknown class", repr(label))
            continue
        records.append({"image": f"{label}/{vid}{file_extension}", "label": classes[label.replace(' ', '_')]})
    problems.check(len(records))
    if not records:
        raise AnnotationFileError(f"{path}: no '{subset}' video (set by {config_key})")
    return records


def read_published_vqa(anno_folder: str, split: str, *, config_key: str, max_bad_fraction: Optional[float] = None,
                       name: str = "") -> List[dict]:
    """VQA records ``{"image", "image_id", "question_id", "question", "answers": [], "answer_scores"}`` of the
    published files; ``answer_scores`` maps answer strings (``trainval_label2ans.pkl``) to the target scores."""
    label2ans = load_pickle(check_annotation_file(os.path.join(anno_folder, "trainval_label2ans.pkl"), config_key))
    if not isinstance(label2ans, (list, tuple)):
        raise AnnotationFileError(f"{os.path.join(anno_folder, 'trainval_label2ans.pkl')}: not a list of answers")
    coco_map_path = check_annotation_file(os.path.join(anno_folder, "coco_map.json"), config_key)
    coco_map = load_json(coco_map_path)
    if not isinstance(coco_map, dict):
        raise AnnotationFileError(f"{coco_map_path}: not an object (image id -> image path)")

    def questions(file: str) -> list:
        path = check_annotation_file(os.path.join(anno_folder, file), config_key)
        data = load_json(path)
        if not isinstance(data, dict) or "questions" not in data:
            raise AnnotationFileError(f"{path}: not a VQA questions file (needs 'questions')")
        qs = [q for q in json_list(data, "questions", path) if isinstance(q, dict) and "question_id" in q]
        return sorted(qs, key=lambda q: q["question_id"])

    def targets(file: str) -> list:
        path = check_annotation_file(os.path.join(anno_folder, file), config_key)
        rows = load_pickle(path)
        if not isinstance(rows, list):
            raise AnnotationFileError(f"{path}: not a list of answer targets")
        return sorted((r for r in rows if isinstance(r, dict) and "question_id" in r), key=lambda r: r["question_id"])

    if split == "test":
        pairs = [(q, None) for q in questions(VQA_QUESTIONS.format("test2015"))]
    else:
        val_q, val_t = questions(VQA_QUESTIONS.format("val2014")), targets("val_target.pkl")
        if split == "train":
            pairs = list(zip(questions(VQA_QUESTIONS.format("train2014")), targets("train_target.pkl")))
            pairs += list(zip(val_q[:-VQA_SMALL_VAL], val_t[:-VQA_SMALL_VAL]))
            if os.path.isfile(os.path.join(anno_folder, "VG_questions2.json")):
                pairs += list(zip(questions("VG_questions2.json"), targets("vg_target.pkl")))
        else:
            pairs = list(zip(val_q[-VQA_SMALL_VAL:], val_t[-VQA_SMALL_VAL:]))
    problems = AnnotationProblems(os.path.join(anno_folder, f"VQA {split}"), max_bad_fraction, name)
    records = []
    for q, t in pairs:
        qid = q.get("question_id")
        where = f"question_id {qid}"
        image = coco_map.get(str(q.get("image_id")))
        if t is not None and t.get("question_id") != qid:
            problems.add(where, "questions and targets out of step", f"target question_id {t.get('question_id')}")
            continue
        if not isinstance(q.get("question"), str) or not q["question"].strip():
            problems.add(where, "empty question", repr(q.get("question")))
            continue
        if not isinstance(image, str):
            problems.add(where, "image not in coco_map.json", repr(q.get("image_id")))
            continue
        scores = None  # test2015: no targets
        if t is not None:
            try:
                scores = {str(label2ans[int(k)]): float(s) for k, s in zip(t["labels"], t["scores"])}
            except (KeyError, TypeError, ValueError, IndexError) as e:
                problems.add(where, "malformed target", f"{e}")
                continue
        records.append({"image": image, "image_id": q["image_id"], "question_id": qid, "question": q["question"],
                        "answers": [], "answer_scores": scores})
    problems.check(len(records))
    return records


class PublishedVQADataset(VQADataset):
    """VQA samples of the published files: ``answer_scores`` (answer -> target score; None on test) and no human
    answers."""

    def __init__(self, records: List[dict], image_root: str, **kwargs):
        ImageRecordsDataset.__init__(self, records, image_root=image_root, **kwargs)

    def make_sample(self, index: int, record: dict, image) -> dict:
        sample = super().make_sample(index, record, image)
        sample["answer_scores"] = record["answer_scores"]
        return sample


def _video_kwargs(task_cfg, split: str, transform, bad: float, label: str) -> dict:
    return dict(transform=transform, frames_per_clip=int(task_cfg.DATALOADER.FRAMES_PER_CLIP),
                stride=int(task_cfg.DATALOADER.STRIDE), is_train=split == "train",
                num_views=int(task_cfg.INFERENCE.NUM_VIEWS), max_bad_fraction=bad, name=label)


def _existing(folder: str, names) -> Optional[List[str]]:
    paths = [os.path.join(folder, n) for n in names]
    return paths if paths and all(os.path.isfile(p) for p in paths) else None


def published_reader(reader: str, task_cfg, split: str, value: str, anno_folder: str, image_root: str, *,
                     transform: Optional[Callable], mode: str, bad: float, key: str, label: str):
    """The dataset of ``split`` read from the published files of ``anno_folder``, or ``None`` when the folder
    holds our layout (then ``build_reader`` reads it).  ``value`` is the configured ``DATASETS.<SPLIT>``."""
    name = task_cfg.DATASETS.DATASET_NAME.upper().replace("-", "")
    caption_kwargs = dict(mode=mode, transform=transform, max_bad_fraction=bad, name=label)
    if reader == "imagenet" and name == "IMAGENET22K":
        paths = _existing(anno_folder, [IMAGENET22K_LIST])
        if paths and not os.path.exists(os.path.join(anno_folder, f"{value}.txt")):
            records = read_imagenet22k_list(paths[0], config_key=key, max_bad_fraction=bad, name=label)
            return _ListImageNet(records, image_root, transform=transform, max_bad_fraction=bad, name=label)
    if reader == "coco_caption" and name in ("FLICKR", "FLICKR30K"):
        paths = _existing(anno_folder, FLICKR_FILES.get(value, FLICKR_FILES[split]))
        if paths:
            records = read_flickr_jsonlines(paths, config_key=key, max_bad_fraction=bad, name=label)
            return CaptionDataset(records, image_root, **caption_kwargs)
    if reader == "jsonl_pairs" and value.endswith(".json"):  # published names; ours are .jsonl
        path = os.path.join(anno_folder, value) if not os.path.isabs(value) else value
        records = read_web_pairs(path, name, config_key=key, max_bad_fraction=bad, name=label)
        return CaptionDataset(records, image_root, **caption_kwargs)
    if reader == "video_list" and not os.path.exists(os.path.join(anno_folder, f"{value}.txt")) \
            and _existing(anno_folder, [VIDEO_ANNOTATION]):
        # published FILE_EXTENSION is '' in every published config: the annotation names carry it
        records = read_video_classes(anno_folder, split, config_key=key, max_bad_fraction=bad, name=label)
        root = os.path.join(image_root, "training" if split == "train" else "validation")
        return _ListVideoClassification(records, root, os.path.join(anno_folder, VIDEO_ANNOTATION),
                                        **_video_kwargs(task_cfg, split, transform, bad, label))
    if reader == "video_caption" and name in ("MSVDDATASET", "MSVD", "MSRVTTDATASET", "MSRVTT"):
        msvd = name.startswith("MSVD")
        paths = _existing(anno_folder, (MSVD_FILES if msvd else MSRVTT_FILES)[split])
        if paths:
            records = []
            for path in paths:
                check_annotation_file(path, key)
                data = load_json(path)
                if not isinstance(data, dict) or "images" not in data or "annotations" not in data:
                    raise AnnotationFileError(f"{path}: not a COCO-style caption file (needs 'images', 'annotations')")
                problems = AnnotationProblems(path, bad, label)
                records += group_captions(json_list(data, "images", path), json_list(data, "annotations", path),
                                          problems)
            ext = ".avi" if msvd else ".mp4"
            for r in records:
                r["image"] += ext
            return VideoCaptionDataset(records, image_root, mode=mode, **_video_kwargs(task_cfg, split, transform, bad,
                                                                                       label))
    if reader == "vqa" and _existing(anno_folder, ["trainval_label2ans.pkl"]):
        records = read_published_vqa(anno_folder, split, config_key=key, max_bad_fraction=bad, name=label)
        return PublishedVQADataset(records, image_root, transform=transform, max_bad_fraction=bad, name=label)
    return None


def published_vqa_answers(anno_folder: str, config_key: str) -> List[str]:
    """The answer strings of the published VQA label set: ``<ANNO_FOLDER>/trainval_label2ans.pkl``, row i =
    answer i of ``VQA_Answers_CLIP_with_endoftext.pkl`` (the published VQADataset tokenises the same list)."""
    path = check_annotation_file(os.path.join(anno_folder, "trainval_label2ans.pkl"), config_key)
    answers = load_pickle(path)
    if not isinstance(answers, (list, tuple)) or not all(isinstance(a, str) for a in answers):
        raise AnnotationFileError(f"{path}: not a list of answer strings")
    return list(answers)
