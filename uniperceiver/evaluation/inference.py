"""Run every task's evaluation sets through the model, sharded over ranks, and report the metrics.

``inference_on_tasks`` is used by ``--eval-only`` (through ``engine.evaluate.run_eval_only``) and by the training-time
``EvalHook``.  It needs no process group (one plain process) and under torchrun shards each split
contiguously over the ranks without duplicating a sample; evaluators gather to rank 0.

Result keys: the first of ``splits`` a task has gives ``results[task NAME]``; each later split gives
``results["<task NAME>/<split>"]`` (so ``--eval-only`` on a task with VAL and TEST reports
``coco_cap`` (val) and ``coco_cap/test``).  Each is written to ``OUTPUT_DIR/inference/<key>/results.json``.
"""
from __future__ import annotations

import json
import logging
import os
from collections import OrderedDict
from contextlib import nullcontext
from typing import Any, Dict, Iterator, Mapping, Optional, Sequence, Tuple

import torch
from torch.utils.data import DataLoader, Sampler

from .evaluator import build_evaluator
from uniperceiver.utils.lockstep import batches as lockstep_batches
from uniperceiver.utils.lockstep import lockstep
from uniperceiver.utils import comm
from uniperceiver.utils.wrappers import unwrap_model

logger = logging.getLogger(__name__)

SPLIT_KEYS = {"val": "VAL", "test": "TEST"}


def shard_range(n: int, rank: int, world: int) -> Tuple[int, int]:
    """Contiguous ``[start, end)`` of ``n`` samples for ``rank``: shards differ by at most one, never overlap."""
    return n * rank // world, n * (rank + 1) // world


class InferenceSampler(Sampler):
    """Sequential distributed sampler: rank r reads its contiguous shard once (no padding, no repeats)."""

    def __init__(self, size: int, rank: int = None, world_size: int = None):
        self.size = int(size)
        rank = comm.get_rank() if rank is None else rank
        world_size = comm.get_world_size() if world_size is None else world_size
        self.start, self.end = shard_range(self.size, rank, world_size)

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.start, self.end))

    def __len__(self) -> int:
        return self.end - self.start


def model_device(model: torch.nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def to_device(obj: Any, device: torch.device) -> Any:
    """Tensors (nested in dicts / lists / tuples) moved to ``device``; everything else unchanged."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device, non_blocking=True)
    if isinstance(obj, Mapping):
        return type(obj)((k, to_device(v, device)) for k, v in obj.items()) if isinstance(obj, OrderedDict) \
            else {k: to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)) and any(isinstance(v, torch.Tensor) for v in obj):
        return type(obj)(to_device(v, device) for v in obj)
    return obj


def task_splits(task, splits: Sequence[str]) -> list:
    """The splits of ``splits`` this task has data for (DATASETS.VAL / DATASETS.TEST non-empty)."""
    out = []
    for s in splits:
        if s not in SPLIT_KEYS:
            raise ValueError(f"unknown evaluation split {s!r}; use one of {sorted(SPLIT_KEYS)}")
        if task.cfg.DATASETS.get(SPLIT_KEYS[s]):
            out.append(s)
    return out


def _autocast(cfg, device: torch.device):
    amp = cfg.SOLVER.AMP
    if amp.ENABLED and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16 if amp.DTYPE == "bf16" else torch.float16)
    return nullcontext()


def inference_on_dataset(cfg, model, task, split: str) -> Dict[str, float]:
    """Evaluate one split of one task; metrics on rank 0, ``{}`` on other ranks."""
    dataset = task.build_dataset(split)
    sampler = InferenceSampler(len(dataset))
    logger.info("Evaluating %s/%s: %d samples; rank %d of %d reads [%d, %d)", task.name, split, len(dataset),
                comm.get_rank(), comm.get_world_size(), sampler.start, sampler.end)
    loader = DataLoader(
        dataset,
        batch_size=task.cfg.DATALOADER.TEST_BATCH_SIZE,
        sampler=sampler,
        collate_fn=task.collate,
        num_workers=task.cfg.DATALOADER.NUM_WORKERS,
        pin_memory=model_device(model).type == "cuda",
    )
    evaluator = build_evaluator(task, split)
    evaluator.reset()
    device = model_device(model)
    # Tasks that cache candidate encodings (class names, vocabulary) rebuild them here: weights may have
    # changed since the last evaluation.
    if hasattr(task, "start_inference"):
        task.start_inference(model)
    progress = _progress(loader, desc=f"eval {task.name}/{split}")

    def stand_in():  # the batch an empty shard repeats under lockstep
        return task.collate([dataset[0]])

    with torch.no_grad(), _autocast(cfg, device), lockstep(needs_lockstep(model)):
        for batch, real in lockstep_batches(progress, len(loader), stand_in):
            outputs = task.predict(model, to_device(batch, device))
            if real:
                evaluator.process(batch, outputs)
    if hasattr(task, "end_inference"):
        task.end_inference()
    metrics = evaluator.evaluate()
    # Rank 0: each metric's chance level / trivial baseline on this split, as chance_<metric>.
    chance = evaluator.chance_levels() if metrics else {}
    metrics.update({CHANCE_PREFIX + k: v for k, v in chance.items() if k in metrics})
    return metrics


def needs_lockstep(model) -> bool:
    """Whether the model's forward is collective (see ``lockstep.py``): DeepSpeed ZeRO-3 gathers partitioned
    parameters (``ds_tensor``) as modules run; DeepSpeed-MoE expert parallelism exchanges tokens."""
    model = unwrap_model(model)
    return (any(hasattr(p, "ds_tensor") for p in model.parameters())
            or any(getattr(getattr(m, "spec", None), "ep_size", 1) > 1 for m in model.modules()))


def _progress(loader, desc: str):
    if not comm.is_main_process():
        return loader
    from tqdm import tqdm

    return tqdm(loader, desc=desc, total=len(loader), dynamic_ncols=True, leave=False)


def inference_on_tasks(cfg, model, tasks, splits: Sequence[str] = ("val", "test"), write: bool = True,
                       max_splits_per_task: Optional[int] = None) -> Dict[str, Dict[str, float]]:
    """``{key: {metric: value}}`` for every task (dict or list of Tasks) and split it has (see module doc);
    ``max_splits_per_task=1`` evaluates only the first split each task has (training-time evaluation).

    Complete on rank 0; other ranks return ``{}``.  Writes ``OUTPUT_DIR/inference/<key>/results.json`` and
    logs a table on rank 0 when ``write``.  The model's train/eval mode is restored afterwards.
    """
    model = unwrap_model(model)
    task_list = list(tasks.values()) if isinstance(tasks, Mapping) else list(tasks)
    was_training = model.training
    model.eval()
    results: Dict[str, Dict[str, float]] = OrderedDict()
    try:
        for task in task_list:
            if not task.evaluator_name:
                logger.warning("Task %s names no evaluator (INFERENCE.NAME); not evaluated", task.name)
                continue
            for i, split in enumerate(task_splits(task, splits)[:max_splits_per_task]):
                key = task.name if i == 0 else f"{task.name}/{split}"
                metrics = inference_on_dataset(cfg, model, task, split)
                if comm.is_main_process():
                    results[key] = {k: float(v) for k, v in metrics.items()}
                    logger.info("Evaluated %s (%s split): %s", task.name, split, _fmt(results[key]))
    finally:
        model.train(was_training)
    if comm.is_main_process() and write:
        write_results(cfg.OUTPUT_DIR, results)
        logger.info("Evaluation results:\n%s", results_table(results))
    return results if comm.is_main_process() else {}


def _fmt(metrics: Dict[str, float]) -> str:
    return ", ".join(f"{k}={v:.4f}" for k, v in metrics.items())


def write_results(output_dir: str, results: Dict[str, Dict[str, float]]) -> None:
    """``OUTPUT_DIR/inference/<key>/results.json`` (flat metric -> number), written atomically."""
    for key, metrics in results.items():
        folder = os.path.join(output_dir, "inference", key)
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, "results.json")
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(metrics, f, indent=2)
        os.replace(tmp, path)


CHANCE_PREFIX = "chance_"


def results_table(results: Dict[str, Dict[str, float]]) -> str:
    """A plain-text table: per task/split a header, its metrics, and (when the evaluator computed them) a
    ``chance`` row with each metric's chance level / trivial baseline (``chance_<metric>``) beneath it."""
    if not results:
        return "(no evaluation results)"
    lines = []
    for key, metrics in results.items():
        names = [k for k in metrics if not k.startswith(CHANCE_PREFIX)]
        cols = ["task".ljust(24)] + [k.rjust(max(8, len(k))) for k in names]
        vals = [key.ljust(24)] + [f"{metrics[k]:.2f}".rjust(max(8, len(k))) for k in names]
        lines += [" | ".join(cols), " | ".join(vals)]
        if any(CHANCE_PREFIX + k in metrics for k in names):
            chance = [metrics.get(CHANCE_PREFIX + k) for k in names]
            lines.append(" | ".join(["  chance".ljust(24)] + [
                ("-" if c is None else f"{c:.2f}").rjust(max(8, len(k))) for k, c in zip(names, chance)]))
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------------
# --eval-only
# ------------------------------------------------------------------------------------------------------
def write_tensorboard(output_dir: str, results: Dict[str, Dict[str, float]], step: int = 0) -> None:
    """Scalars ``eval/<key>/<metric>`` into TensorBoard events in ``output_dir``."""
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(log_dir=output_dir)
    try:
        for key, metrics in results.items():
            for name, value in metrics.items():
                writer.add_scalar(f"eval/{key}/{name}", value, step)
    finally:
        writer.close()
