"""Convert a published Uni-Perceiver config (with its ``_BASE_`` chain) into a config of our tree.

    python tools/convert_config.py PUBLISHED.yaml OUT.yaml
    python tools/convert_config.py --tree PUBLISHED/configs configs    # every file, same relative paths


Prints one line per published key: mapped (to which key and value) or dropped (with the reason), then the
warnings.  OUT.yaml is self-contained (no ``_BASE_``) and holds only what differs from our defaults, so
``main.py --config-file OUT.yaml`` trains what the published file trains.  Exit 2 with one line on error.
``--tree`` converts every published task config (the model-only ``base_model_*.yaml`` files are ours, written
by hand) and prints one line per file.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import yaml  # noqa: E402

from uniperceiver.config import ConfigError, get_cfg  # noqa: E402
from uniperceiver.config.published import convert_published  # noqa: E402


def convert(src: str, dst: str) -> list:
    """Write ``dst``; returns the report lines.  The converted dict is merged onto our defaults first, so a
    file is written only when it loads."""
    data, report = convert_published(src)
    cfg = get_cfg()
    cfg.merge_from_dict(data, source=src)
    cfg.finalize()
    shown = os.path.abspath(src)
    if "/configs/" in shown:
        shown = "configs/" + shown.rsplit("/configs/", 1)[1]
    header = (f"# Converted by tools/convert_config.py from the published Uni-Perceiver config {shown}\n"
              "# (github fundamentalvision/Uni-Perceiver @ a8c9e37; its _BASE_ chain resolved): the published values,\n"
              f"# written where they differ from our defaults.  Data paths are the published layout under DATA_PATH.\n")
    os.makedirs(os.path.dirname(os.path.abspath(dst)), exist_ok=True)
    with open(dst, "w") as f:
        f.write(header + yaml.safe_dump(data, sort_keys=False, width=120))
    return report.lines() + [f"warning: {w}" for w in report.warnings]


def convert_tree(src_root: str, dst_root: str) -> list:
    lines = []
    for folder, _, files in sorted(os.walk(src_root)):
        for name in sorted(files):
            if not name.endswith(".yaml") or name.startswith("base_model_"):
                continue
            rel = os.path.relpath(os.path.join(folder, name), src_root)
            report = convert(os.path.join(src_root, rel), os.path.join(dst_root, rel))
            warnings = sum(line.startswith("warning: ") for line in report)
            lines.append(f"{rel}: {len(report) - warnings} keys, {warnings} warnings")
    return lines


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    tree = bool(argv) and argv[0] == "--tree"
    if tree:
        argv = argv[1:]
    if len(argv) != 2 or argv[0] in ("-h", "--help"):
        print(__doc__.strip(), file=sys.stderr)
        return 2
    if tree:
        try:
            print("\n".join(convert_tree(argv[0], argv[1])))
        except (ConfigError, OSError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        return 0
    try:
        lines = convert(argv[0], argv[1])
    except (ConfigError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
