"""Fault injection, data: bad annotation records (skipped, counted, logged with file and line), unreadable and
unusual images (one decoder for the readers and tools/check_data.py), bad data during training.

tests/test_datasets.py covers corrupt images; tests/test_video_vqa.py truncated / garbage videos.
"""
from __future__ import annotations

import json
import logging
import re
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest

from conftest import CLS, QUICK, REPO, load_tool, run_main
from uniperceiver.config import setup_cfg
from uniperceiver.data.datasets import (TooManyBadSamples, build_reader, read_coco_captions, read_image_label_list,
                                        read_jsonl_pairs, read_video_captions, read_vqa)
from uniperceiver.data.datasets.vqa import build_answer_vocab
from uniperceiver.tasks import build_tasks


# -------------------------------------------------------------------------------------------------- bad data
def _write_imagenet(root: Path, lines) -> Path:
    from PIL import Image

    (root / "img").mkdir(parents=True, exist_ok=True)
    for i in range(4):
        Image.new("RGB", (8, 8), (i * 40, 0, 0)).save(root / "img" / f"{i}.png")
    (root / "img" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    (root / "list.txt").write_text("\n".join(lines) + "\n")
    (root / "imagenet").mkdir(exist_ok=True)  # the demo label set's path under DATA_PATH: 10 digit names
    (root / "imagenet" / "classnames.txt").write_text("\n".join(f"digit {i}" for i in range(10)) + "\n")
    return root / "list.txt"


GOOD_LIST = [f"img/{i % 4}.png {i % 3}" for i in range(18)]
GOOD_JSONL = [json.dumps({"image": f"img/{i % 4}.png", "caption": f"a picture number {i}"}) for i in range(18)]

# (name, reader kind, the bad record, the reason logged)
BAD_RECORDS = [
    ("malformed_json_line", "jsonl", '{"image": "img/0.png", "caption": ', "malformed line"),
    ("json_without_caption", "jsonl", '{"image": "img/0.png"}', "malformed line"),
    ("json_not_an_object", "jsonl", '["img/0.png", "a caption"]', "malformed line"),
    ("empty_caption", "jsonl", '{"image": "img/0.png", "caption": "   "}', "empty caption"),
    ("null_caption", "jsonl", '{"image": "img/0.png", "caption": null}', "empty caption"),
    ("list_line_without_label", "list", "img/0.png", "malformed line"),
    ("list_label_not_a_number", "list", "img/0.png three", "malformed line"),
    ("negative_label", "list", "img/0.png -3", "label out of range"),
    # one undecodable byte is one bad line (it used to refuse the whole file)
    ("undecodable_list_line", "list", "img/0\udcff.png 1", "undecodable line"),
    ("undecodable_json_line", "jsonl", '{"image": "img/0.png", "caption": "caf\udce9"}', "undecodable line"),
    # tokenises to nothing (the tokenizer's cleaning drops control characters): an empty caption
    ("caption_of_control_characters", "jsonl", json.dumps({"image": "img/0.png", "caption": "\x01\x02\x7f\x1b"}),
     "empty caption"),
]


def _read(kind, path, **kw):
    return (read_jsonl_pairs if kind == "jsonl" else read_image_label_list)(str(path), **kw)


@pytest.mark.parametrize("name,kind,bad,reason", BAD_RECORDS, ids=[c[0] for c in BAD_RECORDS])
def test_bad_annotation_record_is_skipped_counted_and_logged_with_file_and_line(tmp_path, caplog, name, kind,
                                                                                bad, reason):
    lines = (GOOD_JSONL if kind == "jsonl" else GOOD_LIST)[:]
    lines.insert(6, bad)  # line 7
    path = tmp_path / ("train.jsonl" if kind == "jsonl" else "list.txt")
    path.write_text("\n".join(lines) + "\n", errors="surrogateescape")  # \udcff -> the byte 0xff
    with caplog.at_level(logging.WARNING, logger="uniperceiver"):
        records = _read(kind, path, max_bad_fraction=0.1, name="task/train")
    n = sum(len(r["captions"]) for r in records) if kind == "jsonl" else len(records)
    assert n == 18
    text = caplog.text
    assert f"{path}:7: {reason}" in text and "task/train" in text
    assert f"skipped 1 of 19 annotation records of {path}" in text
    with pytest.raises(TooManyBadSamples, match=r"1 of 19 annotation records .*MAX_BAD_FRACTION=0\.05"):
        _read(kind, path, max_bad_fraction=0.05, name="task/train")
    with pytest.raises(ValueError, match=f"{path.name}:7"):  # standalone (no fraction): strict
        _read(kind, path)


def test_coco_caption_empty_caption_and_unknown_image_are_skipped(tmp_path, caplog):
    ann = {"images": [{"id": i, "file_name": f"img/{i}.png"} for i in range(3)],
           "annotations": [{"id": j, "image_id": j % 3, "caption": f"caption {j}"} for j in range(18)]
           + [{"id": 100, "image_id": 1, "caption": ""}, {"id": 101, "image_id": 77, "caption": "ghost"}]}
    path = tmp_path / "captions_train.json"
    path.write_text(json.dumps(ann))
    with caplog.at_level(logging.WARNING, logger="uniperceiver"):
        records = read_coco_captions(str(path), max_bad_fraction=0.2, name="coco/train")
    assert sum(len(r["captions"]) for r in records) == 18
    assert "annotation 18, id 100): empty caption" in caplog.text
    assert "annotation 19, id 101): unknown image_id" in caplog.text
    with pytest.raises(TooManyBadSamples, match="empty caption: 1, unknown image_id: 1"):
        read_coco_captions(str(path), max_bad_fraction=0.05, name="coco/train")


# JSON annotation files (COCO captions, video captions, VQA): malformed entries are bad records like the above.
def _caption_json(kind="image", bad_item=None, bad_ann=None):
    """3 images (or videos) with 18 good captions; ``bad_item`` / ``bad_ann`` inserted at index 1 / 6."""
    items = [{"id": i, "file_name": f"{kind}/{i}.png"} for i in range(3)]
    anns = [{"id": j, f"{kind}_id": j % 3, "caption": f"caption {j}"} for j in range(18)]
    if bad_item is not None:
        items.insert(1, bad_item)
    if bad_ann is not None:
        anns.insert(6, bad_ann)
    return {f"{kind}s": items, "annotations": anns}


BAD_IMAGE_ENTRIES = [
    ("not_an_object", "img/9.png"),
    ("no_id", {"file_name": "img/9.png"}),
    ("no_file_name", {"id": 9}),
    ("empty_file_name", {"id": 9, "file_name": " "}),
    ("file_name_not_a_string", {"id": 9, "file_name": 9}),
    ("id_not_a_scalar", {"id": [9], "file_name": "img/9.png"}),
]


@pytest.mark.parametrize("name,entry", BAD_IMAGE_ENTRIES, ids=[c[0] for c in BAD_IMAGE_ENTRIES])
def test_coco_caption_malformed_image_entry_is_a_bad_record(tmp_path, caplog, name, entry):
    path = tmp_path / "captions_train.json"
    path.write_text(json.dumps(_caption_json(bad_item=entry)))
    with caplog.at_level(logging.WARNING, logger="uniperceiver"):
        records = read_coco_captions(str(path), max_bad_fraction=0.1, name="coco/train")
    assert [r["image"] for r in records] == ["image/0.png", "image/1.png", "image/2.png"]
    assert sum(len(r["captions"]) for r in records) == 18
    assert f"{path} (image 1): malformed image entry" in caplog.text
    assert f"skipped 1 of 19 annotation records of {path}" in caplog.text
    with pytest.raises(ValueError, match=rf"{re.escape(str(path))} \(image 1\): malformed image entry"):
        read_coco_captions(str(path))


def test_coco_caption_images_or_annotations_not_a_list_is_an_error_naming_the_file(tmp_path):
    path = tmp_path / "captions_train.json"
    for key, value in (("images", {"0": "img/0.png"}), ("annotations", "a caption")):
        data = _caption_json()
        data[key] = value
        path.write_text(json.dumps(data))
        with pytest.raises(ValueError, match=rf"{re.escape(str(path))}: '{key}' must be a list"):
            read_coco_captions(str(path), max_bad_fraction=0.5)


# (name, bad video entry, bad annotation, the reason logged, where)
BAD_VIDEO_RECORDS = [
    ("unknown_video", None, {"id": 99, "video_id": 42, "caption": "a ghost"}, "unknown video_id",
     "annotation 6, id 99"),
    ("empty_caption", None, {"id": 99, "video_id": 1, "caption": " "}, "empty caption", "annotation 6, id 99"),
    ("null_caption", None, {"id": 99, "video_id": 1, "caption": None}, "empty caption", "annotation 6, id 99"),
    ("annotation_not_an_object", None, "a caption", "malformed annotation", "annotation 6"),
    ("video_without_file_name", {"id": 7}, None, "malformed video entry", "video 1"),
    ("video_not_an_object", "video/7.mp4", None, "malformed video entry", "video 1"),
]


@pytest.mark.parametrize("name,bad_item,bad_ann,reason,where", BAD_VIDEO_RECORDS,
                         ids=[c[0] for c in BAD_VIDEO_RECORDS])
def test_video_caption_bad_record_is_skipped_counted_and_logged(tmp_path, caplog, name, bad_item, bad_ann, reason,
                                                                where):
    path = tmp_path / "captions_train.json"
    path.write_text(json.dumps(_caption_json("video", bad_item, bad_ann)))
    with caplog.at_level(logging.WARNING, logger="uniperceiver"):
        records = read_video_captions(str(path), max_bad_fraction=0.1, name="msvd/train")
    assert [r["image"] for r in records] == ["video/0.png", "video/1.png", "video/2.png"]
    assert [len(r["captions"]) for r in records] == [6, 6, 6]
    assert f"{path} ({where}): {reason}" in caplog.text and "msvd/train" in caplog.text
    with pytest.raises(TooManyBadSamples, match=rf"1 of 19 annotation records .*\({reason}: 1\)"):
        read_video_captions(str(path), max_bad_fraction=0.05)
    with pytest.raises(ValueError, match=rf"{re.escape(str(path))} \({where}\): {reason}"):
        read_video_captions(str(path))


def _vqa_files(root: Path, bad_question=None, bad_annotation=None):
    """18 good questions (ids 1000..1017) with 10 answers each; the bad record inserted at index 5."""
    questions = [{"image_id": i, "question": f"what is {i}?", "question_id": 1000 + i} for i in range(18)]
    anns = [{"question_id": 1000 + i, "image_id": i, "answers": [{"answer": str(i % 4)}] * 10} for i in range(18)]
    if bad_question is not None:
        questions.insert(5, bad_question)
    if bad_annotation is not None:
        anns.insert(5, bad_annotation)
    qpath = root / "v2_OpenEnded_mscoco_train2014_questions.json"
    apath = root / "v2_mscoco_train2014_annotations.json"
    qpath.write_text(json.dumps({"data_subtype": "train2014", "questions": questions}))
    apath.write_text(json.dumps({"annotations": anns}))
    return qpath, apath


# (name, bad question, bad annotation, the reason logged, where, question ids read)
GOOD_QIDS = list(range(1000, 1018))
BAD_VQA_RECORDS = [
    ("question_without_text", {"image_id": 1, "question_id": 2000}, None, "malformed question",
     "question 5, question_id 2000", GOOD_QIDS),
    ("question_without_id", {"image_id": 1, "question": "why?"}, None, "malformed question",
     "question 5, question_id None", GOOD_QIDS),
    ("question_without_image", {"question": "why?", "question_id": 2000}, None, "malformed question",
     "question 5, question_id 2000", GOOD_QIDS),
    ("empty_question", {"image_id": 1, "question": "  ", "question_id": 2000}, None, "empty question",
     "question 5, question_id 2000", GOOD_QIDS),
    ("question_not_an_object", "why?", None, "malformed question", "question 5", GOOD_QIDS),
    ("annotation_without_question_id", None, {"answers": [{"answer": "1"}] * 10}, "malformed annotation",
     "annotation 5, question_id None", GOOD_QIDS),
    ("annotation_without_answers", None, {"question_id": 2000}, "malformed annotation",
     "annotation 5, question_id 2000", GOOD_QIDS),
    ("answers_not_objects", None, {"question_id": 2000, "answers": ["1"] * 10}, "malformed annotation",
     "annotation 5, question_id 2000", GOOD_QIDS),
    # the annotation of question 1003 is malformed: that question is dropped too (no usable answers)
    ("answers_not_a_list", None, {"question_id": 1003, "answers": "1"}, "malformed annotation",
     "annotation 5, question_id 1003", [q for q in GOOD_QIDS if q != 1003]),
]


@pytest.mark.parametrize("name,bad_q,bad_ann,reason,where,qids", BAD_VQA_RECORDS,
                         ids=[c[0] for c in BAD_VQA_RECORDS])
def test_vqa_bad_record_is_skipped_counted_and_logged(tmp_path, caplog, name, bad_q, bad_ann, reason, where, qids):
    qpath, apath = _vqa_files(tmp_path, bad_q, bad_ann)
    bad_file = qpath if bad_q is not None else apath
    with caplog.at_level(logging.WARNING, logger="uniperceiver"):
        records = read_vqa(str(qpath), max_bad_fraction=0.1, name="vqa/train")
    assert [r["question_id"] for r in records] == qids
    assert all(len(r["answers"]) == 10 and r["question"].startswith("what is") for r in records)
    assert records[0]["image"] == "train2014/COCO_train2014_000000000000.jpg"
    assert f"{bad_file} ({where}): {reason}" in caplog.text and "vqa/train" in caplog.text
    with pytest.raises(TooManyBadSamples, match=rf"1 of \d+ annotation records of {re.escape(str(bad_file))}"):
        read_vqa(str(qpath), max_bad_fraction=0.01)
    with pytest.raises(ValueError, match=rf"{re.escape(str(bad_file))} \({re.escape(where)}\): {reason}"):
        read_vqa(str(qpath))


def test_answer_vocab_skips_malformed_annotations_with_one_warning(tmp_path, caplog):
    _, apath = _vqa_files(tmp_path)
    data = json.loads(apath.read_text())
    data["annotations"] += [{"question_id": 2000, "answers": ["7"] * 10}, "7", {"question_id": 2001},
                            {"question_id": 2002, "answers": [{"answer": 7}] * 10}]
    apath.write_text(json.dumps(data))
    with caplog.at_level(logging.WARNING, logger="uniperceiver"):
        vocab = build_answer_vocab([str(apath)], min_count=3)
    assert vocab == ["0", "1", "2", "3"]  # 50, 50, 40, 40 human answers; no "7" from the malformed ones
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "skipped 4 malformed annotations" in warnings[0] and str(apath) in warnings[0]


TRUNCATED_JSON = '{"images": [\n  {"id": 1,\n'  # Expecting property name: line 3, column 1


@pytest.mark.parametrize("reader", ["coco_caption", "video_caption", "vqa_questions", "vqa_annotations",
                                    "answer_vocab"])
def test_truncated_json_annotation_file_names_path_line_and_column(tmp_path, reader):
    qpath, apath = _vqa_files(tmp_path)
    path = {"vqa_questions": qpath, "vqa_annotations": apath, "answer_vocab": apath}.get(
        reader, tmp_path / "captions_train.json")
    path.write_text(TRUNCATED_JSON)
    read = {
        "coco_caption": lambda: read_coco_captions(str(path), max_bad_fraction=0.5),
        "video_caption": lambda: read_video_captions(str(path), max_bad_fraction=0.5),
        "vqa_questions": lambda: read_vqa(str(qpath), max_bad_fraction=0.5),
        "vqa_annotations": lambda: read_vqa(str(qpath), max_bad_fraction=0.5),
        "answer_vocab": lambda: build_answer_vocab([str(apath)]),
    }[reader]
    with pytest.raises(ValueError, match=rf"^{re.escape(str(path))}:3:1: not valid JSON: Expecting property name"):
        read()


def test_video_caption_and_vqa_readers_use_max_bad_fraction_of_the_task(tmp_path):
    """build_reader passes DATALOADER.MAX_BAD_FRACTION to the video-caption and VQA annotation readers."""
    (tmp_path / "msvd" / "annotations").mkdir(parents=True)
    (tmp_path / "msvd" / "annotations" / "captions_train.json").write_text(json.dumps(
        _caption_json("video", bad_ann={"id": 99, "video_id": 1, "caption": ""})))
    (tmp_path / "vqa" / "annotations").mkdir(parents=True)
    _vqa_files(tmp_path / "vqa" / "annotations", bad_question={"image_id": 1, "question": "", "question_id": 2000})
    for config, task, n in (("instant_video.yaml", 1, 18), ("instant_vqa.yaml", 0, 18)):
        cfg = setup_cfg(str(QUICK / config), ["DATA_PATH", str(tmp_path), "DATALOADER.MAX_BAD_FRACTION", "0.1"])
        assert len(build_reader(cfg.TASKS[task], cfg, "train")) == n
        cfg = setup_cfg(str(QUICK / config), ["DATA_PATH", str(tmp_path), "DATALOADER.MAX_BAD_FRACTION", "0.01"])
        with pytest.raises(TooManyBadSamples, match="empty (caption|question): 1"):
            build_reader(cfg.TASKS[task], cfg, "train")


def _classification_cfg(root: Path, *opts):
    return setup_cfg(CLS, ["DATA_PATH", str(root), "DATALOADER.FEATS_FOLDER", ".", "DATALOADER.ANNO_FOLDER", ".",
                           "DATASETS.TRAIN", "list.txt", *opts])


def test_out_of_range_label_is_skipped_by_the_task_and_too_many_stop(tmp_path, caplog):
    """Labels the task's label set (10 demo digits) has no class for: skipped per task with file:line."""
    list_file = _write_imagenet(tmp_path, GOOD_LIST + ["img/1.png 10", "img/2.png 9"])
    cfg = _classification_cfg(tmp_path, "DATALOADER.MAX_BAD_FRACTION", "0.1")
    task = build_tasks(cfg)["imagenet"]
    with caplog.at_level(logging.WARNING, logger="uniperceiver"):
        ds = task.build_dataset("train")
    assert len(ds) == 19 and max(r["label"] for r in ds.records) == 9
    assert "list.txt:19: label out of range [0, 10)" in caplog.text and str(list_file.parent) in caplog.text
    cfg = _classification_cfg(tmp_path, "DATALOADER.MAX_BAD_FRACTION", "0.01")
    with pytest.raises(TooManyBadSamples, match="label out of range"):
        build_tasks(cfg)["imagenet"].build_dataset("train")


def test_corrupt_image_among_bad_records_is_skipped_in_the_loader(tmp_path, caplog):
    """A corrupt image file (read lazily, in __getitem__) next to bad list lines: the reader still yields
    full batches of readable images."""
    _write_imagenet(tmp_path, GOOD_LIST[:8] + ["img/corrupt.png 1", "bad line"])
    cfg = _classification_cfg(tmp_path, "DATALOADER.MAX_BAD_FRACTION", "0.5")
    ds = build_reader(cfg.TASKS[0], cfg, "train")
    with caplog.at_level(logging.WARNING, logger="uniperceiver"):
        samples = [ds[i] for i in range(len(ds))]
    assert len(ds) == 9 and all(s["image"].size == (8, 8) for s in samples)
    assert "corrupt.png" in caplog.text and ds.num_bad == 1


# ----------------------------------------------------------------------------------------- image decoding
def _png_header_only(path: Path, width: int, height: int) -> None:
    """A PNG whose header claims ``width`` x ``height`` (8-bit grey) and whose pixel data is one empty IDAT: what
    PIL sees of a 20000x20000 image before it decodes anything, in 60 bytes."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) +
                     chunk(b"IEND", b""))


def _unusual_images(root: Path) -> dict:
    """name -> (file, the RGB value its pixel (0, 0) must decode to, the decoded size)."""
    from PIL import Image

    root.mkdir(parents=True, exist_ok=True)
    grey16 = np.full((6, 10), 40000, dtype=np.uint16)  # 40000 / 257 = 155.6 -> 156 (clipping gave 255)
    Image.fromarray(grey16).save(root / "grey16.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display": stored 10 wide x 6 high, shown 6 x 10
    Image.new("RGB", (10, 6), (0, 0, 255)).save(root / "rotated.jpg", exif=exif, quality=100)
    Image.new("RGBA", (10, 6), (255, 0, 0, 0)).save(root / "transparent.png")  # fully transparent red
    Image.new("LA", (10, 6), (0, 128)).save(root / "grey_alpha.png")  # black at half opacity over white
    pal = Image.new("P", (10, 6), 1)
    pal.putpalette([0, 0, 0, 0, 255, 0] + [0] * 762)
    pal.save(root / "palette.png")
    pal.save(root / "palette_transparent.png", transparency=1)
    Image.new("CMYK", (10, 6), (0, 255, 255, 0)).save(root / "cmyk.jpg", quality=100)  # red in CMYK
    return {
        "grey16": ("grey16.png", (156, 156, 156), (10, 6)),
        "exif_rotated": ("rotated.jpg", (0, 0, 255), (6, 10)),
        "rgba_transparent": ("transparent.png", (255, 255, 255), (10, 6)),
        "grey_alpha": ("grey_alpha.png", (127, 127, 127), (10, 6)),
        "palette": ("palette.png", (0, 255, 0), (10, 6)),
        "palette_transparent": ("palette_transparent.png", (255, 255, 255), (10, 6)),
        "cmyk": ("cmyk.jpg", (255, 0, 0), (10, 6)),
    }


def test_images_decode_as_a_viewer_shows_them_in_the_reader_and_in_check_data(tmp_path):
    """16-bit grey (/257, not solid white), EXIF orientation, alpha over white, palettes, CMYK: the training reader
    and tools/check_data.py's decoder give the same pixels."""
    from uniperceiver.data.datasets import ImageRecordsDataset, load_rgb

    cases = _unusual_images(tmp_path)
    ds = ImageRecordsDataset([{"image": f} for f, _, _ in cases.values()], image_root=str(tmp_path))
    for (name, (fname, rgb, size)), record in zip(cases.items(), ds.records):
        image = ds.read_image(record)
        assert image is not None and image.mode == "RGB" and image.size == size, name
        px = np.asarray(image)[0, 0].astype(int)
        assert np.abs(px - rgb).max() <= 3, f"{name}: {px.tolist()} != {rgb}"
        assert np.array_equal(np.asarray(load_rgb(str(tmp_path / fname))), np.asarray(image)), name
    assert ds.num_bad == 0


def test_oversized_image_is_a_bad_sample_for_the_reader_and_check_data(tmp_path, caplog, capsys):
    """A 20000x20000 image (PIL's DecompressionBombError) among good ones is skipped and counted like a corrupt
    image, so the batch is still full and an exact resume that replays it does not crash; check_data agrees.
    A smaller DATALOADER.MAX_IMAGE_PIXELS makes the 8x8 images too large as well."""
    _write_imagenet(tmp_path, GOOD_LIST[:8] + ["img/bomb.png 1"])
    _png_header_only(tmp_path / "img" / "bomb.png", 20000, 20000)
    cfg = _classification_cfg(tmp_path, "DATALOADER.MAX_BAD_FRACTION", "0.5", "DATASETS.VAL", "list.txt")
    ds = build_reader(cfg.TASKS[0], cfg, "train")
    with caplog.at_level(logging.WARNING, logger="uniperceiver"):
        samples = [ds[i] for i in range(len(ds))]
    assert len(samples) == 9 and all(s["image"].size == (8, 8) for s in samples)
    assert ds.num_bad == 1 and "bomb.png" in caplog.text and "ImageTooLarge" in caplog.text
    check_data = load_tool("check_data")
    problems = check_data.check(cfg, samples=20)
    assert any("bomb.png" in p and "ImageTooLarge" in p for p in problems), problems
    small = _classification_cfg(tmp_path, "DATALOADER.MAX_BAD_FRACTION", "0.5", "DATALOADER.MAX_IMAGE_PIXELS", "63")
    ds = build_reader(small.TASKS[0], small, "train")
    assert ds.read_image(ds.records[0]) is None and ds.num_bad == 1
    assert "more than DATALOADER.MAX_IMAGE_PIXELS 63" in caplog.text


# ---------------------------------------------------------------------------------- unusable annotation files
def test_empty_annotation_and_class_name_files_are_errors_naming_the_file(tmp_path):
    from uniperceiver.data.datasets import AnnotationFileError, read_class_names

    for name in ("empty.txt", "blank.txt"):
        path = tmp_path / name
        path.write_text("" if name == "empty.txt" else "\n  \n\n")
        for read in (lambda: read_image_label_list(str(path), max_bad_fraction=0.1),
                     lambda: read_jsonl_pairs(str(path), max_bad_fraction=0.1)):
            with pytest.raises(AnnotationFileError, match=rf"{re.escape(str(path))}: empty annotation file"):
                read()
        with pytest.raises(AnnotationFileError, match=rf"{re.escape(str(path))}: empty class-name file"):
            read_class_names(str(path))
    path = tmp_path / "captions_train.json"
    path.write_text("")
    with pytest.raises(AnnotationFileError, match="empty annotation file"):
        read_coco_captions(str(path), max_bad_fraction=0.1)
    path.write_bytes(b'{"images": [],\n "annotations": ["caf\xe9"]}')  # one Latin-1 byte in a JSON document
    with pytest.raises(AnnotationFileError, match=rf"^{re.escape(str(path))}:2:22: not valid JSON: not UTF-8"):
        read_coco_captions(str(path), max_bad_fraction=0.1)
    names = tmp_path / "names.txt"
    names.write_bytes(b"cat\ndo\xffg\n")
    with pytest.raises(AnnotationFileError, match=rf"{re.escape(str(names))}:2: class name is not UTF-8"):
        read_class_names(str(names))


@pytest.mark.slow
def test_training_with_bad_data_runs_and_above_the_fraction_stops_in_one_line(tmp_path):
    root = tmp_path / "data"
    _write_imagenet(root, GOOD_LIST + ["img/corrupt.png 1", "img/3.png 12", "not a record", "img/bomb.png 2"])
    _png_header_only(root / "img" / "bomb.png", 20000, 20000)  # PIL's DecompressionBombError: a bad sample
    args = ["--config-file", CLS, "DATA_PATH", root, "DATALOADER.FEATS_FOLDER", ".", "DATALOADER.ANNO_FOLDER", ".",
            "DATASETS.TRAIN", "list.txt", "DATASETS.VAL", "list.txt", "SOLVER.MAX_ITER", "3",
            "DATALOADER.TRAIN_BATCH_SIZE", "4", "DATALOADER.NUM_WORKERS", "1", "LR_SCHEDULER.WARMUP", "0"]
    run_main([*args, "DATALOADER.MAX_BAD_FRACTION", "0.5", "OUTPUT_DIR", tmp_path / "ok"])
    log = (tmp_path / "ok" / "log.txt").read_text()
    assert "list.txt:20: label out of range" in log and "list.txt:21: malformed line" in log
    assert "corrupt.png" in log and "bomb.png" in log
    proc = run_main([*args, "DATALOADER.MAX_BAD_FRACTION", "0.0", "OUTPUT_DIR", tmp_path / "stop"], check=False)
    assert proc.returncode == 1
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and "MAX_BAD_FRACTION=0.0" in err[0] and "Traceback" not in proc.stderr


@pytest.mark.slow
@pytest.mark.distributed
def test_spawned_workers_stop_on_bad_data_in_one_line_each(tmp_path):
    """``--num-gpus 2``: the stop is reported by each worker as under one process (no worker traceback)."""
    root = tmp_path / "data"
    _write_imagenet(root, GOOD_LIST + ["img/3.png 12"])
    proc = run_main(["--num-gpus", "2", "--config-file", CLS, "DATA_PATH", root, "DATALOADER.FEATS_FOLDER", ".",
                     "DATALOADER.ANNO_FOLDER", ".", "DATASETS.TRAIN", "list.txt", "DATASETS.VAL", "list.txt",
                     "SOLVER.MAX_ITER", "3", "DATALOADER.MAX_BAD_FRACTION", "0.0", "OUTPUT_DIR", tmp_path / "stop"],
                    check=False, timeout=300)
    assert proc.returncode == 1, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 2 and all("MAX_BAD_FRACTION=0.0" in line for line in errors), proc.stderr
    assert "Traceback" not in proc.stderr
