"""Adaptation: MODEL.TRAINABLE freezing, prompt tuning, LoRA (merge), EMA (resume, --eval-ema), published
checkpoint conversion, and the analysis / plotting / visualisation tools on tiny inputs."""
import json
import os
import subprocess
import sys

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from conftest import ENGINE_SMOKE, REPO, clean_env, run_main
from test_model import batch, full_loss, tiny_cfg
from uniperceiver.checkpoint import match_state_dict
from uniperceiver.checkpoint.official import PUBLISHED_LOGIT_SCALES, convert_official_state_dict, official_state_dict
from uniperceiver.config import ConfigError
from uniperceiver.engine.ema import ModelEMA
from uniperceiver.modeling import build_model
from uniperceiver.modeling.adaptation import apply_trainable
from uniperceiver.modeling.encoder import prompt_attention_mask
from uniperceiver.modeling.lora import LoRALinear, merge_lora_state_dict
from uniperceiver.solver import build_optimizer

CLS = str(REPO / "configs" / "quick_schedules" / "instant_classification.yaml")


def prompt_cfg(tokens=4, fc_weight=0.5, **kw):
    cfg = tiny_cfg(**kw)
    cfg.MODEL.PROMPT.ENABLED = True
    cfg.MODEL.PROMPT.NUM_TOKENS = tokens
    cfg.MODEL.PROMPT.FC_WEIGHT = fc_weight
    cfg.MODEL.TRAINABLE = ["prompt"]
    return cfg


# ------------------------------------------------------------------------------------------- freezing
def test_trainable_freezes_weights_bitwise_and_optimizer_holds_only_trainable():
    torch.manual_seed(0)
    cfg = prompt_cfg()
    model = build_model(cfg)
    trainable, total = apply_trainable(model, cfg.MODEL.TRAINABLE)
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert names == {"encoder.prompt_tokens", "encoder.prompt_spe_bias", "predictor.prompt_fc_weight_matrix",
                     "predictor.prompt_fc_bias"}
    assert trainable == sum(p.numel() for n, p in model.named_parameters() if n in names) < total
    optimizer = build_optimizer(cfg, model)
    in_opt = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert in_opt == {id(p) for p in model.parameters() if p.requires_grad}
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    for seed in range(3):
        optimizer.zero_grad()
        full_loss(model, seed).backward()
        optimizer.step()
    for n, p in model.named_parameters():
        if n in frozen:
            assert torch.equal(p, frozen[n]), n
            assert p.grad is None, n
        else:
            assert not torch.equal(p, before[n]), n  # every trainable tensor moved


def test_trainable_errors_and_logging(caplog):
    model = build_model(tiny_cfg())
    with pytest.raises(ConfigError, match=r"nope_a.*nope_b|matches no parameter"):
        apply_trainable(model, ["nope_a", "nope_b"])
    with pytest.raises(ConfigError, match="not a valid regex"):
        apply_trainable(model, ["("])
    with caplog.at_level("INFO", logger="uniperceiver.modeling.adaptation"):
        trainable, total = apply_trainable(model, [r"^predictor\.proj\."])
    assert f"trainable parameters: {trainable} / total {total}" in caplog.text
    assert trainable == 192 * 192 + 192
    assert apply_trainable(model, []) == (total, total)  # empty = everything trains again


# --------------------------------------------------------------------------------------------- prompts
def test_prompt_mask_extension_shapes_and_values():
    assert prompt_attention_mask(None, 5, 3) is None
    pad = torch.tensor([[True, True, True, False, False]])[:, None, None, :]
    out = prompt_attention_mask(pad, 5, 3)
    assert out.shape == (1, 1, 1, 8) and out[0, 0, 0].tolist() == [True] * 3 + [False] * 2 + [True] * 3
    full = torch.ones(5, 5, dtype=torch.bool).tril()[None, None]
    out = prompt_attention_mask(full, 5, 2)
    assert out.shape == (1, 1, 7, 7)
    assert torch.equal(out[0, 0, :5, :5], full[0, 0]) and out[0, 0, :, 5:].all() and out[0, 0, 5:].all()


def test_prompts_keep_causality_and_padding_and_are_the_identity_when_zero():
    torch.manual_seed(0)
    model = build_model(prompt_cfg(tokens=3, LAYER_SCALE_INIT=0.1)).eval()
    images, text, mask = batch(0, frames=0)
    out = model(images=images, text=text, text_mask=mask, num_queries=6, causal_text=True)
    changed = text.clone()
    changed[:, 4] = 7  # query i sees text < i: queries 0..4 must not change
    out2 = model(images=images, text=changed, text_mask=mask, num_queries=6, causal_text=True)
    assert torch.allclose(out["queries"][:, :5], out2["queries"][:, :5], atol=1e-6)
    assert not torch.allclose(out["queries"][0, 5], out2["queries"][0, 5], atol=1e-4)  # (sample 1: padding)
    padded = text.clone()
    padded[1, -2:] = 123  # padding of sample 1 (mask False there) is invisible
    a = model(text=text, text_mask=mask)["spe"]
    b = model(text=padded, text_mask=mask)["spe"]
    assert torch.allclose(a[1], b[1], atol=1e-6)
    # With prompts and the <spe> bias zero and the head blended at weight 0, the output is the plain model's.
    plain = build_model(tiny_cfg(LAYER_SCALE_INIT=0.1)).eval()
    zero = build_model(prompt_cfg(tokens=0, fc_weight=0.0, LAYER_SCALE_INIT=0.1)).eval()
    zero.load_state_dict(plain.state_dict())
    assert torch.allclose(plain(images=images, text=text, text_mask=mask)["spe"],
                          zero(images=images, text=text, text_mask=mask)["spe"])
    # prompts change the output
    assert not torch.allclose(model(images=images)["spe"], zero(images=images)["spe"], atol=1e-4)


def test_prompt_tuning_trains_only_prompts_and_improves_a_tiny_task():
    """'Pre-train' the tiny model on a 4-class task, then prompt-tune it (everything else frozen) for a
    downstream task that names the classes differently (labels shifted by one)."""
    torch.manual_seed(0)
    cfg = prompt_cfg(tokens=4, fc_weight=0.5, LAYER_SCALE_INIT=0.1)
    model = build_model(cfg)
    g = torch.Generator().manual_seed(1)
    labels = torch.arange(16) % 4
    images = torch.randn(4, 3, 32, 32, generator=g)[labels] + 0.5 * torch.randn(16, 3, 32, 32, generator=g)
    class_ids = torch.randint(0, 49406, (4, 3), generator=g)

    def loss_fn(target):
        logits = model.logits(model(images=images)["spe"], model.encode_targets(class_ids), "logit_img_cls")
        return F.cross_entropy(logits, target)

    def train(params, target, lr, steps):
        opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
        for _ in range(steps):
            opt.zero_grad()
            loss_fn(target).backward()
            opt.step()

    train([p for n, p in model.named_parameters() if "prompt" not in n], labels, 1e-3, 15)
    downstream = (labels + 1) % 4
    apply_trainable(model, cfg.MODEL.TRAINABLE)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    first = loss_fn(downstream).item()
    train([p for p in model.parameters() if p.requires_grad], downstream, 3e-2, 20)
    last = loss_fn(downstream).item()
    assert last < 0.5 * first, (first, last)
    for n, p in model.named_parameters():
        if n in frozen:
            assert torch.equal(p, frozen[n]), n


def test_instant_prompt_config_runs_with_only_prompt_parameters_trainable(tmp_path):
    out = tmp_path / "out"
    run_main(["--config-file", REPO / "configs/quick_schedules/instant_prompt.yaml", "SOLVER.MAX_ITER", "4",
              "OUTPUT_DIR", out])
    log = (out / "log.txt").read_text()
    assert "trainable parameters: 41088 / total" in log
    final = torch.load(out / "model_final.pth", map_location="cpu", weights_only=True)
    state = final["optimizer"]["state"]
    assert len(state) == 4  # AdamW moments exist for the 4 prompt tensors only


# ------------------------------------------------------------------------------------------------ LoRA
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


# ------------------------------------------------------------------------------------------------- EMA
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


# ---------------------------------------------------------------------------- published checkpoints
def synthetic_official(dim=192, heads=3, layers=2, ffn=768, prompts=0, seed=0):
    """A state dict in the published layout (module names of fundamentalvision/Uni-Perceiver), random values;
    the attention blocks are real nn.MultiheadAttention modules (returned too)."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g) * 0.05  # noqa: E731
    norm_w, norm_b = 1 + r(dim), r(dim)
    sd = {
        "token_embed.embeddings.weight": r(49411, dim),
        "token_embed.embeddings_pos.position_embeddings.weight": r(32, dim),
        "token_embed.embeddings_token_type.weight": r(2, dim),
        "token_embed.embeddings_norm.weight": norm_w, "token_embed.embeddings_norm.bias": norm_b,
        "video_embed.embeddings_norm.weight": norm_w.clone(), "video_embed.embeddings_norm.bias": norm_b.clone(),
        "video_embed.embeddings.weight": r(dim, 3, 16, 16), "video_embed.embeddings.bias": r(dim),
        "video_embed.embeddings_type.weight": r(1, dim),
        "video_embed.embeddings_st_pos.spatial_pos_embed.weight": r(4, dim),
        "video_embed.embeddings_st_pos.temporal_pos_embed.weight": r(8, dim),
        "loss_prepare.ln_post.weight": 1 + r(dim), "loss_prepare.ln_post.bias": r(dim),
        "loss_prepare.proj.weight": r(dim, dim), "loss_prepare.proj.bias": r(dim),
        "loss_prepare.queue_h1_x": r(4, dim),  # memory-bank buffer: dropped by its rule
    }
    sd.update({f"loss_prepare.{n}": torch.ones([]) * (2.0 + 0.1 * i) for i, n in enumerate(PUBLISHED_LOGIT_SCALES)})
    attns = []
    for i in range(layers):
        mha = nn.MultiheadAttention(dim, heads, batch_first=True)
        with torch.no_grad():
            for p in mha.parameters():
                p.copy_(r(*p.shape))
        attns.append(mha)
        p = f"fused_encoder.layers.{i}."
        sd.update({p + "self_attn." + k: v.detach().clone() for k, v in mha.state_dict().items()})
        sd.update({p + "linear1.weight": r(ffn, dim), p + "linear1.bias": r(ffn), p + "linear2.weight": r(dim, ffn),
                   p + "linear2.bias": r(dim), p + "norm1.weight": 1 + r(dim), p + "norm1.bias": r(dim),
                   p + "norm2.weight": 1 + r(dim), p + "norm2.bias": r(dim), p + "gamma_1": r(dim),
                   p + "gamma_2": r(dim)})
        if prompts:
            sd[p + "deep_prompt_embedding.embedding.weight"] = r(prompts, dim)
    return {"model": {"module." + k: v for k, v in sd.items()}, "optimizer": {}}, attns


def test_official_checkpoint_maps_onto_our_model_and_computes_the_same():
    """Blocks and deep prompts (each published convention: tests/test_published_checkpoint.py)."""
    published, attns = synthetic_official(prompts=3)
    state = official_state_dict(published)
    ours, report = convert_official_state_dict(state)
    assert ("loss_prepare.queue_h1_x", "memory-bank queue (training-time negatives; never read in evaluation)") in report["dropped"]
    assert "embed.spatial_pos_embed" in ours  # a random (learned) spatial table is kept, not dropped
    cfg = prompt_cfg(tokens=3, fc_weight=0.0)
    cfg.MODEL.PATCH_SIZE = 16
    model = build_model(cfg).eval()
    # strict check: everything but the logit scales (tiny_cfg names its own), the learned table and the prompt bias
    loaded, rep = match_state_dict(model, ours, ignore=[r"logit_scale\.", "prompt_spe_bias", "spatial_pos_embed",
                                                        "spe_embedding"])
    model.load_state_dict(loaded, strict=False)
    assert "encoder.prompt_tokens" in rep["loaded"]
    torch.testing.assert_close(model.encoder.prompt_tokens[1], state["fused_encoder.layers.1.deep_prompt_embedding.embedding.weight"])
    # attention: our fused qkv block == the published nn.MultiheadAttention
    x = torch.randn(2, 5, 192)
    for i, mha in enumerate(attns):
        ref = mha(x, x, x, need_weights=False)[0]
        assert torch.allclose(model.encoder.blocks[i].attn(x), ref, atol=1e-5)


def test_convert_checkpoint_cli_from_official(tmp_path):
    published, _ = synthetic_official()
    src, dst = tmp_path / "published.pth", tmp_path / "ours.pth"
    torch.save(published, src)
    proc = subprocess.run([sys.executable, str(REPO / "tools/convert_checkpoint.py"), "--from", "uniperceiver-official",
                           str(src), str(dst)], cwd=REPO, env=clean_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "dropped loss_prepare.queue_h1_x: memory-bank queue" in proc.stdout


def test_tools_write_their_files(tmp_path):
    out = tmp_path / "run"
    run_main(["--config-file", CLS, "SOLVER.MAX_ITER", "4", "SOLVER.WRITE_PERIOD", "2", "OUTPUT_DIR", out])

    def tool(*args):
        proc = subprocess.run([sys.executable] + [str(a) for a in args], cwd=REPO, env=clean_env(),
                              capture_output=True, text=True, timeout=240)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc.stdout

    tool(REPO / "tools/plot_metrics.py", out)
    assert (out / "metrics.png").stat().st_size > 1000
    stdout = tool(REPO / "tools/analyze_model.py", "--config-file", CLS, "--out", tmp_path / "a.json",
                  "MODEL.PROMPT.ENABLED", "True", "MODEL.TRAINABLE", "['prompt']")
    report = json.loads((tmp_path / "a.json").read_text())
    assert report["trainable"] < report["total"] and report["params"]["encoder"]["trainable"] > 0
    task = report["tasks"]["imagenet"]
    # 17 tokens + 10 prompts through 2 blocks of 12 * 192^2 MACs each dominate: within 20% of that
    assert 0.8 * 27 * 2 * 12 * 192 ** 2 < task["flops"] < 1.2 * (27 * 2 * 12 * 192 ** 2 + 16 * 192 * 192 + 4e5)
    assert task["activation_bytes_per_sample"] > 0 and "trainable parameters" in stdout
    tool(REPO / "tools/visualize_data.py", "--config-file", CLS, "--task", "imagenet", "--num", "4",
         "--out", tmp_path / "vis.png")
    assert (tmp_path / "vis.png").stat().st_size > 1000
