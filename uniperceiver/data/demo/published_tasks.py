"""The rest of the built-in demo data in the published Uni-Perceiver layout: Flickr30k, the web image-text pairs,
ImageNet-22k, the videos (Kinetics, Moments in Time, MSVD, MSR-VTT) and VQA, each as the published dataset
class reads it (data/datasets/published.py documents the formats).  Called by
``published.write_published_layout``; everything goes under ``<out>/open_source_dataset/``::

    flickr30k/all_data_final_{train,val_set0,test_set0}_2014.jsonline    # {"id", "img_path", "sentences"}
    flickr30k/captions_{train,val,test}.json                            # prepare_data.md's COCO-style files
    flickr30k_images/flickr30k_images/flickr30k_images/*.jpg
    cc3m/{train,val}_spacy.json + cc3m/{train,val}_image/               # {"image": "train_image.zip@/x.jpg",
    c12m/train_available.json + c12m/train_image/                       #  "caption": [tokens]} lines
    yfcc/yfcc100m_subset_available_untokenized.json + yfcc/images/      # caption a string
    sbucaption/annotations/subcaption.json (+ sbucaptions.json) + sbucaption/images/   # {path: caption}
    visual_genome/annotations/vg_captions_128filter.json + visual_genome/images/VG_100K/   # phrase / subset
    imagenet22k/<wnid>/<wnid>_<n>.JPEG, imagenet_22k_filelist_short.txt,
        imagenet_22k_class_name_CLIP_with_endoftext.pkl
    K700/, K400_official/, MomentsInTime/: {training,validation}/<class>/<video>, annotation.json,
        category_mapping.txt, categories.txt, <NAME>_{train,val}.csv;
        k700_ / k400_ / MiT_class_name_CLIP_with_endoftext.pkl
    msvd_dataset/new_annotations/caption_msvd_{train,val,test}_cocostyle.json + msvd_dataset/YouTubeClips/*.avi
    msrvtt_dataset/annotations_new/caption_msrvtt_1k_{trainval,test}_cocostyle.json + msrvtt_dataset/videos/*.mp4
    VQA/: v2_OpenEnded_mscoco_{train2014,val2014,test2015}_questions.json, {train,val}_target.pkl,
        trainval_{ans2label,label2ans}.pkl, coco_map.json; images in mscoco_dataset/coco_origin/{train,val}2014/;
        VQA_Answers_CLIP_with_endoftext.pkl

Images and videos are hard links to the demo tree's (copies where links are not possible).  The demo videos
are MP4; MSVD's are linked under the ``.avi`` names the published reader opens (PyAV reads the container, not
the name).
"""
from __future__ import annotations

import csv
import json
import os
import pickle
from collections import Counter
from typing import Dict, List

from .published_io import dump_target_set, link


def _load(path: str):
    with open(path) as f:
        return json.load(f)


def _dump(path: str, data) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(data, f)


def _jsonlines(path: str, rows) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write("".join(json.dumps(r) + "\n" for r in rows))


def _jsonl_rows(path: str) -> List[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def _flickr(demo: str, base: str) -> None:
    src = os.path.join(demo, "flickr30k")
    images = os.path.join(base, "flickr30k_images", "flickr30k_images", "flickr30k_images")
    names = {"train": "all_data_final_train_2014", "val": "all_data_final_val_set0_2014",
             "test": "all_data_final_test_set0_2014"}
    for split, stem in names.items():
        data = _load(os.path.join(src, "annotations", f"captions_{split}.json"))
        caps: Dict[int, List[str]] = {}
        for a in data["annotations"]:
            caps.setdefault(a["image_id"], []).append(a["caption"])
        rows, coco_images = [], []
        for im in data["images"]:
            name = f"{split}_{os.path.basename(im['file_name'])}"  # one flat folder, as Flickr30k's
            link(os.path.join(src, "images", im["file_name"]), os.path.join(images, name))
            rows.append({"id": im["id"], "img_path": name, "sentences": caps.get(im["id"], [])})
            coco_images.append({"id": im["id"], "file_name": name})
        _jsonlines(os.path.join(base, "flickr30k", f"{stem}.jsonline"), rows)
        _dump(os.path.join(base, "flickr30k", f"captions_{split}.json"),
              {"images": coco_images, "annotations": data["annotations"]})


def _web_pairs(demo: str, base: str) -> None:
    # CC3M / CC12M: spaCy-tokenised captions, images named inside a zip ("train_image.zip@/..."), read unzipped
    for name, folder, files in (("cc3m", "cc3m", {"train": "train_spacy.json", "val": "val_spacy.json"}),
                                ("cc12m", "c12m", {"train": "train_available.json"})):
        for split, file in files.items():
            rows = []
            for r in _jsonl_rows(os.path.join(demo, name, f"{split}.jsonl")):
                image = f"{split}_image/{os.path.basename(r['image'])}"
                link(os.path.join(demo, name, r["image"]), os.path.join(base, folder, image))
                rows.append({"image": f"{split}_image.zip@/{os.path.basename(r['image'])}",
                             "caption": r["caption"].split()})
            _jsonlines(os.path.join(base, folder, file), rows)
    rows = []
    for r in _jsonl_rows(os.path.join(demo, "yfcc", "train.jsonl")):
        link(os.path.join(demo, "yfcc", r["image"]), os.path.join(base, "yfcc", r["image"]))
        rows.append({"image": r["image"], "caption": r["caption"]})
    _jsonlines(os.path.join(base, "yfcc", "yfcc100m_subset_available_untokenized.json"), rows)
    sbu = {}
    for r in _jsonl_rows(os.path.join(demo, "sbu", "train.jsonl")):
        image = f"images/{os.path.basename(r['image'])}"
        link(os.path.join(demo, "sbu", r["image"]), os.path.join(base, "sbucaption", image))
        sbu[image] = r["caption"]
    for file in ("subcaption.json", "sbucaptions.json"):  # the configs' name, prepare_data.md's name
        _dump(os.path.join(base, "sbucaption", "annotations", file), sbu)
    phrase, subset = {}, {}
    for i, r in enumerate(_jsonl_rows(os.path.join(demo, "vg", "train.jsonl"))):
        image = f"VG_100K/{os.path.basename(r['image'])}"
        link(os.path.join(demo, "vg", r["image"]), os.path.join(base, "visual_genome", "images", image))
        key = str(next((k for k, v in subset.items() if v == image), i))
        subset[key] = image
        phrase.setdefault(key, []).append(r["caption"])
    _dump(os.path.join(base, "visual_genome", "annotations", "vg_captions_128filter.json"),
          {"phrase": phrase, "subset": subset})


def _imagenet22k(demo: str, base: str, tok) -> None:
    src = os.path.join(demo, "imagenet22k")
    lines = []
    with open(os.path.join(src, "meta", "train.txt")) as f:
        for n, line in enumerate(f):
            rel, label = line.rsplit(maxsplit=1)
            wnid = f"n{int(label):08d}"
            link(os.path.join(src, rel), os.path.join(base, "imagenet22k", wnid, f"{wnid}_{n}.JPEG"))
            lines.append(f"{wnid} {n} {label}")
    with open(os.path.join(base, "imagenet_22k_filelist_short.txt"), "w") as f:
        f.write("\n".join(lines) + "\n")
    with open(os.path.join(src, "classnames.txt")) as f:
        names = [line.strip() for line in f if line.strip()]
    dump_target_set(os.path.join(base, "imagenet_22k_class_name_CLIP_with_endoftext.pkl"),
                     (tok.encode(n + " <|endoftext|>") for n in names))


def _video_classes(demo: str, base: str, tok, src_name: str, folder: str, prefix: str, pkl: str) -> None:
    src = os.path.join(demo, src_name)
    with open(os.path.join(src, "classnames.txt")) as f:
        names = [line.strip() for line in f if line.strip()]
    dst = os.path.join(base, folder)
    database = {}
    for split, subset in (("train", "training"), ("val", "validation")):
        rows = []
        with open(os.path.join(src, f"{split}.txt")) as f:
            for line in f:
                rel, label = line.rsplit(maxsplit=1)
                cls = names[int(label)].replace(" ", "_")
                video = f"{split}_{os.path.basename(rel)}"  # one name space for both subsets
                link(os.path.join(src, rel), os.path.join(dst, subset, cls, video))
                database[video] = {"subset": subset, "annotations": {"label": cls}}
                rows.append([f"./{subset}/{cls}/{video}", cls])
        with open(os.path.join(dst, f"{prefix}_{split}.csv"), "w", newline="") as f:
            csv.writer(f).writerows(rows)
    _dump(os.path.join(dst, "annotation.json"), {"database": database})
    with open(os.path.join(dst, "category_mapping.txt"), "w") as f:
        f.write("".join(f"{n}\t{i}\n" for i, n in enumerate(names)))
    with open(os.path.join(dst, "categories.txt"), "w") as f:
        f.write("".join(f"{n.replace(' ', '_')},{i}\n" for i, n in enumerate(names)))
    dump_target_set(os.path.join(base, pkl), (tok.encode(n + " <|endoftext|>") for n in names))


def _video_captions(demo: str, base: str) -> None:
    for src_name, folder, anno, videos, ext, files in (
            ("msvd", "msvd_dataset", "new_annotations", "YouTubeClips", ".avi",
             {"caption_msvd_train_cocostyle.json": ("train",), "caption_msvd_val_cocostyle.json": ("val",),
              "caption_msvd_test_cocostyle.json": ("test",)}),
            ("msrvtt", "msrvtt_dataset", "annotations_new", "videos", ".mp4",
             {"caption_msrvtt_1k_trainval_cocostyle.json": ("train", "val"),
              "caption_msrvtt_1k_test_cocostyle.json": ("test",)})):
        src = os.path.join(demo, src_name)
        for file, splits in files.items():
            images, anns = [], []
            for split in splits:
                data = _load(os.path.join(src, "annotations", f"captions_{split}.json"))
                ids = {}
                for v in data["videos"]:
                    stem = f"{split}_{os.path.splitext(os.path.basename(v['file_name']))[0]}"
                    ids[v["id"]] = len(images) + 1
                    link(os.path.join(src, "videos", v["file_name"]), os.path.join(base, folder, videos, stem + ext))
                    images.append({"id": ids[v["id"]], "file_name": stem})
                for a in data["annotations"]:
                    anns.append({"id": len(anns) + 1, "image_id": ids[a["video_id"]], "caption": a["caption"]})
            _dump(os.path.join(base, folder, anno, file), {"images": images, "annotations": anns})


def _vqa_score(count: int) -> float:
    """The soft score of an answer given by ``count`` humans in the published (ViLBERT) target files."""
    return (0.0, 0.3, 0.6, 0.9)[count] if count < 4 else 1.0


def _vqa(demo: str, base: str, tok) -> None:
    from uniperceiver.utils.vqa_text import normalize_answer

    src = os.path.join(demo, "vqa")
    dst = os.path.join(base, "VQA")
    with open(os.path.join(src, "answers.txt")) as f:
        label2ans = [line.strip() for line in f if line.strip()]
    ans2label = {a: i for i, a in enumerate(label2ans)}
    coco_map = {}
    for subtype, target in (("train2014", "train_target.pkl"), ("val2014", "val_target.pkl")):
        questions = _load(os.path.join(src, "annotations", f"v2_OpenEnded_mscoco_{subtype}_questions.json"))
        anns = _load(os.path.join(src, "annotations", f"v2_mscoco_{subtype}_annotations.json"))["annotations"]
        for q in questions["questions"]:
            rel = f"{subtype}/COCO_{subtype}_{int(q['image_id']):012d}.jpg"
            coco_map[str(q["image_id"])] = rel
            link(os.path.join(src, "images", rel), os.path.join(base, "mscoco_dataset", "coco_origin", rel))
        _dump(os.path.join(dst, f"v2_OpenEnded_mscoco_{subtype}_questions.json"), questions)
        rows = []
        for a in anns:
            counts = Counter(normalize_answer(x["answer"]) for x in a["answers"])
            labels = [ans2label[x] for x in counts if x in ans2label]
            rows.append({"question_id": a["question_id"], "image_id": a["image_id"], "labels": labels,
                         "scores": [_vqa_score(counts[label2ans[i]]) for i in labels]})
        with open(os.path.join(dst, target), "wb") as f:
            pickle.dump(rows, f)
        if subtype == "val2014":  # the test-dev questions file: the demo's val questions, no answers
            _dump(os.path.join(dst, "v2_OpenEnded_mscoco_test2015_questions.json"),
                  dict(questions, data_subtype="test2015"))
    _dump(os.path.join(dst, "coco_map.json"), coco_map)
    for name, obj in (("trainval_label2ans.pkl", label2ans), ("trainval_ans2label.pkl", ans2label)):
        with open(os.path.join(dst, name), "wb") as f:
            pickle.dump(obj, f)
    dump_target_set(os.path.join(base, "VQA_Answers_CLIP_with_endoftext.pkl"),
                     (tok.encode(a + " <|endoftext|>") for a in label2ans))


def write_published_tasks(demo: str, base: str, tok) -> None:
    """Write Flickr30k, web pairs, ImageNet-22k, videos and VQA of the demo tree ``demo`` under ``base``
    (``<out>/open_source_dataset``)."""
    _flickr(demo, base)
    _web_pairs(demo, base)
    _imagenet22k(demo, base, tok)
    _video_classes(demo, base, tok, "kinetics700", "K700", "K700", "k700_class_name_CLIP_with_endoftext.pkl")
    _video_classes(demo, base, tok, "kinetics700", "K400_official", "K400", "k400_class_name_CLIP_with_endoftext.pkl")
    _video_classes(demo, base, tok, "momentsintime", "MomentsInTime", "moments",
                   "MiT_class_name_CLIP_with_endoftext.pkl")
    _video_captions(demo, base)
    _vqa(demo, base, tok)
