"""``main.py --eval-only``: load weights for evaluation and evaluate every task's VAL and TEST sets (the drivers;
the evaluation loop itself is ``uniperceiver.evaluation.inference_on_tasks``)."""
from __future__ import annotations

import logging
from typing import Dict

from uniperceiver.checkpoint import Checkpointer
from uniperceiver.config import ConfigError
from uniperceiver.evaluation.inference import inference_on_tasks, write_tensorboard
from uniperceiver.modeling import build_model
from uniperceiver.tasks import build_tasks
from uniperceiver.utils import comm

from .defaults import get_device
from .ema import load_ema_weights

logger = logging.getLogger(__name__)


def load_eval_weights(cfg, model, resume: bool = False, ema: bool = False, allow_random: bool = False) -> str:
    """Load weights only: OUTPUT_DIR's last checkpoint with ``resume``, else MODEL.WEIGHTS, else OUTPUT_DIR's
    last checkpoint if there is one.  Returns the path loaded.  Nothing to load is a ConfigError, unless
    ``allow_random`` (``--allow-random-weights``): then "" and the model's random initialisation (logged).
    ``ema`` (``--eval-ema``): load that checkpoint's ``model_ema`` weights instead of ``model``."""
    ckpt = Checkpointer(model, cfg.OUTPUT_DIR, save_to_disk=False)
    tagged = ckpt.get_checkpoint_file() if ckpt.has_checkpoint() else ""
    path = tagged if (resume and tagged) else (cfg.MODEL.WEIGHTS or tagged)
    if not path:
        if not allow_random:
            raise ConfigError(f"--eval-only has no weights to evaluate: MODEL.WEIGHTS is empty and OUTPUT_DIR "
                              f"{cfg.OUTPUT_DIR} holds no last_checkpoint; set MODEL.WEIGHTS <file.pth>, or pass "
                              f"--allow-random-weights to evaluate the random initialisation")
        logger.warning("--eval-only --allow-random-weights: evaluating random weights (no MODEL.WEIGHTS, no "
                       "checkpoint in %s)", cfg.OUTPUT_DIR)
        return ""
    if ema:
        load_ema_weights(model, path)
        return path
    ckpt.load_weights(path, ignore=cfg.MODEL.WEIGHTS_IGNORE)
    return path


def run_eval_only(cfg, args=None) -> Dict[str, Dict[str, float]]:
    """``main.py --eval-only``: build the model and tasks, load the weights, evaluate VAL and TEST sets.

    Needs only the evaluation data and the weights: no training data, optimizer or trainer.  Works as one
    plain process (no process group) and as N processes under torchrun (each evaluates its shard).
    """
    if cfg.MOE.MOE and cfg.MOE.BACKEND == "deepspeed" and cfg.MOE.EP_SIZE > 1:
        raise ConfigError(f"--eval-only runs without the DeepSpeed engine, which sets up expert parallelism: "
                          f"evaluate with MOE.EP_SIZE 1 instead of {cfg.MOE.EP_SIZE} (a checkpoint .pth holds "
                          f"every expert, whatever the EP_SIZE it was trained with)")
    model = build_model(cfg)
    load_eval_weights(cfg, model, resume=bool(getattr(args, "resume", False)), ema=bool(getattr(args, "eval_ema", False)),
                      allow_random=bool(getattr(args, "allow_random_weights", False)))
    model.to(get_device(cfg))
    tasks = build_tasks(cfg)
    results = inference_on_tasks(cfg, model, tasks, splits=("val", "test"))
    if comm.is_main_process():
        write_tensorboard(cfg.OUTPUT_DIR, results)
    comm.synchronize()
    return results
