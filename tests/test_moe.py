"""Uni-Perceiver-MoE on CPU: top-1 / top-2 routing trains every expert that received tokens, capacity and
dropping arithmetic, the load-balancing loss reaches the total loss, attribute routing is deterministic in
eval, pre-merged experts equal the routed ones, per-token attributes, expert parameter groups, and real runs
through main.py: 2 processes on gloo (native) and the DeepSpeed backend (1 process, save and resume)."""
import json
import os
import subprocess

import pytest
import torch

from conftest import PYTHON, REPO, free_port, run_main
from uniperceiver.config import get_cfg
from uniperceiver.modeling import build_model
from uniperceiver.modeling.moe import MODALITIES, TASK_TYPES, MoESpec, RoutedExperts, token_attribute_ids
from uniperceiver.modeling.moe.routing import DispatchPlan, Routing, capacity
from uniperceiver.solver import build_optimizer

INSTANT_MOE = str(REPO / "configs" / "quick_schedules" / "instant_moe.yaml")
ATTRS = {"modality": "image", "task": "caption"}


def moe_cfg(routing="attribute", k=2, experts=4, location="odd", layers=2, **moe):
    cfg = get_cfg()
    cfg.merge_from_dict({"TASKS": [{"NAME": "cls", "MODEL": {"TEMP_NAME": "t"}}]})
    cfg.MODEL.BERT.NUM_HIDDEN_LAYERS = layers
    cfg.MODEL.IMG_INPUT_SIZE = 32
    cfg.MODEL.MAX_POSITION_EMBEDDINGS = 32
    cfg.MOE.MOE, cfg.MOE.MOE_TYPE, cfg.MOE.TOP_K, cfg.MOE.NUM_EXPERTS = True, routing, k, experts
    cfg.MOE.MOE_EXPERT_LOCATION = location
    for key, value in moe.items():
        cfg.MOE[key] = value
    cfg.finalize()
    return cfg


def inputs(seed=0, b=3, length=5):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, 3, 32, 32, generator=g), torch.randint(0, 49406, (b, length), generator=g)


def routed_units(model):
    return [m for m in model.modules() if isinstance(m, RoutedExperts)]


# ------------------------------------------------------------------------------ routing and experts
@pytest.mark.parametrize("routing", ["attribute", "segment_row", "token"])
@pytest.mark.parametrize("k", [1, 2])
def test_forward_backward_every_routed_expert_gets_gradient(routing, k):
    torch.manual_seed(0)
    gate = "segment_row" if routing == "segment_row" else "embedding"
    routing = "attribute" if routing == "segment_row" else routing
    model = build_model(moe_cfg(routing, k, CAPACITY_FACTOR=0.0, ATTRIBUTE_GATE=gate)).train()
    images, text = inputs()
    out = model(images=images, text=text, num_queries=2, causal_text=True, attributes=ATTRS)
    targets = model.encode_targets(text[:, :3], attributes={"modality": "text", "task": "caption"})
    loss = model.logits(out["queries"], targets).logsumexp(-1).mean() + model.logits(out["spe"], targets).mean()
    # a loss on every position of a last forward, so every token's expert output matters
    states, _ = model.encode(images=images, text=text, attributes=ATTRS)
    loss = loss + states.pow(2).mean()
    extra = model.extra_losses()
    assert set(extra) == ({"loss_moe_aux"} if routing == "token" else set())
    (loss + sum(extra.values())).backward()
    units = routed_units(model)
    assert len(units) == 3  # block 0 (odd, as published: blocks 0, 2, ...): qkv, proj, FFN
    for unit in units:
        plan = unit.last_plan  # of the last forward: every expert that received tokens has a gradient
        used = plan.counts > 0
        assert used.any()
        for linear in unit.linears:
            per_expert = linear.weight.grad.flatten(1).abs().sum(1)
            assert (per_expert[used] > 0).all(), (routing, k, plan.counts, per_expert)
        if unit.gate is None:  # the published gate: proj follows the routing of qkv
            assert gate == "segment_row" and unit is units[1]
            continue
        gate_grad = [p.grad for p in unit.gate.parameters()]
        assert all(g is not None and g.abs().sum() > 0 for g in gate_grad)
        if k == 1:  # top-1 keeps the probability as the weight: one expert per assignment, no renormalising
            assert plan.weight.max() < 1.0
    dense_block = model.encoder.blocks[1]
    assert type(dense_block.mlp).__name__ == "Mlp" and type(model.encoder.blocks[0].mlp).__name__ == "MoEMlp"


@pytest.mark.parametrize("location,expected", [("odd", [0, 2, 4]), ("four", [0, 4]), ("all", [0, 1, 2, 3, 4, 5]),
                                               ("none", [])])
def test_expert_location(location, expected):
    """The published meanings (published unified_bert_encoder.py): odd = layer_idx % 2 == 0, four = % 4 == 0."""
    model = build_model(moe_cfg(location=location, layers=6))
    assert [i for i, b in enumerate(model.encoder.blocks) if type(b.mlp).__name__ == "MoEMlp"] == expected


def test_capacity_arithmetic():
    assert capacity(10, 4, 1, 1.0, 1) == 3          # ceil(1 * 1 * 10 / 4)
    assert capacity(10, 4, 2, 1.0, 1) == 5          # ceil(1 * 2 * 10 / 4)
    assert capacity(10, 4, 2, 1.5, 1) == 8
    assert capacity(10, 4, 1, 0.1, 4) == 4          # min_capacity
    assert capacity(3, 4, 1, 1.0, 8) == 3           # never more than the tokens
    assert capacity(10, 4, 1, 0.0, 4) is None       # factor <= 0: unlimited


def test_dispatch_drops_past_capacity_first_choices_first():
    # 5 tokens, 3 experts, top-2; every token's first choice is expert 0, second choice expert 1 or 2.
    experts = torch.tensor([[0, 1], [0, 2], [0, 1], [0, 1], [0, 2]])
    weights = torch.tensor([[0.6, 0.4], [0.7, 0.3], [0.5, 0.5], [0.9, 0.1], [0.8, 0.2]])
    plan = DispatchPlan(Routing(experts, weights, torch.zeros(5, 3)), num_experts=3, capacity=2)
    assert plan.counts.tolist() == [5, 3, 2]
    assert plan.num_dropped == 3 + 1  # expert 0 keeps tokens 0, 1; expert 1 keeps tokens 0, 2 (drops 3)
    kept = sorted(zip(plan.expert.tolist(), plan.token.tolist()))
    assert kept == [(0, 0), (0, 1), (1, 0), (1, 2), (2, 1), (2, 4)]
    x = torch.arange(5.0)[:, None].repeat(1, 2)
    from uniperceiver.modeling.moe.layers import ExpertLinear

    identity = ExpertLinear(3, 2, 2)
    with torch.no_grad():
        identity.weight.copy_(torch.eye(2).repeat(3, 1, 1))
    y = plan.apply(identity, x)  # identity experts: y = x * (sum of the kept weights)
    assert torch.allclose(y[:, 0], torch.tensor([0 * 1.0, 1 * 1.0, 2 * 0.5, 3 * 0.0, 4 * 0.2]))


@pytest.mark.parametrize("capacity_", [2, None], ids=["dropping", "unlimited"])
def test_apply_is_the_weighted_sum_of_the_kept_experts(capacity_):
    """``plan.apply`` (one matmul per expert over its own tokens) against a loop over the kept assignments,
    values and gradients, with an expert that gets no token."""
    from uniperceiver.modeling.moe.layers import ExpertLinear

    torch.manual_seed(0)
    experts = torch.tensor([[0, 1], [0, 2], [0, 1], [0, 1], [1, 2]])  # expert 3 gets nothing
    weights = torch.rand(5, 2)
    plan = DispatchPlan(Routing(experts, weights, torch.zeros(5, 4)), num_experts=4, capacity=capacity_)
    linear = ExpertLinear(4, 6, 3)
    x = torch.randn(5, 6, requires_grad=True)
    y = plan.apply(linear, x)
    grads = torch.autograd.grad(y.square().sum(), [x, linear.weight, linear.bias])
    ref = torch.zeros(5, 3)
    for e, t, w in zip(plan.expert.tolist(), plan.token.tolist(), plan.weight):
        ref = ref.index_add(0, torch.tensor([t]), (w * (x[t] @ linear.weight[e] + linear.bias[e]))[None])
    ref_grads = torch.autograd.grad(ref.square().sum(), [x, linear.weight, linear.bias])
    assert plan.expert.numel() == (10 if capacity_ is None else 6)  # 2 per expert when dropping
    torch.testing.assert_close(y, ref)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r)
    assert grads[1][3].abs().sum() == 0


def test_token_routing_drops_tokens_in_the_model():
    torch.manual_seed(0)
    model = build_model(moe_cfg("token", 1, CAPACITY_FACTOR=0.25, EVAL_CAPACITY_FACTOR=0.5, MIN_CAPACITY=1))
    images, text = inputs()
    model.train()(images=images, text=text, attributes=ATTRS)
    n = 3 * (1 + 4 + 5)  # B * (<spe> + 2x2 patches + 5 text tokens)
    for unit in routed_units(model):
        assert unit.last_plan.capacity == capacity(n, 4, 1, 0.25, 1) and unit.last_plan.num_dropped > 0
    model.extra_losses()
    model.eval()(images=images, text=text, attributes=ATTRS)
    assert all(u.last_plan.capacity == capacity(n, 4, 1, 0.5, 1) for u in routed_units(model))
    assert model.extra_losses() == {}  # nothing is recorded outside training


def test_aux_loss_is_recorded_once_per_forward_and_trains_the_gates():
    torch.manual_seed(0)
    model = build_model(moe_cfg("token", 2)).train()
    model.set_grad_checkpointing(True)  # recomputation in backward must not record again
    images, text = inputs()
    model(images=images, text=text, attributes=ATTRS)
    aux = model.extra_losses()["loss_moe_aux"]
    assert model.extra_losses() == {}  # popped
    # 3 units, each E * sum(mean_prob * frac_first) in [1, E] (1 = balanced), times AUX_LOSS_WEIGHT
    assert 3 * 0.01 <= float(aux) <= 3 * 0.01 * 4
    aux.backward()
    for unit in routed_units(model):
        assert unit.gate.proj.weight.grad.abs().sum() > 0
    assert model.extra_losses() == {}


def test_aux_loss_reaches_total_loss_in_the_trainer():
    from uniperceiver.engine.step import AMPStepEngine
    from uniperceiver.engine.train_loop import Trainer
    from uniperceiver.utils.events import EventStorage

    torch.manual_seed(0)
    model = build_model(moe_cfg("token", 2))
    images, text = inputs()

    class Task:
        def losses(self, m, batch):
            return {"loss_t": m(images=batch["images"], text=batch["text"], attributes=ATTRS)["spe"].sum() * 0}

    optimizer = build_optimizer(moe_cfg("token", 2), model)
    engine = AMPStepEngine(model, optimizer)
    trainer = Trainer(model, {"t": Task()}, [("t", {"images": images, "text": text})] * 2, engine)
    seen = {}
    trainer._write_metrics = lambda metrics, data_time: seen.update(metrics)
    with EventStorage(0):
        trainer.run_step()
    assert seen["loss_moe_aux"] > 0 and seen["total_loss"] == pytest.approx(seen["loss_moe_aux"])
    gate = routed_units(model)[0].gate.proj.weight
    assert optimizer.state[gate]["exp_avg"].abs().sum() > 0  # only the aux loss gives the gate a gradient


# ------------------------------------------------------------------------------ attributes and merging
def test_token_attribute_ids():
    ids = token_attribute_ids(4, 3, 2, attributes={"task": "caption"})
    special, image, text = (MODALITIES.index(m) for m in ("special", "image", "text"))
    assert ids[:, 0].tolist() == [special] + [image] * 4 + [text] * 3 + [special] * 2
    assert set(ids[:, 1].tolist()) == {TASK_TYPES.index("caption")} and set(ids[:, 2].tolist()) == {0}
    assert token_attribute_ids(4, 0, 0, num_frames=2)[1, 0] == MODALITIES.index("video")
    assert token_attribute_ids(0, 3, 0, side="target")[:, 2].tolist() == [1] * 4
    with pytest.raises(KeyError, match="unknown task type 'dance'"):
        token_attribute_ids(0, 3, 0, attributes={"task": "dance"})


def test_attribute_routing_is_deterministic_in_eval_and_ignores_content():
    torch.manual_seed(0)
    model = build_model(moe_cfg("attribute", 2, NOISY_GATE_POLICY="RSample")).eval()
    unit = routed_units(model)[0]
    plans = []
    for seed in (0, 0, 1):
        images, text = inputs(seed)
        with torch.no_grad():
            model(images=images, text=text, attributes=ATTRS)
        plans.append((unit.last_plan.expert.clone(), unit.last_plan.token.clone(), unit.last_plan.weight.clone()))
    for a, b in zip(plans[0], plans[2]):  # different content, same attributes: the same routing
        assert torch.equal(a, b)
    r_image = unit.gate(token_attribute_ids(1, 0, 0, attributes=ATTRS))  # the embedding gate (the default)
    r_target = unit.gate(token_attribute_ids(1, 0, 0, attributes=ATTRS, side="target"))
    assert r_image.experts.shape == (2, 2)
    model.train()  # training noise (RSample) changes the selection of some positions across calls
    picks = {tuple(unit.gate(token_attribute_ids(0, 1, 0)).experts.flatten().tolist()) for _ in range(50)}
    assert len(picks) > 1
    assert not torch.equal(r_image.probs, r_target.probs)


@pytest.mark.parametrize("k", [1, 2])
def test_merged_experts_equal_routed_experts(k):
    torch.manual_seed(0)
    model = build_model(moe_cfg("attribute", k, location="all")).eval()
    images, text = inputs()
    with torch.no_grad():
        ref = model(images=images, text=text, num_queries=3, causal_text=True, attributes=ATTRS)
        ref_t = model.encode_targets(text, attributes={"task": "caption"})
        assert model.merge_moe_experts() == 6
        out = model(images=images, text=text, num_queries=3, causal_text=True, attributes=ATTRS)
        out_t = model.encode_targets(text, attributes={"task": "caption"})
    for key in ("spe", "text", "queries"):
        assert torch.allclose(out[key], ref[key], atol=1e-5), (key, (out[key] - ref[key]).abs().max())
    assert torch.allclose(out_t, ref_t, atol=1e-5)
    unit = routed_units(model)[0]
    assert len(unit._merged_cache) == 5  # input side: special, image, text; target side: special, text
    with pytest.raises(ValueError, match="attribute-routed"):
        build_model(moe_cfg("token")).merge_moe_experts()


def test_expert_param_groups_and_no_decay():
    cfg = moe_cfg("attribute", 2)
    model = build_model(cfg)
    groups = build_optimizer(cfg, model).param_groups
    expert = [g for g in groups if g["moe_expert"]]
    assert expert and all(getattr(p, "moe_expert", False) for g in expert for p in g["params"])
    assert not any(getattr(p, "moe_expert", False) for g in groups if not g["moe_expert"] for p in g["params"])
    names = {n for g in groups for n in g["param_names"] if g["weight_decay"] == 0}
    assert "encoder.blocks.0.mlp.experts.linears.0.bias" in names
    assert "encoder.blocks.0.mlp.experts.gate.task" in names
    assert "encoder.blocks.0.mlp.experts.linears.0.weight" not in names


def test_spec_validation():
    from uniperceiver.config import ConfigError

    for key, value in [("TOP_K", 5), ("MOE_TYPE", "random"), ("BACKEND", "tutel"), ("EP_SIZE", 2),
                       ("BACKEND", "deepspeed"), ("ATTRIBUTE_GATE", "tag"), ("NOISY_GATE_POLICY", "vmoe")]:
        cfg = get_cfg()
        cfg.MOE.MOE, cfg.MOE.NUM_EXPERTS = True, 4
        cfg.MOE[key] = value
        with pytest.raises(ConfigError):
            MoESpec.from_config(cfg)


def test_param_counts_total_and_active():
    model = build_model(moe_cfg("attribute", 2, experts=4, layers=2))
    dense = build_model(moe_cfg("attribute", 2, experts=4, layers=2, MOE=False))
    expert_total = sum(p.numel() for n, p in model.named_parameters() if getattr(p, "moe_expert", False))
    d, h = 192, 768
    per_expert = (d * 3 * d + 3 * d) + (d * d + d) + (d * h + h + h * d + d)
    assert expert_total == 4 * per_expert
    gates = sum(p.numel() for n, p in model.named_parameters() if ".gate." in n)
    dense_block = sum(p.numel() for n, p in dense.named_parameters() if n.startswith("encoder.blocks.0.")
                      and ("attn." in n or "mlp." in n))
    assert dense_block == per_expert
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in dense.parameters()) \
        + 3 * per_expert + gates


# ------------------------------------------------------------------------------ real runs
def _metrics(out):
    return [json.loads(line) for line in (out / "metrics.json").read_text().splitlines()]


@pytest.mark.distributed
@pytest.mark.slow
def test_native_two_processes_gloo_token_routing(tmp_path):
    out = tmp_path / "out"
    run_main(["--config-file", INSTANT_MOE, "--num-gpus", "2", "OUTPUT_DIR", out, "MOE.MOE_TYPE", "token",
              "SOLVER.MAX_ITER", "4", "SOLVER.WRITE_PERIOD", "1", "SOLVER.CHECKPOINT_PERIOD", "2",
              # synced: both ranks draw the same task, so the rank-averaged total is task loss + aux loss
              "DATALOADER.STRATEGY", "synced"], timeout=400)
    rows = [r for r in _metrics(out) if "total_loss" in r]
    assert len(rows) == 4
    assert all(r["loss_moe_aux"] > 0 for r in rows)
    # metrics.json holds window medians, so the identity is exact only at the first row (one value each):
    # the total is the task loss plus the aux loss.
    first = rows[0]
    task = sum(v for key, v in first.items() if key.startswith("loss_") and key != "loss_moe_aux")
    assert first["total_loss"] == pytest.approx(task + first["loss_moe_aux"], rel=1e-5)
    state = torch.load(out / "model_final.pth", weights_only=True)["model"]
    assert "encoder.blocks.0.mlp.experts.linears.1.weight" in state
    run_main(["--config-file", INSTANT_MOE, "--num-gpus", "2", "--resume", "OUTPUT_DIR", out, "MOE.MOE_TYPE",
              "token", "SOLVER.MAX_ITER", "4", "DATALOADER.STRATEGY", "synced"], timeout=400)


@pytest.mark.deepspeed
@pytest.mark.slow
def test_deepspeed_backend_trains_saves_expert_files_and_resumes(tmp_path):
    pytest.importorskip("deepspeed")
    out = tmp_path / "out"
    launcher = [PYTHON, "-m", "torch.distributed.run", "--nproc_per_node", "1", "--master_port", str(free_port())]
    args = ["OUTPUT_DIR", out, "SOLVER.DEEPSPEED.ENABLED", "True",
            "SOLVER.DEEPSPEED.ZERO_STAGE", "2", "MOE.BACKEND", "deepspeed", "MOE.TOP_K", "2",
            "SOLVER.MAX_ITER", "4", "SOLVER.CHECKPOINT_PERIOD", "2", "SOLVER.WRITE_PERIOD", "1"]
    env = {"DS_ACCELERATOR": "cpu"}
    run_main(["--config-file", INSTANT_MOE] + args + ["MOE.MOE_TYPE", "token"], launcher=launcher, env=env, timeout=500)
    rows = [r for r in _metrics(out) if "total_loss" in r]
    assert len(rows) == 4 and all(r["loss_moe_aux"] > 0 for r in rows)
    tags = sorted(os.listdir(out / "deepspeed"))
    expert_files = [f for f in os.listdir(out / "deepspeed" / "iter_0000004") if "_expert_" in f]
    assert len(expert_files) == 5 * 4, tags  # 5 MoE layers (q, k, v, proj, FFN) x 4 experts
    final = torch.load(out / "model_final.pth", weights_only=True)["model"]
    key = "encoder.blocks.0.mlp.experts.moe.deepspeed_moe.experts.deepspeed_experts.3.2.weight"
    assert key in final
    # resume from the iteration-2 checkpoint: the DeepSpeed shards (experts included) load back
    (out / "last_checkpoint").write_text("model_0000001.pth")
    proc = run_main(["--config-file", INSTANT_MOE, "--resume"] + args + ["MOE.MOE_TYPE", "token"], launcher=launcher,
                    env=env, timeout=500)
    log = (out / "log.txt").read_text()
    assert "Starting training from iteration 2 to 4" in log
    resumed = torch.load(out / "model_final.pth", weights_only=True)["model"]
    del proc
    assert resumed.keys() == final.keys()
    for name, value in final.items():  # exact: experts, gates and dense weights, optimizer shards included
        torch.testing.assert_close(resumed[name], value, atol=0, rtol=0, msg=f"{name} differs after resume")


@pytest.mark.deepspeed
@pytest.mark.distributed
@pytest.mark.slow
def test_deepspeed_expert_parallel_trains_saves_every_expert_resumes_and_evaluates(tmp_path):
    """``MOE.EP_SIZE 2`` on 2 processes, each holding 2 of the 4 experts of every MoE layer.  Token routing
    over MLM batches whose text lengths differ between the ranks (the capacity is the group's largest); the
    .pth holds every expert under its global id, as DeepSpeed's own expert files do; evaluation during
    training runs; resuming is exact; the .pth evaluates in one process with ``MOE.EP_SIZE 1``."""
    pytest.importorskip("deepspeed")
    out = tmp_path / "out"
    launcher = [PYTHON, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port())]
    args = ["OUTPUT_DIR", out, "SOLVER.DEEPSPEED.ENABLED", "True", "MOE.BACKEND", "deepspeed", "MOE.EP_SIZE", "2",
            "MOE.MOE_TYPE", "token", "DATALOADER.STRATEGY", "synced", "SOLVER.MAX_ITER", "4",
            "SOLVER.CHECKPOINT_PERIOD", "2", "SOLVER.WRITE_PERIOD", "1", "SOLVER.EVAL_PERIOD", "4",
            "TASKS.imagenet.DATALOADER.TEST_BATCH_SIZE", "7"]  # ragged last batches
    env = {"DS_ACCELERATOR": "cpu"}
    run_main(["--config-file", INSTANT_MOE] + args, launcher=launcher, env=env, timeout=500)
    rows = [r for r in _metrics(out) if "total_loss" in r]
    assert len(rows) == 4 and any("loss_bookswiki_mlm" in r for r in rows)
    evaluated = json.loads((out / "inference" / "imagenet" / "results.json").read_text())
    assert 0 <= evaluated["Acc@1"] <= 100  # evaluation during training ran in lockstep
    final = torch.load(out / "model_final.pth", weights_only=True)["model"]
    expert_dir = out / "deepspeed" / "iter_0000004"
    expert_files = sorted(f for f in os.listdir(expert_dir) if "_expert_" in f)
    assert len(expert_files) == 5 * 4  # 5 MoE layers (q, k, v, proj, FFN) x 4 experts, numbered 0..3
    for name in expert_files:
        for key, value in torch.load(expert_dir / name, weights_only=True).items():
            torch.testing.assert_close(final[key], value.float(), atol=0, rtol=0, msg=f"{key} ({name})")

    (out / "last_checkpoint").write_text("model_0000001.pth")  # resume from iteration 2
    run_main(["--config-file", INSTANT_MOE, "--resume"] + args, launcher=launcher, env=env, timeout=500)
    resumed = torch.load(out / "model_final.pth", weights_only=True)["model"]
    assert resumed.keys() == final.keys()
    for name, value in final.items():
        torch.testing.assert_close(resumed[name], value, atol=0, rtol=0, msg=f"{name} differs after resume")

    run_main(["--config-file", INSTANT_MOE, "--eval-only", "SOLVER.DEEPSPEED.ENABLED", "True", "MOE.BACKEND",
              "deepspeed", "MOE.MOE_TYPE", "token", "MODEL.WEIGHTS", out / "model_final.pth",
              "OUTPUT_DIR", tmp_path / "eval"], env=env, timeout=300)
    results = json.loads((tmp_path / "eval" / "inference" / "imagenet" / "results.json").read_text())
    assert 0 <= results["Acc@1"] <= 100

    # DeepSpeed's zero_to_fp32 cannot consolidate expert files: the converter says so and names the .pth
    proc = subprocess.run([PYTHON, str(REPO / "tools" / "convert_checkpoint.py"), str(out), str(tmp_path / "c.pth")],
                          env=dict(os.environ, DS_ACCELERATOR="cpu"), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and "DeepSpeed-MoE checkpoint" in proc.stderr and "model_*.pth" in proc.stderr
    assert not (tmp_path / "c.pth").exists()
