"""Metrics: one :class:`EventStorage` per training run, and the writers that read it.

The trainer opens ``with EventStorage(start_iter) as storage:``; code running inside (hooks, tasks) reaches it
through :func:`get_event_storage`.  Values are put already reduced over ranks (the trainer does that in one
place).  Writers: :class:`CommonMetricPrinter` (console), :class:`JSONWriter` (``metrics.json``, one JSON object
per line with key ``iteration``), :class:`TensorboardWriter` (event files), :class:`WandbWriter` (a Weights &
Biases run; the ``wandb`` package is imported only when this writer is built).
"""
from __future__ import annotations

import datetime
import json
import logging
import os
import secrets
import string
import time
from collections import defaultdict
from contextlib import contextmanager
from typing import Dict, List, Optional, Tuple

import torch
from fvcore.common.history_buffer import HistoryBuffer

_CURRENT_STORAGE_STACK: List["EventStorage"] = []


def get_event_storage() -> "EventStorage":
    """The storage of the innermost ``with EventStorage(...)`` block; an error outside of one."""
    if not _CURRENT_STORAGE_STACK:
        raise RuntimeError("get_event_storage() must be called inside a 'with EventStorage(...)' block")
    return _CURRENT_STORAGE_STACK[-1]


class EventStorage:
    """Scalars keyed by name, with their history; ``iter`` is the current optimizer step."""

    def __init__(self, start_iter: int = 0):
        self._history: Dict[str, HistoryBuffer] = defaultdict(HistoryBuffer)
        self._smoothing_hints: Dict[str, bool] = {}
        self._latest: Dict[str, Tuple[float, int]] = {}
        self._iter = start_iter

    def put_scalar(self, name: str, value, smoothing_hint: bool = True) -> None:
        """Record ``value`` at the current iteration.  ``smoothing_hint``: writers may show a windowed median."""
        if isinstance(value, torch.Tensor):
            value = value.detach().item()
        value = float(value)
        self._history[name].update(value, self._iter)
        self._latest[name] = (value, self._iter)
        existing = self._smoothing_hints.get(name)
        if existing is not None and existing != smoothing_hint:
            raise ValueError(f"scalar {name} was put with a different smoothing_hint before")
        self._smoothing_hints[name] = smoothing_hint

    def put_scalars(self, smoothing_hint: bool = True, **kwargs) -> None:
        for name, value in kwargs.items():
            self.put_scalar(name, value, smoothing_hint=smoothing_hint)

    def history(self, name: str) -> HistoryBuffer:
        if name not in self._history:
            raise KeyError(f"no history for metric {name!r}")
        return self._history[name]

    def histories(self) -> Dict[str, HistoryBuffer]:
        return self._history

    def history_state(self, max_len: int = 200) -> Dict[str, Dict[str, object]]:
        """The last ``max_len`` values of every scalar, as tensors (checkpointed by the trainer so that windowed
        medians in metrics.json / console / TensorBoard continue exactly after a resume)."""
        out = {}
        for name, buf in self._history.items():
            vals = buf.values()[-max_len:]
            out[name] = {"values": torch.tensor([float(v) for v, _ in vals], dtype=torch.float64),
                         "iters": torch.tensor([int(i) for _, i in vals], dtype=torch.int64),
                         "smoothing_hint": bool(self._smoothing_hints.get(name, True))}
        return out

    def load_history_state(self, state: Dict[str, Dict[str, object]]) -> None:
        """Prepend histories saved by :meth:`history_state` (before anything is put into this storage)."""
        for name, entry in state.items():
            for value, itr in zip(entry["values"].tolist(), entry["iters"].tolist()):
                self._history[name].update(float(value), int(itr))
            self._smoothing_hints[name] = bool(entry["smoothing_hint"])

    def latest(self) -> Dict[str, Tuple[float, int]]:
        """name -> (latest value, iteration it was put at)."""
        return self._latest

    def latest_with_smoothing_hint(self, window_size: int = 20) -> Dict[str, Tuple[float, int]]:
        """Like :meth:`latest`, but values with a smoothing hint are the median of the last ``window_size``."""
        out = {}
        for name, (value, itr) in self._latest.items():
            if self._smoothing_hints[name]:
                value = self._history[name].median(window_size)
            out[name] = (value, itr)
        return out

    @property
    def iter(self) -> int:
        return self._iter

    @iter.setter
    def iter(self, value: int) -> None:
        self._iter = int(value)

    def __enter__(self) -> "EventStorage":
        _CURRENT_STORAGE_STACK.append(self)
        return self

    def __exit__(self, *exc) -> None:
        assert _CURRENT_STORAGE_STACK[-1] is self
        _CURRENT_STORAGE_STACK.pop()


class EventWriter:
    """Writes the storage's new values; ``start`` runs once before training, ``state_dict`` is checkpointed."""

    def start(self) -> None:
        pass

    def write(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def state_dict(self) -> Dict[str, object]:
        return {}

    def load_state_dict(self, state: Dict[str, object]) -> None:
        pass


def _new_values_by_iter(last_write: int, window_size: int) -> Dict[int, Dict[str, float]]:
    """Values put after iteration ``last_write``, grouped by the iteration they were put at."""
    by_iter: Dict[int, Dict[str, float]] = defaultdict(dict)
    for name, (value, itr) in get_event_storage().latest_with_smoothing_hint(window_size).items():
        if itr > last_write:
            by_iter[itr][name] = value
    return by_iter


class JSONWriter(EventWriter):
    """Append one JSON line per written iteration: ``{"iteration": i, name: value, ...}`` (new values only)."""

    def __init__(self, json_file: str, window_size: int = 20):
        # Unbuffered: a failed write (disk full) raises here, naming the file, and leaves no buffer that would
        # fail again when the file is closed; a partial last line is dropped on --resume (engine/hooks.py).
        self._path = json_file
        self._file = open(json_file, "ab", buffering=0)
        self._window_size = window_size
        self._last_write = -1

    def write(self) -> None:
        storage = get_event_storage()
        by_iter: Dict[int, Dict[str, float]] = defaultdict(dict)
        for name, (value, itr) in storage.latest_with_smoothing_hint(self._window_size).items():
            if itr > self._last_write:
                by_iter[itr][name] = value
        if not by_iter:
            return
        data = memoryview("".join(json.dumps({"iteration": itr, **by_iter[itr]}, sort_keys=True) + "\n"
                                  for itr in sorted(by_iter)).encode())
        try:
            while data:
                data = data[self._file.write(data):]
        except OSError as e:
            raise OSError(e.errno, e.strerror, self._path) from e
        try:
            os.fsync(self._file.fileno())
        except OSError:
            pass
        self._last_write = max(by_iter)

    def close(self) -> None:
        self._file.close()


class TensorboardWriter(EventWriter):
    """Scalars to TensorBoard event files in ``log_dir`` (torch.utils.tensorboard)."""

    def __init__(self, log_dir: str, window_size: int = 20):
        from torch.utils.tensorboard import SummaryWriter

        self._writer = SummaryWriter(log_dir)
        self._window_size = window_size
        self._last_write = -1

    def write(self) -> None:
        storage = get_event_storage()
        new_last = self._last_write
        for name, (value, itr) in storage.latest_with_smoothing_hint(self._window_size).items():
            if itr > self._last_write:
                self._writer.add_scalar(name, value, itr)
                new_last = max(new_last, itr)
        self._last_write = new_last
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


class WandbWriter(EventWriter):
    """Scalars to a Weights & Biases run: ``run.log({name: value}, step=iteration)``.

    The run starts in :meth:`start` with ``config`` (the full config, as plain dicts) and the id in
    ``run_id``: a new one, or the one :meth:`load_state_dict` restored from a checkpoint, so a resumed
    training continues the same W&B run.  W&B writes under ``$WANDB_DIR/wandb`` when WANDB_DIR is set, else
    ``directory/wandb``; ``WANDB_MODE=offline`` keeps everything local (``wandb sync`` uploads it later).
    Raises ImportError without the ``wandb`` package.
    """

    def __init__(self, *, project: str, name: str = "", tags=(), config: Optional[dict] = None,
                 directory: str = ".", window_size: int = 20):
        import wandb

        self._wandb = wandb
        self.project, self.name, self.tags = project, name, list(tags)
        self.config = config or {}
        self.directory = directory
        self.run_id = "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))
        self.resumed = False
        self._window_size = window_size
        self._last_write = -1
        self._run = None

    def start(self) -> None:
        if self._run is not None:
            return
        directory = None if os.environ.get("WANDB_DIR") else self.directory
        if directory:
            os.makedirs(directory, exist_ok=True)
        self._run = self._wandb.init(project=self.project or None, name=self.name or None, tags=self.tags or None,
                                     config=self.config, dir=directory, id=self.run_id, resume="allow")
        logging.getLogger(__name__).info("W&B run %s (%s) in %s", self.run_id,
                                         "resumed" if self.resumed else "new", self._run.dir)

    def write(self) -> None:
        by_iter = _new_values_by_iter(self._last_write, self._window_size)
        if not by_iter:
            return
        self.start()
        for itr in sorted(by_iter):  # W&B steps must increase
            self._run.log(by_iter[itr], step=itr)
        self._last_write = max(by_iter)

    def close(self) -> None:
        if self._run is not None:
            self._run.finish()
            self._run = None
            # Wait until W&B's service has written everything out (finish() may return before): W&B documents
            # its own atexit teardown as unreliable in multiprocessing workers (main.py --num-gpus N).
            self._wandb.teardown()

    def state_dict(self) -> Dict[str, object]:
        return {"run_id": self.run_id}

    def load_state_dict(self, state: Dict[str, object]) -> None:
        if state.get("run_id"):
            self.run_id, self.resumed = str(state["run_id"]), True


class CommonMetricPrinter(EventWriter):
    """Console line: iteration, ETA, losses, time, data time, lr, samples/s per task, max memory."""

    def __init__(self, max_iter: int, window_size: int = 20):
        self.logger = logging.getLogger("uniperceiver.events")
        self._max_iter = max_iter
        self._window_size = window_size
        self._last_write: Optional[Tuple[int, float]] = None

    def _eta(self, storage: EventStorage) -> str:
        iteration = storage.iter
        try:
            eta = storage.history("time").median(1000) * (self._max_iter - iteration - 1)
            return str(datetime.timedelta(seconds=int(eta)))
        except KeyError:
            now = time.perf_counter()
            eta = ""
            if self._last_write is not None and iteration > self._last_write[0]:
                per_iter = (now - self._last_write[1]) / (iteration - self._last_write[0])
                eta = str(datetime.timedelta(seconds=int(per_iter * (self._max_iter - iteration - 1))))
            self._last_write = (iteration, now)
            return eta

    def write(self) -> None:
        storage = get_event_storage()
        iteration = storage.iter
        latest = storage.latest()

        def fmt(name: str, spec: str = ".4f", window: Optional[int] = None) -> str:
            if name not in latest:
                return ""
            value = storage.history(name).median(window) if window else latest[name][0]
            return f"{name}: {value:{spec}}  "

        losses = "  ".join(f"{k}: {storage.history(k).median(self._window_size):.4f}"
                           for k in sorted(latest) if "loss" in k and latest[k][1] == iteration)
        speeds = ", ".join(f"{k[len(SAMPLES_PER_S):]} {latest[k][0]:.1f}" for k in sorted(latest)
                           if k.startswith(SAMPLES_PER_S) and latest[k][1] == iteration)
        speeds = f"samples/s: {speeds}  " if speeds else ""
        memory = "  ".join(f"{label}: {latest[key][0]:.0f}M" for key, label in
                           (("max_mem_mb", "max_mem"), ("max_rss_mb", "max_rss")) if key in latest)
        if not memory:  # no ThroughputMonitor hook in this run
            cuda_mb = cuda_max_memory_mb()
            memory = f"max_mem: {cuda_mb:.0f}M" if cuda_mb is not None else f"max_rss: {max_rss_mb():.0f}M"
        eta = self._eta(storage)
        self.logger.info(
            f"{'eta: ' + eta + '  ' if eta else ''}iter: {iteration}/{self._max_iter}  {losses}  "
            f"{fmt('time', '.4f', self._window_size)}{fmt('data_time', '.4f', self._window_size)}"
            f"{fmt('lr', '.3e')}{speeds}{memory}".rstrip()
        )


# Prefix of the per-task throughput scalars: samples_per_s_<task NAME>.
SAMPLES_PER_S = "samples_per_s_"


def max_rss_mb() -> float:
    """Peak resident memory of this process (MiB) since it started."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def cuda_max_memory_mb() -> Optional[float]:
    """Peak CUDA memory allocated by tensors of this process (MiB) since it started; None without CUDA in use."""
    if not (torch.cuda.is_available() and torch.cuda.is_initialized()):
        return None
    return torch.cuda.max_memory_allocated() / 1024 ** 2


@contextmanager
def null_storage():
    """A throw-away storage for code run outside training (tests, evaluation)."""
    with EventStorage() as storage:
        yield storage
