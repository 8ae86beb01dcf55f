"""The published data layout (the published repo's data/prepare_data.md): .pkl files through the restricted
unpickler, published paths and file names read by our readers, and tools/make_demo_data.py --layout published."""
from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from uniperceiver.config import setup_cfg
from uniperceiver.data.datasets import ImageNetDataset, annotation_path, build_reader, read_coco_captions
from uniperceiver.data.safe_pickle import UnsafePickleError, load_pickle
from uniperceiver.data.target_sets import build_label_set
from uniperceiver.utils.paths import resolve_data_path

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(REPO, "configs", "quick_schedules")


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_restricted_unpickler_refuses_code_and_names_the_file(tmp_path):
    marker = tmp_path / "marker"
    path = tmp_path / "VQA_Answers_CLIP_with_endoftext.pkl"
    with open(path, "wb") as f:
        pickle.dump({"data": [torch.tensor([1, 2])], "x": _Evil(marker)}, f)
    with pytest.raises(UnsafePickleError, match=r"VQA_Answers_CLIP_with_endoftext\.pkl.*system"):
        load_pickle(str(path))
    assert not marker.exists()
    # what the published files hold is read: containers, numbers, strings, numpy arrays, torch tensors
    good = {"data": [torch.tensor([5, 49407])], "modality": "text", "ans2label": {"yes": 0}, "scores": np.ones(3),
            "labels": [1, 2.5, None, (True,)]}
    with open(path, "wb") as f:
        pickle.dump(good, f)
    loaded = load_pickle(str(path))
    assert loaded["ans2label"] == {"yes": 0} and loaded["labels"] == [1, 2.5, None, (True,)]
    assert torch.equal(loaded["data"][0], torch.tensor([5, 49407])) and np.array_equal(loaded["scores"], np.ones(3))


def test_published_paths_resolve_against_data_path(tmp_path):
    cfg = setup_cfg(os.path.join(CONFIGS, "instant_glue.yaml"), ["DATA_PATH", str(tmp_path)])
    assert resolve_data_path(cfg, "open_source_dataset/imagenet") == str(tmp_path / "open_source_dataset" / "imagenet")
    # DATA_PATH pointing at the open_source_dataset folder itself (the published prepare_data.md's example)
    (tmp_path / "open_source_dataset" / "imagenet").mkdir(parents=True)
    cfg = setup_cfg(os.path.join(CONFIGS, "instant_glue.yaml"), ["DATA_PATH", str(tmp_path / "open_source_dataset")])
    assert resolve_data_path(cfg, "open_source_dataset/imagenet") == str(tmp_path / "open_source_dataset" / "imagenet")


def test_published_imagenet_lists_and_karpathy_files(tmp_path):
    root = tmp_path / "imagenet"
    (root / "train" / "n01").mkdir(parents=True)
    Image.new("RGB", (8, 8), (255, 0, 0)).save(root / "train" / "n01" / "a.JPEG")
    (root / "meta").mkdir()
    (root / "meta" / "train.txt").write_text("n01/a.JPEG 3\n")  # relative to imagenet/train/, as published
    ds = ImageNetDataset(str(root / "meta" / "train.txt"), str(root))
    assert ds.image_root == str(root / "train") and ds[0]["label"] == 3
    ann = tmp_path / "captions_val5k.json"
    ann.write_text(json.dumps({"images": [{"file_name": "COCO_val2014_1.jpg", "file_path": "val2014", "id": 1}],
                               "annotations": [{"image_id": 1, "id": 7, "caption": "a dog"}]}))
    assert read_coco_captions(str(ann))[0]["image"] == "val2014/COCO_val2014_1.jpg"


def test_published_dataset_class_names_pick_the_published_files(tmp_path):
    folder = tmp_path / "open_source_dataset" / "mscoco_dataset" / "new_annotations"
    folder.mkdir(parents=True)
    (folder / "captions_train113k.json").write_text("{}")
    cfg = setup_cfg(os.path.join(CONFIGS, "instant_retrieval.yaml"), [
        "DATA_PATH", str(tmp_path), "TASKS.mscoco_retrieval.DATASETS.TRAIN", "ImageTextPairDataset",
        "TASKS.mscoco_retrieval.DATALOADER.ANNO_FOLDER", "open_source_dataset/mscoco_dataset/new_annotations"])
    assert annotation_path(cfg.TASKS[0], cfg, "train") == str(folder / "captions_train113k.json")


@pytest.mark.slow
def test_published_demo_layout_is_read_by_our_readers(tmp_path):
    """tools/make_demo_data.py --layout published, then the published configs' paths as written."""
    out = tmp_path / "published"
    r = subprocess.run([sys.executable, os.path.join(REPO, "tools", "make_demo_data.py"), "--layout", "published",
                        "--out", str(out)], cwd=REPO, capture_output=True, text=True, timeout=900,
                       env=dict(os.environ, PYTHONPATH=REPO))
    assert r.returncode == 0, r.stderr[-3000:]
    base = "open_source_dataset"
    # GLUE as the published GLUE_SST2_mlm_finetune.yaml names it (after conversion to our keys)
    cfg = setup_cfg(os.path.join(CONFIGS, "instant_glue.yaml"), [
        "DATA_PATH", str(out), "TASKS.SST-2.DATASETS.TRAIN", "GLUEDataset", "TASKS.SST-2.DATASETS.VAL", "GLUEDataset",
        "TASKS.SST-2.DATALOADER.ANNO_FOLDER", f"{base}/bert_pretrain_data/glue_data/"])
    cfg.defrost()
    cfg.SHARED_TARGETS[0].SHARED_TARGETS_CFG.FILE_PATH = (
        f"{base}/GLUE_classnames/SST-2_class_name_CLIP_with_endoftext.pkl")
    cfg.SHARED_TARGETS[0].SHARED_TARGETS_CFG.TEMPLATES = []
    cfg.freeze()
    from uniperceiver.tasks import build_tasks

    task = build_tasks(cfg)["SST-2"]
    val = task.build_dataset("val")
    assert "processed/dev.tsv" in annotation_path(cfg.TASKS[0], cfg, "val") and len(val) == 48
    labels = build_label_set(cfg, "SST-2")
    from uniperceiver.tokenization import get_tokenizer

    tok = get_tokenizer()
    assert labels.ids.tolist() == [tok.encode("bad <|endoftext|>"), tok.encode("wonderful <|endoftext|>")]
    for name in ("CoLA", "MRPC", "QQP", "QNLI", "RTE", "MNLI"):
        assert (out / base / "GLUE_classnames" / f"{name}_class_name_CLIP_with_endoftext.pkl").is_file()
    # ImageNet: meta lists relative to imagenet/<split>/, class names as a tokenised .pkl
    cfg = setup_cfg(os.path.join(CONFIGS, "instant_classification.yaml"), [
        "DATA_PATH", str(out), "TASKS.imagenet.DATASETS.TRAIN", "ImageNetDataset",
        "TASKS.imagenet.DATALOADER.FEATS_FOLDER", f"{base}/imagenet",
        "TASKS.imagenet.DATALOADER.ANNO_FOLDER", f"{base}/imagenet/meta"])
    ds = build_reader(cfg.TASKS[0], cfg, "train")
    assert len(ds) == 400 and ds[0]["image"].size == (32, 32)
    cfg.defrost()
    cfg.SHARED_TARGETS[0].SHARED_TARGETS_CFG.FILE_PATH = f"{base}/imagenet_class_name_CLIP_with_endoftext.pkl"
    cfg.freeze()
    assert len(build_label_set(cfg, cfg.SHARED_TARGETS[0].NAME)) == 10
    # MSCOCO Karpathy files with file_path, images under coco_origin/
    cfg = setup_cfg(os.path.join(CONFIGS, "instant_retrieval.yaml"), [
        "DATA_PATH", str(out), "TASKS.mscoco_retrieval.DATASETS.TRAIN", "ImageTextPairDataset",
        "TASKS.mscoco_retrieval.DATALOADER.FEATS_FOLDER", f"{base}/mscoco_dataset/coco_origin",
        "TASKS.mscoco_retrieval.DATALOADER.ANNO_FOLDER", f"{base}/mscoco_dataset/new_annotations"])
    ds = build_reader(cfg.TASKS[0], cfg, "train")
    assert len(ds) > 0 and ds[0]["image"].size == (32, 32)
    # BooksWiki .doc and the vocabulary .pkl (a vocabulary set: [token, <|endoftext|>] rows)
    cfg = setup_cfg(os.path.join(CONFIGS, "instant_mlm.yaml"), [
        "DATA_PATH", str(out), "TASKS.bookswiki_mlm.DATASETS.TRAIN", "GeneralCorpusDataset",
        "TASKS.bookswiki_mlm.DATASETS.DATASET_NAME", "BooksWiki",
        "TASKS.bookswiki_mlm.DATALOADER.ANNO_FOLDER", f"{base}/text_corpus"])
    assert annotation_path(cfg.TASKS[0], cfg, "train").endswith("text_corpus/bookswiki.doc")
    assert len(build_reader(cfg.TASKS[0], cfg, "train")) > 0
    cfg.defrost()
    cfg.SHARED_TARGETS[0].SHARED_TARGETS_CFG.FILE_PATH = f"{base}/vocabulary_CLIP_with_endoftext.pkl"
    cfg.freeze()
    vocab = build_label_set(cfg, cfg.SHARED_TARGETS[0].NAME)
    assert vocab.is_vocabulary and (vocab.ids[:, 1] == tok.eot_id).all()


# --------------------------------------------------- Flickr30k, web pairs, ImageNet-22k, videos, VQA (published.py)
from uniperceiver.data.datasets.base import AnnotationFileError, TooManyBadSamples  # noqa: E402
from uniperceiver.data.datasets.published import (read_flickr_jsonlines, read_imagenet22k_list,  # noqa: E402
                                                  read_published_vqa, read_video_classes, read_web_pairs)


def _lines(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return str(path)


def test_published_web_pairs_sbu_vg_and_flickr(tmp_path):
    # CC3M / CC12M: spaCy token lists, images inside "train_image.zip" read unzipped; "<PERSON>" reads "person"
    cc = _lines(tmp_path / "train_spacy.json", [
        {"image": "train_image.zip@/0.jpg", "caption": ["a", "dog", "on", "grass"]},
        {"image": "./train_image.zip@/1.jpg", "caption": ["<PERSON>", "smiling", "!"]},
        "{not json", {"image": "x.jpg", "caption": []}])
    recs = read_web_pairs(cc, "CC3M", max_bad_fraction=0.6)
    assert [(r["image"], r["captions"]) for r in recs] == [("train_image/0.jpg", ["a dog on grass ."]),
                                                           ("train_image/1.jpg", ["person smiling !"])]
    with pytest.raises(TooManyBadSamples, match=r"train_spacy\.json"):
        read_web_pairs(cc, "CC3M", max_bad_fraction=0.1)
    # SBU: one object, image path -> caption
    sbu = tmp_path / "subcaption.json"
    sbu.write_text(json.dumps({"images/a.jpg": "a red car", "images/b.jpg": ""}))
    assert [r["captions"] for r in read_web_pairs(str(sbu), "SBU", max_bad_fraction=0.5)] == [["a red car ."]]
    # VG: phrase / subset by image id
    vg = tmp_path / "vg_captions_128filter.json"
    vg.write_text(json.dumps({"phrase": {"7": ["a man", "a hat"]}, "subset": {"7": "VG_100K/7.jpg"}}))
    assert read_web_pairs(str(vg), "VG") == [{"image": "VG_100K/7.jpg", "image_id": "VG_100K/7.jpg",
                                              "captions": ["a man .", "a hat ."]}]
    vg.write_text(json.dumps({"phrase": {}}))
    with pytest.raises(AnnotationFileError, match=r"vg_captions_128filter\.json: not a published VG file") as e:
        read_web_pairs(str(vg), "VG")
    assert "\n" not in str(e.value)
    # Flickr30k: JSON lines {"id", "img_path", "sentences"}; the training split reads train + val_set0
    tr = _lines(tmp_path / "all_data_final_train_2014.jsonline",
                [{"id": 1, "img_path": "1.jpg", "sentences": ["a cat", "a kitten"]}])
    va = _lines(tmp_path / "all_data_final_val_set0_2014.jsonline",
                [{"id": 2, "img_path": "2.jpg", "sentences": ["a bird"]}, {"id": 3, "img_path": "3.jpg"}])
    recs = read_flickr_jsonlines([tr, va], max_bad_fraction=0.5)
    assert [(r["image"], r["image_id"], r["captions"]) for r in recs] == [("1.jpg", 1, ["a cat", "a kitten"]),
                                                                         ("2.jpg", 2, ["a bird"])]


def test_published_imagenet22k_and_video_annotations(tmp_path):
    lst = _lines(tmp_path / "imagenet_22k_filelist_short.txt", ["n01440764 10074 0", "n01443537 22 1", "bad"])
    recs = read_imagenet22k_list(lst, max_bad_fraction=0.5)
    assert [(r["image"], r["label"]) for r in recs] == [("n01440764/n01440764_10074.JPEG", 0),
                                                         ("n01443537/n01443537_22.JPEG", 1)]
    # Kinetics / MiT: annotation.json + category_mapping.txt ("class<TAB>index", spaces read as underscores)
    (tmp_path / "category_mapping.txt").write_text("air drumming\t0\nabseiling\t1\n")
    (tmp_path / "annotation.json").write_text(json.dumps({"database": {
        "a.mp4": {"subset": "training", "annotations": {"label": "abseiling"}},
        "b.mp4": {"subset": "training", "annotations": {"label": "air_drumming"}},
        "c.mp4": {"subset": "validation", "annotations": {"label": "abseiling"}},
        "d.mp4": {"subset": "training", "annotations": {"label": "juggling"}},
        "e.mp4": {"subset": "training", "annotations": {"label": "abseiling"}}}}))
    (tmp_path / "exclude_list.txt").write_text("e.mp4\n")
    train = read_video_classes(str(tmp_path), "train", config_key="K", max_bad_fraction=0.5)
    assert train == [{"image": "abseiling/a.mp4", "label": 1}, {"image": "air_drumming/b.mp4", "label": 0}]
    assert read_video_classes(str(tmp_path), "val", config_key="K") == [{"image": "abseiling/c.mp4", "label": 1}]
    with pytest.raises(ValueError, match=r"annotation\.json \(video d\.mp4\): unknown class"):
        read_video_classes(str(tmp_path), "train", config_key="K")  # standalone: the first bad record stops


def _vqa_files(root, n_val=4):
    root.mkdir(parents=True, exist_ok=True)
    for name, obj in (("trainval_label2ans.pkl", ["yes", "no", "2"]),
                      ("trainval_ans2label.pkl", {"yes": 0, "no": 1, "2": 2})):
        with open(root / name, "wb") as f:
            pickle.dump(obj, f)
    (root / "coco_map.json").write_text(json.dumps({"1": "train2014/a.jpg", "2": "val2014/b.jpg"}))
    (root / "v2_OpenEnded_mscoco_train2014_questions.json").write_text(json.dumps({"questions": [
        {"question_id": 11, "image_id": 1, "question": "is it red?"}]}))
    (root / "v2_OpenEnded_mscoco_val2014_questions.json").write_text(json.dumps({"questions": [
        {"question_id": 20 + i, "image_id": 2, "question": "how many?"} for i in range(n_val)]}))
    (root / "v2_OpenEnded_mscoco_test2015_questions.json").write_text(json.dumps({"questions": [
        {"question_id": 30, "image_id": 2, "question": "what?"}]}))
    with open(root / "train_target.pkl", "wb") as f:
        pickle.dump([{"question_id": 11, "image_id": 1, "labels": [0, 1], "scores": [0.9, 0.3]}], f)
    with open(root / "val_target.pkl", "wb") as f:
        pickle.dump([{"question_id": 20 + i, "image_id": 2, "labels": [2], "scores": [1.0]} for i in range(n_val)],
                    f)


def test_published_vqa_files_targets_and_score(tmp_path):
    root = tmp_path / "VQA"
    _vqa_files(root)
    train = read_published_vqa(str(root), "train", config_key="K")
    # train = train2014 + val2014[:-3000] (nothing of a 4-question val); val = the last 3000 val questions
    assert [(r["question_id"], r["image"], r["answer_scores"]) for r in train] == [
        (11, "train2014/a.jpg", {"yes": 0.9, "no": 0.3})]
    val = read_published_vqa(str(root), "val", config_key="K")
    assert len(val) == 4 and val[0]["answer_scores"] == {"2": 1.0}
    test = read_published_vqa(str(root), "test", config_key="K")
    assert test[0]["question_id"] == 30 and test[0]["answer_scores"] is None
    # the evaluator scores a prediction by its target score (the published VQAEvaler)
    from uniperceiver.evaluation.vqa import VQAEvaluator

    ev = VQAEvaluator()
    ev.reset()
    ev.process({}, {"predictions": ["yes", "no", "2"], "answers": [[], [], []],
                    "answer_scores": [{"yes": 0.9, "no": 0.3}, {"yes": 0.9, "no": 0.3}, {"2": 1.0}]})
    assert ev.evaluate()["vqa_acc"] == pytest.approx(100 * (0.9 + 0.3 + 1.0) / 3)
    # a malformed pickle target names the file; code in a pickle is refused (restricted unpickler)
    with open(root / "val_target.pkl", "wb") as f:
        pickle.dump({"question_id": 1}, f)
    with pytest.raises(AnnotationFileError, match=r"val_target\.pkl: not a list of answer targets"):
        read_published_vqa(str(root), "val", config_key="K")


def test_published_vqa_task_trains_on_target_scores(tmp_path):
    """The converted published VQA config on published files: the answer set is trainval_label2ans.pkl (rows
    of the tokenised VQA_Answers .pkl), the soft targets are the .pkl target scores."""
    from uniperceiver.tasks import build_tasks
    from uniperceiver.tokenization import get_tokenizer

    base = tmp_path / "open_source_dataset"
    _vqa_files(base / "VQA")
    for rel in ("train2014/a.jpg", "val2014/b.jpg"):
        (base / "mscoco_dataset" / "coco_origin" / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (16, 16), (0, 0, 255)).save(base / "mscoco_dataset" / "coco_origin" / rel)
    tok = get_tokenizer()
    with open(base / "VQA_Answers_CLIP_with_endoftext.pkl", "wb") as f:
        pickle.dump({"data": [torch.tensor(tok.encode(a + " <|endoftext|>")) for a in ("yes", "no", "2")],
                     "modality": "text"}, f)
    cfg = setup_cfg(os.path.join(REPO, "configs", "BERT_L12_H768_experiments", "finetuning",
                                 "vqa_finetuning_debug.yaml"),
                    ["DATA_PATH", str(tmp_path), "MODEL.IMG_INPUT_SIZE", "32"])
    task = build_tasks(cfg)["vqa"]
    assert task.answers == ["yes", "no", "2"]
    sample = task.build_dataset("train")[0]
    batch = task.collate([sample])
    assert batch["soft_targets"].tolist() == [[pytest.approx(0.9), pytest.approx(0.3), 0.0]]
    val = task.build_dataset("val")
    assert len(val) == 4 and val[0]["answer_scores"] == {"2": 1.0}
    # a broken annotation file is one line naming it (file:line:column)
    (base / "VQA" / "coco_map.json").write_text('{"1": "a.jpg",\n oops}')
    with pytest.raises(AnnotationFileError, match=r"coco_map\.json:2:\d+: not valid JSON") as e:
        task.build_dataset("val")
    assert "\n" not in str(e.value)
