"""Training-time evaluation: ``EvalHook`` runs the task evaluators every SOLVER.EVAL_PERIOD steps.

Registered after the PeriodicCheckpointer (so a crash in evaluation keeps the weights) and before the
PeriodicWriter (which writes the metrics this hook puts into the event storage as ``<task>/<metric>``).
With SOLVER.BEST_METRIC ``"<task NAME>/<metric>"`` the weights that score best so far are kept in
``OUTPUT_DIR/model_best.pth`` (weights only, loadable as MODEL.WEIGHTS), written atomically by rank 0, with
``model_best.json`` recording ``{metric, value, iteration}`` so the best value survives a resume.

A run is finished when its final evaluation is written: after the evaluation of the last step rank 0 writes
``OUTPUT_DIR/final_evaluation.json`` (``{iteration, max_iter, results}``, atomically).  A run stopped after its
last step but before that (killed, Ctrl-C at the last step) evaluates on ``--resume``
(:func:`evaluate_finished_run`) instead of saying that there is nothing to do.
"""
from __future__ import annotations

import json
import logging
import os
from typing import Any, Callable, Dict, Optional

import torch

from uniperceiver.config import ConfigError
from uniperceiver.utils import comm
from uniperceiver.utils.wrappers import unwrap_model

from .train_loop import HookBase

logger = logging.getLogger(__name__)

BEST_WEIGHTS = "model_best.pth"
BEST_RECORD = "model_best.json"
FINAL_RECORD = "final_evaluation.json"


def final_evaluation_written(output_dir: str, max_iter: int) -> bool:
    """Whether ``output_dir`` holds the final evaluation of a run of ``max_iter`` steps."""
    try:
        with open(os.path.join(output_dir, FINAL_RECORD)) as f:
            record = json.load(f)
    except (OSError, ValueError):
        return False
    return isinstance(record, dict) and record.get("max_iter") == int(max_iter)


def _atomic(path: str, write: Callable[[str], None]) -> None:
    tmp = f"{path}.tmp.{os.getpid()}"
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


class EvalHook(HookBase):
    """Every ``period`` steps and after the last step: ``eval_fn() -> {task: {metric: value}}`` (complete on
    rank 0, ``{}`` elsewhere); the values go to the event storage, the best ``best_metric`` to model_best."""

    def __init__(self, period: int, eval_fn: Callable[[], Dict[str, Dict[str, float]]], *,
                 model: Optional[torch.nn.Module] = None, output_dir: str = "", best_metric: str = ""):
        self.period = int(period)
        self.eval_fn = eval_fn
        self.model = unwrap_model(model)
        self.output_dir = output_dir
        self.best_task, self.best_name = "", ""
        if best_metric:
            if "/" not in best_metric or model is None or not output_dir:
                raise ConfigError(f"SOLVER.BEST_METRIC {best_metric!r} must read '<task NAME>/<metric>', "
                                  "e.g. 'imagenet/Acc@1'")
            self.best_task, self.best_name = best_metric.rsplit("/", 1)
        self.best_metric = best_metric
        self.best_value: Optional[float] = None
        self.best_iter: int = -1

    # ------------------------------------------------------------------------------------------ hooks
    def before_train(self) -> None:
        # model_best.json is written after the checkpoint of the same step, so it may know a newer best.
        record = self._read_record()
        if record and record.get("metric") == self.best_metric and self._better(record["value"]):
            self.best_value, self.best_iter = float(record["value"]), int(record["iteration"])

    def after_step(self) -> None:
        next_iter = self.trainer.iter + 1
        if self.period > 0 and (next_iter % self.period == 0 or next_iter == self.trainer.max_iter):
            self.evaluate(final=next_iter == self.trainer.max_iter)

    def state_dict(self) -> Dict[str, Any]:
        return {"best_value": self.best_value, "best_iter": self.best_iter} if self.best_metric else {}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        if state.get("best_value") is not None and self._better(state["best_value"]):
            self.best_value, self.best_iter = float(state["best_value"]), int(state["best_iter"])

    # ----------------------------------------------------------------------------------------- work
    def evaluate(self, final: bool = False) -> Dict[str, Dict[str, float]]:
        """Evaluate; ``final``: the run's last evaluation, recorded in FINAL_RECORD (the run is finished)."""
        results = self.eval_fn()
        if comm.is_main_process():
            flat = {f"{task}/{name}": float(v) for task, metrics in results.items() for name, v in metrics.items()}
            if flat and self.trainer is not None and self.trainer.storage is not None:
                self.trainer.storage.put_scalars(smoothing_hint=False, **flat)
            if self.best_metric:
                self._update_best(results)
            if final and self.output_dir:
                record = {"iteration": int(self.trainer.iter), "max_iter": int(self.trainer.max_iter),
                          "results": results}

                def write_final(tmp: str) -> None:
                    with open(tmp, "w") as f:
                        json.dump(record, f, default=float)

                _atomic(os.path.join(self.output_dir, FINAL_RECORD), write_final)
        comm.synchronize()
        return results

    def _better(self, value: float) -> bool:
        return self.best_value is None or float(value) > self.best_value  # every metric: higher is better

    def _update_best(self, results: Dict[str, Dict[str, float]]) -> None:
        metrics = results.get(self.best_task)
        if metrics is None or self.best_name not in metrics:
            known = sorted(f"{t}/{m}" for t, ms in results.items() for m in ms)
            raise ConfigError(f"SOLVER.BEST_METRIC {self.best_metric!r} is not among the evaluation results: "
                              f"{', '.join(known) or 'none'}")
        value = float(metrics[self.best_name])
        if not self._better(value):
            return
        it = self.trainer.iter
        self.best_value, self.best_iter = value, it
        os.makedirs(self.output_dir, exist_ok=True)
        data = {"model": self.model.state_dict(), "iteration": it, "metric": self.best_metric, "value": value}
        _atomic(os.path.join(self.output_dir, BEST_WEIGHTS), lambda tmp: torch.save(data, tmp))
        record = {"metric": self.best_metric, "value": value, "iteration": it}
        def write_record(tmp: str) -> None:
            with open(tmp, "w") as f:
                json.dump(record, f)

        _atomic(os.path.join(self.output_dir, BEST_RECORD), write_record)
        logger.info("New best %s = %.4f at iteration %d: saved %s", self.best_metric, value, it, BEST_WEIGHTS)

    def _read_record(self) -> Optional[Dict[str, Any]]:
        if not self.best_metric:
            return None
        try:
            with open(os.path.join(self.output_dir, BEST_RECORD)) as f:
                return json.load(f)
        except (OSError, ValueError):
            return None


def evaluate_finished_run(trainer, eval_hook: EvalHook, hooks, max_iter: int) -> None:
    """The final evaluation of a run whose training reached ``max_iter`` (resumed from its final checkpoint)
    but whose final evaluation was not written; its metrics go to the writers of ``hooks`` (rank 0)."""
    from uniperceiver.utils.events import EventStorage

    from .hooks import PeriodicWriter

    logger.info("Training reached SOLVER.MAX_ITER %d but its final evaluation was not written: evaluating now",
                max_iter)
    trainer.iter, trainer.max_iter = max_iter - 1, max_iter
    writers = [h for h in hooks if isinstance(h, PeriodicWriter)]
    with EventStorage(max_iter - 1) as trainer.storage:
        eval_hook.before_train()
        eval_hook.evaluate(final=True)
        for w in writers:
            w.after_train()  # writes what the evaluation put (iteration max_iter - 1), closes the writers


def build_eval_hook(cfg, model, tasks) -> Optional[EvalHook]:
    """The EvalHook of a config (None when SOLVER.EVAL_PERIOD is 0); ``train(cfg, eval_hook_factory=this)``."""
    if cfg.SOLVER.EVAL_PERIOD <= 0:
        if cfg.SOLVER.BEST_METRIC:
            logger.warning("SOLVER.BEST_METRIC is set but SOLVER.EVAL_PERIOD is 0: no evaluation, no model_best")
        return None
    from uniperceiver.evaluation.inference import inference_on_tasks

    best = cfg.SOLVER.BEST_METRIC
    if best:
        task = best.rsplit("/", 1)[0]
        if task not in tasks:
            raise ConfigError(f"SOLVER.BEST_METRIC {best!r}: no task named {task!r}; tasks: {', '.join(tasks)}")

    def eval_fn():
        return inference_on_tasks(cfg, model, tasks, splits=("val", "test"), max_splits_per_task=1)

    return EvalHook(cfg.SOLVER.EVAL_PERIOD, eval_fn, model=model, output_dir=cfg.OUTPUT_DIR, best_metric=best)
