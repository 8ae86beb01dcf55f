"""Training hooks.  Order matters and is set in :func:`build_hooks`: timer, profiler, LR schedule, checkpoint,
evaluation, throughput / memory, writers (last, so they see everything the step produced)."""
from __future__ import annotations

import datetime
import difflib
import json
import logging
import os
import time
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch

from uniperceiver.config import ConfigError
from uniperceiver.utils import comm
from uniperceiver.utils.events import (SAMPLES_PER_S, CommonMetricPrinter, EventWriter, JSONWriter,
                                       TensorboardWriter, WandbWriter, cuda_max_memory_mb, max_rss_mb)

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


class TorchProfiler(HookBase):
    """torch.profiler over steps ``start_iter`` .. ``start_iter + num_iters - 1`` (counted from 0): CPU and, when
    CUDA is available, CUDA activities, input shapes and memory.  Then writes ``output_dir/trace_<first>-<last>.json``
    (a Chrome trace: chrome://tracing or https://ui.perfetto.dev) and ``output_dir/key_averages.txt`` (the
    operator table).  Each profiled step is a ``ProfilerStep#<iteration>`` range in the trace.  A run that
    ends (or resumes) inside the window profiles the steps it runs there."""

    def __init__(self, output_dir: str, start_iter: int, num_iters: int) -> None:
        self.output_dir = output_dir
        self.start_iter = int(start_iter)
        self.end_iter = self.start_iter + max(1, int(num_iters))  # exclusive
        self._prof = None
        self._step_range = None
        self._first = self._last = -1
        self.trace_path = ""

    def before_step(self) -> None:
        it = self.trainer.iter
        if not self.start_iter <= it < self.end_iter:
            return
        if self._prof is None and not self.trace_path:
            activities = [torch.profiler.ProfilerActivity.CPU]
            if torch.cuda.is_available():
                activities.append(torch.profiler.ProfilerActivity.CUDA)
            self._prof = torch.profiler.profile(activities=activities, record_shapes=True, profile_memory=True)
            self._prof.start()
            self._first = it
        if self._prof is not None:
            self._step_range = torch.profiler.record_function(f"ProfilerStep#{it}")
            self._step_range.__enter__()
            self._last = it

    def after_step(self) -> None:
        self._close_step()
        if self._prof is not None and self.trainer.iter >= self.end_iter - 1:
            self._finish()

    def after_train(self) -> None:
        self._close_step()
        if self._prof is not None:
            self._finish()

    def _close_step(self) -> None:
        if self._step_range is not None:
            self._step_range.__exit__(None, None, None)
            self._step_range = None

    def _finish(self) -> None:
        prof, self._prof = self._prof, None
        prof.stop()
        os.makedirs(self.output_dir, exist_ok=True)
        self.trace_path = os.path.join(self.output_dir, f"trace_{self._first}-{self._last}.json")
        prof.export_chrome_trace(self.trace_path)
        sort_by = "self_cuda_time_total" if torch.cuda.is_available() else "self_cpu_time_total"
        with open(os.path.join(self.output_dir, "key_averages.txt"), "w") as f:
            f.write(f"# torch.profiler key averages over steps {self._first}-{self._last}, sorted by {sort_by}\n")
            f.write(prof.key_averages().table(sort_by=sort_by, row_limit=100) + "\n")
        logger.info("Profiled steps %d-%d: %s (open in chrome://tracing or https://ui.perfetto.dev), %s",
                    self._first, self._last, self.trace_path, os.path.join(self.output_dir, "key_averages.txt"))


class ThroughputMonitor(HookBase):
    """Every ``period`` steps and at the last step puts, for the steps since the last time:

    * ``samples_per_s_<task NAME>``: samples of that task trained on all ranks per second of step time (the
      ``time`` scalar summed over those steps, slowest rank; evaluation and checkpoints are not counted);
    * ``max_rss_mb`` (peak resident memory) and, when CUDA is used, ``max_mem_mb`` (peak memory allocated by
      tensors, ``torch.cuda.max_memory_allocated``): since the process started, the largest rank.

    ``consumed_samples() -> {task: samples drawn so far on this rank}``.  Collective: one small all_gather per
    period, so every rank runs it (and only in ``after_step``, which all ranks reach together).
    """

    def __init__(self, period: int, consumed_samples: Optional[Callable[[], Dict[str, int]]] = None) -> None:
        self.period = max(1, int(period))
        self.consumed_samples = consumed_samples or (lambda: {})
        self._last_counts: Dict[str, int] = {}
        self._last_iter = -1
        self._last_time = 0.0

    def before_train(self) -> None:  # after a resume the loader's counts are the restored ones
        self._last_counts = dict(self.consumed_samples())
        self._last_iter = self.trainer.start_iter - 1
        self._last_time = time.perf_counter()

    def after_step(self) -> None:
        it = self.trainer.iter
        if (it + 1) % self.period != 0 and it != self.trainer.max_iter - 1:
            return
        counts = dict(self.consumed_samples())
        local = {"samples": {k: v - self._last_counts.get(k, 0) for k, v in counts.items()},
                 "seconds": self._step_seconds(it), "rss": max_rss_mb(), "cuda": cuda_max_memory_mb()}
        self._last_counts, self._last_iter, self._last_time = counts, it, time.perf_counter()
        ranks = comm.all_gather(local) if comm.get_world_size() > 1 else [local]
        seconds = max(r["seconds"] for r in ranks)
        values: Dict[str, float] = {"max_rss_mb": max(r["rss"] for r in ranks)}
        cuda = [r["cuda"] for r in ranks if r["cuda"] is not None]
        if cuda:
            values["max_mem_mb"] = max(cuda)
        if seconds > 0:
            for task in counts:
                values[SAMPLES_PER_S + task] = sum(r["samples"].get(task, 0) for r in ranks) / seconds
        self.trainer.storage.put_scalars(smoothing_hint=False, **values)

    def _step_seconds(self, it: int) -> float:
        """Sum of the ``time`` scalar (IterationTimer) over the steps since the last put; the wall-clock time
        since then when there is none."""
        histories = self.trainer.storage.histories()
        total, found = 0.0, False
        for value, i in reversed(histories["time"].values() if "time" in histories else []):
            if i <= self._last_iter:
                break  # older steps (iterations ascend)
            if i <= it:
                total, found = total + value, True
        return total if found else time.perf_counter() - self._last_time


def loader_consumed_samples(data_loader) -> Callable[[], Dict[str, int]]:
    """``{task: samples drawn so far on this rank}`` of a MultiTaskLoader ({} for a loader without streams)."""
    def consumed() -> Dict[str, int]:
        streams = getattr(data_loader, "streams", None) or {}
        return {name: int(s.consumed) * int(s.batch_size) for name, s in streams.items()}

    return consumed


class PeriodicWriter(HookBase):
    """Runs the writers every ``period`` steps, at the last step, and once more at the end of training.
    Registered on every rank (writers only on rank 0), so the writers' state (the W&B run id) is checkpointed
    and restored without a warning on the other ranks."""

    def __init__(self, writers: Sequence[EventWriter], period: int = 20) -> None:
        self.writers = list(writers)
        self.period = max(1, int(period))
        self._last_written = -1

    def before_train(self) -> None:
        for w in self.writers:
            try:
                w.start()
            except Exception as e:  # e.g. W&B online without a login: one line, exit code 2 (traceback in log.txt)
                hint = (" (W&B: 'wandb login' or WANDB_API_KEY for online runs; WANDB_MODE=offline runs without a "
                        "network)") if isinstance(w, WandbWriter) else ""
                first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                raise ConfigError(f"LOGGER.WRITERS: the {type(w).__name__} could not start: {first}{hint}") from e

    def state_dict(self) -> Dict[str, Any]:
        states = {type(w).__name__: w.state_dict() for w in self.writers}
        return {"writers": {k: v for k, v in states.items() if v}} if any(states.values()) else {}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        saved = state.get("writers", {})
        for w in self.writers:
            if type(w).__name__ in saved:
                w.load_state_dict(saved[type(w).__name__])

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


WRITER_NAMES = ("json", "tensorboard", "wandb")


def check_observability_cfg(cfg) -> None:
    """LOGGER.* and PROFILER.* values, and the wandb package when asked for: a :class:`ConfigError` naming the
    key (main.py: one line, exit code 2).  Run by every rank before the model is built."""
    writers = list(cfg.LOGGER.WRITERS)
    for name in writers:
        if name not in WRITER_NAMES:
            close = difflib.get_close_matches(str(name), WRITER_NAMES, n=1)
            raise ConfigError(f"LOGGER.WRITERS = {writers!r}: unknown writer {name!r}"
                              f"{'; did you mean ' + repr(close[0]) + '?' if close else ''} (known: "
                              f"{', '.join(WRITER_NAMES)}; the console always writes)")
    if "wandb" in writers:
        try:
            import wandb  # noqa: F401
        except ImportError:
            raise ConfigError("LOGGER.WRITERS asks for 'wandb' but the wandb package is not installed: "
                              "pip install wandb (or pip install -e '.[wandb]')") from None
    p = cfg.PROFILER
    if p.ENABLED:
        if p.START_ITER < 0:
            raise ConfigError(f"PROFILER.START_ITER = {p.START_ITER} must be >= 0 (steps are counted from 0)")
        if p.NUM_ITERS < 1:
            raise ConfigError(f"PROFILER.NUM_ITERS = {p.NUM_ITERS} must be >= 1")
        if p.START_ITER >= cfg.SOLVER.MAX_ITER:
            raise ConfigError(f"PROFILER.START_ITER = {p.START_ITER} must be < SOLVER.MAX_ITER "
                              f"({cfg.SOLVER.MAX_ITER}): the profiled steps would never run")


def _plain(node: Any) -> Any:
    """A config node as plain dicts / lists (what W&B stores as the run config)."""
    if isinstance(node, dict):
        return {k: _plain(v) for k, v in node.items()}
    if isinstance(node, (list, tuple)):
        return [_plain(v) for v in node]
    return node


def build_writers(cfg) -> List[EventWriter]:
    """The console plus LOGGER.WRITERS: ``json`` (OUTPUT_DIR/metrics.json), ``tensorboard`` (OUTPUT_DIR),
    ``wandb`` (LOGGER.WANDB.*, files under $WANDB_DIR/wandb or OUTPUT_DIR/wandb).  For rank 0."""
    output_dir, max_iter = cfg.OUTPUT_DIR, cfg.SOLVER.MAX_ITER
    os.makedirs(output_dir, exist_ok=True)
    writers: List[EventWriter] = [CommonMetricPrinter(max_iter)]
    for name in dict.fromkeys(cfg.LOGGER.WRITERS):
        if name == "json":
            writers.append(JSONWriter(os.path.join(output_dir, "metrics.json")))
        elif name == "tensorboard":
            writers.append(TensorboardWriter(output_dir))
        elif name == "wandb":
            writers.append(WandbWriter(project=cfg.LOGGER.WANDB.PROJECT, name=cfg.LOGGER.WANDB.NAME,
                                       tags=cfg.LOGGER.WANDB.TAGS, config=_plain(cfg), directory=output_dir))
    return writers


def build_hooks(cfg, trainer, checkpointer, optimizer, scheduler,
                eval_hook: Optional[HookBase] = None) -> List[HookBase]:
    """The standard hooks, in the order they must run:

    1. IterationTimer     – times the step
    2. TorchProfiler      – PROFILER.ENABLED: torch.profiler over the configured steps (rank 0 only)
    3. LRScheduler        – records this step's LR, then moves the schedule to the next step
    4. PeriodicCheckpointer – saves before evaluation, so a crash in evaluation keeps the weights
    5. PreemptionHandler  – on SIGUSR1/SIGTERM: checkpoint, requeue the Slurm job, exit 0 (engine/preemption.py)
    6. ``eval_hook``      – evaluation (engine/eval_hook.py), optional
    7. ThroughputMonitor  – samples_per_s_<task>, max_rss_mb, max_mem_mb (every rank: one all_gather per period)
    8. PeriodicWriter     – last: writes everything the hooks above put into the storage (writers on rank 0)
    """
    from .preemption import PreemptionHandler

    main = comm.is_main_process()
    profiler = None
    if cfg.PROFILER.ENABLED and main:
        profiler = TorchProfiler(os.path.join(cfg.OUTPUT_DIR, "profiler"), cfg.PROFILER.START_ITER,
                                 cfg.PROFILER.NUM_ITERS)
    hooks: List[Optional[HookBase]] = [
        IterationTimer(),
        profiler,
        LRScheduler(optimizer, scheduler),
        PeriodicCheckpointer(checkpointer, cfg.SOLVER.CHECKPOINT_PERIOD, cfg.SOLVER.CHECKPOINT_MAX_SAVE),
        PreemptionHandler(checkpointer),
        eval_hook,
        ThroughputMonitor(cfg.SOLVER.WRITE_PERIOD, loader_consumed_samples(getattr(trainer, "data_loader", None))),
        PeriodicWriter(build_writers(cfg) if main else [], cfg.SOLVER.WRITE_PERIOD),
    ]
    return [h for h in hooks if h is not None]
