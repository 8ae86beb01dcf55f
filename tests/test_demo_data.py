"""The built-in demo data: every format readable, built once, idempotent, and race-safe across processes."""
import json
import multiprocessing as mp
import os
import random
import re

import pytest

from uniperceiver.config import setup_cfg
from uniperceiver.data.datasets import read_coco_captions, read_image_label_list, read_jsonl_pairs
from uniperceiver.data.demo import (DIGITS, MARKER, MNIST_TEMPLATES, ensure_demo_data, load_mnist, mnist_splits,
                                    mnist_tile, prepare_data_root)
from uniperceiver.data.target_sets import read_token_list
from uniperceiver.tokenization import get_tokenizer

pytest.importorskip("mlxtend")
pytest.importorskip("skimage")
pytest.importorskip("gensim")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory):
    return ensure_demo_data(str(tmp_path_factory.mktemp("demo") / "demo"))


def test_every_format_is_written_and_readable(demo_root):
    r = demo_root
    train = read_image_label_list(os.path.join(r, "imagenet/meta/train.txt"))
    assert len(train) == 400 and sorted({x["label"] for x in train}) == list(range(10))
    assert all(os.path.isfile(os.path.join(r, "imagenet", x["image"])) for x in train)
    with open(os.path.join(r, "imagenet/classnames.txt")) as f:
        assert len(f.read().split("\n")) == 11
    for split, n in (("train113k", 240), ("val5k", 40), ("test5k", 40)):
        recs = read_coco_captions(os.path.join(r, f"mscoco/annotations/captions_{split}.json"))
        assert len(recs) == n and all(len(x["captions"]) == 3 for x in recs)
        assert all(os.path.isfile(os.path.join(r, "mscoco/images", x["image"])) for x in recs)
    assert len(read_coco_captions(os.path.join(r, "flickr30k/annotations/captions_test.json"))) == 30
    pairs = read_jsonl_pairs(os.path.join(r, "cc3m/train.jsonl"))
    assert len(pairs) == 160 and all(os.path.isfile(os.path.join(r, "cc3m", x["image"])) for x in pairs)
    with open(os.path.join(r, "bookswiki/train.txt")) as f:
        assert len([p for p in f.read().split("\n\n") if p.strip()]) == 270
    # the caption vocabulary covers every caption token, plus <|endoftext|>
    tok = get_tokenizer()
    vocab = set(read_token_list(os.path.join(r, "targets/vocab_caption.tokens")))
    assert tok.eot_id in vocab
    with open(os.path.join(r, "mscoco/annotations/captions_val5k.json")) as f:
        for ann in json.load(f)["annotations"]:
            assert set(tok.encode(ann["caption"])) <= vocab
    assert vocab < set(read_token_list(os.path.join(r, "targets/vocab_demo.tokens")))


def test_mnist_pairs_hold_out_digits_with_unique_captions(demo_root):
    """mnist/: 4400 training images; val / test 200 each (20 per class), digits nothing trains on, every
    held-out caption unique within its split (so retrieval R@1 can reach 100), ImageNet lists of the same images.
    One caption per template; training captions of styled digits name the style about 3 times in 4."""
    import numpy as np
    from PIL import Image

    r = os.path.join(demo_root, "mnist")
    style_words = re.compile(r"\b(ink|dot|framed)\b")
    for split, n in (("train", 4400), ("val", 200), ("test", 200)):
        recs = read_coco_captions(os.path.join(r, f"annotations/captions_{split}.json"))
        assert len(recs) == n and all(len(x["captions"]) == len(MNIST_TEMPLATES) for x in recs)
        styled = [x["captions"] for x in recs if any(style_words.search(c) for c in x["captions"])]
        named = np.mean([bool(style_words.search(c)) for caps in styled for c in caps])
        if split == "train":
            assert 2500 < len(styled) < 3300 and 0.65 < named < 0.85, (len(styled), named)
        else:
            assert len(styled) == n - 10 and named == 1.0  # 19 of the 20 styles have words, always said
        labels = read_image_label_list(os.path.join(r, f"meta/{split}.txt"))
        assert [x["image"] for x in labels] == [x["image"] for x in recs]
        for rec, lab in zip(recs, labels):  # the caption names the labelled digit
            assert all(DIGITS[lab["label"]] in re.findall(r"[a-z]+", c) for c in rec["captions"]), rec
        if split != "train":
            assert np.bincount([x["label"] for x in labels]).tolist() == [20] * 10
            captions = [c for x in recs for c in x["captions"]]
            assert len(set(captions)) == len(captions)
    # the tiles are renderings of MNIST digits no other split uses (the digits differ, not only their style)
    mnist, mnist_y = load_mnist()
    splits = mnist_splits(random.Random(4), mnist_y, np.random.RandomState(0).permutation(len(mnist)))
    sources = {split: {k for k, _ in picked} for split, picked in splits.items()}
    assert [len(v) for v in sources.values()] == [4400, 200, 200]
    assert not sources["train"] & sources["val"] and not sources["train"] & sources["test"]
    assert not sources["val"] & sources["test"]
    for n, (k, style) in enumerate(splits["val"][:20]):
        tile = np.asarray(Image.open(os.path.join(r, "images", f"val/{n:05d}.png")))
        assert tile.shape == (28, 28) and np.array_equal(tile, np.asarray(mnist_tile(mnist[k], style)))
    with open(os.path.join(r, "classnames.txt")) as f:
        assert f.read().split("\n")[:10] == [f"digit {d}" for d in DIGITS]


def test_idempotent(demo_root):
    stamp = os.stat(os.path.join(demo_root, MARKER)).st_mtime_ns
    assert ensure_demo_data(demo_root) == demo_root
    assert os.stat(os.path.join(demo_root, MARKER)).st_mtime_ns == stamp
    # leftovers of the build (temporary folders) are gone
    assert [n for n in os.listdir(os.path.dirname(demo_root)) if n.startswith(".demo-")] == []


def test_refuses_to_overwrite_a_foreign_folder(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "precious.txt").write_text("x")
    with pytest.raises(RuntimeError, match="not a demo data folder"):
        ensure_demo_data(str(tmp_path / "mine"))
    assert (tmp_path / "mine" / "precious.txt").read_text() == "x"


def _build(root, queue):
    try:
        queue.put(("ok", ensure_demo_data(root)))
    except Exception as e:  # pragma: no cover - reported to the parent
        queue.put(("error", repr(e)))


@pytest.mark.slow
def test_race_safe_with_several_processes(tmp_path):
    root = str(tmp_path / "cache" / "demo")
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_build, args=(root, queue)) for _ in range(3)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=300) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    assert results == [("ok", root)] * 3
    assert open(os.path.join(root, MARKER)).read().strip()
    assert sorted(os.listdir(tmp_path / "cache")) == ["demo", "demo.lock"]


def test_demo_root_is_built_on_first_use_only_for_the_demo_root(tmp_path, monkeypatch):
    monkeypatch.delenv("DATA_PATH", raising=False)
    cfg = setup_cfg(os.path.join(REPO, "configs/quick_schedules/instant_classification.yaml"),
                    ["CACHE_DIR", str(tmp_path / "cache")])
    root = prepare_data_root(cfg)
    assert root == str(tmp_path / "cache" / "demo") and os.path.isfile(os.path.join(root, MARKER))
    cfg = setup_cfg(os.path.join(REPO, "configs/quick_schedules/instant_classification.yaml"),
                    ["DATA_PATH", str(tmp_path / "real")])
    assert prepare_data_root(cfg) == str(tmp_path / "real")
    assert not os.path.exists(tmp_path / "real")  # a user data root is never written to
