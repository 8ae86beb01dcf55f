"""SOLVER.ACCUM_NEGATIVES: k micro-batches of a contrastive task scored over all their features give the loss and
the gradients of one batch of k x b (fp32, dropout off); with ``DATALOADER.STRATEGY synced`` on several ranks
(real gloo processes, DDP), those of one batch of ranks x k x b on one process."""
from __future__ import annotations

import copy
import os

import pytest
import torch

from conftest import REPO, free_port
from uniperceiver.config import ConfigError, setup_cfg
from uniperceiver.data import build_train_loader
from uniperceiver.engine.defaults import build_step_engine
from uniperceiver.engine.step import AMPStepEngine
from uniperceiver.modeling import build_model
from uniperceiver.solver import build_optimizer
from uniperceiver.tasks import build_tasks

RETRIEVAL = str(REPO / "configs" / "quick_schedules" / "instant_retrieval.yaml")


OPTS = ["MODEL.BERT.NUM_HIDDEN_LAYERS", "1", "MODEL.LAYER_SCALE_INIT", "1.0",
        "TASKS.mscoco_retrieval.DATALOADER.TRAIN_BATCH_SIZE", "8",
        "MODEL.BERT.HIDDEN_DROPOUT_PROB", "0.0", "MODEL.BERT.DROP_PATH_PROB", "0.0"]


def _setup():
    cfg = setup_cfg(RETRIEVAL, OPTS)
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


def _multi_rank_worker(rank, world, port, cache, k, path):
    """One rank of ``world``: the initial weights and the whole batch from ``path``; this rank's quarter / half
    as k micro-batches through the real step engine (DDP over gloo, SOLVER.ACCUM_NEGATIVES); writes its loss
    terms and its (DDP-averaged) gradients."""
    import torch.distributed as dist

    from uniperceiver.utils import comm

    os.environ["UNIPERCEIVER_CACHE"] = cache
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        cfg = setup_cfg(RETRIEVAL, OPTS + ["TASKS.mscoco_retrieval.DATALOADER.STRATEGY", "synced",
                                           "SOLVER.ACCUM_ITER", str(k), "SOLVER.ACCUM_NEGATIVES", "True"])
        start = torch.load(path, weights_only=True)
        model = build_model(cfg)
        model.load_state_dict(start["model"])
        tasks = build_tasks(cfg)
        name, batch = start["name"], start["batch"]
        n = batch["images"].shape[0] // world
        local = {key: v[rank * n:(rank + 1) * n] for key, v in batch.items()}
        engine = build_step_engine(cfg, model, build_optimizer(cfg, model), torch.device("cpu"))
        assert isinstance(engine.model, torch.nn.parallel.DistributedDataParallel)
        terms = engine.run_micro_batches(tasks, [(name, b) for b in _split(local, k)], accum_negatives=True)
        torch.save({"loss": [t[f"loss_{name}"] for _, t in terms], "grads": _grads(model)},
                   f"{path}.rank{rank}")
    finally:
        comm.destroy_process_group()


@pytest.mark.distributed
@pytest.mark.slow  # two spawned processes: ~35 s of CPU
def test_accumulated_negatives_across_ranks_equal_one_big_batch(tmp_path):
    """2 gloo ranks x k = 2 micro-batches of 2 (DDP, synced): every rank's gradients equal those of the 8 samples
    as one batch on one process within 1e-5, and the ranks' mean loss equals its loss (each rank's loss is the
    mean over its own rows, as in the plain synced path; the logged metric is their mean)."""
    import torch.multiprocessing as mp

    world, k = 2, 2
    cfg, model, tasks, name, batch = _setup()
    path = str(tmp_path / "start.pt")
    torch.save({"model": model.state_dict(), "batch": batch, "name": name}, path)
    big_loss = tasks[name].losses(model, batch)[f"loss_{name}"]
    big_loss.backward()
    expected = _grads(model)
    scale = max(g.abs().max().item() for g in expected.values())
    assert scale > 0 and any("logit_scale" in n for n in expected)

    mp.spawn(_multi_rank_worker, args=(world, free_port(), os.environ["UNIPERCEIVER_CACHE"], k, path),
             nprocs=world, join=True)
    ranks = [torch.load(f"{path}.rank{r}", weights_only=True) for r in range(world)]
    losses = [torch.stack(r["loss"]) for r in ranks]
    assert all(len(x) == k and torch.equal(x, x[:1].expand(k)) for x in losses)  # one loss per step and rank
    assert torch.stack([x[0] for x in losses]).mean().item() == pytest.approx(big_loss.item(), abs=1e-5)
    assert abs(losses[0][0].item() - losses[1][0].item()) > 1e-4  # the ranks scored different rows
    for r, got in enumerate(ranks):
        assert got["grads"].keys() == expected.keys(), (r, expected.keys() ^ got["grads"].keys())
        for n, g in expected.items():  # within 1e-5, and within 1e-3 of the largest gradient
            diff = (got["grads"][n] - g).abs().max().item()
            assert diff <= 1e-5 and diff <= 1e-3 * scale, (r, n, diff, scale)
