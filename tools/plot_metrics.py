#!/usr/bin/env python
"""Plot a run's ``metrics.json`` (JSON lines written by the trainer): losses per task, LR, evaluation metrics.

    python tools/plot_metrics.py work_dirs/exp                  # writes work_dirs/exp/metrics.png
    python tools/plot_metrics.py work_dirs/exp --out curves.png

Panels: one per ``loss_*`` key (each task's loss on its own scale; raw points faint, an exponential moving
average over ``--smooth`` of the points bold, the first and last windows' means in the title) and
``total_loss``; ``lr``; every evaluation metric (keys ``<task>/<metric>``, written by the EvalHook), its chance
level (``<task>/chance_<metric>``) dashed in the same colour.  Lines of a resumed run that repeat an iteration
keep the last.
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


def smooth(values: List[float], frac: float) -> List[float]:
    """Exponential moving average with a span of ``frac`` of the points (bias-corrected at the start)."""
    span = max(1.0, frac * len(values))
    alpha = 2.0 / (span + 1.0)
    out, avg, weight = [], 0.0, 0.0
    for v in values:
        avg = (1 - alpha) * avg + alpha * v
        weight = (1 - alpha) * weight + alpha
        out.append(avg / weight)
    return out


def first_last_windows(values: List[float], frac: float = 0.2) -> Tuple[float, float]:
    """Means of the first and the last ``frac`` of the points (at least one each)."""
    n = max(1, int(round(frac * len(values))))
    return sum(values[:n]) / n, sum(values[-n:]) / n


def plot_metrics(output_dir: str, out: str = "", smooth_frac: float = 0.1) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = os.path.join(output_dir, "metrics.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} not found (is {output_dir} a training OUTPUT_DIR?)")
    groups = group_series(read_metrics(path))
    # one panel per loss (total_loss last), then lr, then evaluation
    losses = sorted(groups["losses"], key=lambda k: (k == "total_loss", k))
    panels = [("loss", {k: groups["losses"][k]}) for k in losses]
    panels += [(name, groups[name]) for name in ("lr", "evaluation") if groups[name]]
    # one evaluation (at the end) is a table, not a curve: the log and inference/*/results.json show it
    panels = [(n, s) for n, s in panels if n != "evaluation" or max(len(p) for p in s.values()) > 1]
    if not panels:
        raise ValueError(f"{path} has no losses, lr or evaluation metrics")
    ncols = 2 if len(panels) > 3 else 1
    nrows = (len(panels) + ncols - 1) // ncols
    fig, axes = plt.subplots(nrows, ncols, figsize=(6 * ncols, 2.6 * nrows), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.axis("off")
    for ax, (name, s) in zip(axes.flat, panels):
        if name == "loss":
            (key, points), = s.items()
            xs, ys = zip(*points)
            ax.plot(xs, ys, color="C0", alpha=0.3, linewidth=0.8, marker="o" if len(xs) < 30 else None,
                    markersize=2)
            ax.plot(xs, smooth(list(ys), smooth_frac), color="C0", linewidth=2)
            first, last = first_last_windows(list(ys))
            ax.set_title(f"{key}: {first:.3g} -> {last:.3g} (first / last 20%)", fontsize=9)
        elif name == "evaluation":
            metrics = {k: v for k, v in s.items() if "/chance_" not in k}
            for i, (key, points) in enumerate(sorted(metrics.items())):
                xs, ys = zip(*points)
                ax.plot(xs, ys, marker="o", markersize=3, color=f"C{i % 10}", label=key)
                task, metric = key.rsplit("/", 1)
                chance = s.get(f"{task}/chance_{metric}")
                if chance:
                    cx, cy = zip(*chance)
                    ax.plot(cx, cy, linestyle="--", marker="x", markersize=3, color=f"C{i % 10}")
            ax.set_title("evaluation (dashed: chance level / baseline)", fontsize=9)
            ax.legend(fontsize=6, loc="best")
        else:
            for key, points in sorted(s.items()):
                xs, ys = zip(*points)
                ax.plot(xs, ys, label=key)
            ax.set_title(name, fontsize=9)
            ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
        ax.set_xlabel("iteration", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    out = out or os.path.join(output_dir, "metrics.png")
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output_dir", help="a training OUTPUT_DIR holding metrics.json")
    parser.add_argument("--out", default="", help="image to write (default OUTPUT_DIR/metrics.png)")
    parser.add_argument("--smooth", type=float, default=0.1,
                        help="moving-average span as a fraction of each loss's points (default 0.1)")
    args = parser.parse_args(argv)
    try:
        out = plot_metrics(args.output_dir, args.out, args.smooth)
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
