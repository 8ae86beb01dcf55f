"""The published Uni-Perceiver-MoE conventions, one by one (MOE.ATTRIBUTE_GATE segment_row): the attribute row
of each position's segment, the gate math (Linear(8, D) -> LayerNorm -> bias-free Linear(D, E), top-k, no
noise in eval), MOE_EXPERT_LOCATION as published, and a state dict in the published layout with known values
-> the converted model's routes (which experts each segment picks in each block) and expert outputs.
(Checked against the published code itself outside the tests: docs/published_moe.md.)"""
import subprocess

import pytest
import torch
import torch.nn.functional as F

from conftest import PYTHON, REPO
from uniperceiver.checkpoint.official_moe import (RULE_DENSE_GATE, RULE_LINEAR2_GATE, convert_moe_state_dict,
                                                  is_moe_key)
from uniperceiver.config import ConfigError, get_cfg, setup_cfg
from uniperceiver.modeling import build_model
from uniperceiver.modeling.moe import MoESpec, RoutedExperts, token_attribute_ids, with_token_attributes
from uniperceiver.modeling.moe.attributes import segment_row_names, segment_rows
from uniperceiver.modeling.moe.routing import SegmentRowGate

# the published rows (published uniperceiver/datasets/moe_embeddings.py)
CAPTION_VISUAL = [1, 1, 0, 1, 1, 0, 0, 0]
CAPTION_TEXT = [1, 1, 0, 1, 0, 1, 0, 1]
VISUAL_INPUT = [1, 0, 0, 1, 1, 0, 0, 0]
TEXT_INPUT = [0, 1, 0, 1, 0, 1, 0, 0]
CLASS_TARGET = [1, 0, 0, 1, 0, 1, 1, 0]
WORD_TARGET = [1, 1, 0, 1, 0, 1, 1, 0]
D, E = 16, 8
CAPTION = {"modality": "image", "task": "caption"}


def published_cfg(location="odd", layers=4, k=2, **moe):
    cfg = get_cfg()
    cfg.merge_from_dict({"TASKS": [{"NAME": "cls", "MODEL": {"TEMP_NAME": "t"}}]})
    bert = cfg.MODEL.BERT
    bert.NUM_HIDDEN_LAYERS, bert.HIDDEN_SIZE, bert.NUM_ATTENTION_HEADS, bert.INTERMEDIATE_SIZE = layers, D, 2, 32
    cfg.MODEL.IMG_INPUT_SIZE, cfg.MODEL.MAX_POSITION_EMBEDDINGS = 32, 32
    cfg.MOE.MOE, cfg.MOE.MOE_TYPE, cfg.MOE.ATTRIBUTE_GATE = True, "attribute", "segment_row"
    cfg.MOE.NUM_EXPERTS, cfg.MOE.TOP_K, cfg.MOE.MOE_EXPERT_LOCATION = E, k, location
    for key, value in moe.items():
        cfg.MOE[key] = value
    cfg.finalize()
    return cfg


# ------------------------------------------------------------------------------ rows of the segments
def rows_of(num_visual, num_text, num_queries, attributes, side=None, frames=1):
    ids = token_attribute_ids(num_visual, num_text, num_queries, attributes=attributes, side=side, num_frames=frames)
    return segment_rows(ids).long().tolist()


def test_segment_rows_of_each_task_layout():
    # captioning: <spe> with the first (visual) segment; words and queries with the caption-text row
    assert rows_of(2, 2, 2, CAPTION) == [CAPTION_VISUAL] * 3 + [CAPTION_TEXT] * 4
    assert rows_of(2, 2, 2, {"modality": "video", "task": "caption"}, frames=2) == [CAPTION_VISUAL] * 3 + [CAPTION_TEXT] * 4
    assert rows_of(3, 0, 0, {"modality": "image", "task": "classification"}) == [VISUAL_INPUT] * 4
    assert rows_of(3, 0, 0, {"modality": "video", "task": "classification"}, frames=2) == [VISUAL_INPUT] * 4
    assert rows_of(3, 0, 0, {"modality": "image", "task": "retrieval"}) == [VISUAL_INPUT] * 4
    assert rows_of(0, 3, 0, {"modality": "text", "task": "mlm"}) == [TEXT_INPUT] * 4
    # the retrieval text is the published "target" data of image_retrieval, also as our task's input
    assert rows_of(0, 3, 0, {"modality": "text", "task": "retrieval"}) == [CLASS_TARGET] * 4
    # candidate sets: {"modality": "text", "task": <the task's>} on the target side
    assert rows_of(0, 2, 0, {"modality": "text", "task": "classification"}, side="target") == [CLASS_TARGET] * 3
    assert rows_of(0, 1, 0, {"modality": "text", "task": "caption"}, side="target") == [WORD_TARGET] * 2
    assert rows_of(0, 1, 0, {"modality": "text", "task": "mlm"}, side="target") == [WORD_TARGET] * 2
    with pytest.raises(KeyError, match="no attribute row for a visual segment of task type 'vqa'"):
        segment_row_names(token_attribute_ids(2, 2, 0, attributes={"modality": "image", "task": "vqa"}))


# ------------------------------------------------------------------------------ gate math
def test_gate_math_top2_top1_and_no_noise_in_eval():
    torch.manual_seed(0)
    gate = SegmentRowGate(D, E, 2, noise_policy="Normal", noise_std=1.0)
    with torch.no_grad():
        for p in gate.parameters():
            p.copy_(torch.randn_like(p))
    rows = torch.tensor([CAPTION_VISUAL] * 2 + [CAPTION_TEXT] * 3, dtype=torch.float)
    h = rows @ gate.row_proj.weight.T + gate.row_proj.bias
    h = (h - h.mean(-1, keepdim=True)) / torch.sqrt(h.var(-1, unbiased=False, keepdim=True) + 1e-5)
    logits = (h * gate.norm.weight + gate.norm.bias) @ gate.proj.weight.T  # no bias
    probs = logits.softmax(-1)
    top = logits.topk(2, dim=-1).indices
    gate.eval()
    r = gate(rows)
    assert torch.equal(r.experts, top)
    picked = probs.gather(1, top)
    torch.testing.assert_close(r.weights, picked / picked.sum(-1, keepdim=True))  # top-2: renormalised
    assert torch.equal(gate(rows).weights, r.weights)  # eval: no noise
    gate.top_k = 1
    torch.testing.assert_close(gate(rows).weights, probs.max(-1, keepdim=True).values)  # top-1: the probability
    gate.top_k = 2
    gate.train()  # Normal ("vmoe") noise: per distinct row, and top-2 weights from the noisy logits
    noisy = gate(rows)
    assert not torch.equal(noisy.weights, r.weights)
    assert torch.equal(noisy.weights[0], noisy.weights[1]) and torch.equal(noisy.weights[2], noisy.weights[4])


# ------------------------------------------------------------------------------ expert placement
@pytest.mark.parametrize("location,expected", [("odd", [0, 2, 4]), ("four", [0, 4]), ("all", [0, 1, 2, 3, 4, 5]),
                                               ("none", [])])
def test_expert_location_as_published(location, expected):
    model = build_model(published_cfg(location, layers=6))
    routed = [i for i, b in enumerate(model.encoder.blocks) if isinstance(getattr(b.mlp, "experts", None), RoutedExperts)]
    assert routed == expected
    for i in expected:  # the published wiring: qkv gated, proj follows it, one gate for fc1 and fc2
        attn = model.encoder.blocks[i].attn
        assert attn.qkv.gate is not None and attn.proj.gate is None


def test_even_location_and_deepspeed_backend_are_refused():
    with pytest.raises(ConfigError, match="'odd' is blocks 0, 2, 4"):
        build_model(published_cfg("even"))
    cfg = published_cfg(BACKEND="deepspeed")
    with pytest.raises(ConfigError, match="deepspeed does not implement the published Uni-Perceiver-MoE gate"):
        MoESpec.from_config(cfg)


# ------------------------------------------------------------------------------ published layout -> our model
def published_state_dict(cfg, gate_weights):
    """A published-layout encoder state dict (``fused_encoder.layers.N...``) with known gate values:
    ``tag_transform.0`` = [I_8; -I_8] (so the LayerNorm sees [r, -r]: mean 0, unit LN weight, zero bias) and
    ``wg`` = ``gate_weights[block]`` ([E, D]); random experts; dense blocks in the MoEAttentionBlock layout."""
    g = torch.Generator().manual_seed(0)
    sd = {}
    h = cfg.MODEL.BERT.INTERMEDIATE_SIZE
    for block in range(cfg.MODEL.BERT.NUM_HIDDEN_LAYERS):
        pre = f"fused_encoder.layers.{block}."
        for n in ("norm1", "norm2"):
            sd[pre + n + ".weight"], sd[pre + n + ".bias"] = 1 + 0.1 * torch.randn(D, generator=g), 0.1 * torch.randn(D, generator=g)
        sd[pre + "gamma_1"], sd[pre + "gamma_2"] = torch.rand(D, generator=g), torch.rand(D, generator=g)
        shapes = {"self_attn.qkv_proj": (3 * D, D), "self_attn.dense": (D, D), "linear1": (h, D), "linear2": (D, h)}
        if block not in gate_weights:
            for name, (o, i) in shapes.items():
                sd[pre + name + ".weight"] = torch.randn(o, i, generator=g) * i ** -0.5
                sd[pre + name + ".bias"] = 0.1 * torch.randn(o, generator=g)
            continue
        for name, (o, i) in shapes.items():
            for e in range(E):
                sd[pre + f"{name}.experts.deepspeed_experts.{e}.weight"] = torch.randn(o, i, generator=g) * i ** -0.5
                sd[pre + f"{name}.experts.deepspeed_experts.{e}.bias"] = 0.1 * torch.randn(o, generator=g)
            sd[pre + f"{name}.gate.tag_transform.0.weight"] = torch.cat([torch.eye(8), -torch.eye(8)])
            sd[pre + f"{name}.gate.tag_transform.0.bias"] = torch.zeros(D)
            sd[pre + f"{name}.gate.tag_transform.1.weight"] = torch.ones(D)
            sd[pre + f"{name}.gate.tag_transform.1.bias"] = torch.zeros(D)
            # the qkv / linear1 gates route; dense / linear2 gates are never read (random: must not matter)
            reads = name in ("self_attn.qkv_proj", "linear1")
            sd[pre + f"{name}.gate.wg.weight"] = gate_weights[block] if reads else torch.randn(E, D, generator=g)
    return sd


def bit_gate(**experts_bits):
    """wg [E, D] whose expert e scores sum(weight * row[bit]) over the listed (bit, weight) pairs."""
    wg = torch.zeros(E, D)
    for e, pairs in experts_bits.items():
        for bit, w in pairs:
            wg[int(e[1:]), bit] = w
    return wg


def converted_model(cfg, sd):
    mapped, dropped, unmapped = convert_moe_state_dict(sd, cfg)
    assert unmapped == []
    from uniperceiver.checkpoint.official import _LAYER, _LAYER_MAP

    for key, value in sd.items():
        if not is_moe_key(key):
            m = _LAYER.match(key)
            mapped[f"encoder.blocks.{m.group(1)}.{_LAYER_MAP[m.group(2)]}"] = value
    model = build_model(cfg).eval()
    model.encoder.load_state_dict({k[len("encoder."):]: v for k, v in mapped.items()}, strict=True)
    return model, dropped


def test_published_layout_routes_and_expert_outputs():
    # LN([r, -r]) = [r, -r] / sqrt(n / 8 + eps) with n ones in r (4 in caption_visual = 1101 1000, 5 in
    # caption_text = 1101 0101), so expert e's logit is sum(weight * r[bit]) / sqrt(n / 8 + eps).
    gates = {
        0: bit_gate(e2=[(0, 3.0)], e5=[(3, 2.0)]),            # both rows: 2 (3), then 5 (2)
        2: bit_gate(e2=[(4, 3.0), (0, 1.0)], e5=[(0, 2.0)]),  # visual: 2 (4) > 5 (2); text: 5 (2) > 2 (1)
    }
    cfg = published_cfg("odd", layers=4)
    sd = published_state_dict(cfg, gates)
    model, dropped = converted_model(cfg, sd)
    rules = {rule for _, rule in dropped}
    assert rules == {RULE_DENSE_GATE, RULE_LINEAR2_GATE} and len(dropped) == 2 * 2 * 5
    assert all(".self_attn.dense.gate." in k or ".linear2.gate." in k for k, _ in dropped)
    v, l, q = 4, 3, 3
    ids = token_attribute_ids(v, l, q, attributes=CAPTION)
    attrs = with_token_attributes(CAPTION, ids)
    s = ids.shape[0]
    expected = {0: [[2, 5]] * s, 2: [[2, 5]] * (1 + v) + [[5, 2]] * (l + q)}  # <spe> goes with the visual row
    for block, routes in expected.items():
        for unit in (model.encoder.blocks[block].attn.qkv, model.encoder.blocks[block].mlp.experts):
            r = unit.position_routing(attrs, s)
            assert r.experts.tolist() == routes, block
            for pos in (0, s - 1):  # weights: softmax over all 8 experts, the top-2 renormalised
                row = segment_rows(ids)[pos]
                logits = gates[block] @ torch.cat([row, -row]) / torch.sqrt(row.sum() / 8 + 1e-5)
                p = logits.softmax(-1)[r.experts[pos]]
                torch.testing.assert_close(r.weights[pos], p / p.sum())
    # expert outputs: the published merged linears, W = g1 W_e1 + g2 W_e2 (and b), applied to a text position
    block = model.encoder.blocks[2]
    x = torch.randn(1, s, D)
    r = block.mlp.experts.position_routing(attrs, s)
    (e1, e2), (g1, g2) = r.experts[-1].tolist(), r.weights[-1].tolist()
    pre = "fused_encoder.layers.2."

    def merged(name, inp):
        w = g1 * sd[pre + f"{name}.experts.deepspeed_experts.{e1}.weight"] + g2 * sd[pre + f"{name}.experts.deepspeed_experts.{e2}.weight"]
        b = g1 * sd[pre + f"{name}.experts.deepspeed_experts.{e1}.bias"] + g2 * sd[pre + f"{name}.experts.deepspeed_experts.{e2}.bias"]
        return F.linear(inp, w, b)

    with torch.no_grad():
        ours = block.mlp(x, attributes=attrs)[0, -1]
        published = merged("linear2", F.gelu(merged("linear1", x[0, -1])))
        torch.testing.assert_close(ours, published, atol=1e-5, rtol=1e-5)
        # attention output projection: follows the qkv routing, so published dense experts at (e1, e2) too
        r_attn = block.attn.qkv.position_routing(attrs, s)
        assert r_attn.experts[-1].tolist() == [5, 2]
        proj = block.attn.proj(x, attrs, r_attn)[0, -1]
        (e1, e2), (g1, g2) = r_attn.experts[-1].tolist(), r_attn.weights[-1].tolist()
        torch.testing.assert_close(proj, merged("self_attn.dense", x[0, -1]), atol=1e-5, rtol=1e-5)


def test_converter_refuses_what_it_cannot_place():
    cfg = published_cfg("odd", layers=4)
    sd = published_state_dict(cfg, {0: torch.zeros(E, D), 2: torch.zeros(E, D)})
    bad = dict(sd)
    bad["fused_encoder.layers.0.linear1.gate.tag_transform.2.weight"] = torch.ones(D)  # TAG_Transform_ACT layout
    bad["fused_encoder.layers.2.linear1.experts.deepspeed_experts.8.weight"] = torch.ones(32, D)  # a 9th expert
    bad["fused_encoder.layers.1.linear1.experts.deepspeed_experts.0.weight"] = torch.ones(32, D)  # dense block
    _, _, unmapped = convert_moe_state_dict(bad, cfg)
    assert sorted(unmapped) == sorted(k for k in bad if k not in sd)
    # block 2 dense in the checkpoint, routed in the config: its dense projections fit no rule
    dense2 = published_state_dict(cfg, {0: torch.zeros(E, D)})
    _, _, unmapped = convert_moe_state_dict(dense2, cfg)
    assert sorted(unmapped) == sorted(k for k in dense2 if k.startswith("fused_encoder.layers.2.self_attn."))
    with pytest.raises(ValueError, match="gives block 2 experts"):  # experts the config wants are missing
        convert_moe_state_dict({k: v for k, v in sd.items() if not k.startswith("fused_encoder.layers.2.")}, cfg)
    with pytest.raises(ValueError, match="needs MOE.MOE True, MOE.MOE_TYPE attribute, MOE.ATTRIBUTE_GATE segment_row"):
        convert_moe_state_dict(sd, published_cfg(ATTRIBUTE_GATE="embedding"))
    with pytest.raises(ValueError, match="the checkpoint has 7 experts, MOE.NUM_EXPERTS is 8"):
        convert_moe_state_dict({k: v for k, v in sd.items() if "deepspeed_experts.7." not in k}, cfg)


def test_convert_cli_refuses_unplaceable_moe_tensors_exit_2_nothing_written(tmp_path):
    cfg = published_cfg("odd", layers=4)
    sd = published_state_dict(cfg, {0: torch.zeros(E, D), 2: torch.zeros(E, D)})
    sd["fused_encoder.layers.0.linear1.gate.tag_transform.2.weight"] = torch.ones(D)
    src, dst = tmp_path / "published.pth", tmp_path / "ours.pth"
    torch.save({"model": sd}, src)
    config = tmp_path / "moe.yaml"
    config.write_text(f"_BASE_: {REPO}/configs/BERT_L12_H192_experiments/base_model_bert_l12_h192.yaml\n"
                      "MODEL:\n  BERT:\n    NUM_HIDDEN_LAYERS: 4\n    HIDDEN_SIZE: 16\n    NUM_ATTENTION_HEADS: 2\n"
                      "    INTERMEDIATE_SIZE: 32\nMOE:\n  MOE: True\n  ATTRIBUTE_GATE: segment_row\n")
    proc = subprocess.run([PYTHON, str(REPO / "tools" / "convert_checkpoint.py"), "--from", "uniperceiver-official",
                           "--config-file", str(config), str(src), str(dst)], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert "linear1.gate.tag_transform.2.weight" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not dst.exists() and not (tmp_path / "ours.pth.tmp").exists()


def test_shipped_moe_configs_use_the_published_values():
    tiny = setup_cfg(str(REPO / "configs/BERT_L12_H192_experiments/7tasks_berttiny_moe_training.yaml"))
    assert (tiny.MOE.ATTRIBUTE_GATE, tiny.MOE.MOE_EXPERT_LOCATION, tiny.MOE.NUM_EXPERTS, tiny.MOE.TOP_K,
            tiny.MOE.NOISY_GATE_POLICY) == ("segment_row", "all", 8, 2, "Normal")
    for stage in (1, 2):
        base = setup_cfg(str(REPO / f"configs/BERT_L12_H768_experiments/16tasks_training_basemoe_stage{stage}_56gpu.yaml"))
        assert (base.MOE.ATTRIBUTE_GATE, base.MOE.MOE_EXPERT_LOCATION, base.MOE.NUM_EXPERTS, base.MOE.TOP_K,
                base.MOE.NOISY_GATE_POLICY, base.MOE.BACKEND) == ("segment_row", "odd", 8, 2, "Normal", "native")
