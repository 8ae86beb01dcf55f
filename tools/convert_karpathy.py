#!/usr/bin/env python
"""Convert Karpathy's split files (``dataset_coco.json``, ``dataset_flickr30k.json``) into the COCO-caption
files uniperceiver reads.

    python tools/convert_karpathy.py dataset_coco.json      --out $DATA_PATH/mscoco/annotations
        -> captions_train113k.json (train + restval), captions_val5k.json, captions_test5k.json
    python tools/convert_karpathy.py dataset_flickr30k.json --out $DATA_PATH/flickr30k/annotations
        -> captions_train.json, captions_val.json, captions_test.json

``file_name`` is ``filepath/filename`` when the input has a ``filepath`` (COCO: ``val2014/COCO_val2014_...jpg``,
relative to the COCO image root), else ``filename``; the image id is ``cocoid`` when present, else ``imgid``.
The raw sentences are kept as captions.
"""
import argparse
import json
import os
import sys
from collections import OrderedDict

COCO_SPLITS = OrderedDict([("train113k", ("train", "restval")), ("val5k", ("val",)), ("test5k", ("test",))])
PLAIN_SPLITS = OrderedDict([("train", ("train",)), ("val", ("val",)), ("test", ("test",))])


def convert(data: dict) -> "OrderedDict[str, dict]":
    """Karpathy JSON -> {split name: COCO-caption dict}."""
    images = data["images"]
    coco_style = data.get("dataset") == "coco" or any(img.get("split") == "restval" for img in images)
    splits = COCO_SPLITS if coco_style else PLAIN_SPLITS
    out = OrderedDict()
    for name, members in splits.items():
        imgs, anns = [], []
        for img in images:
            if img["split"] not in members:
                continue
            image_id = img.get("cocoid", img.get("imgid"))
            file_name = f"{img['filepath']}/{img['filename']}" if img.get("filepath") else img["filename"]
            imgs.append({"id": image_id, "file_name": file_name})
            for sent in img["sentences"]:
                anns.append({"id": sent.get("sentid", len(anns)), "image_id": image_id, "caption": sent["raw"].strip()})
        out[name] = {"info": {"description": f"Karpathy split {name}"}, "licenses": [], "type": "captions",
                     "images": imgs, "annotations": anns}
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("karpathy_json", help="dataset_coco.json or dataset_flickr30k.json")
    parser.add_argument("--out", required=True, help="annotation folder to write captions_<split>.json into")
    args = parser.parse_args(argv)
    if not os.path.isfile(args.karpathy_json):
        print(f"error: {args.karpathy_json} not found", file=sys.stderr)
        return 2
    with open(args.karpathy_json, encoding="utf-8") as f:
        data = json.load(f)
    os.makedirs(args.out, exist_ok=True)
    for name, coco in convert(data).items():
        path = os.path.join(args.out, f"captions_{name}.json")
        with open(path + ".tmp", "w", encoding="utf-8") as f:
            json.dump(coco, f)
        os.replace(path + ".tmp", path)
        print(f"{path}: {len(coco['images'])} images, {len(coco['annotations'])} captions")
    return 0


if __name__ == "__main__":
    sys.exit(main())
