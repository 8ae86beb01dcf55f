"""The training loop (detectron2 style): ``TrainerBase`` runs hooks around ``run_step``; ``Trainer`` implements
``run_step`` for multi-task training with gradient accumulation through a :class:`StepEngine`."""
from __future__ import annotations

import logging
import math
import time
import weakref
from collections import defaultdict
from typing import Any, Dict, List, Mapping, Optional

import torch

from uniperceiver.utils import comm
from uniperceiver.utils.env import derive_seed, seed_step_rng
from uniperceiver.utils.events import EventStorage, get_event_storage

from .step import StepEngine

logger = logging.getLogger(__name__)


class HookBase:
    """A hook; ``self.trainer`` is set (weakly) when registered.  ``state_dict`` is checkpointed."""

    trainer: "TrainerBase" = None

    def before_train(self) -> None:
        pass

    def after_train(self) -> None:
        pass

    def before_step(self) -> None:
        pass

    def after_step(self) -> None:
        pass

    def state_dict(self) -> Dict[str, Any]:
        return {}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        pass


class TrainerBase:
    """Runs ``before_train; for iter: before_step, run_step, after_step; after_train`` over the hooks."""

    def __init__(self) -> None:
        self._hooks: List[HookBase] = []
        self.iter: int = 0
        self.start_iter: int = 0
        self.max_iter: int = 0
        self.storage: Optional[EventStorage] = None
        self._saved_history: Dict[str, Any] = {}  # metric history from a checkpoint, put into the next storage

    def register_hooks(self, hooks: List[Optional[HookBase]]) -> None:
        """Hooks run in the given order (None entries are dropped)."""
        for h in hooks:
            if h is None:
                continue
            h.trainer = weakref.proxy(self)
            self._hooks.append(h)

    def train(self, start_iter: int, max_iter: int) -> None:
        logger.info("Starting training from iteration %d to %d", start_iter, max_iter)
        self.iter = self.start_iter = start_iter
        self.max_iter = max_iter
        with EventStorage(start_iter) as self.storage:
            self.storage.load_history_state(self._saved_history)
            try:
                self.before_train()
                for self.iter in range(start_iter, max_iter):
                    self.before_step()
                    self.run_step()
                    self.after_step()
                self.iter += 1  # after_train sees iter == max_iter after a complete run
            finally:
                self.after_train()

    def before_train(self) -> None:
        for h in self._hooks:
            h.before_train()

    def after_train(self) -> None:
        self.storage.iter = self.iter
        for h in self._hooks:
            h.after_train()

    def before_step(self) -> None:
        self.storage.iter = self.iter
        for h in self._hooks:
            h.before_step()

    def after_step(self) -> None:
        for h in self._hooks:
            h.after_step()

    def run_step(self) -> None:
        raise NotImplementedError

    def state_dict(self) -> Dict[str, Any]:
        hooks = {}
        for h in self._hooks:
            state = h.state_dict()
            if state:
                hooks[type(h).__qualname__] = state
        state = {"iteration": self.iter, "hooks": hooks}
        if self.storage is not None:  # windowed medians of a resumed run continue from the same values
            state["metric_history"] = self.storage.history_state()
        return state

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.iter = int(state["iteration"])
        self._saved_history = state.get("metric_history", {})
        for key, value in state.get("hooks", {}).items():
            for h in self._hooks:
                if type(h).__qualname__ == key:
                    h.load_state_dict(value)
                    break
            else:
                logger.warning("No hook %s to restore state into", key)


class NonFiniteLossError(FloatingPointError):
    """Training stopped on a non-finite loss; the message names iteration, task and loss term."""


class Trainer(TrainerBase):
    """Multi-task trainer: each optimizer step draws ``accum_iter`` micro-batches ``(task_name, batch)`` from
    ``data_loader``, sums ``task.losses(model, batch)`` / accum_iter and hands it to ``step_engine``.

    Non-finite losses or gradients: the step is skipped on every rank (the flag is reduced over ranks); more than
    ``max_nonfinite_steps`` consecutive skipped steps (0: the first) raise :class:`NonFiniteLossError`.

    ``seed``: when set, every step starts with the global python / numpy / torch (+ CUDA) RNGs seeded from
    (seed, rank, iteration), so dropout, DropPath, mixup, negative sampling and MoE gate noise of step i are the
    same in a resumed run as in an uninterrupted one, whatever else consumed random numbers in between.
    """

    def __init__(self, model, tasks: Mapping[str, Any], data_loader, step_engine: StepEngine, *,
                 accum_iter: int = 1, max_nonfinite_steps: int = 0, device: Optional[torch.device] = None,
                 seed: Optional[int] = None):
        super().__init__()
        self.model = model  # the module the loop calls (the step engine may wrap it: step_engine.model)
        self.tasks = tasks
        self.data_loader = data_loader
        self.step_engine = step_engine
        self.accum_iter = max(1, int(accum_iter))
        self.max_nonfinite_steps = int(max_nonfinite_steps)
        self.device = device or next(model.parameters()).device
        self.nonfinite_streak = 0
        self.seed = seed
        self._data_iter = iter(data_loader)

    def run_step(self) -> None:
        model = self.step_engine.model
        model.train()
        if self.seed is not None:
            seed_step_rng(derive_seed(self.seed, comm.get_rank(), self.iter, 3))
        k = self.accum_iter
        terms: Dict[str, List[float]] = defaultdict(list)
        totals: List[float] = []
        data_time = 0.0
        bad: Optional[str] = None
        drawn: List[str] = []
        for micro in range(k):
            start = time.perf_counter()
            task_name, batch = next(self._data_iter)
            drawn.append(task_name)
            batch = _to_device(batch, self.device)
            data_time += time.perf_counter() - start
            sync = micro == k - 1
            with self.step_engine.micro_step(sync):
                with self.step_engine.autocast():
                    loss_dict = self.step_engine.losses(self.tasks[task_name], batch)
                    # Losses the model recorded in those forwards (MoE load balancing: loss_moe_aux).
                    loss_dict.update(self._model_extra_losses())
                loss = sum(v.float() for v in loss_dict.values())
                self.step_engine.backward(loss / k, sync=sync)
            for name, value in loss_dict.items():
                v = float(value.detach())
                terms[name].append(v)
                if bad is None and not math.isfinite(v):
                    bad = f"task {task_name}, loss term {name} = {v}"
            totals.append(float(loss.detach()))
        if bad is None:
            bad = self._nonfinite_gradient(drawn, terms)
        if self._any_rank_flag(bad is not None):
            self._handle_nonfinite(bad)
            return
        self.nonfinite_streak = 0
        stats = self.step_engine.step()
        metrics = {name: sum(vs) / len(vs) for name, vs in terms.items()}
        metrics["total_loss"] = sum(totals) / len(totals)
        metrics.update(stats)
        self._write_metrics(metrics, data_time)

    def _nonfinite_gradient(self, drawn: List[str], terms: Dict[str, List[float]]) -> Optional[str]:
        """Finite losses can still give inf / NaN gradients (overflow in backward): name the first such parameter
        with the step's tasks and loss terms.  Left to the loss scaler when one is on (fp16 GradScaler)."""
        scaler = getattr(self.step_engine, "scaler", None)
        if scaler is not None and scaler.is_enabled():
            return None
        grads = [(n, p.grad) for n, p in self.model.named_parameters() if p.grad is not None]
        # One multi-tensor norm pass: a finite norm means finite entries (Tiny: 3 ms vs 86 ms for per-tensor
        # isfinite on one CPU thread, tools/benchmark.py --mode loop); the exact check runs only on a hit.
        if not grads or bool(torch.stack(torch._foreach_norm([g for _, g in grads])).isfinite().all()):
            return None
        param = next((n for n, g in grads if not bool(torch.isfinite(g).all())), None)
        if param is None:  # the norm overflowed on finite (huge) gradients
            return None
        losses = ", ".join(f"{name} = {sum(v) / len(v):.4g}" for name, v in terms.items())
        return f"task {', '.join(dict.fromkeys(drawn))}, loss term {losses} (finite), non-finite gradient of {param}"

    def _model_extra_losses(self) -> Dict[str, torch.Tensor]:
        extra = getattr(self.model, "extra_losses", None)  # self.model: the unwrapped module
        return extra() if extra is not None else {}

    def _any_rank_flag(self, flag: bool) -> bool:
        return bool(comm.reduce_int(flag, "max"))

    def _handle_nonfinite(self, bad: Optional[str]) -> None:
        self.step_engine.skip_step()
        reports = [r for r in comm.all_gather(bad) if r] if comm.get_world_size() > 1 else [bad]
        where = "; ".join(f"{r}" for r in reports)
        self.nonfinite_streak += 1
        storage = get_event_storage()
        storage.put_scalar("nonfinite_skipped", 1.0, smoothing_hint=False)
        if self.nonfinite_streak > self.max_nonfinite_steps:
            raise NonFiniteLossError(
                f"non-finite loss or gradient at iteration {self.iter}: {where} "
                f"({self.nonfinite_streak} consecutive; SOLVER.MAX_NONFINITE_STEPS {self.max_nonfinite_steps})"
            )
        logger.warning("Skipping iteration %d: non-finite loss or gradient (%s); %d consecutive of at most %d",
                       self.iter, where, self.nonfinite_streak, self.max_nonfinite_steps)

    def _write_metrics(self, metrics: Dict[str, float], data_time: float) -> None:
        """The one place where metrics are reduced over ranks: each key is averaged over the ranks that have it
        (with per-rank task draws a task's loss exists only where it was drawn)."""
        metrics = dict(metrics, data_time=data_time)
        if comm.get_world_size() > 1:
            gathered = comm.all_gather(metrics)
            keys = set().union(*gathered)
            metrics = {k: sum(m[k] for m in gathered if k in m) / sum(1 for m in gathered if k in m) for k in keys}
            metrics["data_time"] = max(m["data_time"] for m in gathered)
        storage = get_event_storage()
        storage.put_scalar("data_time", metrics.pop("data_time"))
        for key, value in metrics.items():
            storage.put_scalar(key, value)

    def state_dict(self) -> Dict[str, Any]:
        state = super().state_dict()
        state["nonfinite_streak"] = self.nonfinite_streak
        if self.seed is not None:
            state["seed"] = int(self.seed)
        return state

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.nonfinite_streak = int(state.get("nonfinite_streak", 0))
        if self.seed is not None and "seed" in state:
            self.seed = int(state["seed"])  # SEED < 0 drew a fresh seed at start-up: keep the run's own


def _to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, Mapping):
        return type(batch)((k, _to_device(v, device)) for k, v in batch.items()) if not isinstance(batch, dict) \
            else {k: _to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to_device(v, device) for v in batch)
    return batch
