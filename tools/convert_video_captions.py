#!/usr/bin/env python
"""Convert the MSR-VTT and MSVD caption releases into the COCO-style video caption files uniperceiver reads
(``{"videos": [{"id", "file_name"}], "annotations": [{"id", "video_id", "caption"}]}`` per split).

    # MSR-VTT: the split is each video's "split" (train / validate / test)
    python tools/convert_video_captions.py --format msrvtt train_val_videodatainfo.json test_videodatainfo.json \
        --out $DATA_PATH/msrvtt/annotations          # -> captions_train.json, captions_val.json, captions_test.json
    # MSVD: AllVideoDescriptions.txt lines "<clip_id> <caption words...>"; standard split 1200 / 100 / 670 clips
    python tools/convert_video_captions.py --format msvd AllVideoDescriptions.txt --clip-list youtube_mapping.txt \
        --out $DATA_PATH/msvd/annotations

MSR-VTT: ``id`` is the number of ``video<N>`` (``file_name`` ``video<N>.mp4``), a caption's ``id`` its ``sen_id``.
MSVD: the clips are taken in the order of ``--clip-list`` (first field of each line, e.g. ``youtube_mapping.txt``:
``-4wsuPCjDBc_5_15 vid1``), else of first appearance in the descriptions; the first ``--split-sizes`` clips are
train, the next val, the last test.  ``id`` is the clip's 1-based position in that order (= N of ``vid<N>``),
``file_name`` ``<clip_id>.avi``, a caption's ``id`` its line number.  ``--ext`` changes the extension.
Captions of unknown videos, empty captions and videos without captions are left out and counted.  Only splits
with videos are written.
"""
import argparse
import json
import os
import re
import sys
from collections import OrderedDict

from uniperceiver.data.datasets.base import load_json

SPLITS = {"train": "train", "validate": "val", "val": "val", "test": "test"}


class ConvertError(ValueError):
    """A malformed input; the message names the file (and line or entry)."""


def _load_json(path: str):
    """:func:`uniperceiver.data.datasets.base.load_json` (path:line:column on invalid JSON) as a ``ConvertError``."""
    try:
        return load_json(path)
    except ValueError as e:
        raise ConvertError(str(e)) from None


def _empty_splits() -> "OrderedDict[str, dict]":
    return OrderedDict((s, {"videos": [], "annotations": []}) for s in ("train", "val", "test"))


def convert_msrvtt(paths, ext: str = ".mp4") -> dict:
    """MSR-VTT ``*_videodatainfo.json`` files -> ``{"splits": {split: {"videos", "annotations"}}, counts}``."""
    data = OrderedDict()
    for path in paths:
        data[path] = _load_json(path)
        if not isinstance(data[path], dict) or not isinstance(data[path].get("videos"), list) \
                or not isinstance(data[path].get("sentences"), list):
            raise ConvertError(f"{path}: not an MSR-VTT videodatainfo file (needs 'videos' and 'sentences' lists)")
    out, where_of = _empty_splits(), {}
    for path, d in data.items():
        for i, video in enumerate(d["videos"]):
            name = video.get("video_id") if isinstance(video, dict) else None
            m = re.fullmatch(r"video(\d+)", name) if isinstance(name, str) else None
            split = video.get("split") if isinstance(video, dict) else None
            if m is None or split not in SPLITS:
                raise ConvertError(f"{path}: videos[{i}] needs a 'video_id' 'video<N>' and a 'split' in "
                                   f"{sorted(SPLITS)}, got video_id {name!r}, split {split!r}")
            if name not in where_of:  # a video listed in two files keeps its first split
                where_of[name] = (SPLITS[split], int(m.group(1)))
                out[SPLITS[split]]["videos"].append({"id": int(m.group(1)), "file_name": name + ext})
    left_out, used_ids = 0, set()
    for path, d in data.items():
        for i, sent in enumerate(d["sentences"]):
            if not isinstance(sent, dict):
                raise ConvertError(f"{path}: sentences[{i}] is not an object: {sent!r}")
            caption = sent.get("caption")
            caption = " ".join(caption.split()) if isinstance(caption, str) else ""
            if sent.get("video_id") not in where_of or not caption:
                left_out += 1
                continue
            split, video_id = where_of[sent["video_id"]]
            sen_id = sent.get("sen_id")
            sen_id = sen_id if isinstance(sen_id, int) and sen_id not in used_ids else None
            used_ids.add(sen_id)
            out[split]["annotations"].append({"id": sen_id, "video_id": video_id, "caption": caption})
    _number_missing_ids(out)
    return _result(out, left_out)


def _number_missing_ids(out) -> None:
    """Give annotations without an integer id (or a repeated one) ids above every id in use."""
    anns = [a for split in out.values() for a in split["annotations"]]
    next_id = 1 + max((a["id"] for a in anns if a["id"] is not None), default=-1)
    for ann in anns:
        if ann["id"] is None:
            ann["id"], next_id = next_id, next_id + 1


def _result(out, captions_left_out: int) -> dict:
    """Drop videos without captions (nothing to train or score on) and count what was left out."""
    dropped = 0
    for split in out.values():
        captioned = {a["video_id"] for a in split["annotations"]}
        kept = [v for v in split["videos"] if v["id"] in captioned]
        dropped += len(split["videos"]) - len(kept)
        split["videos"] = kept
    return {"splits": out, "captions_left_out": captions_left_out, "videos_without_captions": dropped}


def read_msvd_descriptions(path: str):
    """``(clip ids in first-appearance order, [(line, clip_id, caption)])`` of ``AllVideoDescriptions.txt``."""
    order, rows = OrderedDict(), []
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            parts = line.split(None, 1)
            order.setdefault(parts[0], None)
            rows.append((line_no, parts[0], parts[1].strip() if len(parts) > 1 else ""))
    return list(order), rows


def read_clip_list(path: str) -> list:
    """The first field of each non-empty, non-comment line; a repeated clip is a ``ConvertError``."""
    clips, seen = [], {}
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            fields = line.split()
            if not fields or fields[0].startswith("#"):
                continue
            if fields[0] in seen:
                raise ConvertError(f"{path}:{line_no}: clip {fields[0]!r} already listed on line {seen[fields[0]]}")
            seen[fields[0]] = line_no
            clips.append(fields[0])
    return clips


def convert_msvd(path: str, clip_list=None, split_sizes=(1200, 100, 670), ext: str = ".avi") -> dict:
    """MSVD descriptions -> ``{"splits": {split: {"videos", "annotations"}}, counts}``."""
    first_seen, rows = read_msvd_descriptions(path)
    clips = read_clip_list(clip_list) if clip_list else first_seen
    if len(clips) != sum(split_sizes):
        where = clip_list or path
        raise ConvertError(f"{where}: {len(clips)} clips, but --split-sizes {' '.join(map(str, split_sizes))} "
                           f"add up to {sum(split_sizes)}")
    out, where_of = _empty_splits(), {}
    bounds = [sum(split_sizes[:i + 1]) for i in range(3)]
    for pos, clip in enumerate(clips):
        split = next(s for s, end in zip(out, bounds) if pos < end)
        where_of[clip] = (split, pos + 1)
        out[split]["videos"].append({"id": pos + 1, "file_name": clip + ext})
    left_out = 0
    for line_no, clip, caption in rows:
        caption = " ".join(caption.split())
        if clip not in where_of or not caption:
            left_out += 1
            continue
        split, video_id = where_of[clip]
        out[split]["annotations"].append({"id": line_no, "video_id": video_id, "caption": caption})
    return _result(out, left_out)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--format", required=True, choices=("msrvtt", "msvd"))
    parser.add_argument("inputs", nargs="+", help="msrvtt: *_videodatainfo.json files; msvd: AllVideoDescriptions.txt")
    parser.add_argument("--out", required=True, help="annotation folder to write captions_<split>.json into")
    parser.add_argument("--clip-list", help="msvd: file whose lines start with the clip ids, in split order")
    parser.add_argument("--split-sizes", type=int, nargs=3, default=[1200, 100, 670], metavar=("TRAIN", "VAL", "TEST"),
                        help="msvd: number of clips in train / val / test (default 1200 100 670)")
    parser.add_argument("--ext", help="video file extension (default .mp4 for msrvtt, .avi for msvd)")
    args = parser.parse_args(argv)
    if args.format == "msvd" and len(args.inputs) != 1:
        parser.error("--format msvd takes one input, AllVideoDescriptions.txt")
    if args.format == "msrvtt" and args.clip_list:
        parser.error("--clip-list is for --format msvd")
    for path in args.inputs + ([args.clip_list] if args.clip_list else []):
        if not os.path.isfile(path):
            print(f"error: {path} not found", file=sys.stderr)
            return 2
    ext = args.ext or (".mp4" if args.format == "msrvtt" else ".avi")
    ext = ext if ext.startswith(".") else "." + ext
    if any(n < 0 for n in args.split_sizes):
        parser.error("--split-sizes must be >= 0")
    try:
        if args.format == "msrvtt":
            result = convert_msrvtt(args.inputs, ext)
        else:
            result = convert_msvd(args.inputs[0], args.clip_list, args.split_sizes, ext)
    except ConvertError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    os.makedirs(args.out, exist_ok=True)
    for name, split in result["splits"].items():
        if not split["videos"]:
            continue
        path = os.path.join(args.out, f"captions_{name}.json")
        data = {"info": {"description": f"{args.format} {name}"}, "type": "captions", **split}
        with open(path + ".tmp", "w", encoding="utf-8") as f:
            json.dump(data, f)
        os.replace(path + ".tmp", path)
        print(f"{path}: {len(split['videos'])} videos, {len(split['annotations'])} captions")
    print(f"left out: {result['captions_left_out']} captions (unknown video or empty caption), "
          f"{result['videos_without_captions']} videos without captions")
    return 0


if __name__ == "__main__":
    sys.exit(main())
