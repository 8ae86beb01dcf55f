"""Built-in demo data: a small dataset in every on-disk format we read, made from real data shipped in PyPI
packages, so any demo config runs on a fresh clone with no download.  A fixture: built once by the entry
points (:func:`prepare_data_root`: train, eval-only and the tools), never by task or reader code.

Layout under the demo root (``DATA_PATH`` if set, else ``CACHE_DIR/demo``), and the module writing each part::

    imagenet/{train,val}/<class>/<n>.jpg, imagenet/meta/{train,val}.txt, imagenet/classnames.txt      images.py
    mnist/images/{train,val,test}/*.png, mnist/annotations/captions_{train,val,test}.json (COCO schema),
        mnist/meta/{train,val,test}.txt (ImageNet lists of the same images), mnist/classnames.txt     images.py
    mscoco/images/{train2014,val2014}/*.jpg, mscoco/annotations/captions_{train113k,val5k,test5k}.json images.py
    flickr30k/images/*.jpg, flickr30k/annotations/captions_{train,val,test}.json                       images.py
    cc3m/images/*.jpg, cc3m/{train,val}.jsonl         sbu/images/*.jpg, sbu/{train,val}.jsonl           images.py
    yfcc/, cc12m/, vg/ (as cc3m)                                                                       images.py
    bookswiki/{train,val}.txt (gensim's lee_background.cor), imagenet22k -> imagenet (a relative link;
        the 16-task recipes), targets/vocab_demo.tokens (tokens of every demo caption and the corpus),
        targets/vocab_caption.tokens, DEMO_VERSION (written last: the build is complete)              build.py
    kinetics700/, momentsintime/, msvd/, msrvtt/, vqa/: videos and VQAv2 files                         video.py
    glue/<TASK>/<split>.tsv (GLUE benchmark TSVs of composed sentences), glue/classnames/<TASK>.txt    glue.py

``palette.py`` holds the digits, inks and backgrounds the image and video sets paint; ``published.py`` rewrites
a complete tree in the published Uni-Perceiver layout (``tools/make_demo_data.py --layout published``).

:func:`ensure_demo_data` builds the tree once: under a lock file, into a temporary folder that is renamed into
place, so N ranks starting together build it once and never see a half-written tree.
"""
from .build import DEMO_VERSION, MARKER, build_demo_data, ensure_demo_data, is_complete, prepare_data_root
from .images import (COCO_SPLITS, COCO_TEMPLATES, FLICKR_TEMPLATES, MNIST_FRAMES, MNIST_HELDOUT_PER_CLASS, MNIST_INKS,
                     MNIST_MARKS, MNIST_PLAIN_SHARE, MNIST_STYLE_MENTION, MNIST_STYLES, MNIST_TEMPLATES, PHOTOS, VIEWS,
                     build_image_demo, load_mnist, mnist_splits, mnist_tile)
from .palette import BACKGROUNDS, DIGITS, INKS, colorize

__all__ = [
    "DEMO_VERSION", "MARKER", "build_demo_data", "ensure_demo_data", "is_complete", "prepare_data_root",
    "COCO_SPLITS", "COCO_TEMPLATES", "FLICKR_TEMPLATES", "MNIST_FRAMES", "MNIST_HELDOUT_PER_CLASS", "MNIST_INKS",
    "MNIST_MARKS", "MNIST_PLAIN_SHARE", "MNIST_STYLE_MENTION", "MNIST_STYLES", "MNIST_TEMPLATES", "PHOTOS", "VIEWS",
    "build_image_demo", "load_mnist", "mnist_splits", "mnist_tile", "BACKGROUNDS", "DIGITS", "INKS", "colorize",
]
