#!/usr/bin/env python
"""Write the video lists (``relative/path.mp4 label`` per line) and ``classnames.txt`` that uniperceiver reads for
Kinetics-400/700 and Moments in Time, from their official annotation CSVs and a folder of downloaded clips.

    # Kinetics: CSVs "label,youtube_id,time_start,time_end,split[,is_cc]" (header line)
    python tools/convert_kinetics.py --videos $DATA_PATH/kinetics700/videos --train train.csv --val validate.csv \
        --out $DATA_PATH/kinetics700                 # -> train.txt, val.txt, classnames.txt
    # Moments in Time: trainingSet.csv / validationSet.csv lines "applauding/yt-xyz_1.mp4,applauding,..." (no header)
    python tools/convert_kinetics.py --format mit --videos $DATA_PATH/momentsintime/videos \
        --train trainingSet.csv --val validationSet.csv --classnames moments_categories.txt \
        --out $DATA_PATH/momentsintime

The video folder is walked once.  A Kinetics clip is found by ``<youtube_id>_<time_start:06d>_<time_end:06d>``
(the usual downloader names; flat or under ``<split>/<label>/``, extension mp4/webm/mkv/avi); a Moments in Time
clip by the last two components of its CSV path (``<label>/<file>``, under ``training/`` or wherever).  Clips
that were not downloaded are left out and counted.  Labels number the class names sorted (the union of the
given CSVs), or the order of ``--classnames`` (one name per line; MiT's ``name,index`` lines are accepted).
``--test`` needs a CSV with labels.  Video paths are written relative to ``--root`` (default ``--out``), which
is what ``DATALOADER.FEATS_FOLDER`` should name.
"""
import argparse
import csv
import os
import re
import sys
from collections import OrderedDict

VIDEO_EXTS = (".mp4", ".webm", ".mkv", ".avi")
KINETICS_COLUMNS = ("label", "youtube_id", "time_start", "time_end")


class ConvertError(ValueError):
    """A malformed input; the message names the file (and line)."""


def index_videos(folder: str, fmt: str) -> dict:
    """{lookup key: path} of every video file under ``folder`` (first in sorted walk order wins).

    Kinetics keys are ``(youtube_id, start, end)`` parsed from ``<youtube_id>_<start>_<end>.<ext>``; MiT keys are
    ``(file,)`` and ``(parent, file)``."""
    index = {}
    for dirpath, dirnames, files in os.walk(folder):
        dirnames.sort()
        for name in sorted(files):
            stem, ext = os.path.splitext(name)
            if ext.lower() not in VIDEO_EXTS:
                continue
            path = os.path.join(dirpath, name)
            if fmt == "kinetics":
                parts = stem.rsplit("_", 2)
                if len(parts) == 3 and parts[1].isdigit() and parts[2].isdigit():
                    index.setdefault((parts[0], int(parts[1]), int(parts[2])), path)
            else:
                index.setdefault((name,), path)
                index.setdefault((os.path.basename(dirpath), name), path)
    return index


def _seconds(value: str, path: str, line: int, column: str) -> int:
    try:
        return int(float(value))
    except (TypeError, ValueError):
        raise ConvertError(f"{path}:{line}: {column} must be a number, got {value!r}") from None


def read_kinetics_csv(path: str):
    """Yield ``(line, label, key)`` of a Kinetics CSV; a missing column or a malformed row is a ``ConvertError``."""
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.DictReader(f)
        header = [h.strip() for h in (reader.fieldnames or [])]
        missing = [c for c in KINETICS_COLUMNS if c not in header]
        if missing:
            hint = " (a test CSV without labels cannot be converted)" if missing == ["label"] else ""
            raise ConvertError(f"{path}: no {' / '.join(repr(c) for c in missing)} column{hint}; the header line "
                               f"must name {', '.join(KINETICS_COLUMNS)}, got {','.join(header)!r}")
        reader.fieldnames = header
        for row in reader:
            line = reader.line_num
            if any(row.get(c) is None for c in KINETICS_COLUMNS):
                raise ConvertError(f"{path}:{line}: expected the {len(header)} fields {','.join(header)!r}")
            label, youtube_id = row["label"].strip(), row["youtube_id"].strip()
            if not label or not youtube_id:
                raise ConvertError(f"{path}:{line}: empty label or youtube_id")
            key = (youtube_id, _seconds(row["time_start"], path, line, "time_start"),
                   _seconds(row["time_end"], path, line, "time_end"))
            yield line, label, key


def read_mit_csv(path: str):
    """Yield ``(line, label, key)`` of a Moments in Time CSV (``path,label,...``, no header)."""
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f)
        for row in reader:
            line = reader.line_num
            if not row or not "".join(row).strip():
                continue
            if len(row) < 2 or not row[0].strip() or not row[1].strip():
                raise ConvertError(f"{path}:{line}: expected 'relative/path.mp4,label,...', got {','.join(row)!r}")
            parts = [p for p in row[0].strip().replace("\\", "/").split("/") if p]
            yield line, row[1].strip(), tuple(parts[-2:])


def read_classnames(path: str) -> list:
    """One class name per line (trailing blank lines ignored); ``name,index`` lines must have index = line - 1."""
    with open(path, encoding="utf-8") as f:
        names = [line.strip() for line in f]
    while names and not names[-1]:
        names.pop()
    for i, name in enumerate(names):
        if not name:
            raise ConvertError(f"{path}:{i + 1}: empty class name")
        m = re.fullmatch(r"(.+?)\s*,\s*(\d+)", name)
        if m:
            if int(m.group(2)) != i:
                raise ConvertError(f"{path}:{i + 1}: index {m.group(2)} of {m.group(1)!r} is not its line order ({i})")
            names[i] = m.group(1)
    if len(set(names)) != len(names):
        raise ConvertError(f"{path}: duplicate class names")
    return names


def _write_atomic(path: str, lines) -> None:
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        for line in lines:
            f.write(line + "\n")
    os.replace(path + ".tmp", path)


def convert(csvs: "OrderedDict[str, str]", videos: str, root: str, fmt: str, classnames=None):
    """-> (class names, {split: [(relative video path, label)]}, {split: number of clips not found})."""
    read = read_kinetics_csv if fmt == "kinetics" else read_mit_csv
    rows = OrderedDict((split, (path, list(read(path)))) for split, path in csvs.items())
    if classnames is None:
        classnames = sorted({label for _, split_rows in rows.values() for _, label, _ in split_rows})
    label_of = {name: i for i, name in enumerate(classnames)}
    index = index_videos(videos, fmt)
    lists, missing = OrderedDict(), OrderedDict()
    for split, (path, split_rows) in rows.items():
        lists[split], missing[split] = [], 0
        for line, label, key in split_rows:
            if label not in label_of:
                raise ConvertError(f"{path}:{line}: class {label!r} is not in the class names")
            video = index.get(key)
            if video is None:
                missing[split] += 1
                continue
            lists[split].append((os.path.relpath(os.path.abspath(video), root), label_of[label]))
    return classnames, lists, missing


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--format", choices=("kinetics", "mit"), default="kinetics",
                        help="kinetics: Kinetics-400/700 CSVs with a header; mit: Moments in Time CSVs")
    parser.add_argument("--videos", required=True, help="folder of downloaded clips (walked recursively)")
    parser.add_argument("--train", help="train CSV")
    parser.add_argument("--val", help="validation CSV")
    parser.add_argument("--test", help="test CSV (with labels)")
    parser.add_argument("--classnames", help="existing class-name file whose order the labels follow")
    parser.add_argument("--out", required=True, help="folder to write <split>.txt and classnames.txt into")
    parser.add_argument("--root", default="", help="video paths are written relative to this folder (default --out)")
    args = parser.parse_args(argv)
    csvs = OrderedDict((s, p) for s, p in (("train", args.train), ("val", args.val), ("test", args.test)) if p)
    if not csvs:
        parser.error("give at least one of --train, --val, --test")
    for path in list(csvs.values()) + ([args.classnames] if args.classnames else []):
        if not os.path.isfile(path):
            print(f"error: {path} not found", file=sys.stderr)
            return 2
    if not os.path.isdir(args.videos):
        print(f"error: {args.videos} is not a folder", file=sys.stderr)
        return 2
    root = os.path.abspath(args.root or args.out)
    try:
        names = read_classnames(args.classnames) if args.classnames else None
        names, lists, missing = convert(csvs, args.videos, root, args.format, names)
    except ConvertError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    os.makedirs(args.out, exist_ok=True)
    with_comma = [n for n in names if "," in n]
    if with_comma:  # read_class_names drops text after a comma (ImageNet synonyms)
        print(f"warning: class names with a comma are cut there when read as a label set: {with_comma[:3]}",
              file=sys.stderr)
    _write_atomic(os.path.join(args.out, "classnames.txt"), names)
    print(f"{os.path.join(args.out, 'classnames.txt')}: {len(names)} classes")
    for split, items in lists.items():
        path = os.path.join(args.out, f"{split}.txt")
        _write_atomic(path, (f"{video} {label}" for video, label in items))
        print(f"{path}: {len(items)} clips ({missing[split]} not downloaded, left out)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
