"""The built-in demo data in the published Uni-Perceiver layout (data/prepare_data.md of the published repo).

``write_published_layout(demo_root, out)`` rewrites part of a complete demo tree so that a ``DATA_PATH=out``
serves the published configs' paths as written (``open_source_dataset/...``)::

    open_source_dataset/
      imagenet/{train,val}/class_XX/*.jpg, imagenet/meta/{train,val}.txt   # "class_XX/0000.jpg 3": relative
      imagenet_class_name_CLIP_with_endoftext.pkl                          #   to imagenet/<split>/
      mscoco_dataset/coco_origin/{train2014,val2014}/...                   # images
      mscoco_dataset/new_annotations/captions_{train113k,val5k,test5k}.json  # {file_name, file_path, id}
      text_corpus/bookswiki.doc, bookswiki-1000.doc                        # the MLM text (train / val)
      bert_pretrain_data/bookswiki/bookswiki.doc                           # prepare_data.md's place for it
      vocabulary_CLIP_with_endoftext.pkl                                   # [token, <|endoftext|>] rows (the
                                                                           #   demo's word subset)
      bert_pretrain_data/glue_data/<TASK>/processed/*.tsv, GLUE_classnames/*.pkl   (glue.py)

      flickr30k/, cc3m/, c12m/, yfcc/, sbucaption/, visual_genome/, imagenet22k/, K700/, K400_official/,
      MomentsInTime/, msvd_dataset/, msrvtt_dataset/, VQA/ and their label-set .pkl files (published_tasks.py)

Images are hard-linked (copied where links are not possible).  Tokenised target sets are pickled as the
published notebook writes them (``{"data": [LongTensor ids], "modality": "text"}``).
"""
from __future__ import annotations

import json
import os

from .glue import write_published_glue
from .published_io import dump_target_set, link
from .published_tasks import write_published_tasks

PREFIX = "open_source_dataset"


def _imagenet(demo: str, base: str, tok) -> None:
    src = os.path.join(demo, "imagenet")
    for split in ("train", "val"):
        lines = []
        with open(os.path.join(src, "meta", f"{split}.txt")) as f:
            for line in f:
                rel, label = line.rsplit(maxsplit=1)
                inner = rel[len(split) + 1 :] if rel.startswith(split + "/") else rel
                link(os.path.join(src, rel), os.path.join(base, "imagenet", split, inner))
                lines.append(f"{inner} {label}")
        os.makedirs(os.path.join(base, "imagenet", "meta"), exist_ok=True)
        with open(os.path.join(base, "imagenet", "meta", f"{split}.txt"), "w") as f:
            f.write("\n".join(lines) + "\n")
    with open(os.path.join(src, "classnames.txt")) as f:
        names = [line.strip() for line in f if line.strip()]
    dump_target_set(os.path.join(base, "imagenet_class_name_CLIP_with_endoftext.pkl"),
                     (tok.encode(n + " <|endoftext|>") for n in names))


def _mscoco(demo: str, base: str) -> None:
    src = os.path.join(demo, "mscoco")
    dst = os.path.join(base, "mscoco_dataset")
    for split in ("train113k", "val5k", "test5k"):
        with open(os.path.join(src, "annotations", f"captions_{split}.json")) as f:
            data = json.load(f)
        images = []
        for im in data["images"]:
            folder, name = os.path.split(im["file_name"])
            link(os.path.join(src, "images", im["file_name"]), os.path.join(dst, "coco_origin", folder, name))
            images.append({"file_name": name, "file_path": folder, "id": im["id"]})
        anns = [{"image_id": a["image_id"], "id": a["id"], "caption": a["caption"]} for a in data["annotations"]]
        os.makedirs(os.path.join(dst, "new_annotations"), exist_ok=True)
        with open(os.path.join(dst, "new_annotations", f"captions_{split}.json"), "w") as f:
            json.dump({"images": images, "annotations": anns}, f)


def _bookswiki(demo: str, base: str) -> None:
    src = os.path.join(demo, "bookswiki")
    for split, name in (("train", "bookswiki.doc"), ("val", "bookswiki-1000.doc")):
        link(os.path.join(src, f"{split}.txt"), os.path.join(base, "text_corpus", name))
    link(os.path.join(src, "train.txt"), os.path.join(base, "bert_pretrain_data", "bookswiki", "bookswiki.doc"))


def _vocabulary(demo: str, base: str, tok) -> None:
    from ..target_sets import read_token_list

    ids = read_token_list(os.path.join(demo, "targets", "vocab_demo.tokens"))
    dump_target_set(os.path.join(base, "vocabulary_CLIP_with_endoftext.pkl"),
                     ([i, tok.eot_id] for i in ids if i != tok.eot_id))


def write_published_layout(demo_root: str, out: str) -> str:
    """Write the published layout of the complete demo tree ``demo_root`` into ``out``; returns ``out``."""
    from uniperceiver.tokenization import get_tokenizer

    tok = get_tokenizer()
    base = os.path.join(out, PREFIX)
    os.makedirs(base, exist_ok=True)
    _imagenet(demo_root, base, tok)
    _mscoco(demo_root, base)
    _bookswiki(demo_root, base)
    _vocabulary(demo_root, base, tok)
    write_published_glue(os.path.join(demo_root, "glue"), out, tok)
    write_published_tasks(demo_root, base, tok)
    with open(os.path.join(out, "README.txt"), "w") as f:
        f.write("uniperceiver demo data in the published Uni-Perceiver layout (tools/make_demo_data.py --layout "
                "published); use as DATA_PATH.\n")
    return out
