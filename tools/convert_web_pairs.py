#!/usr/bin/env python
"""Write the JSON-lines pair file (``{"image": ..., "caption": ...}`` per line) that uniperceiver reads for CC3M,
CC12M, SBU, Visual Genome and YFCC, from what their downloaders produce.

    # img2dataset "files" output: <shard>/<key>.jpg next to <key>.txt (the caption)
    python tools/convert_web_pairs.py --img2dataset $DATA_PATH/cc3m/images --out $DATA_PATH/cc3m/train.jsonl
    # a TSV of "relative/image/path<TAB>caption" (e.g. made from the published CC3M / SBU lists)
    python tools/convert_web_pairs.py --tsv pairs.tsv --out $DATA_PATH/sbu/train.jsonl

Image paths are written relative to ``--root`` (default: the folder of ``--out``), which is what
``DATALOADER.FEATS_FOLDER`` should name.  Images that do not exist are left out (and counted).
"""
import argparse
import json
import os
import sys


def from_img2dataset(folder: str):
    for dirpath, _, files in sorted(os.walk(folder)):
        for name in sorted(files):
            stem, ext = os.path.splitext(name)
            if ext.lower() not in (".jpg", ".jpeg", ".png", ".webp"):
                continue
            txt = os.path.join(dirpath, stem + ".txt")
            if os.path.isfile(txt):
                with open(txt, encoding="utf-8") as f:
                    yield os.path.join(dirpath, name), " ".join(f.read().split())


def from_tsv(path: str, base: str):
    with open(path, encoding="utf-8") as f:
        for line in f:
            if "\t" in line:
                image, caption = line.rstrip("\n").split("\t", 1)
                yield os.path.join(base, image), caption.strip()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--img2dataset", help="img2dataset output folder (files format)")
    src.add_argument("--tsv", help="TSV of image path (relative to --root) and caption")
    parser.add_argument("--out", required=True, help="output .jsonl")
    parser.add_argument("--root", default="", help="image paths are written relative to this folder")
    args = parser.parse_args(argv)
    root = os.path.abspath(args.root or os.path.dirname(os.path.abspath(args.out)))
    pairs = from_img2dataset(args.img2dataset) if args.img2dataset else from_tsv(args.tsv, root)
    kept = missing = 0
    tmp = args.out + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        for image, caption in pairs:
            if not os.path.isfile(image) or not caption:
                missing += 1
                continue
            f.write(json.dumps({"image": os.path.relpath(os.path.abspath(image), root), "caption": caption}) + "\n")
            kept += 1
    os.replace(tmp, args.out)
    print(f"{args.out}: {kept} pairs ({missing} left out: missing image or empty caption)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
