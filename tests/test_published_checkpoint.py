"""Published checkpoints give the published model (uniperceiver/checkpoint/official.py, docs/published_checkpoints.md).

A state dict in the published layout (github fundamentalvision/Uni-Perceiver, ``MultiTaskTransformerEncoder``)
with known values is converted and loaded; each published convention is pinned on its own against a formula
written from the published code: ``<spe>``, caption queries, visual tokens, LayerNorm eps, the logit scales and
their clamp, the sin-cos grid scale.  Then the strict load into every shipped config of a size, and bad input.
(Equivalence with the published code itself, run on CPU, is measured outside the test suite: docs/published_checkpoints.md.)
"""
from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from conftest import clean_env, prompt_cfg
from uniperceiver.checkpoint import match_state_dict
from uniperceiver.checkpoint.checkpointer import Checkpointer, CheckpointError
from uniperceiver.checkpoint.official import (PUBLISHED_LOGIT_SCALES, OfficialCheckpointError, convert_official_checkpoint,
                                              convert_official_state_dict, official_state_dict, sincos_scale)
from uniperceiver.config import ConfigError, setup_cfg
from uniperceiver.modeling import build_model

REPO = Path(__file__).resolve().parents[1]
SPE, EOT = 49410, 49407
SIZES = {  # published sizes: (hidden, layers, heads, FFN) and their shipped model config
    "tiny": ((192, 12, 3, 768), "configs/BERT_L12_H192_experiments/base_model_bert_l12_h192.yaml"),
    "small": ((384, 12, 6, 1536), "configs/BERT_L12_H384_experiments/base_model_bert_l12_h384.yaml"),
    "base": ((768, 12, 12, 3072), "configs/BERT_L12_H768_experiments/base_model_bert_l12_h768.yaml"),
    "large": ((1024, 24, 16, 4096), "configs/BERT_L24_H1024_experiments/base_model_bert_l24_h1024.yaml"),
}


def published_sincos(grid: int, dim: int, scale: float) -> torch.Tensor:
    """The published ``build_2d_sincos_position_embedding``: rows r, columns c of a grid x grid patch grid,
    ``[sin(r s w), cos(r s w), sin(c s w), cos(c s w)]``, ``w = 1 / 10000 ** (k / (dim / 4))``, in float32."""
    q = dim // 4
    w = 1.0 / 10000 ** (torch.arange(q, dtype=torch.float32) / q)
    r, c = torch.meshgrid(torch.arange(grid, dtype=torch.float32) * scale,
                          torch.arange(grid, dtype=torch.float32) * scale, indexing="ij")
    r, c = r.flatten()[:, None] * w, c.flatten()[:, None] * w
    return torch.cat([r.sin(), r.cos(), c.sin(), c.cos()], dim=1)


def published_shapes(dim: int, depth: int, ffn: int, grid: int = 14, positions: int = 512, frames: int = 8):
    """Name -> shape of every tensor in a published dense checkpoint (the state dict of the published
    ``MultiTaskTransformerEncoder`` with the published Base model settings and SHARE_LAYERNORM True)."""
    shapes = {
        "token_embed.embeddings.weight": (49411, dim),
        "token_embed.embeddings_norm.weight": (dim,), "token_embed.embeddings_norm.bias": (dim,),
        "token_embed.embeddings_pos.position_embeddings.weight": (positions, dim),
        "token_embed.embeddings_token_type.weight": (2, dim),
        "video_embed.embeddings.weight": (dim, 3, 16, 16), "video_embed.embeddings.bias": (dim,),
        "video_embed.embeddings_norm.weight": (dim,), "video_embed.embeddings_norm.bias": (dim,),
        "video_embed.embeddings_type.weight": (1, dim),
        "video_embed.embeddings_st_pos.spatial_pos_embed.weight": (grid * grid, dim),
        "video_embed.embeddings_st_pos.temporal_pos_embed.weight": (frames, dim),
        "loss_prepare.ln_post.weight": (dim,), "loss_prepare.ln_post.bias": (dim,),
        "loss_prepare.proj.weight": (dim, dim), "loss_prepare.proj.bias": (dim,),
    }
    shapes.update({f"loss_prepare.{n}": () for n in PUBLISHED_LOGIT_SCALES})
    for i in range(depth):
        p = f"fused_encoder.layers.{i}."
        shapes.update({p + "self_attn.in_proj_weight": (3 * dim, dim), p + "self_attn.in_proj_bias": (3 * dim,),
                       p + "self_attn.out_proj.weight": (dim, dim), p + "self_attn.out_proj.bias": (dim,),
                       p + "linear1.weight": (ffn, dim), p + "linear1.bias": (ffn,),
                       p + "linear2.weight": (dim, ffn), p + "linear2.bias": (dim,),
                       p + "norm1.weight": (dim,), p + "norm1.bias": (dim,), p + "norm2.weight": (dim,),
                       p + "norm2.bias": (dim,), p + "gamma_1": (dim,), p + "gamma_2": (dim,)})
    return shapes


def known_published(dim=16, depth=2, ffn=32, grid=2, scale=160 / 224, seed=0):
    """A published-layout state dict with random (known) values everywhere a wrong mapping would show:
    LayerNorms, biases, LayerScale, distinct logit scales; a true sin-cos table of ``scale``."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for name, shape in published_shapes(dim, depth, ffn, grid=grid, positions=16).items():
        if name.endswith("spatial_pos_embed.weight"):
            sd[name] = published_sincos(grid, dim, scale)
        elif "logit_scale" in name:
            sd[name] = torch.tensor(1.0 + 0.25 * len(sd) % 3.0)
        elif "norm" in name and name.endswith("weight"):
            sd[name] = 1.0 + 0.3 * torch.randn(shape, generator=g)
        else:
            sd[name] = torch.randn(shape, generator=g) * (0.5 if name.endswith("bias") or "gamma" in name else 1.0)
    sd["video_embed.embeddings_norm.weight"] = sd["token_embed.embeddings_norm.weight"].clone()
    sd["video_embed.embeddings_norm.bias"] = sd["token_embed.embeddings_norm.bias"].clone()
    sd["loss_prepare.logit_scale_img_cls"] = torch.tensor(5.0)  # exp(5) = 148: above the published cap of 100
    sd["loss_prepare.logit_scale_caption"] = torch.tensor(2.0)
    sd["loss_prepare.logit_scale_downstream"] = torch.tensor(3.25)
    return sd


def small_cfg(**model):
    """The shipped Tiny config, narrowed to the known state dict (16 wide, 2 layers, 32 px)."""
    opts = ["MODEL.BERT.HIDDEN_SIZE", "16", "MODEL.BERT.NUM_HIDDEN_LAYERS", "2", "MODEL.BERT.NUM_ATTENTION_HEADS", "2",
            "MODEL.BERT.INTERMEDIATE_SIZE", "32", "MODEL.IMG_INPUT_SIZE", "32", "MODEL.MAX_POSITION_EMBEDDINGS", "16",
            "MODEL.POSEMBED_SCALE", "160/224"]
    for k, v in model.items():
        opts += [f"MODEL.{k}", str(v)]
    return setup_cfg(str(REPO / SIZES["tiny"][1]), opts)


@pytest.fixture(scope="module")
def converted():
    sd = known_published()
    ours, report = convert_official_state_dict(sd)
    model = build_model(small_cfg()).eval()
    model.load_state_dict(ours, strict=True)
    return sd, ours, report, model


def ln(sd, v):
    return F.layer_norm(v, v.shape[-1:], sd["token_embed.embeddings_norm.weight"], sd["token_embed.embeddings_norm.bias"],
                        eps=1e-5)


def test_spe_is_the_layernormed_spe_token_row_without_type_or_position(converted):
    sd, _, _, model = converted
    tok, pos, typ = (sd["token_embed.embeddings.weight"], sd["token_embed.embeddings_pos.position_embeddings.weight"],
                     sd["token_embed.embeddings_token_type.weight"][0])
    with torch.no_grad():
        seq = model.embed(text=torch.tensor([[5, 6, 7]]))[0]
    torch.testing.assert_close(seq[0], ln(sd, tok[SPE]), atol=1e-5, rtol=0)
    assert (seq[0] - ln(sd, tok[SPE] + pos[0] + typ)).abs().max() > 0.1  # the old "spe + pos[0] + type" differs
    torch.testing.assert_close(seq[1:], ln(sd, tok[[5, 6, 7]] + pos[:3] + typ), atol=1e-5, rtol=0)
    assert "embed.spe_embedding" not in model.state_dict()


def test_caption_query_i_is_spe_row_plus_position_i_plus_text_type(converted):
    sd, _, _, model = converted
    tok, pos, typ = (sd["token_embed.embeddings.weight"], sd["token_embed.embeddings_pos.position_embeddings.weight"],
                     sd["token_embed.embeddings_token_type.weight"][0])
    with torch.no_grad():
        seq = model.embed(text=torch.tensor([[5, 6]]), num_queries=3)[0]
    torch.testing.assert_close(seq[3:], ln(sd, tok[SPE] + pos[:3] + typ), atol=1e-5, rtol=0)


def test_visual_tokens_get_no_type_embedding_unless_configured(converted):
    sd, ours, _, model = converted
    img = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    patches = F.conv2d(img, sd["video_embed.embeddings.weight"], sd["video_embed.embeddings.bias"], stride=16)
    patches = patches.flatten(2).transpose(1, 2)[0]  # [4, D], row-major
    base = patches + sd["video_embed.embeddings_st_pos.spatial_pos_embed.weight"] + \
        sd["video_embed.embeddings_st_pos.temporal_pos_embed.weight"][0]
    with torch.no_grad():
        vis = model.embed(images=img)[0, 1:]
    torch.testing.assert_close(vis, ln(sd, base), atol=1e-4, rtol=0)
    typed = build_model(small_cfg(VISUAL_TYPE_EMBED=True)).eval()  # published ADD_TYPE_EMBED True
    typed.load_state_dict(ours, strict=True)
    with torch.no_grad():
        vis_typed = typed.embed(images=img)[0, 1:]
    torch.testing.assert_close(vis_typed, ln(sd, base + sd["video_embed.embeddings_type.weight"][0]), atol=1e-4, rtol=0)


def test_every_layernorm_uses_the_published_eps(converted):
    *_, model = converted
    norms = [m for m in model.modules() if isinstance(m, torch.nn.LayerNorm)]
    assert len(norms) == 1 + 2 * 2 + 1 and all(m.eps == 1e-5 for m in norms)
    for size, (_, path) in SIZES.items():
        assert setup_cfg(str(REPO / path)).MODEL.BERT.LAYER_NORM_EPS == 1e-5, size
    x = torch.full((1, 16), 0.5) + torch.arange(16.0) * 1e-3  # tiny variance: eps 1e-5 and 1e-6 differ visibly
    assert not torch.allclose(norms[0](x), F.layer_norm(x, (16,), norms[0].weight, norms[0].bias, eps=1e-6), atol=1e-2)


def test_the_eleven_published_logit_scales_and_the_published_clamp(converted):
    sd, ours, report, model = converted
    names = {k.split(".")[-1] for k in model.state_dict() if "logit_scale" in k}
    assert names == set(PUBLISHED_LOGIT_SCALES) | {"default"} and "logit_scale_retrieve" in names
    for n in PUBLISHED_LOGIT_SCALES:
        assert model.predictor.logit_scale[n].item() == sd[f"loss_prepare.{n}"].item(), n
    assert model.predictor.logit_scale["default"].item() == 3.25  # = logit_scale_downstream
    q, t = F.normalize(torch.randn(2, 16), dim=-1), F.normalize(torch.randn(5, 16), dim=-1)
    # published: temperature = exp(s), replaced by 100 when above it
    torch.testing.assert_close(model.logits(q, t, "logit_scale_img_cls"), (q @ t.t()) * 100.0)
    torch.testing.assert_close(model.logits(q, t, "logit_scale_caption"), (q @ t.t()) * math.exp(2.0))


def test_logit_scale_set_is_the_same_whatever_tasks_a_config_names(tmp_path):
    path = str(REPO / SIZES["tiny"][1])

    def with_task(temp_name):
        f = tmp_path / f"{temp_name}.yaml"
        f.write_text(f"_BASE_: {path}\nTASKS:\n  - NAME: t\n    MODEL: {{TEMP_NAME: {temp_name}}}\n")
        return setup_cfg(str(f))

    with torch.device("meta"):
        a, b = build_model(with_task("logit_scale_img_cls")), build_model(setup_cfg(path))
    assert [k for k in a.state_dict() if "logit" in k] == [k for k in b.state_dict() if "logit" in k]
    with pytest.raises(ConfigError, match="logit_scale_retrieval.*LOGIT_SCALE_NAMES"), torch.device("meta"):
        build_model(with_task("logit_scale_retrieval"))


def test_posembed_scale_is_the_published_one_and_read_from_the_table():
    assert setup_cfg(str(REPO / SIZES["base"][1])).MODEL.POSEMBED_SCALE == pytest.approx(160 / 224)
    assert setup_cfg(str(REPO / SIZES["large"][1])).MODEL.POSEMBED_SCALE == pytest.approx(160 / 224)
    assert sincos_scale(published_sincos(14, 64, 160 / 224)) == pytest.approx(160 / 224, abs=1e-6)
    assert sincos_scale(published_sincos(10, 64, 1.0)) == pytest.approx(1.0, abs=1e-6)
    assert sincos_scale(torch.randn(196, 64)) is None  # a learned table is not one
    cfg = setup_cfg(str(REPO / SIZES["base"][1]))  # our rebuilt table equals the published one at this scale
    grid = cfg.MODEL.IMG_INPUT_SIZE // cfg.MODEL.PATCH_SIZE
    from uniperceiver.modeling.embeddings import sincos_2d_table
    torch.testing.assert_close(sincos_2d_table(grid, grid, 768, cfg.MODEL.POSEMBED_SCALE),
                               published_sincos(grid, 768, 160 / 224), atol=2e-6, rtol=0)


def test_converter_lists_every_dropped_tensor_with_its_rule(converted):
    sd, ours, report, _ = converted
    dropped = dict(report["dropped"])
    assert set(dropped) == {"token_embed.embeddings_token_type.weight[1:]", "video_embed.embeddings_norm.weight",
                            "video_embed.embeddings_norm.bias", "video_embed.embeddings_st_pos.spatial_pos_embed.weight"}
    assert "SHARE_LAYERNORM" in dropped["video_embed.embeddings_norm.weight"]
    assert "0.714286" in dropped["video_embed.embeddings_st_pos.spatial_pos_embed.weight"]
    assert report["mapped"] == len(sd) - 3


def test_converter_refuses_an_unknown_tensor_and_a_separate_visual_layernorm():
    sd = known_published()
    with pytest.raises(OfficialCheckpointError, match=r"^fused_encoder\.layers\.0\.extra \(3,\): no mapping"):
        convert_official_state_dict({**sd, "fused_encoder.layers.0.extra": torch.zeros(3)})
    sd["video_embed.embeddings_norm.weight"] = sd["video_embed.embeddings_norm.weight"] + 1
    with pytest.raises(OfficialCheckpointError, match="SHARE_LAYERNORM False"):
        convert_official_state_dict(sd)


def zero_published(dim, depth, ffn):
    """Published-layout tensors of the real shapes without their memory (zero-stride views)."""
    sd = {k: torch.zeros(()).expand(s) for k, s in published_shapes(dim, depth, ffn).items()}
    sd["video_embed.embeddings_st_pos.spatial_pos_embed.weight"] = published_sincos(14, dim, 160 / 224)
    return sd


def shipped_configs(size):
    """Every shipped dense config whose model is the published ``size`` model: the size file and the task configs
    of its folder with the same width, depth and LayerScale (counterparts of published configs that train another
    architecture, e.g. without LayerScale, are not meant for the published checkpoints)."""
    folder = REPO / Path(SIZES[size][1]).parent
    base = setup_cfg(str(REPO / SIZES[size][1]))
    out = []
    for path in sorted(folder.rglob("*.yaml")):
        cfg = setup_cfg(str(path))
        if (cfg.MODEL.BERT.HIDDEN_SIZE, cfg.MODEL.BERT.NUM_HIDDEN_LAYERS, cfg.MODEL.LAYER_SCALE, cfg.MOE.MOE) == (
                base.MODEL.BERT.HIDDEN_SIZE, base.MODEL.BERT.NUM_HIDDEN_LAYERS, base.MODEL.LAYER_SCALE, False):
            out.append((path, cfg))
    return out


@pytest.mark.parametrize("size", list(SIZES))
def test_converted_checkpoint_fits_every_shipped_config_of_its_size(size):
    from uniperceiver.checkpoint.official import check_against_config

    (dim, depth, _, ffn), _ = SIZES[size]
    ours, _ = convert_official_state_dict(zero_published(dim, depth, ffn), copy=False)
    configs = shipped_configs(size)
    assert configs
    for path, cfg in configs:
        adapters = check_against_config(ours, cfg, str(path), "published")  # raises on any other mismatch
        assert all("prompt" in k or "lora_" in k for k in adapters), path
    if size == "base":  # the prompt-tuning configs add prompts, which the published checkpoint lacks
        assert any("prompt" in str(p) for p, _ in configs)


def run_tool(*args):
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(REPO / "tools/convert_checkpoint.py"), "--from", "uniperceiver-official",
                           *map(str, args)], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def test_cli_converts_checks_against_the_config_and_loads(tmp_path):
    sd = known_published()
    src, dst = tmp_path / "published.pth", tmp_path / "ours.pth"
    torch.save({"model": {"module." + k: v for k, v in sd.items()}}, src)
    cfg_file = tmp_path / "tiny16.yaml"
    cfg_file.write_text(f"_BASE_: {REPO / SIZES['tiny'][1]}\nMODEL:\n  IMG_INPUT_SIZE: 32\n  MAX_POSITION_EMBEDDINGS: 16\n"
                        f"  POSEMBED_SCALE: 160/224\n  BERT: {{HIDDEN_SIZE: 16, NUM_HIDDEN_LAYERS: 2, NUM_ATTENTION_HEADS: 2,"
                        f" INTERMEDIATE_SIZE: 32}}\n  PROMPT: {{ENABLED: True, NUM_TOKENS: 2}}\n")
    proc = run_tool(src, dst, "--config", cfg_file)
    assert proc.returncode == 0, proc.stderr
    assert "dropped video_embed.embeddings_st_pos.spatial_pos_embed.weight: frozen 2D sin-cos" in proc.stdout
    assert "adapters left at their init (2): encoder.prompt_tokens, encoder.prompt_spe_bias" in proc.stdout
    model = build_model(setup_cfg(str(cfg_file)))
    report = Checkpointer(model, str(tmp_path)).load_weights(str(dst))  # strict; only the adapters may be missing
    assert sorted(report["missing_ignored"]) == ["encoder.prompt_spe_bias", "encoder.prompt_tokens"]
    assert not report["unexpected_ignored"]


def test_cli_refuses_a_checkpoint_of_another_size_in_one_line_and_writes_nothing(tmp_path):
    src, dst = tmp_path / "published.pth", tmp_path / "ours.pth"
    torch.save({"model": known_published()}, src)  # 16 wide: not the shipped Tiny
    proc = run_tool(src, dst, "--config", REPO / SIZES["tiny"][1])
    assert proc.returncode == 2
    line = proc.stderr.strip()
    assert "\n" not in line and "base_model_bert_l12_h192.yaml" in line and str(src) in line
    assert re.search(r"first mismatching tensor: embed\.\S+ has shape \(\d+, 16\) in the checkpoint, \(\d+, 192\) in the model", line), line
    assert not dst.exists() and not (tmp_path / "ours.pth.tmp").exists()


def test_cli_refuses_another_layout_and_a_moe_checkpoint_without_the_moe_converter(tmp_path):
    dst = tmp_path / "ours.pth"
    ours_layout = tmp_path / "ours_layout.pth"
    torch.save({"model": {"embed.token_embedding.weight": torch.zeros(3, 4)}}, ours_layout)
    proc = run_tool(ours_layout, dst)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert "not a published Uni-Perceiver checkpoint" in proc.stderr and "embed.token_embedding.weight" in proc.stderr
    moe = tmp_path / "moe.pth"
    torch.save({"model": {**known_published(), "fused_encoder.layers.0.gate.wg.weight": torch.zeros(8, 16)}}, moe)
    proc = run_tool(moe, dst)
    try:
        import uniperceiver.checkpoint.official_moe  # noqa: F401  (moe17's module, when merged)
    except ImportError:
        assert proc.returncode == 2 and "MoE checkpoint (first MoE tensor fused_encoder.layers.0.gate.wg.weight)" in proc.stderr
    assert not dst.exists() or proc.returncode == 0


def test_weights_of_another_size_fail_the_strict_load_naming_the_tensor(tmp_path, converted):
    _, ours, _, _ = converted
    path = tmp_path / "w.pth"
    torch.save({"model": ours}, path)
    model = build_model(setup_cfg(str(REPO / SIZES["tiny"][1]), ["MODEL.BERT.NUM_HIDDEN_LAYERS", "1",
                                                                  "MODEL.IMG_INPUT_SIZE", "32"]))
    with pytest.raises(CheckpointError, match=r"MODEL.WEIGHTS .*w\.pth: checkpoint does not match the model: shape "
                                              r"mismatch for encoder\.blocks\.0\."):
        Checkpointer(model, str(tmp_path)).load_weights(str(path))


# ----------------------------------------------- the published layout with real nn.MultiheadAttention blocks
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
    """Blocks and deep prompts map onto our model, and our fused qkv attention computes what the published
    nn.MultiheadAttention blocks compute (each other published convention: the tests above)."""
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
