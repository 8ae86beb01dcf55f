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
