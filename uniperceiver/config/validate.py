"""``validate_cfg(cfg)``: value checks on a finished config, run by ``main.py`` before any process starts.

``setup_cfg`` already refuses unknown keys, wrong types, odd ``KEY VALUE`` lists, ``_BASE_`` cycles and unsafe
YAML.  This adds the checks that need values: each failure is a :class:`ConfigError` naming the key (with the
task, ``TASKS.<NAME>.``) and the value, which ``main.py`` prints as one line with exit code 2.  Data paths,
``MODEL.TRAINABLE`` and ``MODEL.WEIGHTS`` are checked where they are used (readers, adaptation, checkpointer),
also before training starts.
"""
from __future__ import annotations

from typing import List

from .config import ConfigError


def _check(errors: List[str], ok: bool, key: str, value, rule: str) -> None:
    if not ok:
        errors.append(f"{key} = {value!r} {rule}")


def same_task_every_step(cfg) -> bool:
    """Whether every rank trains the same task in each step: one task, or ``DATALOADER.STRATEGY synced``."""
    return len(cfg.TASKS) <= 1 or cfg.DATALOADER.STRATEGY == "synced"


# Names the solver builds (uniperceiver/solver; config may not import it, tests/test_published_configs.py checks).
LR_SCHEDULES = ("WarmupCosine", "WarmupLinear", "WarmupConstant", "WarmupMultiStep")
OPTIMIZERS = ("AdamW", "Lamb")


def validate_cfg(cfg) -> None:
    """Raise :class:`ConfigError` naming every invalid value of ``cfg`` (a finalized config); warn once when the
    warm-up is at least the run (it then warms up for the whole run).  Runs before any model or data.  The task
    types' own checks (registered TASK_TYPE, DECODE_STRATEGY, ...) are ``uniperceiver.tasks.validate_tasks``."""
    if not len(cfg.TASKS):
        raise ConfigError("no TASKS configured: --config-file must name a config with a TASKS list "
                          "(e.g. configs/quick_schedules/instant.yaml), not a model-only one")
    errors: List[str] = []
    s = cfg.SOLVER
    _check(errors, s.MAX_ITER > 0, "SOLVER.MAX_ITER", s.MAX_ITER, "must be > 0")
    _check(errors, s.ACCUM_ITER >= 0, "SOLVER.ACCUM_ITER", s.ACCUM_ITER, "must be >= 0 (<= 1: no accumulation)")
    _check(errors, s.BASE_LR >= 0, "SOLVER.BASE_LR", s.BASE_LR, "must be >= 0")
    _check(errors, s.CHECKPOINT_PERIOD > 0, "SOLVER.CHECKPOINT_PERIOD", s.CHECKPOINT_PERIOD, "must be > 0")
    _check(errors, s.CHECKPOINT_MAX_SAVE >= 0, "SOLVER.CHECKPOINT_MAX_SAVE", s.CHECKPOINT_MAX_SAVE, "must be >= 0")
    _check(errors, s.WRITE_PERIOD > 0, "SOLVER.WRITE_PERIOD", s.WRITE_PERIOD, "must be > 0")
    _check(errors, s.EVAL_PERIOD >= 0, "SOLVER.EVAL_PERIOD", s.EVAL_PERIOD, "must be >= 0 (0 = off)")
    _check(errors, s.MAX_NONFINITE_STEPS >= 0, "SOLVER.MAX_NONFINITE_STEPS", s.MAX_NONFINITE_STEPS, "must be >= 0")
    weights = []
    for task in cfg.TASKS:
        p = f"TASKS.{task.NAME}."
        d = task.DATALOADER
        _check(errors, d.TRAIN_BATCH_SIZE > 0, p + "DATALOADER.TRAIN_BATCH_SIZE", d.TRAIN_BATCH_SIZE, "must be > 0")
        _check(errors, d.TEST_BATCH_SIZE > 0, p + "DATALOADER.TEST_BATCH_SIZE", d.TEST_BATCH_SIZE, "must be > 0")
        _check(errors, d.NUM_WORKERS >= 0, p + "DATALOADER.NUM_WORKERS", d.NUM_WORKERS, "must be >= 0")
        _check(errors, d.SAMPLING_WEIGHT >= 0, p + "DATALOADER.SAMPLING_WEIGHT", d.SAMPLING_WEIGHT, "must be >= 0")
        _check(errors, 0 < d.DATA_PERCENTAGE <= 1, p + "DATALOADER.DATA_PERCENTAGE", d.DATA_PERCENTAGE,
               "must be in (0, 1]")
        _check(errors, 0 <= d.MAX_BAD_FRACTION <= 1, p + "DATALOADER.MAX_BAD_FRACTION", d.MAX_BAD_FRACTION,
               "must be in [0, 1]")
        weights.append(d.SAMPLING_WEIGHT)
    moe = cfg.MOE
    if moe.MOE and moe.BACKEND == "deepspeed" and moe.EP_SIZE > 1 and not same_task_every_step(cfg):
        errors.append(f"DATALOADER.STRATEGY = {cfg.DATALOADER.STRATEGY!r} must be 'synced' with MOE.EP_SIZE "
                      f"{moe.EP_SIZE}: the ranks of an expert-parallel group exchange tokens in every MoE layer, "
                      f"so each step they must run the same task")
    if weights and all(w >= 0 for w in weights) and sum(weights) <= 0:
        errors.append(f"DATALOADER.SAMPLING_WEIGHT of the tasks {weights} must have a positive sum")
    sched = cfg.LR_SCHEDULER
    _check(errors, sched.NAME in LR_SCHEDULES, "LR_SCHEDULER.NAME", sched.NAME,
           f"must be one of {', '.join(LR_SCHEDULES)}")
    _check(errors, s.OPTIMIZER in OPTIMIZERS, "SOLVER.OPTIMIZER", s.OPTIMIZER,
           f"must be one of {', '.join(OPTIMIZERS)}")
    _check(errors, sched.WARMUP >= 0, "LR_SCHEDULER.WARMUP", sched.WARMUP, "must be >= 0")
    _check(errors, s.AMP.DTYPE in ("bf16", "fp16"), "SOLVER.AMP.DTYPE", s.AMP.DTYPE, "must be one of bf16, fp16")
    _check(errors, cfg.MODEL.BERT.HIDDEN_ACT == "gelu", "MODEL.BERT.HIDDEN_ACT", cfg.MODEL.BERT.HIDDEN_ACT,
           "must be 'gelu' (the only activation here)")
    _check(errors, 0.0 <= cfg.MODEL.PROMPT.FC_WEIGHT <= 1.0, "MODEL.PROMPT.FC_WEIGHT", cfg.MODEL.PROMPT.FC_WEIGHT,
           "must be in [0, 1]")
    if sched.NAME == "WarmupMultiStep" and any(int(x) <= sched.WARMUP for x in sched.STEPS):
        errors.append(f"LR_SCHEDULER.STEPS = {list(sched.STEPS)} must be after LR_SCHEDULER.WARMUP {sched.WARMUP}")
    if not errors and sched.WARMUP >= s.MAX_ITER > 0:
        from . import _warn_once

        _warn_once(f"LR_SCHEDULER.WARMUP {sched.WARMUP} >= SOLVER.MAX_ITER {s.MAX_ITER}: warming up for the whole run")
    if errors:
        shown = "; ".join(errors[:10]) + (f"; ... ({len(errors) - 10} more)" if len(errors) > 10 else "")
        raise ConfigError(f"invalid config: {shown}")
