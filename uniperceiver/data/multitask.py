"""MultiTaskLoader: an infinite iterator of ``(task_name, batch)``, one task drawn per step.

Contract (see ARCHITECTURE.md):
* one torch ``DataLoader`` per task over an :class:`InfiniteShardedSampler` (sharded over ranks, epoch
  permutations from ``seed + epoch``), batches of the task's ``DATALOADER.TRAIN_BATCH_SIZE``;
* the task of each step is drawn from ``DATALOADER.SAMPLING_WEIGHT`` with a torch Generator seeded with
  ``seed`` ("synced": the same draw on every rank) or ``seed + 1000003 * rank`` ("independent");
* ``state_dict()`` counts CONSUMED batches per task (not the ones prefetched by workers) plus the draw
  generator state; it is collective (gathers every rank's state) and ``load_state_dict`` restores this rank's,
  so a resumed run sees exactly the same task / sample sequence, with any NUM_WORKERS;
* every random decision of the data pipeline is seeded from where it happens, not from a process's RNG
  history: sample ``p`` of a task's stream on a rank runs its transforms (augmentation, MLM masking) under
  python / numpy / torch RNGs seeded with ``derive_seed(task seed, rank, p, RngStream.SAMPLE)``, and its
  batch's ``collate`` under ``derive_seed(task seed, rank, batch position, RngStream.COLLATE)``; so a resumed
  run draws the same augmentations whatever worker / prefetch / resume position produced them.
"""
from __future__ import annotations

import itertools
import logging
from collections import OrderedDict
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset

from uniperceiver.utils import comm
from uniperceiver.utils.env import RngStream, derive_seed, derive_seeds, preserved_rng, seed_cpu_rng

from .samplers import InfiniteShardedSampler
from .shards import ShardBatches

logger = logging.getLogger(__name__)

STRATEGIES = ("independent", "synced")


def task_seed(seed: int, index: int) -> int:
    """Seed of the sampler of the ``index``-th task (the same on every rank)."""
    return int(seed) + 7919 * index


class TaskStream:
    """One task's infinite stream of batches; ``consumed`` batches so far (restorable)."""

    def __init__(self, name: str, dataset: Dataset, batch_size: int, collate_fn: Callable, num_workers: int,
                 seed: int, rank: int, world_size: int, weight: float):
        self.name, self.dataset, self.batch_size = name, dataset, int(batch_size)
        self.collate_fn, self.num_workers = collate_fn, int(num_workers)
        self.seed, self.rank, self.world_size, self.weight = int(seed), rank, world_size, float(weight)
        self.consumed = 0
        # tar-shard streams (data/shards.py): logical worker -> its position after its last consumed batch
        self.positions: Dict[int, dict] = {}
        self._iter: Optional[Iterator] = None

    @property
    def is_shards(self) -> bool:
        return isinstance(self.dataset, IterableDataset)

    def _make_iter(self) -> Iterator:
        if self.is_shards:
            batches = ShardBatches(self.dataset, batch_size=self.batch_size, collate_fn=self.collate_fn,
                                   seed=self.seed, rank=self.rank, world_size=self.world_size,
                                   workers=self.num_workers, positions=self.positions, consumed=self.consumed)
            return iter(DataLoader(batches, batch_size=None, num_workers=self.num_workers,
                                   pin_memory=torch.cuda.is_available(),
                                   worker_init_fn=_WorkerInit(self.seed, self.rank, self.consumed)))
        start = self.consumed * self.batch_size
        sampler = _PositionedBatches(InfiniteShardedSampler(len(self.dataset), seed=self.seed, rank=self.rank,
                                                            world_size=self.world_size, start=start),
                                     start, self.batch_size)
        # generator: the DataLoader draws its base seed from it, not from the global torch RNG (which would
        # shift every later draw of a resumed run by one).  batch_size=None: the sampler yields whole batches
        # and _SeededBatches returns them collated.
        batches = _SeededBatches(self.dataset, self.collate_fn, self.seed, self.rank, self.batch_size)
        loader = DataLoader(batches, batch_size=None, sampler=sampler, collate_fn=_as_is,
                            num_workers=self.num_workers, generator=torch.Generator().manual_seed(self.seed),
                            persistent_workers=self.num_workers > 0, pin_memory=torch.cuda.is_available(),
                            worker_init_fn=_WorkerInit(self.seed, self.rank, self.consumed))
        return iter(loader)

    def next(self) -> Any:
        if self._iter is None:
            self._iter = self._make_iter()
        batch = next(self._iter)
        if self.is_shards:
            worker, position, batch = batch
            self.positions[worker] = position
        self.consumed += 1
        return batch

    def reset(self, consumed: int, positions: Optional[Dict[int, dict]] = None) -> None:
        self.consumed = int(consumed)
        self.positions = {int(w): dict(p) for w, p in (positions or {}).items()}
        self._iter = None  # rebuilt lazily from the new position


class _PositionedBatches:
    """Yields each batch's ``[(position, index), ...]``: ``position`` counts this rank's samples of the stream from
    0 (``start`` for the first sample drawn)."""

    def __init__(self, sampler: InfiniteShardedSampler, start: int, batch_size: int):
        self.sampler, self.start, self.batch_size = sampler, int(start), int(batch_size)

    def __iter__(self) -> Iterator[List[Tuple[int, int]]]:
        items = zip(itertools.count(self.start), iter(self.sampler))
        while True:
            yield list(itertools.islice(items, self.batch_size))


def _as_is(batch: Any) -> Any:
    """The DataLoader's collate_fn: batches come collated from :class:`_SeededBatches`."""
    return batch


class _SeededBatches(Dataset):
    """``self[items]``: one batch, ``collate_fn([dataset[index] for position, index in items])``, each sample
    under RNGs seeded from (task seed, rank, position, SAMPLE) and the collate under RNGs seeded from (task seed,
    rank, batch position, COLLATE) (module docstring).  The global RNG states are saved before and restored after
    the whole batch (once: numpy's save + restore alone costs ~0.1 ms)."""

    SEED_BLOCK = 4096  # sample seeds are derived for this many consecutive positions at once (one numpy pass)

    def __init__(self, dataset: Dataset, collate_fn: Callable, seed: int, rank: int, batch_size: int):
        self.dataset, self.collate_fn, self.seed, self.rank = dataset, collate_fn, int(seed), int(rank)
        self.batch_size = int(batch_size)
        self._block_start, self._block = -1, []  # seeds of positions _block_start, _block_start + 1, ...

    def __len__(self) -> int:
        return len(self.dataset)

    def sample_seeds(self, positions: List[int]) -> List[int]:
        """``derive_seed(task seed, rank, position, RngStream.SAMPLE)`` of each position."""
        lo, hi = min(positions), max(positions)
        if not (self._block_start <= lo and hi < self._block_start + len(self._block)):
            count = max(self.SEED_BLOCK, hi - lo + 1)
            self._block_start = lo
            self._block = derive_seeds([(self.seed, self.rank, p, RngStream.SAMPLE) for p in range(lo, lo + count)])
        return [self._block[p - self._block_start] for p in positions]

    def __getitem__(self, items: List[Tuple[int, int]]) -> Any:
        seeds = self.sample_seeds([position for position, _ in items])
        batch_position = items[0][0] // self.batch_size
        with preserved_rng():
            samples = []
            for (_, index), seed in zip(items, seeds):
                seed_cpu_rng(seed)
                samples.append(self.dataset[index])
            seed_cpu_rng(derive_seed(self.seed, self.rank, batch_position, RngStream.COLLATE))
            return self.collate_fn(samples)


class _WorkerInit:
    """Seeds each worker from (seed, rank, resume position, worker id) so augmentations are reproducible."""

    def __init__(self, seed: int, rank: int, consumed: int):
        self.base = (seed * 1000003 + rank * 9973 + consumed * 31) % (2**31)

    def __call__(self, worker_id: int) -> None:
        import random
        import signal

        import numpy as np

        # Ctrl-C reaches the whole foreground process group: the training process checkpoints and exits 130
        # (engine/preemption.py), which needs its workers alive until then; they end with it.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        s = (self.base + worker_id) % (2**31)
        random.seed(s)
        np.random.seed(s)
        torch.manual_seed(s)


class MultiTaskLoader:
    """Iterator of ``(task_name, batch)``; see the module docstring for the contract."""

    def __init__(self, streams: Sequence[TaskStream], seed: int, strategy: str = "independent",
                 rank: int = 0, world_size: int = 1):
        if strategy not in STRATEGIES:
            raise ValueError(f"DATALOADER.STRATEGY must be one of {STRATEGIES}, got {strategy!r}")
        if not streams:
            raise ValueError("MultiTaskLoader needs at least one task")
        self.streams: "OrderedDict[str, TaskStream]" = OrderedDict((s.name, s) for s in streams)
        self.strategy, self.seed, self.rank, self.world_size = strategy, int(seed), rank, world_size
        weights = torch.tensor([s.weight for s in streams], dtype=torch.float64)
        if (weights < 0).any() or weights.sum() <= 0:
            raise ValueError(f"DATALOADER.SAMPLING_WEIGHT must be >= 0 with a positive sum, got {weights.tolist()}")
        self.weights = weights / weights.sum()
        self._generator = torch.Generator()
        self._generator.manual_seed(self._draw_seed())
        self.steps = 0

    def _draw_seed(self) -> int:
        return self.seed if self.strategy == "synced" else self.seed + 1000003 * self.rank

    @property
    def task_names(self) -> List[str]:
        return list(self.streams)

    def draw_task(self) -> str:
        idx = int(torch.multinomial(self.weights, 1, generator=self._generator).item())
        return self.task_names[idx]

    def __iter__(self) -> "MultiTaskLoader":
        return self

    def __next__(self) -> Tuple[str, Any]:
        name = self.draw_task()
        batch = self.streams[name].next()
        self.steps += 1
        return name, batch

    # ------------------------------------------------------------------------------------------------ state
    def local_state_dict(self) -> Dict[str, Any]:
        return {
            "seed": self.seed,
            "steps": int(self.steps),
            "generator": self._generator.get_state(),
            "consumed": {name: int(s.consumed) for name, s in self.streams.items()},
            "positions": {name: dict(s.positions) for name, s in self.streams.items() if s.is_shards},
        }

    def state_dict(self) -> Dict[str, Any]:
        """Collective: every rank's state, ``{"ranks": [state of rank 0, ...]}``."""
        return {"ranks": comm.all_gather(self.local_state_dict())}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        ranks = state["ranks"]
        if len(ranks) != self.world_size:
            logger.warning("data loader state saved with %d ranks, loading into %d: the sample sequence will "
                           "differ from an uninterrupted run", len(ranks), self.world_size)
        mine = ranks[self.rank % len(ranks)]
        if int(mine["seed"]) != self.seed:
            logger.info("data loader seed %d restored from the checkpoint (was %d)", mine["seed"], self.seed)
            self.seed = int(mine["seed"])
            for index, s in enumerate(self.streams.values()):
                s.seed = task_seed(self.seed, index)
        self.steps = int(mine["steps"])
        if len(ranks) == self.world_size:
            self._generator.set_state(mine["generator"])
        else:
            self._generator.manual_seed(self._draw_seed())
        for name, stream in self.streams.items():
            if name in mine["consumed"]:
                stream.reset(mine["consumed"][name], mine.get("positions", {}).get(name))
            else:
                logger.warning("task %s is new since the checkpoint; it starts at its first batch", name)
                stream.reset(0)
