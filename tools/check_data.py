#!/usr/bin/env python
"""Validate a config's data before a long launch: every annotation file, label set and evaluation file exists
and parses, and a sample of every dataset's images (videos: first and last frame, with PyAV) decodes.

    python tools/check_data.py --config-file configs/quick_schedules/7tasks_demo.yaml
    python tools/check_data.py --config-file CFG --samples 200 DATA_PATH /data

Prints one line per task split and label set; exit code 0 when everything is readable, 1 when something is
not (each problem is listed), 2 for a config error.  On the demo root the demo data is built first.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from uniperceiver.config import ConfigError, setup_cfg  # noqa: E402


def check(cfg, samples: int) -> list:
    """A list of problem strings (empty when all is well); prints a report line per item."""
    from uniperceiver.data.datasets import ImageRecordsDataset, build_reader, load_rgb
    from uniperceiver.data.datasets.video import VideoRecordsDataset, decode_frames
    from uniperceiver.data.demo import prepare_data_root
    from uniperceiver.data.target_sets import build_label_set
    from uniperceiver.utils.paths import resolve_data_path

    problems = []
    print(f"data root: {prepare_data_root(cfg)}")
    for node in cfg.SHARED_TARGETS:
        try:
            s = build_label_set(cfg, node.NAME)
            print(f"  label set {node.NAME}: {len(s)} entries ({node.SHARED_TARGETS_CFG.FILE_PATH})")
        except (ConfigError, OSError, ValueError) as e:
            problems.append(f"label set {node.NAME}: {e}")
    for task in cfg.TASKS:
        for split in ("train", "val", "test"):
            if not task.DATASETS[split.upper()]:
                continue
            try:
                ds = build_reader(task, cfg, split, mode="images")  # caption files: each image once
            except (ConfigError, OSError, ValueError) as e:
                problems.append(f"{task.NAME}/{split}: {e}")
                continue
            line = f"  {task.NAME}/{split}: {len(ds)} records"
            if isinstance(ds, ImageRecordsDataset) and len(ds):
                video = isinstance(ds, VideoRecordsDataset)  # videos: first and last frame decode
                step = max(1, len(ds.records) // max(1, samples))
                picked = list(range(0, len(ds.records), step))[:samples]
                bad = []
                for i in picked:
                    path = ds.image_path(ds.records[i])
                    try:
                        decode_frames(path, lambda n: [0, n - 1]) if video else load_rgb(path, ds.max_image_pixels)
                    except Exception as e:  # any decode failure is a finding
                        bad.append(f"{path} ({type(e).__name__}: {e})")
                line += f", {len(picked) - len(bad)}/{len(picked)} sampled {'videos' if video else 'images'} readable"
                if bad:
                    problems.append(f"{task.NAME}/{split}: {len(bad)} of {len(picked)} sampled images unreadable, "
                                    f"e.g. {bad[0]}")
            elif len(ds):
                ds[0]
            print(line)
        for key in ("VAL_ANNFILE", "TEST_ANNFILE"):
            value = task.INFERENCE[key]
            if value and not os.path.isfile(resolve_data_path(cfg, value)):
                problems.append(f"TASKS.{task.NAME}.INFERENCE.{key}: file not found: {resolve_data_path(cfg, value)}")
    return problems


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--samples", type=int, default=50, help="images decoded per dataset split")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE")
    args = parser.parse_args(argv)
    try:
        cfg = setup_cfg(args.config_file, args.opts)
        problems = check(cfg, args.samples)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    if problems:
        print(f"\n{len(problems)} problem(s):", file=sys.stderr)
        for p in problems:
            print(f"  - {p}", file=sys.stderr)
        return 1
    print("all data readable")
    return 0


if __name__ == "__main__":
    sys.exit(main())
