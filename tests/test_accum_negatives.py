"""SOLVER.ACCUM_NEGATIVES: k micro-batches of a contrastive task scored over all their features give the loss and
the gradients of one batch of k x b (fp32, dropout off)."""
from __future__ import annotations

import copy

import pytest
import torch

from conftest import REPO
from uniperceiver.config import ConfigError, setup_cfg
from uniperceiver.data import build_train_loader
from uniperceiver.engine.defaults import build_step_engine
from uniperceiver.engine.step import AMPStepEngine
from uniperceiver.modeling import build_model
from uniperceiver.solver import build_optimizer
from uniperceiver.tasks import build_tasks

RETRIEVAL = str(REPO / "configs" / "quick_schedules" / "instant_retrieval.yaml")


def _setup():
    cfg = setup_cfg(RETRIEVAL, ["MODEL.BERT.NUM_HIDDEN_LAYERS", "1", "MODEL.LAYER_SCALE_INIT", "1.0",
                                "TASKS.mscoco_retrieval.DATALOADER.TRAIN_BATCH_SIZE", "8",
                                "MODEL.BERT.HIDDEN_DROPOUT_PROB", "0.0", "MODEL.BERT.DROP_PATH_PROB", "0.0"])
    torch.manual_seed(0)
    model = build_model(cfg)
    tasks = build_tasks(cfg)
    name, batch = next(build_train_loader(cfg, tasks))
    return cfg, model, tasks, name, batch


def _grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _split(batch, k):
    size = batch["images"].shape[0] // k
    return [{key: v[i * size:(i + 1) * size] for key, v in batch.items()} for i in range(k)]


@pytest.mark.parametrize("k", [2, 4])
def test_accumulated_negatives_equal_one_big_batch(k):
    cfg, model, tasks, name, batch = _setup()
    small = copy.deepcopy(model)
    big_loss = tasks[name].losses(model, batch)[f"loss_{name}"]
    big_loss.backward()
    expected = _grads(model)

    engine = AMPStepEngine(small, build_optimizer(cfg, small))
    terms = engine.run_micro_batches(tasks, [(name, b) for b in _split(batch, k)], accum_negatives=True)
    got = _grads(small)
    assert len(terms) == k and all(t[f"loss_{name}"] == pytest.approx(big_loss.item(), abs=1e-5) for _, t in terms)
    assert got.keys() == expected.keys() and any("logit_scale" in n for n in got)
    scale = max(g.abs().max().item() for g in expected.values())
    assert scale > 0
    for n, g in expected.items():  # within 1e-5, and within 1e-3 of the largest gradient (they are small at init)
        diff = (got[n] - g).abs().max().item()
        assert diff <= 1e-5 and diff <= 1e-3 * scale, (n, diff, scale)

    # and it is not trivially so: scoring each micro-batch alone gives other gradients
    alone = copy.deepcopy(model)
    alone.zero_grad(set_to_none=True)
    engine = AMPStepEngine(alone, build_optimizer(cfg, alone))
    terms = engine.run_micro_batches(tasks, [(name, b) for b in _split(batch, k)], accum_negatives=False)
    assert abs(sum(t[f"loss_{name}"].item() for _, t in terms) / k - big_loss.item()) > 0.1  # fewer negatives
    assert max((p.grad - expected[n]).abs().max().item() for n, p in alone.named_parameters()
               if p.grad is not None) > 1e-2 * scale


def test_accumulated_negatives_refuse_fp16():
    cfg, model, *_ = _setup()
    cfg.defrost()
    cfg.SOLVER.ACCUM_NEGATIVES, cfg.SOLVER.AMP.ENABLED, cfg.SOLVER.AMP.DTYPE = True, True, "fp16"
    with pytest.raises(ConfigError, match="ACCUM_NEGATIVES"):
        build_step_engine(cfg, model, build_optimizer(cfg, model), torch.device("cpu"))
