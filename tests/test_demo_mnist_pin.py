"""The zero-shot digits benchmark's data stay as they are (issue 21): the demo generator writes the same mnist/
folder (DEMO_VERSION 7 onwards), pinned by one sha256 over its files, and the benchmark's evaluation config
still reads the held-out val / test lists and class names of that folder through the same prompt.

A change of the pinned digest means the benchmark's figures (docs/zeroshot_benchmark.md) are no longer
comparable: rerun ``python tools/zeroshot_benchmark.py --seeds 0,1,2`` and update the docs before re-pinning."""
import hashlib
import os

import numpy as np
from PIL import Image

from conftest import REPO

# sha256 over (relative path, sha256 of the content) of every file the generator writes under mnist/, PNGs as
# their decoded pixels (so a zlib / Pillow upgrade that re-encodes the same pixels does not move it).
MNIST_SHA256 = "854ecbf50bd2eb504b5e803539e1bbd4bceed26c4f5975a22b0b4c7010acecf9"


def _tree_digest(root: str) -> str:
    h = hashlib.sha256()
    for dirpath, dirnames, files in os.walk(root):
        dirnames.sort()
        for name in sorted(files):
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, root).replace(os.sep, "/")
            if name.endswith(".png"):
                a = np.asarray(Image.open(path))
                data = f"{a.dtype}{a.shape}".encode() + a.tobytes()
            else:
                with open(path, "rb") as f:
                    data = f.read()
            h.update(rel.encode() + b"\0" + hashlib.sha256(data).digest())
    return h.hexdigest()


def test_demo_mnist_folder_is_pinned(tmp_path):
    from uniperceiver.data.demo.images import build_mnist, load_mnist

    # build_demo_data's mnist/ step alone (seed 0)
    mnist, mnist_y = load_mnist()
    out = tmp_path / "mnist"
    build_mnist(str(out), mnist, mnist_y, seed=0)
    counts = {s: len(os.listdir(out / "images" / s)) for s in ("train", "val", "test")}
    assert counts == {"train": 4400, "val": 200, "test": 200}
    assert _tree_digest(str(out)) == MNIST_SHA256


def test_benchmark_evaluates_the_pinned_folder():
    """The evaluation config classifies mnist/meta val + test through mnist/classnames.txt in the one prompt,
    and scores retrieval on mnist/annotations val + test (what the pinned digest covers)."""
    from uniperceiver.config import setup_cfg

    cfg = setup_cfg(str(REPO / "configs" / "benchmarks" / "zeroshot_digits_eval.yaml"), [])
    (target,) = cfg.SHARED_TARGETS
    assert target.SHARED_TARGETS_CFG.FILE_PATH == "mnist/classnames.txt"
    assert list(target.SHARED_TARGETS_CFG.TEMPLATES) == ["an image showing the {}."]
    tasks = {t.NAME: t for t in cfg.TASKS}
    assert set(tasks) == {"digits_zeroshot", "mnist_retrieval"}
    for name, anno in (("digits_zeroshot", "mnist/meta"), ("mnist_retrieval", "mnist/annotations")):
        t = tasks[name]
        assert (t.DATASETS.VAL, t.DATASETS.TEST) == ("val", "test")
        assert (t.DATALOADER.FEATS_FOLDER, t.DATALOADER.ANNO_FOLDER) == ("mnist/images", anno)
        assert t.DATALOADER.CROP_PCT == 1.0
