"""MODEL.MODEL_EMA: the EMA update and its state round trip; saved with checkpoints, resumed exactly, and
evaluated with --eval-only --eval-ema."""
import json
import os

import pytest
import torch
import torch.nn as nn

from conftest import CLS, ENGINE_SMOKE, run_main
from uniperceiver.engine.ema import ModelEMA


def test_model_ema_update_and_state_roundtrip():
    lin = nn.Linear(3, 2)
    ema = ModelEMA(lin, decay=0.5, warmup=False)
    start = lin.weight.detach().clone()
    with torch.no_grad():
        lin.weight.add_(1.0)
    ema.update()
    assert torch.allclose(ema.shadow["weight"], start + 0.5)
    other = ModelEMA(nn.Linear(3, 2), decay=0.5, warmup=False)
    other.load_state_dict(ema.state_dict())
    assert other.loaded and other.updates == 1 and torch.equal(other.shadow["weight"], ema.shadow["weight"])
    target = nn.Linear(3, 2)
    ema.copy_to(target)
    assert torch.equal(target.weight, ema.shadow["weight"])


@pytest.mark.slow
def test_ema_saved_resumed_exactly_and_evaluated_with_eval_ema(tmp_path):
    # resume exactness on the engine's instant config (the placeholder model resumes bit-exactly)
    out = tmp_path / "out"
    opts = ["--config-file", ENGINE_SMOKE, "MODEL.MODEL_EMA", "True", "MODEL.MODEL_EMA_DECAY", "0.9",
            "SOLVER.CHECKPOINT_MAX_SAVE", "0", "OUTPUT_DIR", out]
    run_main(opts)
    straight = torch.load(out / "model_final.pth", map_location="cpu", weights_only=True)
    assert straight["model_ema"]["updates"] == 12
    assert any(not torch.equal(v, straight["model"][k]) for k, v in straight["model_ema"]["model"].items())
    # the state a kill right after iteration 4's checkpoint leaves: the EMA continues where it was
    for name in ("model_final.pth", "model_0000009.pth"):
        os.remove(out / name)
    (out / "last_checkpoint").write_text("model_0000004.pth")
    run_main(["--resume"] + opts)
    resumed = torch.load(out / "model_final.pth", map_location="cpu", weights_only=True)
    assert resumed["model_ema"]["updates"] == 12
    assert all(torch.equal(straight["model"][k], resumed["model"][k]) for k in straight["model"])
    for k, v in straight["model_ema"]["model"].items():
        assert torch.equal(v, resumed["model_ema"]["model"][k]), k
    # --eval-only --eval-ema on the real model
    cls_out = tmp_path / "cls"
    run_main(["--config-file", CLS, "MODEL.MODEL_EMA", "True", "SOLVER.MAX_ITER", "3", "OUTPUT_DIR", cls_out])
    run_main(["--eval-only", "--eval-ema", "--config-file", CLS, "MODEL.WEIGHTS", cls_out / "model_final.pth",
              "OUTPUT_DIR", tmp_path / "eval"])
    assert "Loaded the EMA weights (3 updates)" in (tmp_path / "eval" / "log.txt").read_text()
    assert json.loads((tmp_path / "eval/inference/imagenet/results.json").read_text())["Acc@1"] >= 0
    # without model_ema in the checkpoint, --eval-ema is a one-line user error
    plain = torch.load(cls_out / "model_final.pth", map_location="cpu", weights_only=True)["model"]
    torch.save({"model": plain}, tmp_path / "plain.pth")
    proc = run_main(["--eval-only", "--eval-ema", "--config-file", CLS, "MODEL.WEIGHTS", tmp_path / "plain.pth",
                     "OUTPUT_DIR", tmp_path / "eval2"], check=False)
    assert proc.returncode == 2 and "no model_ema" in proc.stderr
