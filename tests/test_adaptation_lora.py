"""LoRA (MODEL.LORA, docs/adaptation.md): a LoRA model starts equal to its base, trains its adapters only, and
tools/merge_lora.py gives a plain checkpoint with identical outputs; a target that matches nothing is a
config error."""
import subprocess
import sys

import pytest
import torch

from conftest import REPO, batch, clean_env, full_loss, tiny_cfg
from uniperceiver.checkpoint import match_state_dict
from uniperceiver.config import ConfigError
from uniperceiver.modeling import build_model
from uniperceiver.modeling.adaptation import apply_trainable
from uniperceiver.modeling.lora import LoRALinear, merge_lora_state_dict


def test_lora_starts_equal_and_merged_checkpoint_gives_identical_outputs(tmp_path):
    torch.manual_seed(0)
    base_cfg = tiny_cfg(LAYER_SCALE_INIT=0.1)
    lora_cfg = tiny_cfg(LAYER_SCALE_INIT=0.1)
    lora_cfg.MODEL.LORA.ENABLED = True
    lora_cfg.MODEL.LORA.RANK = 4
    plain = build_model(base_cfg).eval()
    lora = build_model(lora_cfg).eval()
    wrapped = [n for n, m in lora.named_modules() if isinstance(m, LoRALinear)]
    assert wrapped == [f"encoder.blocks.{i}.attn.{k}" for i in range(2) for k in ("qkv", "proj")]
    # pre-trained (plain) weights load into the LoRA model with the adapters ignored; B = 0 -> same outputs
    state, report = match_state_dict(lora, plain.state_dict(), ignore=["lora_"])
    lora.load_state_dict(state, strict=False)
    images, text, mask = batch(0)
    ref = plain(images=images, text=text, text_mask=mask)["spe"]
    assert torch.allclose(lora(images=images, text=text, text_mask=mask)["spe"], ref, atol=1e-6)
    # train the adapters only (one step; then B is made large so the adapters clearly matter)
    apply_trainable(lora, ["lora_"])
    opt = torch.optim.SGD([p for p in lora.parameters() if p.requires_grad], lr=0.1)
    opt.zero_grad()
    full_loss(lora, 0).backward()
    assert all(p.grad is not None for n, p in lora.named_parameters() if "lora_A" in n)
    opt.step()
    with torch.no_grad():
        for n, p in lora.named_parameters():
            if n.endswith("lora_B"):
                p.add_(torch.randn_like(p) * 0.05)
    lora.eval()
    adapted = lora(images=images, text=text, text_mask=mask)["spe"]
    assert not torch.allclose(adapted, ref, atol=1e-4)
    path = tmp_path / "lora.pth"
    torch.save({"model": lora.state_dict(), "optimizer": opt.state_dict()}, path)
    merged_path = tmp_path / "merged.pth"
    proc = subprocess.run([sys.executable, str(REPO / "tools/merge_lora.py"), str(path), str(merged_path)],
                          cwd=REPO, env=clean_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    merged = torch.load(merged_path, map_location="cpu", weights_only=True)
    assert set(merged) == {"model"} and not any("lora" in k for k in merged["model"])
    fresh = build_model(base_cfg).eval()
    state, _ = match_state_dict(fresh, merged["model"])  # strict: every key present, nothing extra
    fresh.load_state_dict(state)
    assert torch.allclose(fresh(images=images, text=text, text_mask=mask)["spe"], adapted, atol=1e-5)
    assert torch.equal(merge_lora_state_dict(lora.state_dict())["encoder.blocks.0.mlp.fc1.weight"],
                       lora.state_dict()["encoder.blocks.0.mlp.fc1.weight"])  # untouched layers unchanged


def test_lora_target_matching_nothing_is_a_config_error():
    cfg = tiny_cfg()
    cfg.MODEL.LORA.ENABLED = True
    cfg.MODEL.LORA.TARGET = "no_such_layer"
    with pytest.raises(ConfigError, match="MODEL.LORA.TARGET"):
        build_model(cfg)
