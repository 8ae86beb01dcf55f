"""``build_train_loader(cfg, tasks) -> MultiTaskLoader`` from the per-task DATALOADER nodes."""
from __future__ import annotations

import logging
from typing import Dict, Optional

from torch.utils.data import Subset

from uniperceiver.config import ConfigError
from uniperceiver.utils import comm

from .multitask import STRATEGIES, MultiTaskLoader, TaskStream, task_seed
from .samplers import subset_indices
from .shards import ShardDataset

logger = logging.getLogger(__name__)


def build_train_loader(cfg, tasks: Dict[str, "Task"], seed: Optional[int] = None) -> MultiTaskLoader:  # noqa: F821
    """One stream per task (``task.build_dataset("train")``, ``task.collate``, the task's batch size and
    workers); ``seed`` defaults to ``cfg.SEED`` (a seed shared by all ranks when SEED < 0).

    STRATEGY is global: every task node must agree on it."""
    if seed is None:
        seed = cfg.SEED if cfg.SEED >= 0 else comm.shared_random_seed()
    strategies = {cfg.task(name).DATALOADER.STRATEGY for name in tasks}
    if len(strategies) != 1:
        raise ConfigError(f"DATALOADER.STRATEGY must be the same for every task, got {sorted(strategies)}")
    strategy = strategies.pop()
    if strategy not in STRATEGIES:
        raise ConfigError(f"DATALOADER.STRATEGY {strategy!r} is unknown; choose one of {', '.join(STRATEGIES)}")
    rank, world = comm.get_rank(), comm.get_world_size()
    streams = []
    for index, (name, task) in enumerate(tasks.items()):
        tcfg = cfg.task(name).DATALOADER
        dataset = task.build_dataset("train")
        if tcfg.TRAIN_BATCH_SIZE <= 0:
            raise ConfigError(f"TASKS.{name}.DATALOADER.TRAIN_BATCH_SIZE must be > 0")
        if isinstance(dataset, ShardDataset):
            dataset.check_workers(world, tcfg.NUM_WORKERS)
            logger.info("task %s: %d shards%s, shuffle buffer %d, batch %d per rank, weight %g", name,
                        len(dataset.urls), " drawn with replacement" if dataset.resampled else "",
                        dataset.shuffle_buffer, tcfg.TRAIN_BATCH_SIZE, tcfg.SAMPLING_WEIGHT)
        else:
            if tcfg.DATA_PERCENTAGE < 1.0:
                full = len(dataset)
                dataset = Subset(dataset, subset_indices(full, tcfg.DATA_PERCENTAGE))
                logger.info("task %s: DATA_PERCENTAGE %g keeps %d of %d samples", name, tcfg.DATA_PERCENTAGE,
                            len(dataset), full)
            if len(dataset) == 0:
                raise ConfigError(f"task {name}: the training set is empty")
            if tcfg.IMAGE_CACHE_MB > 0:
                enable_image_cache(dataset, tcfg.IMAGE_CACHE_MB)
            logger.info("task %s: %d training samples, batch %d per rank, weight %g", name, len(dataset),
                        tcfg.TRAIN_BATCH_SIZE, tcfg.SAMPLING_WEIGHT)
        streams.append(TaskStream(name, dataset, tcfg.TRAIN_BATCH_SIZE, task.collate, tcfg.NUM_WORKERS,
                                  seed=task_seed(seed, index), rank=rank, world_size=world,
                                  weight=tcfg.SAMPLING_WEIGHT))
    return MultiTaskLoader(streams, seed=seed, strategy=strategy, rank=rank, world_size=world)


def enable_image_cache(dataset, megabytes: float) -> None:
    """``DATALOADER.IMAGE_CACHE_MB``: decode the training images once, up to the budget, before the loader
    starts (its workers then share them); a reader without images ignores it."""
    indices = dataset.indices if isinstance(dataset, Subset) else None
    reader = dataset.dataset if isinstance(dataset, Subset) else dataset
    if hasattr(reader, "enable_image_cache"):
        reader.enable_image_cache(megabytes, range(len(reader)) if indices is None else indices)
