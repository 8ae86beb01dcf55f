#!/usr/bin/env python
"""Write the built-in demo data (every on-disk format uniperceiver reads) from data shipped in PyPI packages.

    python tools/make_demo_data.py                # into DATA_PATH if set, else CACHE_DIR/demo
    python tools/make_demo_data.py --out /tmp/demo

Configs whose data root is the demo root build it on first use anyway; this script is for inspecting it or
for writing it elsewhere.  Needs the "demo" extras: pip install -e ".[demo]".
"""
import argparse
import logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from uniperceiver.data.demo import ensure_demo_data  # noqa: E402
from uniperceiver.utils.paths import get_data_root  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="", help="target folder (default: DATA_PATH, else CACHE_DIR/demo)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    root = ensure_demo_data(args.out or get_data_root())
    print(root)
    return 0


if __name__ == "__main__":
    sys.exit(main())
