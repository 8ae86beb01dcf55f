"""The Uni-Perceiver model on CPU: every variant trains (every parameter gets a gradient), attention masks
hide what they must, bf16 autocast and activation checkpointing agree with fp32, 160 -> 224 weight loading,
logit scales, layer ids, losses, and the parameter counts of the published sizes."""
import copy
import glob
import os

import pytest
import torch
import torch.nn.functional as F

from conftest import TEMP_NAMES, batch, full_loss, tiny_cfg
from uniperceiver.config import ConfigError, setup_cfg
from uniperceiver.modeling import MODEL_REGISTRY, build_model
from uniperceiver.modeling.embeddings import resize_table_1d, resize_table_2d, sincos_2d_table
from uniperceiver.modeling.losses import cross_entropy, one_hot_smoothed, soft_target_cross_entropy
from uniperceiver.modeling.meta_arch.uniperceiver import UniPerceiver, apply_resize_rules, attention_mask
from uniperceiver.tokenization import get_tokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZE_FOLDERS = ["BERT_L12_H192_experiments", "BERT_L12_H384_experiments", "BERT_L12_H768_experiments", "BERT_L24_H1024_experiments"]


VARIANTS = {
    "default": {},
    "no_layer_scale": {"LAYER_SCALE": False},
    "learned_spatial": {"POSEMBEDFIX": False},
    "drop_path_checkpointing": {"BERT_DROP_PATH_PROB": 0.1, "ACTIVATION_CHECKPOINTING": True},
    "mean_pooling_content_init": {"POOLING": "mean", "TOKEN_EMBED_INIT_STD": 1.0, "SPE_INIT_STD": 1e-6},
    "conv_stem": {"PATCH_STEM_CHANNELS": [8, 16]},
}


def test_registered():
    assert "UniPerceiver" in MODEL_REGISTRY
    assert isinstance(build_model(tiny_cfg(layers=1)), UniPerceiver)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_forward_backward_every_parameter_gets_gradient(variant):
    torch.manual_seed(0)
    model = build_model(tiny_cfg(**VARIANTS[variant])).train()
    full_loss(model).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, f"{name} got no gradient"
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, f"{name} got a zero gradient"


def test_output_shapes_and_normalisation():
    model = build_model(tiny_cfg()).eval()
    images, text, mask = batch()
    with torch.no_grad():
        out = model(images=images, text=text, text_mask=mask, num_queries=4, causal_text=True)
        only_text = model(text=text, text_mask=mask)
    assert out["spe"].shape == (2, 192) and out["text"].shape == (2, 6, 192) and out["queries"].shape == (2, 4, 192)
    assert only_text["queries"] is None and only_text["text"].shape == (2, 6, 192)
    assert model(images=images[:, 0])["text"] is None
    torch.testing.assert_close(out["spe"].norm(dim=-1), torch.ones(2))
    assert model.tokenizer is get_tokenizer()


def test_caption_query_cannot_see_future_text():
    model = build_model(tiny_cfg()).eval()
    images, text, mask = batch(length=6)
    mask[:] = True
    changed = text.clone()
    changed[:, 3] = (changed[:, 3] + 17) % 49406  # perturb text token 3
    kw = dict(images=images, text_mask=mask, num_queries=6, causal_text=True)
    with torch.no_grad():
        a, b = model(text=text, **kw), model(text=changed, **kw)
    diff_q = (a["queries"] - b["queries"]).abs().amax(dim=(0, 2))
    diff_t = (a["text"] - b["text"]).abs().amax(dim=(0, 2))
    assert diff_q[:4].max() == 0, "query i <= 3 saw text token 3"
    assert (diff_q[4:] > 1e-6).all(), "queries after token 3 must see it"
    assert diff_t[:3].max() == 0 and (diff_t[3:] > 1e-6).all()
    torch.testing.assert_close(a["spe"], b["spe"], rtol=0, atol=0)  # image / <spe> never see causal text
    with torch.no_grad():  # without causal attention <spe> does see the text
        c, d = model(images=images, text=text), model(images=images, text=changed)
    assert (c["spe"] - d["spe"]).abs().max() > 1e-6


def test_padding_is_invisible():
    model = build_model(tiny_cfg()).eval()
    images, text, mask = batch(length=6)  # row 1: last two tokens are padding
    changed = text.clone()
    changed[1, 4:] = 5
    with torch.no_grad():
        for kw in (dict(), dict(num_queries=3, causal_text=True)):
            a = model(images=images, text=text, text_mask=mask, **kw)
            b = model(images=images, text=changed, text_mask=mask, **kw)
            torch.testing.assert_close(a["spe"], b["spe"])
            torch.testing.assert_close(a["text"][:, :4], b["text"][:, :4])


def test_mean_pooling_averages_the_valid_non_query_outputs():
    model = build_model(tiny_cfg(POOLING="mean")).eval()
    images, text, mask = batch(length=6)  # row 1: last two tokens are padding
    with torch.no_grad():
        out = model(images=images, text=text, text_mask=mask, num_queries=3)
        x, (num_visual, num_text, _) = model.encode(images, text, mask, num_queries=3)
        n = 1 + num_visual + num_text
        expected = torch.stack([x[0, :n].mean(0), x[1, : n - 2].mean(0)])
        torch.testing.assert_close(out["spe"], model.predictor(expected))
        torch.testing.assert_close(model.encode_targets(text, mask), model.predictor(
            torch.stack([x_[: 1 + int(m.sum())].mean(0) for x_, m in zip(model.encode(text=text, text_mask=mask)[0], mask)])))
        changed = text.clone()
        changed[1, 4:] = 5  # padding content never reaches the pooled feature
        torch.testing.assert_close(model(images=images, text=changed, text_mask=mask)["spe"],
                                   model(images=images, text=text, text_mask=mask)["spe"])
        # the <spe> pooling of the same weights gives another feature
        model.pooling = "spe"
        assert (model(images=images, text=text, text_mask=mask)["spe"] - out["spe"]).abs().max() > 1e-4


def test_content_init_keys_and_bad_pooling():
    torch.manual_seed(0)
    default = build_model(tiny_cfg(layers=1))
    content = build_model(tiny_cfg(layers=1, TOKEN_EMBED_INIT_STD=1.0, SPE_INIT_STD=1e-6))
    assert abs(default.embed.token_embedding.weight.std().item() - 0.02) < 0.002
    assert abs(content.embed.token_embedding.weight.std().item() - 1.0) < 0.01
    spe = content.embed.spe_embedding + content.embed.type_embedding.weight[2]
    assert spe.abs().max() < 1e-5 and default.embed.spe_embedding.abs().max() > 1e-3
    # the other tables keep the published init
    assert abs(content.embed.text_pos_embed.std().item() - 0.02) < 0.002
    with pytest.raises(ConfigError, match="MODEL.POOLING 'max'"):
        build_model(tiny_cfg(layers=1, POOLING="max"))


def test_patch_stem():
    torch.manual_seed(0)
    plain = build_model(tiny_cfg(layers=1))
    stem = build_model(tiny_cfg(layers=1, PATCH_STEM_CHANNELS=[8, 16]))
    # no stem: the published parameter names, so published checkpoints load unchanged
    assert not [k for k in plain.state_dict() if "stem" in k]
    convs = [m for m in stem.embed.patch_embed.stem if isinstance(m, torch.nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.stride) for c in convs] == [(3, 8, (3, 3), (1, 1)),
                                                                                          (8, 16, (3, 3), (1, 1))]
    assert stem.embed.patch_embed.proj.in_channels == 16
    # PyTorch's conv init (std 1/sqrt(3 fan_in)), not the model-wide 0.02
    assert abs(convs[1].weight.std().item() - (3 * 8 * 9) ** -0.5) < 0.01
    images = torch.randn(2, 3, 32, 32)
    tokens = stem.embed.patch_embed(images)
    assert tokens.shape == (2, 4, stem.embed.dim)
    # two 3x3 layers see 2 px around: a corner pixel reaches its own patch only, a pixel at a patch edge
    # reaches the neighbouring patch too (patches of 16 px: token 0 is rows / cols 0-15, token 1 cols 16-31)
    def changed(row, col):
        moved = images.clone()
        moved[:, :, row, col] += 1.0
        return ((stem.embed.patch_embed(moved) - tokens).abs().sum(-1) > 0).all(0).tolist()

    assert changed(0, 0) == [True, False, False, False]
    assert changed(0, 15) == [True, True, False, False]
    with pytest.raises(ConfigError, match="PATCH_STEM_CHANNELS"):
        build_model(tiny_cfg(layers=1, PATCH_STEM_CHANNELS=[8, 0]))


def test_attention_mask_is_none_or_cheap():
    assert attention_mask(2, 16, 0, 0, False, None, torch.device("cpu")) is None
    assert attention_mask(2, 0, 5, 0, False, None, torch.device("cpu")) is None
    m = attention_mask(2, 4, 3, 0, False, torch.ones(2, 3, dtype=torch.bool), torch.device("cpu"))
    assert m.dtype == torch.bool and m.shape == (2, 1, 1, 8)
    m = attention_mask(2, 1, 3, 3, True, None, torch.device("cpu"))[0, 0]
    # rows/cols: spe, img, t0, t1, t2, q0, q1, q2
    expected = torch.tensor([
        [1, 1, 0, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0, 0, 0],
        [1, 1, 1, 0, 0, 0, 0, 0],
        [1, 1, 1, 1, 0, 0, 0, 0],
        [1, 1, 1, 1, 1, 0, 0, 0],
        [1, 1, 0, 0, 0, 1, 0, 0],
        [1, 1, 1, 0, 0, 0, 1, 0],
        [1, 1, 1, 1, 0, 0, 0, 1],
    ], dtype=torch.bool)
    assert torch.equal(m, expected)


def test_bf16_autocast_close_to_fp32():
    model = build_model(tiny_cfg()).eval()
    images, text, mask = batch()
    kw = dict(images=images, text=text, text_mask=mask, num_queries=6, causal_text=True)
    with torch.no_grad():
        ref = model(**kw)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(**kw)
    assert low["spe"].dtype == torch.bfloat16
    for key in ("spe", "text", "queries"):
        cos = F.cosine_similarity(ref[key], low[key].float(), dim=-1)
        assert cos.min() > 0.99, (key, cos.min())


def test_activation_checkpointing_same_gradients():
    torch.manual_seed(0)
    plain = build_model(tiny_cfg(BERT_DROP_PATH_PROB=0.2)).train()
    ckpt = copy.deepcopy(plain)
    ckpt.set_grad_checkpointing(True)
    for model in (plain, ckpt):
        torch.manual_seed(123)  # same DropPath draws; checkpointing must replay them in backward
        full_loss(model).backward()
    for (name, a), (_, b) in zip(plain.named_parameters(), ckpt.named_parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-6, msg=name)


def test_load_160_weights_into_224_model():
    src = build_model(tiny_cfg(img=160))
    dst = build_model(tiny_cfg(img=224, POSEMBED_SCALE=160 / 224))
    dst.load_state_dict(src.state_dict(), strict=True)  # the sin-cos table is not in the state dict
    assert "embed.spatial_pos_embed" not in src.state_dict()
    # grid 14x14 spans the coordinates of 10x10: position (7, 7) at 224 sits where (5, 5) sat at 160.
    torch.testing.assert_close(dst.embed.spatial_pos_embed[7 * 14 + 7], src.embed.spatial_pos_embed[5 * 10 + 5])
    torch.testing.assert_close(dst.embed.spatial_pos_embed, sincos_2d_table(14, 14, 192, 160 / 224))
    with torch.no_grad():
        assert dst(images=torch.randn(1, 3, 224, 224))["spe"].shape == (1, 192)


def test_load_learned_tables_of_another_size_with_resize_rules():
    src = build_model(tiny_cfg(img=160, POSEMBEDFIX=False, MAX_FRAMES=4))
    dst = build_model(tiny_cfg(img=224, POSEMBEDFIX=False, MAX_FRAMES=8, MAX_POSITION_EMBEDDINGS=64))
    state = src.state_dict()
    with pytest.raises(RuntimeError):
        dst.load_state_dict(state, strict=True)
    dst.load_state_dict(apply_resize_rules(dst, state), strict=True)
    # The foundation's strict loader applies the same rules.
    from uniperceiver.checkpoint.checkpointer import match_state_dict

    matched, report = match_state_dict(dst, state, resize_rules=dst.resize_rules())
    assert sorted(report["resized"]) == ["embed.spatial_pos_embed", "embed.temporal_pos_embed", "embed.text_pos_embed"]
    torch.testing.assert_close(matched["embed.text_pos_embed"], dst.embed.text_pos_embed.detach())
    assert dst.embed.spatial_pos_embed.shape == (196, 192) and dst.embed.text_pos_embed.shape == (64, 192)
    # Corners of a bilinear resize (align_corners=False) stay close to the source corners; the mean is kept.
    torch.testing.assert_close(dst.embed.spatial_pos_embed.mean(0), src.embed.spatial_pos_embed.mean(0), atol=2e-3, rtol=0)
    with torch.no_grad():
        assert dst(images=torch.randn(1, 8, 3, 224, 224))["spe"].shape == (1, 192)


def test_resize_functions_exact():
    table = torch.tensor([[0.0], [1.0]])
    out = resize_table_1d(table, torch.zeros(4, 1))
    torch.testing.assert_close(out[:, 0], torch.tensor([0.0, 0.25, 0.75, 1.0]))
    grid = torch.arange(4.0).reshape(4, 1)  # 2x2 grid [[0, 1], [2, 3]]
    out = resize_table_2d(grid, torch.zeros(16, 1)).reshape(4, 4)
    torch.testing.assert_close(out[0], torch.tensor([0.0, 0.25, 0.75, 1.0]))
    torch.testing.assert_close(out[:, 0], torch.tensor([0.0, 0.5, 1.5, 2.0]))
    with pytest.raises(ValueError):
        resize_table_2d(torch.zeros(6, 1), torch.zeros(16, 1))


def test_logit_scales_created_at_build_time():
    model = build_model(tiny_cfg())
    names = {n for n, _ in model.named_parameters() if "logit_scale" in n}
    assert names == {f"predictor.logit_scale.{t}" for t in ["default"] + TEMP_NAMES}
    q = F.normalize(torch.randn(3, 192), dim=-1)
    t = F.normalize(torch.randn(5, 192), dim=-1)
    torch.testing.assert_close(model.logits(q, t, TEMP_NAMES[0]), (q @ t.t()) / 0.07)
    with torch.no_grad():
        model.predictor.logit_scale[TEMP_NAMES[0]].fill_(10.0)
    torch.testing.assert_close(model.logits(q, t, TEMP_NAMES[0]), (q @ t.t()) * 100.0)  # clamped
    torch.testing.assert_close(model.logits(q, t, ""), (q @ t.t()) / 0.07)  # "" = default
    with pytest.raises(KeyError, match="logit_img_cls"):
        model.logits(q, t, "never_configured")


def test_layer_id_and_no_weight_decay():
    model = build_model(tiny_cfg(layers=3))
    names = dict(model.named_parameters())
    assert model.layer_id("embed.patch_embed.proj.weight") == 0
    assert model.layer_id("embed.token_embedding.weight") == 0
    assert model.layer_id("encoder.blocks.0.attn.qkv.weight") == 1
    assert model.layer_id("encoder.blocks.2.mlp.fc2.bias") == 3
    assert model.layer_id("predictor.proj.weight") == 4
    assert model.layer_id("predictor.logit_scale.default") == 4
    assert all(0 <= model.layer_id(n) <= 4 for n in names)
    skip = model.no_weight_decay()
    assert skip <= set(names)
    assert {"embed.token_embedding.weight", "embed.spe_embedding", "embed.text_pos_embed", "predictor.logit_scale.logit_word",
            "encoder.blocks.1.ls1.gamma"} <= skip
    assert "embed.patch_embed.proj.weight" not in skip and "encoder.blocks.0.attn.qkv.weight" not in skip


def test_losses():
    torch.manual_seed(0)
    logits, labels = torch.randn(4, 3, 7), torch.randint(0, 7, (4, 3))
    torch.testing.assert_close(cross_entropy(logits, labels), F.cross_entropy(logits.reshape(-1, 7), labels.reshape(-1)))
    smoothed = cross_entropy(logits, labels, label_smoothing=0.1)
    soft = soft_target_cross_entropy(logits, one_hot_smoothed(labels, 7, 0.1))
    torch.testing.assert_close(smoothed, soft)
    labels[0] = -100
    kept = labels.reshape(-1) != -100
    torch.testing.assert_close(cross_entropy(logits, labels), F.cross_entropy(logits.reshape(-1, 7)[kept], labels.reshape(-1)[kept]))
    x = torch.randn(2, 5, requires_grad=True)
    empty = cross_entropy(x, torch.full((2,), -100))
    assert empty.item() == 0.0
    empty.backward()
    mixed = 0.3 * F.one_hot(torch.tensor([1, 2]), 5) + 0.7 * F.one_hot(torch.tensor([3, 0]), 5)
    y = torch.randn(2, 5)
    expected = 0.3 * F.cross_entropy(y, torch.tensor([1, 2])) + 0.7 * F.cross_entropy(y, torch.tensor([3, 0]))
    torch.testing.assert_close(soft_target_cross_entropy(y, mixed.float()), expected)


def _size_files():
    files = []
    for folder in SIZE_FOLDERS:
        files += sorted(glob.glob(os.path.join(ROOT, "configs", folder, "**", "*.yaml"), recursive=True))
    return files


@pytest.mark.parametrize("path", _size_files(), ids=lambda p: os.path.relpath(p, ROOT))
def test_every_config_in_size_folders_builds(path):
    with torch.device("meta"):  # the full construction code, without allocating the weights
        model = build_model(setup_cfg(path))
    assert sum(p.numel() for p in model.parameters()) > 0


# Parameter counts of the published sizes, from the published model's shapes (github fundamentalvision/
# Uni-Perceiver @ a8c9e37, MultiTaskTransformerEncoder with SHARE_LAYERNORM): token table 49411 x D, 512 text
# positions, 2 text type rows, the shared embedding LayerNorm, a 16x16 conv patch embedding, 1 visual type row,
# the frozen 196 x D sin-cos table (a Parameter there), 8 temporal positions, per block qkv / out / FFN / 2 norms /
# 2 LayerScale gammas, the output LayerNorm + projection and 11 logit scales.  The literals are
# sum(p.numel() for p in published_model.parameters()) of the published code, built on CPU.
PUBLISHED_PARAMS = {"BERT_L12_H192": (192, 12, 768, 15_153_419), "BERT_L12_H384": (384, 12, 1536, 40_997_387),
                    "BERT_L12_H768": (768, 12, 3072, 124_757_003), "BERT_L24_H1024": (1024, 24, 4096, 355_532_811)}


def published_param_count(d: int, depth: int, ffn: int) -> int:
    embed = 49411 * d + 512 * d + 2 * d + 2 * d + (d * 3 * 16 * 16 + d) + d + 196 * d + 8 * d
    block = (3 * d * d + 3 * d) + (d * d + d) + (ffn * d + ffn) + (d * ffn + d) + 4 * d + 2 * d
    return embed + depth * block + (2 * d + d * d + d) + 11


@pytest.mark.parametrize("size", list(PUBLISHED_PARAMS))
def test_parameter_count_of_each_published_size_is_exact(size):
    d, depth, ffn, published = PUBLISHED_PARAMS[size]
    assert published_param_count(d, depth, ffn) == published
    name = "base_model_" + size.lower() + ".yaml"
    with torch.device("meta"):
        model = build_model(setup_cfg(os.path.join(ROOT, "configs", size + "_experiments", name)))
    # ours: the sin-cos table is a buffer (-196 D), 4 type rows instead of 2 + 1 (+D), and the "default" scale (+1)
    assert sum(p.numel() for p in model.parameters()) == published - 196 * d + d + 1
    assert model.num_layers == depth and model.embed.token_embedding.weight.shape == (49411, d)
