"""Command line, per-process setup and the wiring of a training run.

``default_argument_parser()`` -> ``setup`` (config, logger, env report, config.yaml, seed) -> ``train(cfg)``.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Optional

import torch

from uniperceiver.config import ConfigError
from uniperceiver.utils import comm
from uniperceiver.utils.env import RNGState, collect_env_info, seed_all_rng
from uniperceiver.utils.logger import setup_logger

logger = logging.getLogger("uniperceiver")


def default_argument_parser(epilog: Optional[str] = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", default="", metavar="FILE", help="path to a config file")
    parser.add_argument("--resume", action="store_true",
                        help="resume from OUTPUT_DIR/last_checkpoint if it exists (else load MODEL.WEIGHTS)")
    parser.add_argument("--eval-only", action="store_true", help="evaluate MODEL.WEIGHTS (or the last checkpoint)")
    parser.add_argument("--allow-random-weights", action="store_true",
                        help="with --eval-only: evaluate the random initialisation when there are no weights to "
                             "load (without it, no MODEL.WEIGHTS and no checkpoint is an error)")
    parser.add_argument("--eval-ema", action="store_true",
                        help="with --eval-only: evaluate the checkpoint's model_ema weights (MODEL.MODEL_EMA)")
    parser.add_argument("--num-gpus", type=int, default=1, help="processes per machine (spawned without a launcher)")
    parser.add_argument("--num-machines", type=int, default=1, help="machines (spawn mode)")
    parser.add_argument("--machine-rank", type=int, default=0, help="rank of this machine (spawn mode)")
    parser.add_argument("--dist-url", default="auto",
                        help="init URL for spawn mode: 'auto' (a free local port) or tcp://<host>:<port>")
    parser.add_argument("--local-rank", "--local_rank", dest="local_rank", type=int, default=None,
                        help="set by python -m torch.distributed.launch (LOCAL_RANK in the environment wins)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for configuration errors")
    parser.add_argument("opts", default=None, nargs=argparse.REMAINDER,
                        help="KEY VALUE config overrides, e.g. SOLVER.MAX_ITER 10 TASKS.<NAME>.DATALOADER.NUM_WORKERS 0")
    return parser


def default_setup(cfg, args) -> int:
    """Logger (per-rank files), environment report, ``OUTPUT_DIR/config.yaml`` (rank 0), seeding.
    Returns the seed of this process."""
    rank = comm.get_rank()
    output_dir = cfg.OUTPUT_DIR
    if comm.is_main_process() and output_dir:
        os.makedirs(output_dir, exist_ok=True)
    comm.synchronize()
    setup_logger(output_dir, distributed_rank=rank)
    logger.info("Rank %d of %d (local rank %d)", rank, comm.get_world_size(), comm.get_local_rank())
    logger.info("Environment:\n%s", collect_env_info())
    logger.info("Command line: %s", " ".join(sys.argv))
    if getattr(args, "config_file", ""):
        logger.info("Config file %s", os.path.abspath(args.config_file))
    if comm.is_main_process() and output_dir:
        path = os.path.join(output_dir, "config.yaml")
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            f.write(cfg.dump())
        os.replace(tmp, path)
        logger.info("Full config saved to %s", path)
    seed = cfg.SEED
    if seed < 0:
        seed = comm.shared_random_seed()
    seed = seed_all_rng(seed + rank)
    logger.info("Seed of this rank: %d", seed)
    torch.backends.cudnn.benchmark = bool(cfg.CUDNN_BENCHMARK)
    return seed


class OutputDirError(ConfigError):
    """OUTPUT_DIR cannot be used (not a writable directory) or is locked by another job (exit code 2)."""


def lock_output_dir(cfg):
    """Make sure OUTPUT_DIR is a writable directory and take its lock (utils/output_lock.py) on global rank 0,
    once per job; every rank raises :class:`OutputDirError` when that fails.  Returns the lock (None on other
    ranks or without OUTPUT_DIR); it is held until released or this process ends."""
    from uniperceiver.utils.output_lock import OutputDirLock, OutputDirLocked

    output_dir, lock, problem = cfg.OUTPUT_DIR, None, None
    if output_dir and comm.is_main_process():
        try:
            os.makedirs(output_dir, exist_ok=True)
            probe = os.path.join(output_dir, f".write_test.{os.getpid()}")
            with open(probe, "w") as f:
                f.write("ok")
            os.remove(probe)
        except OSError as e:
            problem = (f"OUTPUT_DIR {output_dir} is not usable: {e.strerror or e} "
                       f"({type(e).__name__}); give a writable directory")
        if problem is None:
            try:
                lock = OutputDirLock(output_dir).acquire()
            except OutputDirLocked as e:
                problem = str(e)
            except OSError as e:
                problem = f"OUTPUT_DIR {output_dir}: cannot lock {os.path.join(output_dir, '.lock')}: {e}"
    if comm.get_world_size() > 1:
        problem = comm.broadcast_object(problem)
    if problem:
        raise OutputDirError(problem)
    return lock


def run_is_finished(cfg) -> bool:
    """True when OUTPUT_DIR's last checkpoint already reached SOLVER.MAX_ITER and, when the run evaluates
    (SOLVER.EVAL_PERIOD > 0), its final evaluation is written (so --resume has nothing to do)."""
    from uniperceiver.checkpoint import last_iteration

    from .eval_hook import final_evaluation_written

    it = last_iteration(cfg.OUTPUT_DIR) if cfg.OUTPUT_DIR else None
    if it is None or it + 1 < cfg.SOLVER.MAX_ITER:
        return False
    return cfg.SOLVER.EVAL_PERIOD <= 0 or final_evaluation_written(cfg.OUTPUT_DIR, cfg.SOLVER.MAX_ITER)


def get_device(cfg) -> torch.device:
    if cfg.MODEL.DEVICE:
        return torch.device(cfg.MODEL.DEVICE)
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def apply_trainable(cfg, model: torch.nn.Module) -> None:
    """MODEL.TRAINABLE regexes: when set, only matching parameters train (modeling/adaptation.py)."""
    from uniperceiver.modeling.adaptation import apply_trainable as _apply

    _apply(model, cfg.MODEL.TRAINABLE)


COMPILE_MODES = ("off", "blocks", "model")


def maybe_compile(cfg, model: torch.nn.Module) -> torch.nn.Module:
    """MODEL.COMPILE: "model": ``torch.compile(model)`` (shares the parameters; attribute access falls through to
    the module, so ``encode_targets`` / ``logits`` still work); "blocks": every ``model.encoder.blocks[i]``
    compiled in place with dynamic shapes (parameter names unchanged), the model returned; "off": ``model``."""
    from uniperceiver.config import ConfigError

    mode = str(cfg.MODEL.COMPILE)
    if mode not in COMPILE_MODES:
        raise ConfigError(f"MODEL.COMPILE must be one of {', '.join(COMPILE_MODES)}, got {cfg.MODEL.COMPILE!r}")
    if mode == "model":
        return torch.compile(model)
    if mode == "blocks":
        blocks = getattr(getattr(model, "encoder", None), "blocks", None)
        if blocks is None:
            raise ConfigError(f"MODEL.COMPILE blocks: {type(model).__name__} has no encoder.blocks")
        for block in blocks:
            block.compile(dynamic=True)
    return model


def build_step_engine(cfg, model, optimizer, device):
    """The optimisation backend (plain / AMP; a DeepSpeed backend plugs in here)."""
    from .step import AMPStepEngine

    if cfg.SOLVER.DEEPSPEED.ENABLED:  # DeepSpeed does its own data parallelism (ZeRO), so no DDP wrapper
        from .deepspeed_step import DeepSpeedStepEngine

        return DeepSpeedStepEngine.from_config(cfg, model, optimizer)
    if cfg.SOLVER.ACCUM_NEGATIVES and cfg.SOLVER.AMP.ENABLED and cfg.SOLVER.AMP.DTYPE == "fp16":
        from uniperceiver.config import ConfigError

        raise ConfigError("SOLVER.ACCUM_NEGATIVES needs SOLVER.AMP.DTYPE bf16 or AMP off: its cached feature "
                          "gradients would be scaled twice by the fp16 loss scaler")
    model = maybe_compile(cfg, model)  # the one place MODEL.COMPILE is honoured (before DDP wraps it)
    if comm.get_world_size() > 1:
        from .step import TaskForward

        model = torch.nn.parallel.DistributedDataParallel(
            TaskForward(model),  # the whole task loss is one DDP forward (tasks call several model methods)
            device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=True,  # tasks use different heads / logit scales
        )
    return AMPStepEngine.from_config(cfg, model, optimizer, device=device)


def train(cfg, resume: bool = False, eval_hook_factory=None) -> int:
    """Build model, tasks, loader, optimizer, schedule, step engine, checkpointer and hooks; resume or load;
    train.  ``eval_hook_factory(cfg, model, tasks) -> HookBase`` adds evaluation (engine/eval_hook.py)."""
    from uniperceiver.checkpoint import Checkpointer
    from uniperceiver.data import build_train_loader
    from uniperceiver.modeling import build_model
    from uniperceiver.solver import build_lr_scheduler, build_optimizer
    from uniperceiver.tasks import build_tasks

    from .ema import build_model_ema, insert_ema_hook
    from .hooks import build_hooks, check_observability_cfg
    from .train_loop import Trainer

    check_observability_cfg(cfg)  # LOGGER / PROFILER values, the wandb package: before anything is built
    device = get_device(cfg)
    model = build_model(cfg).to(device)
    apply_trainable(cfg, model)
    logger.info("Model %s: %.2fM parameters", type(model).__name__,
                sum(p.numel() for p in model.parameters()) / 1e6)
    tasks = build_tasks(cfg)
    data_loader = build_train_loader(cfg, tasks)
    optimizer = build_optimizer(cfg, model)
    scheduler = build_lr_scheduler(cfg, optimizer)
    step_engine = build_step_engine(cfg, model, optimizer, device)
    trainer = Trainer(model, tasks, data_loader, step_engine, accum_iter=cfg.SOLVER.ACCUM_ITER,
                      max_nonfinite_steps=cfg.SOLVER.MAX_NONFINITE_STEPS, device=device,
                      seed=data_loader.seed,  # = cfg.SEED, or the shared seed drawn when SEED < 0
                      log_period=cfg.SOLVER.WRITE_PERIOD,  # metrics read from the device once per period
                      accum_negatives=cfg.SOLVER.ACCUM_NEGATIVES)
    ckpt_model, ckpt_optimizer = step_engine.checkpoint_targets(model, optimizer)
    model_ema = build_model_ema(cfg, model)  # None unless MODEL.MODEL_EMA
    extra_ckpt = {"model_ema": model_ema} if model_ema is not None else {}
    checkpointer = Checkpointer(ckpt_model, cfg.OUTPUT_DIR, optimizer=ckpt_optimizer, scheduler=scheduler,
                                step_engine=step_engine, data_loader=data_loader, trainer=trainer, rng=RNGState(),
                                **extra_ckpt)
    eval_hook = eval_hook_factory(cfg, model, tasks) if eval_hook_factory is not None else None
    hooks = build_hooks(cfg, trainer, checkpointer, optimizer, scheduler, eval_hook=eval_hook)
    trainer.register_hooks(insert_ema_hook(hooks, model_ema) if model_ema is not None else hooks)
    extra = checkpointer.resume_or_load(cfg.MODEL.WEIGHTS, resume=resume, ignore=cfg.MODEL.WEIGHTS_IGNORE)
    if model_ema is not None and not model_ema.loaded:
        model_ema.reset()  # start the average from the loaded (or initial) weights
    start_iter = int(extra["iteration"]) + 1 if "iteration" in extra else 0
    if start_iter > 0 and comm.is_main_process() and cfg.OUTPUT_DIR:
        from .hooks import trim_metrics_file

        trim_metrics_file(os.path.join(cfg.OUTPUT_DIR, "metrics.json"), start_iter - 1)  # no duplicated rows
    if start_iter >= cfg.SOLVER.MAX_ITER:
        from .eval_hook import evaluate_finished_run, final_evaluation_written

        if eval_hook is not None and not final_evaluation_written(cfg.OUTPUT_DIR, cfg.SOLVER.MAX_ITER):
            evaluate_finished_run(trainer, eval_hook, hooks, cfg.SOLVER.MAX_ITER)  # stopped before it
        else:
            logger.info("Training already finished at iteration %d", start_iter)
        return 0
    trainer.train(start_iter, cfg.SOLVER.MAX_ITER)
    return 0
