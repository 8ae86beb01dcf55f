"""The training loop (detectron2 style): ``TrainerBase`` runs hooks around ``run_step``; ``Trainer`` implements
``run_step`` for multi-task training with gradient accumulation through a :class:`StepEngine`."""
from __future__ import annotations

import logging
import math
import time
import weakref
from collections import defaultdict
from itertools import islice
from typing import Any, Dict, List, Mapping, Optional, Tuple

import torch

from uniperceiver.utils import comm
from uniperceiver.utils.env import RngStream, derive_seed, seed_step_rng
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


class StepSeed(HookBase):
    """Seeds the global python / numpy / torch (+ CUDA) RNGs before every step from (seed, rank, iteration), so
    dropout, DropPath, mixup, negative sampling and MoE gate noise of step i are the same in a resumed run as in
    an uninterrupted one, whatever else consumed random numbers in between.  The trainer registers it first."""

    def __init__(self, seed: int) -> None:
        self.seed = int(seed)

    def before_step(self) -> None:
        seed_step_rng(derive_seed(self.seed, comm.get_rank(), self.trainer.iter, RngStream.STEP))


class NonFiniteGuard:
    """The skip decision of a step, the loop's one host read: ``skip(...)`` is True when some rank saw a
    non-finite loss term or gradient; the step's gradients are then dropped.  More than ``max_steps``
    consecutive skipped steps (0: the first) raise :class:`NonFiniteLossError` naming iteration, tasks, loss
    terms and (for a finite loss) the first parameter with a non-finite gradient."""

    def __init__(self, max_steps: int = 0) -> None:
        self.max_steps = int(max_steps)
        self.streak = 0

    def skip(self, engine: StepEngine, losses: List[Tuple[str, Dict[str, torch.Tensor]]], iteration: int) -> bool:
        if not comm.reduce_int(engine.nonfinite(terms for _, terms in losses), "max"):
            self.streak = 0
            return False
        bad = self._describe(engine, losses)  # slow path: reads values to name what went wrong
        engine.skip_step()
        reports = [r for r in comm.all_gather(bad) if r] if comm.get_world_size() > 1 else [bad]
        where = "; ".join(f"{r}" for r in reports)
        self.streak += 1
        get_event_storage().put_scalar("nonfinite_skipped", 1.0, smoothing_hint=False)
        if self.streak > self.max_steps:
            raise NonFiniteLossError(f"non-finite loss or gradient at iteration {iteration}: {where} "
                                     f"({self.streak} consecutive; SOLVER.MAX_NONFINITE_STEPS {self.max_steps})")
        logger.warning("Skipping iteration %d: non-finite loss or gradient (%s); %d consecutive of at most %d",
                       iteration, where, self.streak, self.max_steps)
        return True

    @staticmethod
    def _describe(engine: StepEngine, losses) -> Optional[str]:
        for task_name, terms in losses:
            for name, value in terms.items():
                v = float(value)
                if not math.isfinite(v):
                    return f"task {task_name}, loss term {name} = {v}"
        param = engine.first_nonfinite_gradient()
        if param is None:  # this rank is fine (another one was not), or the norm overflowed on finite values
            return None
        means = step_metrics(losses, {})
        terms = ", ".join(f"{name} = {float(v):.4g}" for name, v in means.items() if name != "total_loss")
        tasks = ", ".join(dict.fromkeys(t for t, _ in losses))
        return f"task {tasks}, loss term {terms} (finite), non-finite gradient of {param}"


def step_metrics(losses: List[Tuple[str, Dict[str, torch.Tensor]]], stats: Mapping[str, Any]) -> Dict[str, Any]:
    """Device scalars of one step: each loss term averaged over the micro-batches that have it, ``total_loss``
    (the mean over micro-batches of their summed terms) and the step engine's stats."""
    terms: Dict[str, List[torch.Tensor]] = defaultdict(list)
    for _, loss_dict in losses:
        for name, value in loss_dict.items():
            terms[name].append(value)
    metrics: Dict[str, Any] = {name: _mean(vs) for name, vs in terms.items()}
    totals = [torch.stack(list(d.values())).sum() for _, d in losses if d]
    if totals:
        metrics["total_loss"] = _mean(totals)
    metrics.update(stats)
    return metrics


def _mean(values: List[torch.Tensor]) -> torch.Tensor:
    """The mean of device scalars; one value is its own mean (no stack, no division)."""
    return torch.stack(values).mean() if len(values) > 1 else values[0]


class Trainer(TrainerBase):
    """Multi-task trainer: each optimizer step draws ``accum_iter`` micro-batches ``(task_name, batch)`` from
    ``data_loader`` (moved to the device) and hands them to ``step_engine.run_micro_batches`` (forward, backward
    of each task's summed losses / accum_iter; with ``accum_negatives`` a contrastive task's k micro-batches are
    scored together), then ``step_engine.step()``.

    One host read per step: loss values and metrics stay device tensors, kept until the next logging step
    (every ``log_period`` steps, the last step, a checkpoint, the end of training), then read at once and
    reduced over ranks; the step's read is the non-finite skip decision (:class:`NonFiniteGuard`).

    ``seed``: when set, a :class:`StepSeed` hook seeds every step from (seed, rank, iteration).
    """

    def __init__(self, model, tasks: Mapping[str, Any], data_loader, step_engine: StepEngine, *,
                 accum_iter: int = 1, max_nonfinite_steps: int = 0, device: Optional[torch.device] = None,
                 seed: Optional[int] = None, log_period: int = 1, accum_negatives: bool = False):
        super().__init__()
        self.model = model  # the module the loop calls (the step engine may wrap it: step_engine.model)
        self.tasks = tasks
        self.data_loader = data_loader
        self.step_engine = step_engine
        self.accum_iter = max(1, int(accum_iter))
        self.accum_negatives = bool(accum_negatives)  # SOLVER.ACCUM_NEGATIVES (StepEngine.run_micro_batches)
        self.guard = NonFiniteGuard(max_nonfinite_steps)
        self.device = device or next(model.parameters()).device
        self.log_period = max(1, int(log_period))
        self._pending: List[Tuple[int, Dict[str, Any]]] = []  # (iteration, device metrics) not yet read
        self._seed_hook = StepSeed(seed) if seed is not None else None
        self.register_hooks([self._seed_hook])
        self._data_iter = iter(data_loader)

    @property
    def seed(self) -> Optional[int]:
        return self._seed_hook.seed if self._seed_hook is not None else None

    @property
    def nonfinite_streak(self) -> int:
        return self.guard.streak

    def run_step(self) -> None:
        engine = self.step_engine
        if not engine.model.training:  # evaluation restores the mode itself; walking every module costs ~0.1 ms
            engine.model.train()
        start = time.perf_counter()
        micro_batches = [(name, to_device(b, self.device)) for name, b in islice(self._data_iter, self.accum_iter)]
        data_time = time.perf_counter() - start
        losses = engine.run_micro_batches(self.tasks, micro_batches, self.accum_negatives)
        if self.guard.skip(engine, losses, self.iter):
            return
        stats = engine.step()
        self._write_metrics(step_metrics(losses, stats), data_time)

    def _write_metrics(self, metrics: Mapping[str, Any], data_time: float) -> None:
        """The one place where metrics are read and reduced over ranks.  Kept on the device until a logging
        step, then all pending steps are read at once; each key is averaged over the ranks that have it (with
        per-rank task draws a task's loss exists only where it was drawn), ``data_time`` is the max."""
        self._pending.append((self.iter, dict(metrics, data_time=data_time)))
        if (self.iter + 1) % self.log_period == 0 or self.iter >= self.max_iter - 1:
            self.flush_metrics()

    def flush_metrics(self) -> None:
        """Read the pending device metrics (one transfer) and put them into the storage at their iterations."""
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        tensors = [v for _, m in pending for v in m.values() if isinstance(v, torch.Tensor)]
        values = iter(torch.stack([t.float() for t in tensors]).tolist() if tensors else [])
        rows = [(it, {k: next(values) if isinstance(v, torch.Tensor) else float(v) for k, v in m.items()})
                for it, m in pending]
        if comm.get_world_size() > 1:
            gathered = comm.all_gather([m for _, m in rows])
            rows = [(it, _reduce_over_ranks([g[i] for g in gathered])) for i, (it, _) in enumerate(rows)]
        storage = get_event_storage()
        current = storage.iter
        try:
            for it, m in rows:
                storage.iter = it
                storage.put_scalar("data_time", m.pop("data_time"))
                for key, value in m.items():
                    storage.put_scalar(key, value)
        finally:
            storage.iter = current

    def after_train(self) -> None:
        if self.storage is not None:
            self.flush_metrics()  # a run stopped early still gets its last values written
        super().after_train()

    def state_dict(self) -> Dict[str, Any]:
        if self.storage is not None:
            self.flush_metrics()  # the checkpointed metric history includes every finished step
        state = super().state_dict()
        state["nonfinite_streak"] = self.guard.streak
        if self.seed is not None:
            state["seed"] = int(self.seed)
        return state

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.guard.streak = int(state.get("nonfinite_streak", 0))
        if self.seed is not None and "seed" in state:
            self._seed_hook.seed = int(state["seed"])  # SEED < 0 drew a fresh seed at start-up: keep the run's own


def _reduce_over_ranks(per_rank: List[Dict[str, float]]) -> Dict[str, float]:
    keys = set().union(*per_rank)
    out = {k: sum(m[k] for m in per_rank if k in m) / sum(1 for m in per_rank if k in m) for k in keys}
    out["data_time"] = max(m["data_time"] for m in per_rank)
    return out


def to_device(batch: Any, device: torch.device) -> Any:
    """Tensors of a (nested) batch moved to ``device`` (non-blocking: pinned host memory copies asynchronously)."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, Mapping):
        return type(batch)((k, to_device(v, device)) for k, v in batch.items()) if not isinstance(batch, dict) \
            else {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(v, device) for v in batch)
    return batch
