"""Training hooks.  Order matters and is set in :func:`build_hooks`: timer, LR schedule, checkpoint, evaluation,
writers (last, so they see everything the step produced)."""
from __future__ import annotations

import datetime
import json
import logging
import os
import time
from typing import List, Optional, Sequence

from uniperceiver.utils import comm
from uniperceiver.utils.events import CommonMetricPrinter, EventWriter, JSONWriter, TensorboardWriter

from .train_loop import HookBase

logger = logging.getLogger(__name__)


class IterationTimer(HookBase):
    """Puts ``time`` (seconds per optimizer step, hooks before it included) and logs the total at the end."""

    def __init__(self) -> None:
        self._step_start = 0.0
        self._train_start = 0.0

    def before_train(self) -> None:
        self._train_start = time.perf_counter()

    def before_step(self) -> None:
        self._step_start = time.perf_counter()

    def after_step(self) -> None:
        self.trainer.storage.put_scalar("time", time.perf_counter() - self._step_start)

    def after_train(self) -> None:
        total = time.perf_counter() - self._train_start
        done = self.trainer.iter - self.trainer.start_iter
        if done > 0:
            logger.info("Total training time: %s (%d iterations, %.4f s / it)",
                        datetime.timedelta(seconds=int(total)), done, total / done)


class LRScheduler(HookBase):
    """Puts the LR of the step (largest over groups, i.e. the un-decayed one) then steps the scheduler."""

    def __init__(self, optimizer, scheduler) -> None:
        self.optimizer = optimizer
        self.scheduler = scheduler

    def after_step(self) -> None:
        lr = max(g["lr"] for g in self.optimizer.param_groups)
        self.trainer.storage.put_scalar("lr", lr, smoothing_hint=False)
        self.scheduler.step()


class PeriodicCheckpointer(HookBase):
    """Saves ``model_{iter:07d}`` every ``period`` steps (keeping the newest ``max_to_keep``; 0 = all) and
    ``model_final`` at the last step.  Collective (every rank runs it; the checkpointer writes on rank 0)."""

    def __init__(self, checkpointer, period: int, max_to_keep: int = 0, file_prefix: str = "model") -> None:
        self.checkpointer = checkpointer
        self.period = int(period)
        self.max_to_keep = int(max_to_keep)
        self.file_prefix = file_prefix
        self._saved: List[str] = []

    def after_step(self) -> None:
        it = self.trainer.iter
        if it >= self.trainer.max_iter - 1:
            self.checkpointer.save(f"{self.file_prefix}_final", iteration=it)
        elif self.period > 0 and (it + 1) % self.period == 0:
            path = self.checkpointer.save(f"{self.file_prefix}_{it:07d}", iteration=it)
            if path:
                self._saved.append(path)
                self._prune()

    def _prune(self) -> None:
        if self.max_to_keep <= 0 or not comm.is_main_process():
            return
        existing = self.checkpointer.get_all_checkpoint_files()
        for path in existing[: max(0, len(existing) - self.max_to_keep)]:
            if os.path.exists(path):
                os.remove(path)


class PeriodicWriter(HookBase):
    """Runs the writers every ``period`` steps, at the last step, and once more at the end of training."""

    def __init__(self, writers: Sequence[EventWriter], period: int = 20) -> None:
        self.writers = list(writers)
        self.period = max(1, int(period))
        self._last_written = -1

    def _write(self) -> None:
        for w in self.writers:
            w.write()
        self._last_written = self.trainer.storage.iter

    def after_step(self) -> None:
        it = self.trainer.iter
        if (it + 1) % self.period == 0 or it == self.trainer.max_iter - 1:
            self._write()

    def after_train(self) -> None:
        # A run stopped early (exception) still gets its last values written.
        latest = [itr for _, itr in self.trainer.storage.latest().values()]
        if latest and max(latest) > self._last_written:
            self.trainer.storage.iter = max(latest)
            self._write()
        for w in self.writers:
            w.close()


def trim_metrics_file(path: str, last_iteration: int) -> int:
    """Cut ``metrics.json`` (one JSON row a line, iterations ascending) after the rows of ``last_iteration``, the
    iteration a resumed run continues after, so that the steps it repeats are not written twice; a last line
    that a full disk or a kill cut short goes too.  In place (the JSONWriter appends to the same file).
    Returns the number of lines removed."""
    try:
        with open(path, "rb") as f:
            lines = f.readlines()
    except FileNotFoundError:
        return 0
    keep_bytes, kept = 0, 0
    for line in lines:
        try:
            row = json.loads(line)
            it = int(row["iteration"])
        except (ValueError, KeyError, TypeError):
            break  # a partial or garbled line: it and everything after it go
        if not line.endswith(b"\n") or it > last_iteration:
            break
        keep_bytes += len(line)
        kept += 1
    if kept < len(lines):
        with open(path, "r+b") as f:
            f.truncate(keep_bytes)
        logger.info("%s: removed %d rows after iteration %d (the resumed run writes them again)", path,
                    len(lines) - kept, last_iteration)
    return len(lines) - kept


def default_writers(output_dir: str, max_iter: int) -> List[EventWriter]:
    """Console, ``output_dir/metrics.json`` and TensorBoard events in ``output_dir``."""
    os.makedirs(output_dir, exist_ok=True)
    return [
        CommonMetricPrinter(max_iter),
        JSONWriter(os.path.join(output_dir, "metrics.json")),
        TensorboardWriter(output_dir),
    ]


def build_hooks(cfg, trainer, checkpointer, optimizer, scheduler,
                eval_hook: Optional[HookBase] = None) -> List[HookBase]:
    """The standard hooks, in the order they must run:

    1. IterationTimer     – times the step
    2. LRScheduler        – records this step's LR, then moves the schedule to the next step
    3. PeriodicCheckpointer – saves before evaluation, so a crash in evaluation keeps the weights
    4. PreemptionHandler  – on SIGUSR1/SIGTERM: checkpoint, requeue the Slurm job, exit 0 (engine/preemption.py)
    5. ``eval_hook``      – evaluation (engine/eval_hook.py), optional
    6. PeriodicWriter     – last: writes everything the hooks above put into the storage (rank 0 only)
    """
    from .preemption import PreemptionHandler

    hooks: List[Optional[HookBase]] = [
        IterationTimer(),
        LRScheduler(optimizer, scheduler),
        PeriodicCheckpointer(checkpointer, cfg.SOLVER.CHECKPOINT_PERIOD, cfg.SOLVER.CHECKPOINT_MAX_SAVE),
        PreemptionHandler(checkpointer),
        eval_hook,
    ]
    if comm.is_main_process():
        hooks.append(PeriodicWriter(default_writers(cfg.OUTPUT_DIR, cfg.SOLVER.MAX_ITER), cfg.SOLVER.WRITE_PERIOD))
    return [h for h in hooks if h is not None]
