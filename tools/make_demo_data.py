#!/usr/bin/env python
"""Write the built-in demo data (every on-disk format uniperceiver reads) from data shipped in PyPI packages.

    python tools/make_demo_data.py                # into DATA_PATH if set, else CACHE_DIR/demo
    python tools/make_demo_data.py --out /tmp/demo
    python tools/make_demo_data.py --layout published --out /tmp/published   # the published repo's layout

Configs whose data root is the demo root build it on first use anyway; this script is for inspecting it or
for writing it elsewhere.  ``--layout published`` writes it as the published Uni-Perceiver's
data/prepare_data.md lays data out (``open_source_dataset/...``: ImageNet-1k/22k, COCO and Flickr30k, CC3M /
CC12M / YFCC / SBU / VG, BooksWiki, Kinetics / MiT / MSVD / MSR-VTT, VQA, GLUE, tokenised ``.pkl`` label sets;
see uniperceiver/data/demo/published.py), from the default tree in CACHE_DIR/demo.
Needs the "demo" extras: pip install -e ".[demo]".
"""
import argparse
import logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from uniperceiver.data.demo import ensure_demo_data  # noqa: E402
from uniperceiver.utils.paths import demo_data_root, get_data_root  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="", help="target folder (default: DATA_PATH, else CACHE_DIR/demo)")
    parser.add_argument("--layout", choices=("default", "published"), default="default",
                        help="default: our layout (PREPARE_DATA.md); published: the published repo's (needs --out)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.layout == "published":
        if not args.out:
            parser.error("--layout published needs --out DIR")
        from uniperceiver.data.demo.published import write_published_layout

        if os.path.isdir(args.out) and os.listdir(args.out):
            print(f"{args.out} is not empty; refusing to write the published demo layout into it", file=sys.stderr)
            return 2
        print(write_published_layout(ensure_demo_data(demo_data_root()), args.out))
        return 0
    root = ensure_demo_data(args.out or get_data_root())
    print(root)
    return 0


if __name__ == "__main__":
    sys.exit(main())
