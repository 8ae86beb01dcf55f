"""The on-disk readers on real-format files written in a temp dir: ImageNet tree, COCO-caption JSON,
JSON-lines pairs, plain text; bad images skipped and counted; missing annotation files named."""
import json
import logging

import numpy as np
import pytest
import torch
from PIL import Image

from uniperceiver.config import ConfigError, get_cfg
from uniperceiver.data.datasets import (
    CaptionDataset, ImageNetDataset, TextCorpusDataset, TooManyBadSamples, build_reader, read_class_names,
    read_coco_captions, read_jsonl_pairs,
)
from uniperceiver.data.transforms import build_image_transform


def _jpeg(path, value):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((12, 10, 3), value, np.uint8)).save(path)


def _imagenet(root, n=6, bad=()):
    lines = []
    for i in range(n):
        rel = f"train/c{i % 3}/img {i}.JPEG"  # a space in the path: the label is the last field
        if i in bad:
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_bytes(b"not a jpeg")
        else:
            _jpeg(root / rel, 10 * i)
        lines.append(f"{rel} {i % 3}")
    (root / "meta").mkdir(exist_ok=True)
    (root / "meta" / "train.txt").write_text("\n".join(lines) + "\n\n")
    return root / "meta" / "train.txt"


def test_imagenet_reader(tmp_path):
    meta = _imagenet(tmp_path)
    ds = ImageNetDataset(str(meta), str(tmp_path), transform=build_image_transform(16, False))
    assert len(ds) == 6 and ds.num_classes == 3
    s = ds[4]
    assert s["label"] == 1 and s["image_id"] == "train/c1/img 4.JPEG" and s["index"] == 4
    assert s["image"].shape == (3, 16, 16) and s["image"].dtype == torch.float32
    (tmp_path / "names.txt").write_text("tench, Tinca tinca\ngoldfish\n\n")
    assert read_class_names(str(tmp_path / "names.txt")) == ["tench", "goldfish"]


def test_bad_images_are_skipped_counted_and_logged(tmp_path, caplog):
    meta = _imagenet(tmp_path, n=10, bad=(3,))
    (tmp_path / "train" / "c1" / "img 7.JPEG").unlink()  # a missing file
    ds = ImageNetDataset(str(meta), str(tmp_path), max_bad_fraction=0.5)
    with caplog.at_level(logging.WARNING):
        samples = [ds[i] for i in range(len(ds))]
    # the bad record is replaced by the next readable one, so every sample is real
    assert [s["index"] for s in samples] == [0, 1, 2, 4, 4, 5, 6, 8, 8, 9]
    assert ds.num_bad == 2 and ds.num_read == 12
    assert len(ds.bad_paths) == 2 and sum("skipping unreadable image" in r.message for r in caplog.records) == 2


def test_too_many_bad_images_stop_with_a_clear_error(tmp_path):
    meta = _imagenet(tmp_path, n=10, bad=(1, 5))
    ds = ImageNetDataset(str(meta), str(tmp_path), max_bad_fraction=0.1)
    assert ds[1]["index"] == 2  # one bad file of ten: exactly the budget
    with pytest.raises(TooManyBadSamples, match="MAX_BAD_FRACTION=0.1"):
        ds[5]
    # re-reading the same bad file every epoch does not exhaust the whole-dataset budget
    ds = ImageNetDataset(str(meta), str(tmp_path), max_bad_fraction=0.2)
    for _ in range(5):
        ds[1], ds[5]
    assert ds.num_bad == 10 and len(ds.bad_paths) == 2


def _coco(tmp_path):
    data = {
        "images": [{"id": 7, "file_name": "val2014/a.jpg"}, {"id": 9, "file_name": "val2014/b.jpg"}],
        "annotations": [
            {"id": 1, "image_id": 9, "caption": "a dog"}, {"id": 2, "image_id": 7, "caption": "a cat"},
            {"id": 3, "image_id": 9, "caption": "a brown dog"},
        ],
    }
    ann = tmp_path / "annotations" / "captions_val5k.json"
    ann.parent.mkdir()
    ann.write_text(json.dumps(data))
    _jpeg(tmp_path / "images" / "val2014" / "a.jpg", 0)
    _jpeg(tmp_path / "images" / "val2014" / "b.jpg", 255)
    return ann


def test_coco_caption_reader_pairs_and_images(tmp_path):
    ann = _coco(tmp_path)
    records = read_coco_captions(str(ann))
    assert records == [
        {"image": "val2014/a.jpg", "image_id": 7, "captions": ["a cat"]},
        {"image": "val2014/b.jpg", "image_id": 9, "captions": ["a dog", "a brown dog"]},
    ]
    pairs = CaptionDataset(records, str(tmp_path / "images"), mode="pairs")
    assert len(pairs) == 3 and pairs[2]["caption"] == "a brown dog" and pairs[2]["image_id"] == 9
    assert np.asarray(pairs[2]["image"]).mean() == 255  # no transform: the PIL image
    images = CaptionDataset(records, str(tmp_path / "images"), mode="images")
    assert len(images) == 2 and images[1]["captions"] == ["a dog", "a brown dog"]


def test_jsonl_pairs_reader_groups_by_image(tmp_path):
    path = tmp_path / "train.jsonl"
    rows = [{"image": "x/1.jpg", "caption": "one"}, {"image": "x/2.jpg", "caption": "two"},
            {"image": "x/1.jpg", "caption": "uno"}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    assert read_jsonl_pairs(str(path)) == [
        {"image": "x/1.jpg", "image_id": "x/1.jpg", "captions": ["one", "uno"]},
        {"image": "x/2.jpg", "image_id": "x/2.jpg", "captions": ["two"]},
    ]
    path.write_text('{"image": "a.jpg"}\n')
    with pytest.raises(ValueError, match="train.jsonl:1"):
        read_jsonl_pairs(str(path))


def test_text_corpus_reader_packs_lines_within_documents(tmp_path):
    path = tmp_path / "train.txt"
    path.write_text("one two three\nfour five\n\nsix seven eight nine ten eleven\n\n\ntwelve\n")
    ds = TextCorpusDataset(str(path), max_words=4)
    assert len(ds) == 4
    expected = ["one two three four", "four five", "six seven eight nine", "twelve"]
    assert [ds[i]["text"] for i in range(4)] == expected
    # the line index is cached and reused; a changed file gets a new index
    cached = TextCorpusDataset(str(path), max_words=4, cache_dir=str(tmp_path / "cache"))
    (index_file,) = (tmp_path / "cache" / "text_index").iterdir()
    again = TextCorpusDataset(str(path), max_words=4, cache_dir=str(tmp_path / "cache"))
    assert [cached[i]["text"] for i in range(4)] == [again[i]["text"] for i in range(4)] == expected
    path.write_text("alpha beta\n")
    assert len(TextCorpusDataset(str(path), max_words=4, cache_dir=str(tmp_path / "cache"))) == 1
    assert len(list((tmp_path / "cache" / "text_index").iterdir())) == 2


def test_text_corpus_reader_keeps_a_few_files_open_per_process(tmp_path):
    import os
    import pickle

    folder = tmp_path / "corpus"
    folder.mkdir()
    for k in range(3):
        (folder / f"{k}.txt").write_text(f"file{k} a\nfile{k} b\n\nfile{k} c\n")
    ds = TextCorpusDataset(str(folder), max_words=8)
    ds.MAX_OPEN_FILES = 2
    expected = [ds[i]["text"] for i in range(len(ds))]
    assert expected[0] == "file0 a file0 b" and expected[-1] == "file2 c" and len(ds._handles) == 2
    for i in (8, 0, 4, 8, 2):  # files 2, 0, 1, 2, 0: each read right whichever handle was evicted
        assert ds[i]["text"] == expected[i]
    assert len(ds._handles) == 2 and all(not f.closed for f in ds._handles.values())
    copy = pickle.loads(pickle.dumps(ds))  # open files are not part of the state
    assert "_handles" not in copy.__dict__ and [copy[i]["text"] for i in range(len(ds))] == expected
    mine = dict(ds._handles)
    ds._handles_pid = os.getpid() + 1  # as seen from a forked worker: opens its own files
    assert ds[0]["text"] == expected[0] and all(f is not ds._handles.get(k) for k, f in mine.items())


def _task_cfg(tmp_path, **datasets):
    cfg = get_cfg()
    cfg.DATA_PATH = str(tmp_path)
    cfg.merge_from_dict({"TASKS": [{"NAME": "t", "DATASETS": datasets,
                                    "DATALOADER": {"ANNO_FOLDER": "annotations", "FEATS_FOLDER": "images"}}]})
    cfg.finalize()
    return cfg


def test_build_reader_resolves_split_names_and_aliases(tmp_path):
    _coco(tmp_path)
    cfg = _task_cfg(tmp_path, DATASET_NAME="MSCOCO", TRAIN="val5k", VAL="captions_val5k.json")
    assert len(build_reader(cfg.TASKS[0], cfg, "train")) == 3
    assert len(build_reader(cfg.TASKS[0], cfg, "val", mode="images")) == 2


def test_missing_annotation_file_fails_naming_path_and_key(tmp_path):
    cfg = _task_cfg(tmp_path, DATASET_NAME="coco_caption", TRAIN="train113k")
    with pytest.raises(ConfigError) as e:
        build_reader(cfg.TASKS[0], cfg, "train")
    assert "captions_train113k.json" in str(e.value) and "TASKS.t.DATASETS.TRAIN" in str(e.value)
    with pytest.raises(ConfigError, match="TASKS.t.DATASETS.TEST is empty"):
        build_reader(cfg.TASKS[0], cfg, "test")
    cfg = _task_cfg(tmp_path, DATASET_NAME="laion", TRAIN="x")
    with pytest.raises(ConfigError, match="DATASET_NAME 'laion'"):
        build_reader(cfg.TASKS[0], cfg, "train")


def _tool(name):
    import importlib.util
    import os

    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools", f"{name}.py")
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_convert_karpathy_coco_splits(tmp_path):
    data = {"dataset": "coco", "images": [
        {"filepath": "train2014", "filename": "a.jpg", "split": "train", "cocoid": 1, "imgid": 0,
         "sentences": [{"raw": " A dog. ", "sentid": 10}]},
        {"filepath": "val2014", "filename": "b.jpg", "split": "restval", "cocoid": 2, "imgid": 1,
         "sentences": [{"raw": "A cat", "sentid": 11}, {"raw": "cat", "sentid": 12}]},
        {"filepath": "val2014", "filename": "c.jpg", "split": "test", "cocoid": 3, "imgid": 2,
         "sentences": [{"raw": "a bird", "sentid": 13}]},
    ]}
    (tmp_path / "dataset_coco.json").write_text(json.dumps(data))
    assert _tool("convert_karpathy").main([str(tmp_path / "dataset_coco.json"), "--out", str(tmp_path / "ann")]) == 0
    train = read_coco_captions(str(tmp_path / "ann" / "captions_train113k.json"))
    assert train == [{"image": "train2014/a.jpg", "image_id": 1, "captions": ["A dog."]},
                     {"image": "val2014/b.jpg", "image_id": 2, "captions": ["A cat", "cat"]}]
    assert read_coco_captions(str(tmp_path / "ann" / "captions_val5k.json")) == []
    assert [r["image_id"] for r in read_coco_captions(str(tmp_path / "ann" / "captions_test5k.json"))] == [3]


def test_check_data_reports_missing_files_and_bad_images(tmp_path, capsys):
    _coco(tmp_path)
    (tmp_path / "images" / "val2014" / "b.jpg").write_bytes(b"truncated")
    cfg = _task_cfg(tmp_path, DATASET_NAME="coco_caption", TRAIN="val5k", VAL="missing")
    problems = _tool("check_data").check(cfg, samples=10)
    assert len(problems) == 2
    assert "1 of 2 sampled images unreadable" in problems[0] and "b.jpg" in problems[0]
    assert "captions_missing.json" in problems[1] and "TASKS.t.DATASETS.VAL" in problems[1]


def test_crop_scale_and_crop_pct_knobs():
    """DATALOADER.CROP_SCALE [1, 1] keeps the whole image in training; CROP_PCT 1.0 keeps it at test time;
    bad values name the task and key."""
    from yacs.config import CfgNode

    from uniperceiver.data.transforms import transform_from_config

    mild = {"scale": (0.5, 1.0), "hflip": 0.0}  # a caption task's defaults; CROP_SCALE overrides the scale
    cfg = get_cfg()
    task = CfgNode({"NAME": "t", "DATALOADER": {"CROP_SCALE": [1.0, 1.0], "CROP_PCT": 1.0, "RAND_AUGMENT": ""}})
    cfg.MODEL.IMG_INPUT_SIZE = 8
    img = np.zeros((8, 8, 3), np.uint8)
    img[0, :] = 255  # a line on the border: any crop or resize-then-centre-crop loses or blurs it
    pil = Image.fromarray(img)
    for is_train in (True, False):
        out = transform_from_config(task, cfg, is_train, **mild)(pil)
        assert out.shape == (3, 8, 8) and out[:, 0].mean() > out[:, 4].mean() + 1.0 and out[:, 1].mean() < out[:, 0].mean()
    task.DATALOADER.CROP_PCT = 0.5
    assert transform_from_config(task, cfg, False, **mild)(pil)[:, 0].mean() < out[:, 0].mean()
    task.DATALOADER.CROP_SCALE = [0.9, 0.2]
    with pytest.raises(ConfigError, match=r"DATALOADER.CROP_SCALE of task 't'"):
        transform_from_config(task, cfg, True, **mild)
    task.DATALOADER.CROP_SCALE, task.DATALOADER.CROP_PCT = [], 1.5
    with pytest.raises(ConfigError, match=r"DATALOADER.CROP_PCT of task 't'"):
        transform_from_config(task, cfg, False, **mild)
