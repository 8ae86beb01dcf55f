#!/usr/bin/env python
"""Plot a run's ``metrics.json`` (JSON lines written by the trainer): losses per task, LR, evaluation metrics.

    python tools/plot_metrics.py work_dirs/exp                  # writes work_dirs/exp/metrics.png
    python tools/plot_metrics.py work_dirs/exp --out curves.png

Panels: every ``loss_*`` key and ``total_loss`` over iterations; ``lr``; every evaluation metric (keys
``<task>/<metric>``, written by the EvalHook).  Lines of a resumed run that repeat an iteration keep the last.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from collections import defaultdict
from typing import Dict, List, Tuple

Series = Dict[str, List[Tuple[int, float]]]


def read_metrics(path: str) -> Series:
    """``{key: [(iteration, value), ...]}`` sorted by iteration (later lines win for repeated iterations)."""
    per_key: Dict[str, Dict[int, float]] = defaultdict(dict)
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by a crash
            it = row.get("iteration")
            if it is None:
                continue
            for key, value in row.items():
                if key != "iteration" and isinstance(value, (int, float)):
                    per_key[key][int(it)] = float(value)
    return {k: sorted(v.items()) for k, v in per_key.items()}


def group_series(series: Series) -> Dict[str, Series]:
    groups: Dict[str, Series] = {"losses": {}, "lr": {}, "evaluation": {}}
    for key, points in series.items():
        if key.startswith("loss_") or key == "total_loss":
            groups["losses"][key] = points
        elif key == "lr":
            groups["lr"][key] = points
        elif "/" in key:
            groups["evaluation"][key] = points
    return groups


def plot_metrics(output_dir: str, out: str = "") -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = os.path.join(output_dir, "metrics.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} not found (is {output_dir} a training OUTPUT_DIR?)")
    groups = group_series(read_metrics(path))
    panels = [(name, s) for name, s in groups.items() if s]
    if not panels:
        raise ValueError(f"{path} has no losses, lr or evaluation metrics")
    fig, axes = plt.subplots(len(panels), 1, figsize=(9, 3.2 * len(panels)), squeeze=False)
    for ax, (name, s) in zip(axes[:, 0], panels):
        for key, points in sorted(s.items()):
            xs, ys = zip(*points)
            ax.plot(xs, ys, marker="o" if len(xs) < 20 else None, markersize=3, label=key)
        ax.set_title(name)
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3)
        if name == "lr":
            ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
        ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    out = out or os.path.join(output_dir, "metrics.png")
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output_dir", help="a training OUTPUT_DIR holding metrics.json")
    parser.add_argument("--out", default="", help="image to write (default OUTPUT_DIR/metrics.png)")
    args = parser.parse_args(argv)
    try:
        out = plot_metrics(args.output_dir, args.out)
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
