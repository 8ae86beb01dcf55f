"""tools/benchmark.py: every mode runs with tiny sizes and prints well-formed JSON lines (no timed assertions)."""
from __future__ import annotations

import json
import math
import subprocess
from typing import Dict, List

import pytest

from conftest import PYTHON, REPO, clean_env, load_tool

TOOL = str(REPO / "tools" / "benchmark.py")
TINY = ["MODEL.BERT.NUM_HIDDEN_LAYERS", "2", "MODEL.BERT.HIDDEN_SIZE", "32", "MODEL.BERT.NUM_ATTENTION_HEADS", "2",
        "MODEL.BERT.INTERMEDIATE_SIZE", "64", "MODEL.PATCH_SIZE", "8"]


def run_tool(*args: str, timeout: float = 240) -> Dict[str, dict]:
    """Run the tool; every stdout line must be a JSON object with name / value / unit.  Returns them by name."""
    proc = subprocess.run([PYTHON, TOOL, "--threads", "1", *args], cwd=REPO, env=clean_env(), capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, f"exit {proc.returncode}\nSTDOUT:\n{proc.stdout[-3000:]}\nSTDERR:\n{proc.stderr[-5000:]}"
    records: List[dict] = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
    assert records, proc.stderr[-3000:]
    for r in records:
        assert {"name", "value", "unit"} <= set(r), r
        assert isinstance(r["name"], str) and isinstance(r["unit"], str)
        assert isinstance(r["value"], (int, float)) and math.isfinite(r["value"]), r
    return {r["name"]: r for r in records}


def test_reference_mode_pairs_ours_with_timm():
    out = run_tool("--mode", "reference", "--img-size", "32", "--batch-size", "2", "--iters", "2", "--warmup", "1",
                   *TINY)
    assert {"step_time_ours", "step_time_timm", "ratio_vs_timm"} <= set(out)
    last = out["ratio_vs_timm"]
    assert last["ratio"] == pytest.approx(out["step_time_ours"]["value"] / out["step_time_timm"]["value"], rel=1e-3)
    assert last["tokens"] == (32 // 8) ** 2 + 1 and last["batch"] == 2 and last["reps"] == 2


@pytest.mark.slow
def test_train_step_mode_measures_each_configuration_in_a_subprocess():
    out_lines = subprocess.run(
        [PYTHON, TOOL, "--threads", "1", "--mode", "train_step", "--img-size", "32", "--batch-size", "2", "--iters",
         "1", "--warmup", "1", "--activation-checkpointing", "off,on", *TINY],
        cwd=REPO, env=clean_env(), capture_output=True, text=True, timeout=240)
    assert out_lines.returncode == 0, out_lines.stderr[-5000:]
    records = [json.loads(line) for line in out_lines.stdout.splitlines() if line.strip()]
    names = [r["name"] for r in records]
    for name in ("step_time", "samples_per_s", "tokens_per_s", "peak_memory", "peak_memory_delta"):
        assert names.count(name) == 2, names  # one per configuration
    assert sorted(r["activation_checkpointing"] for r in records if r["name"] == "step_time") == [False, True]
    saving = [r for r in records if r["name"] == "activation_checkpointing_peak_memory_saving"]
    assert len(saving) == 1 and saving[0]["unit"] == "%" and "ratio" in saving[0]
    assert all(r["value"] > 0 for r in records if r["name"] == "peak_memory")


@pytest.mark.slow
def test_eval_retrieval_mode_reports_memory_growth():
    out = run_tool("--mode", "eval_retrieval", "--candidates", "20,60", "--num-queries", "4", "--img-size", "32", *TINY)
    assert out["retrieval_peak_memory_growth"]["candidates"] == [20, 60]
    assert out["retrieval_encode_throughput"]["unit"] == "sequences/s"
    assert "ratio" in out["retrieval_peak_memory_delta_growth"]


@pytest.mark.slow
@pytest.mark.parametrize("preload", [False, True])  # --preload: every batch collated before the run (a control)
def test_loop_mode_reports_framework_overhead(preload):
    cfg = str(REPO / "configs" / "quick_schedules" / "instant_retrieval.yaml")
    out = run_tool("--mode", "loop", "--config-file", cfg, "--iters", "2", "--warmup", "1", "--rounds", "2",
                   *(["--preload"] if preload else []),
                   "TASKS.mscoco_retrieval.DATALOADER.TRAIN_BATCH_SIZE", "4", timeout=400)
    overhead = out["framework_overhead"]
    assert overhead["unit"] == "%" and overhead["value"] <= 100 and overhead["steps_per_round"] == 2
    assert overhead["preload"] is preload
    assert len(overhead["per_round"]) == 2 and overhead["num_workers"] == 0
    loop, bare = out["loop_step_time"]["per_round"], out["bare_step_time"]["per_round"]
    expected = sorted(100 * (lo - b) / lo for lo, b in zip(loop, bare))
    assert overhead["value"] == pytest.approx(sum(expected) / 2, abs=1e-2)  # median of two rounds
    # no workers: loop and bare steps alternate one by one, and the paired figure is reported beside it
    paired = out["framework_overhead_paired"]
    assert overhead["block"] == paired["block"] == 1 and len(paired["per_round"]) == 2
    assert len(out["framework_overhead_pooled"]["per_round"]) == 2  # the all-steps median, beside it


def test_loop_step_time_is_each_kinds_median_weighted_by_its_steps():
    step_time = load_tool("benchmark").step_time
    assert step_time([0.3, 0.1, 0.2, 9.0], [("a",)] * 4) == 0.25  # one kind of step: the median
    kinds = [("a",)] * 3 + [("b",)] * 4
    assert step_time([0.1, 0.1, 0.1, 0.2, 0.2, 0.2, 9.0], kinds) == pytest.approx((3 * 0.1 + 4 * 0.2) / 7)
    # a round of two clusters (3 steps at 0.1, 4 at 0.2): the all-steps median is 0.2, and 0.1 as soon as one
    # "b" step is a little faster than an "a" step; per kind, that step moves its kind's median by nothing
    assert step_time([0.1, 0.1, 0.1, 0.2, 0.2, 0.2, 0.099], kinds) == pytest.approx((3 * 0.1 + 4 * 0.2) / 7)
