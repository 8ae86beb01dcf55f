"""Samplers and the MultiTaskLoader: sharding, determinism, task draws, exact resume with workers."""
import itertools

import pytest
import torch

from uniperceiver.data.multitask import MultiTaskLoader, TaskStream
from uniperceiver.data.samplers import InfiniteShardedSampler, subset_indices
from uniperceiver.tasks.synthetic import SyntheticRegressionDataset


@pytest.mark.parametrize("size,world", [(10, 1), (10, 2), (11, 3), (7, 4)])
def test_sampler_shards_each_epoch_without_overlap(size, world):
    per_rank = [InfiniteShardedSampler(size, seed=3, rank=r, world_size=world) for r in range(world)]
    for epoch in range(2):
        chunks = [s.epoch_indices(epoch) for s in per_rank]
        merged = sorted(i for c in chunks for i in c)
        assert merged == list(range(size))
    assert per_rank[0].epoch_indices(0) != per_rank[0].epoch_indices(1)  # reshuffled per epoch


@pytest.mark.parametrize("start", [0, 3, 5, 12, 23])
def test_sampler_start_matches_skipping(start):
    full = list(itertools.islice(iter(InfiniteShardedSampler(11, seed=1, rank=1, world_size=2)), start + 15))
    resumed = list(itertools.islice(iter(InfiniteShardedSampler(11, seed=1, rank=1, world_size=2, start=start)), 15))
    assert resumed == full[start:]


def test_subset_is_deterministic():
    a = subset_indices(1000, 0.01)
    assert a == subset_indices(1000, 0.01) and len(a) == 10 and a == sorted(set(a))
    assert subset_indices(5, 0.01) and len(subset_indices(5, 0.01)) == 1
    assert subset_indices(5, 1.0) == [0, 1, 2, 3, 4]


def _collate(samples):
    return torch.utils.data.default_collate(samples)


def _loader(num_workers=0, strategy="independent", rank=0, world=1, weights=(1.0, 3.0), seed=5):
    streams = [TaskStream(name, SyntheticRegressionDataset("train", size=size), batch_size=bs, collate_fn=_collate,
                          num_workers=num_workers, seed=seed + 7919 * i, rank=rank, world_size=world, weight=w)
               for i, (name, size, bs, w) in enumerate([("a", 13, 2, weights[0]), ("b", 17, 3, weights[1])])]
    return MultiTaskLoader(streams, seed=seed, strategy=strategy, rank=rank, world_size=world)


def _take(it, n):
    return [(name, batch["index"].tolist()) for name, batch in itertools.islice(it, n)]


@pytest.mark.parametrize("num_workers", [0, 1])
def test_resume_sees_the_same_sequence(num_workers):
    """State counts CONSUMED batches, not the ones workers prefetched."""
    ref = _take(_loader(num_workers), 30)
    first = _loader(num_workers)
    it = iter(first)
    assert _take(it, 11) == ref[:11]
    state = first.state_dict()
    assert sum(state["ranks"][0]["consumed"].values()) == 11
    resumed = _loader(num_workers)
    resumed.load_state_dict(state)
    assert _take(iter(resumed), 19) == ref[11:]
    assert {name for name, _ in ref} == {"a", "b"}


def test_synced_and_independent_draws():
    synced = [[_loader(strategy="synced", rank=r, world=2).draw_task() for _ in range(40)] for r in range(2)]
    assert synced[0] == synced[1]
    indep = [_loader(strategy="independent", rank=r, world=2) for r in range(2)]
    draws = [[ld.draw_task() for _ in range(40)] for ld in indep]
    assert draws[0] != draws[1]


def test_sampling_weights():
    loader = _loader(weights=(0.0, 1.0))
    assert {loader.draw_task() for _ in range(50)} == {"b"}
    loader = _loader(weights=(1.0, 3.0))
    draws = [loader.draw_task() for _ in range(2000)]
    assert 0.7 < draws.count("b") / len(draws) < 0.8
    with pytest.raises(ValueError, match="SAMPLING_WEIGHT"):
        _loader(weights=(0.0, 0.0))


def test_ranks_read_disjoint_samples():
    seen = [set(), set()]
    for r in range(2):
        for name, idx in _take(iter(_loader(rank=r, world=2, strategy="synced", weights=(1.0, 0.0))), 3):
            seen[r].update(idx)
    assert seen[0].isdisjoint(seen[1])
