"""Trainer / step engine / solver: accumulation equivalences, LR schedules, param groups, non-finite losses."""
import math

import pytest
import torch

from conftest import ENGINE_SMOKE, CorruptLosses
from uniperceiver.config import ConfigError, setup_cfg
from uniperceiver.engine import AMPStepEngine, NonFiniteLossError, Trainer, launch
from uniperceiver.engine.defaults import build_step_engine
from uniperceiver.modeling import build_model
from uniperceiver.modeling.meta_arch.placeholder import PlaceholderModel
from uniperceiver.solver import build_lr_multiplier, build_lr_scheduler, build_optimizer, get_param_groups
from uniperceiver.tasks import build_tasks
from uniperceiver.utils import comm
from uniperceiver.utils.events import EventStorage


def _cfg(*opts):
    return setup_cfg(ENGINE_SMOKE, ["SOLVER.GRAD_CLIP", "0.05", *opts])


def _train(cfg, steps):
    """Build everything from cfg (seeded) and run ``steps`` optimizer steps; returns the model."""
    from uniperceiver.data import build_train_loader

    torch.manual_seed(0)
    model = build_model(cfg)
    tasks = build_tasks(cfg)
    loader = build_train_loader(cfg, tasks)
    optimizer = build_optimizer(cfg, model)
    scheduler = build_lr_scheduler(cfg, optimizer)
    engine = build_step_engine(cfg, model, optimizer, torch.device("cpu"))
    trainer = Trainer(model, tasks, loader, engine, accum_iter=cfg.SOLVER.ACCUM_ITER,
                      max_nonfinite_steps=cfg.SOLVER.MAX_NONFINITE_STEPS)
    with EventStorage() as trainer.storage:
        for trainer.iter in range(steps):
            trainer.run_step()
            scheduler.step()
    return model, trainer


def _max_diff(a, b):
    return max((a[k] - b[k]).abs().max().item() for k in a)


def test_accumulation_equals_big_batch():
    """2 micro-batches of b == 1 batch of 2b (per-sample loss; clip + schedule once per optimizer step)."""
    big, _ = _train(_cfg("DATALOADER.TRAIN_BATCH_SIZE", "8"), steps=4)
    acc, trainer = _train(_cfg("DATALOADER.TRAIN_BATCH_SIZE", "4", "SOLVER.ACCUM_ITER", "2"), steps=4)
    assert trainer.data_loader.steps == 8  # 2 micro-batches per step were drawn
    assert _max_diff(big.state_dict(), acc.state_dict()) < 1e-5
    # and it is not trivially equal: a single micro-batch of b gives different weights
    small, _ = _train(_cfg("DATALOADER.TRAIN_BATCH_SIZE", "4"), steps=4)
    assert _max_diff(big.state_dict(), small.state_dict()) > 1e-4


def _ddp_worker(runs, steps):
    for opts, out in runs:
        model, _ = _train(_cfg(*opts), steps)
        if comm.is_main_process():
            torch.save(model.state_dict(), out)


@pytest.mark.distributed
def test_two_processes_equal_one_process_double_batch(tmp_path):
    """2 processes x b (DDP, gloo) == 1 process x 2b; also with accumulation on top (no_sync path)."""
    one, two, two_acc = tmp_path / "one.pt", tmp_path / "two.pt", tmp_path / "two_acc.pt"
    _ddp_worker([(["DATALOADER.TRAIN_BATCH_SIZE", "8"], str(one))], 3)
    launch(_ddp_worker, 2, args=([(["DATALOADER.TRAIN_BATCH_SIZE", "4"], str(two)),
                                  (["DATALOADER.TRAIN_BATCH_SIZE", "2", "SOLVER.ACCUM_ITER", "2"], str(two_acc))], 3))
    a, b, c = (torch.load(p, weights_only=True) for p in (one, two, two_acc))
    assert _max_diff(a, b) < 1e-5
    assert _max_diff(a, c) < 1e-5


@pytest.mark.parametrize("name,expected", [
    # (iteration, multiplier) with MAX_ITER 100, WARMUP 10, MIN_LR 0.1 (BASE_LR 1)
    ("WarmupCosine", [(0, 0.001), (10, 1.0), (55, 0.55), (100, 0.1)]),
    ("WarmupLinear", [(0, 0.001), (10, 1.0), (55, 0.55), (100, 0.1)]),
    ("WarmupConstant", [(0, 0.001), (5, 0.5005), (10, 1.0), (90, 1.0)]),
    ("WarmupMultiStep", [(0, 0.001), (10, 1.0), (49, 1.0), (50, 0.1), (80, 0.01)]),
])
def test_lr_schedules(name, expected):
    m = build_lr_multiplier(name, 100, 1.0, min_lr=0.1, warmup=10, warmup_factor=0.001, steps=[50, 80], gamma=0.1)
    for it, value in expected:
        assert m(min(it, 99.999) / 100) == pytest.approx(value, abs=2e-3), (name, it)


def test_unknown_schedule_is_config_error():
    with pytest.raises(ConfigError, match="WarmupCosine"):
        build_lr_multiplier("Cosine", 10, 1.0)


def test_scheduler_resume_follows_new_max_iter():
    model = PlaceholderModel()
    cfg = setup_cfg(ENGINE_SMOKE, ["SOLVER.MAX_ITER", "20", "LR_SCHEDULER.WARMUP", "0", "LR_SCHEDULER.MIN_LR", "0.0"])
    opt = build_optimizer(cfg, model)
    sched = build_lr_scheduler(cfg, opt)
    for _ in range(10):
        sched.step()
    state = sched.state_dict()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.01 * 0.5 * (1 + math.cos(math.pi * 10 / 20)))
    longer = setup_cfg(ENGINE_SMOKE, ["SOLVER.MAX_ITER", "40", "LR_SCHEDULER.WARMUP", "0", "LR_SCHEDULER.MIN_LR", "0.0"])
    opt2 = build_optimizer(longer, model)
    sched2 = build_lr_scheduler(longer, opt2)
    sched2.load_state_dict(state)
    assert sched2.last_iter == 10
    assert opt2.param_groups[0]["lr"] == pytest.approx(0.01 * 0.5 * (1 + math.cos(math.pi * 10 / 40)))


def test_param_groups_decay_layer_scale_and_frozen():
    model = PlaceholderModel(hidden=8, num_layers=2)
    model.embeddings.bias.requires_grad_(False)
    groups = get_param_groups(model, weight_decay=0.05, weight_decay_norm=0.0, no_decay_patterns=[r"norm"],
                              layer_decay=0.5)
    by_name = {n: g for g in groups for n in g["param_names"]}
    assert "embeddings.bias" not in by_name  # frozen: left out
    assert by_name["embeddings.weight"]["weight_decay"] == 0.05
    assert by_name["blocks.0.1.bias"]["weight_decay"] == 0.0  # 1-D
    assert by_name["norm.weight"]["weight_decay"] == 0.0
    assert by_name["embeddings.weight"]["lr_scale"] == pytest.approx(0.5 ** 3)
    assert by_name["blocks.1.1.weight"]["lr_scale"] == pytest.approx(0.5)
    assert by_name["head.weight"]["lr_scale"] == 1.0
    n_params = sum(1 for p in model.parameters() if p.requires_grad)
    assert sum(len(g["params"]) for g in groups) == n_params
    # model.no_weight_decay() names and 2-D name patterns
    model.no_weight_decay = lambda: {"head.weight"}
    groups = get_param_groups(model, 0.05, 0.0, no_decay_patterns=[r"^embeddings\.weight$"])
    by_name = {n: g for g in groups for n in g["param_names"]}
    assert by_name["head.weight"]["weight_decay"] == 0.0 and by_name["embeddings.weight"]["weight_decay"] == 0.0
    assert by_name["blocks.0.1.weight"]["weight_decay"] == 0.05


def test_scheduler_applies_lr_scale():
    cfg = setup_cfg(ENGINE_SMOKE, ["SOLVER.LAYER_LR_DECAY", "0.5", "LR_SCHEDULER.WARMUP", "0"])
    model = build_model(cfg)
    opt = build_optimizer(cfg, model)
    build_lr_scheduler(cfg, opt)
    lrs = sorted({round(g["lr"] / cfg.SOLVER.BASE_LR, 6) for g in opt.param_groups})
    assert lrs == [0.125, 0.25, 0.5, 1.0]


def _nan_losses(model, losses):
    return {k: v * float("nan") for k, v in losses.items()}


def _nan_trainer(max_nonfinite, bad_calls):
    from uniperceiver.data import build_train_loader

    cfg = _cfg("SOLVER.MAX_NONFINITE_STEPS", str(max_nonfinite))
    torch.manual_seed(0)
    model = build_model(cfg)
    tasks = build_tasks(cfg)
    loader = build_train_loader(cfg, tasks)
    wrapped = {n: CorruptLosses(t, bad_calls, _nan_losses) for n, t in tasks.items()}
    opt = build_optimizer(cfg, model)
    return Trainer(model, wrapped, loader, AMPStepEngine(model, opt, grad_clip=1.0),
                   max_nonfinite_steps=max_nonfinite), model


def test_nonfinite_stops_at_first_by_default():
    trainer, _ = _nan_trainer(0, bad_calls=[1])
    with EventStorage() as trainer.storage:
        trainer.iter = 0
        trainer.run_step()
        trainer.iter = 1
        with pytest.raises(NonFiniteLossError, match=r"iteration 1: task synthetic, loss term loss_synthetic"):
            trainer.run_step()


def test_nonfinite_skips_then_stops():
    trainer, model = _nan_trainer(2, bad_calls=[1, 2, 4, 5, 6])
    with EventStorage() as trainer.storage:
        trainer.iter = 0
        trainer.run_step()
        before = {k: v.clone() for k, v in model.state_dict().items()}
        for trainer.iter in (1, 2):  # skipped, weights unchanged
            trainer.run_step()
        assert _max_diff(before, model.state_dict()) == 0
        trainer.iter = 3
        trainer.run_step()  # finite again: streak resets
        assert trainer.nonfinite_streak == 0 and _max_diff(before, model.state_dict()) > 0
        for trainer.iter in (4, 5):
            trainer.run_step()
        trainer.iter = 6
        with pytest.raises(NonFiniteLossError, match="iteration 6"):
            trainer.run_step()


def test_bf16_autocast_on_cpu_trains():
    model, trainer = _train(_cfg("SOLVER.AMP.ENABLED", "True", "SOLVER.AMP.DTYPE", "bf16"), steps=2)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert trainer.step_engine.amp_dtype == torch.bfloat16
