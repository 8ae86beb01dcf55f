"""The README's smoke test for real: configs/quick_schedules/instant.yaml trains the Tiny Uni-Perceiver on the
built-in demo data (classification + retrieval), evaluates during training, then evaluates again with
--eval-only from its final weights."""
import json

import pytest
import torch

from conftest import INSTANT, run_main


@pytest.mark.slow
def test_instant_trains_checkpoints_evaluates_and_eval_only_matches(tmp_path):
    out = tmp_path / "out"
    run_main(["--config-file", INSTANT, "OUTPUT_DIR", out])
    names = {p.name for p in out.iterdir()}
    assert {"config.yaml", "log.txt", "metrics.json", "last_checkpoint", "model_final.pth"} <= names
    assert any(n.startswith("events.out.tfevents") for n in names)
    # CHECKPOINT_PERIOD 5, CHECKPOINT_MAX_SAVE 2: iterations 4 and 9 are kept
    assert {"model_0000004.pth", "model_0000009.pth"} <= names

    rows = [json.loads(line) for line in (out / "metrics.json").read_text().splitlines()]
    losses = {k for r in rows for k in r if k.startswith("loss_")}
    assert losses == {"loss_imagenet", "loss_mscoco_retrieval"}
    assert rows[-1]["iteration"] == 11

    # EVAL_PERIOD 12: evaluated once at the end of training, with the metric names
    cls = json.loads((out / "inference" / "imagenet" / "results.json").read_text())
    ret = json.loads((out / "inference" / "mscoco_retrieval" / "results.json").read_text())
    assert {"Acc@1", "Acc@5"} <= set(cls) and 0 <= cls["Acc@1"] <= cls["Acc@5"] <= 100
    assert {"i2t_R@1", "i2t_R@5", "i2t_R@10", "t2i_R@1", "t2i_R@5", "t2i_R@10", "R_mean"} <= set(ret)

    ckpt = torch.load(out / "model_final.pth", weights_only=True)
    assert ckpt["iteration"] == 11

    # --eval-only in a fresh folder from the final weights gives the same numbers as the in-training evaluation
    fresh = tmp_path / "eval"
    run_main(["--config-file", INSTANT, "--eval-only", "MODEL.WEIGHTS", out / "model_final.pth", "OUTPUT_DIR", fresh])
    again = json.loads((fresh / "inference" / "imagenet" / "results.json").read_text())
    assert again["Acc@1"] == cls["Acc@1"] and again["Acc@5"] == cls["Acc@5"]
