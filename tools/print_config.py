"""Print the merged, validated config of our tree as YAML (tasks expanded); nothing else is built.

    python tools/print_config.py --config-file CFG [KEY VALUE ...]

CFG may be one of ours or a published Uni-Perceiver config (converted as main.py does).  stdout carries only
the YAML; logs and warnings go to stderr; an invalid config exits 2 with one line on stderr.
"""
import argparse
import logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from uniperceiver.config import ConfigError, setup_cfg  # noqa: E402
from uniperceiver.config.validate import validate_cfg  # noqa: E402
from uniperceiver.tasks import validate_tasks  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", default="", metavar="FILE")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE overrides (our key names)")
    args = parser.parse_args(argv)
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        cfg = setup_cfg(args.config_file, args.opts)
        validate_cfg(cfg)
        validate_tasks(cfg)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    sys.stdout.write(cfg.dump())
    return 0


if __name__ == "__main__":
    sys.exit(main())
