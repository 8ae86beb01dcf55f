"""WebDataset tar shards (img2dataset's layout) as a training stream that resumes exactly.

A shard is a tar file whose members are grouped into samples by key: ``00001234.jpg``, ``00001234.txt``,
``00001234.json`` (and ``.cls`` for a class label).  ``DATASETS.FORMAT webdataset`` makes ``DATASETS.TRAIN`` a
shard list: a brace pattern (``/data/cc12m/{00000..01242}.tar``), several patterns joined by ``::`` (as
open_clip), or a ``.txt`` file with one URL per line; ``pipe:CMD`` URLs stream from a command.

Who reads what (``rank`` r of ``world``, ``W = max(1, NUM_WORKERS)`` loader workers per rank): the stream is
split into ``world * W`` *logical workers*; logical worker ``g = r * W + w`` reads, in pass ``k``, the shards
``perm_k[g::world * W]`` (``perm_k`` a permutation of all shards seeded from (seed, k), the same on every rank),
then starts pass ``k + 1``: a rank never waits for another.  With ``DATALOADER.SHARD_RESAMPLED`` each pass is
one shard drawn with replacement from (seed, g, k) (open_clip's ``--dataset-resampled``).

Shuffling is by *chunks*: a logical worker reads ``SHUFFLE_BUFFER`` samples (across shard and pass boundaries)
and emits them in a permutation seeded from (seed, rank, worker, chunk number).  Its position is therefore
``(pass, shard, offset, chunk, emitted)``: where the chunk began and how many of its entries were emitted.  The
trainer keeps the position after the last *consumed* batch of each logical worker and checkpoints only that;
a resumed worker re-opens the shard, skips ``offset`` samples, re-reads the chunk and skips ``emitted`` entries,
so the buffer is re-read, never stored, and the sample sequence is the uninterrupted run's.

The DataLoader hands out batches of an iterable dataset round-robin over its workers, so batch ``t`` of a stream
comes from logical worker ``t mod W``; after ``c`` consumed batches, physical worker ``p`` serves logical worker
``(p + c) mod W``.

Bad samples (a member that is not an image, a sample without its text or label, a truncated shard) are skipped
and counted per reason like every other bad sample (``DATALOADER.MAX_BAD_FRACTION``).
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import tarfile
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import torch
from torch.utils.data import IterableDataset, get_worker_info

from uniperceiver.config import ConfigError
from uniperceiver.utils.env import RngStream, derive_seed, seeded_rng

from .datasets.base import MIN_SAMPLES_FOR_FRACTION, TooManyBadSamples, load_rgb
from .image_decode import DEFAULT_MAX_IMAGE_PIXELS

logger = logging.getLogger(__name__)

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "bmp")
TEXT_EXTS = ("txt", "text", "caption")
# Sample kinds: what a sample must carry besides its image.
KINDS = ("pairs", "label")


class ShardReadError(RuntimeError):
    """A shard could not be opened or read to its end for a reason other than bad content (e.g. a failing
    ``pipe:`` command); stops training with one line naming the URL."""


def expand_urls(spec: str, data_root: Callable[[str], str] = lambda p: p) -> List[str]:
    """The shard URLs of ``spec`` (brace patterns joined by ``::``, or a ``.txt`` list of URLs); local paths
    are resolved with ``data_root`` and must exist (ConfigError naming the first missing one)."""
    import braceexpand

    spec = spec.strip()
    if not spec:
        raise ConfigError("DATASETS.TRAIN is empty: FORMAT webdataset needs a shard pattern")
    if spec.endswith(".txt") and not spec.startswith("pipe:"):
        path = data_root(spec)
        if not os.path.isfile(path):
            raise ConfigError(f"shard list {path} not found (DATASETS.TRAIN with DATASETS.FORMAT webdataset)")
        with open(path, encoding="utf-8") as f:
            patterns = [line.strip() for line in f if line.strip() and not line.startswith("#")]
    else:
        patterns = [p.strip() for p in spec.split("::") if p.strip()]
    urls = [u for p in patterns for u in braceexpand.braceexpand(p)]
    local = [(u, data_root(u)) for u in urls if not _is_remote(u)]
    missing = [path for _, path in local if not os.path.isfile(path)]
    if not urls or len(missing) == len(urls):
        raise ConfigError(f"shard pattern {spec!r} matches no file (first tried: {missing[0] if missing else spec})")
    if missing:
        raise ConfigError(f"{len(missing)} of {len(urls)} shards of {spec!r} do not exist, e.g. {missing[0]}")
    resolved = dict(local)
    return [resolved.get(u, u) for u in urls]


def _is_remote(url: str) -> bool:
    return url.startswith("pipe:") or "://" in url


def shard_key(name: str) -> Tuple[str, str]:
    """``dir/000123.jpg`` -> (``dir/000123``, ``jpg``): the key is everything before the first dot of the
    file name (img2dataset and webdataset's convention)."""
    folder, base = os.path.split(name)
    stem, _, ext = base.partition(".")
    return os.path.join(folder, stem), ext.lower()


def iter_shard(url: str, on_truncated: Callable[[str, Exception], None]) -> Iterator[Dict[str, bytes]]:
    """The samples of one shard in file order: ``{"__key__", "__url__", ext: bytes, ...}``.

    A shard that ends early (truncated, corrupt header) yields what it had and reports through
    ``on_truncated``; a failing ``pipe:`` command or an unreadable file is a :class:`ShardReadError`."""
    from webdataset import gopen

    try:
        stream = gopen(url, "rb")
    except Exception as err:  # noqa: BLE001 - any opener failure names the URL
        raise ShardReadError(f"cannot open shard {url}: {err}") from err
    current: Optional[Dict[str, Any]] = None
    completed = False
    tail = _Tail(stream)
    try:
        with tarfile.open(fileobj=tail, mode="r|*") as tar:
            for member in tar:
                if not member.isreg():
                    continue
                key, ext = shard_key(member.name)
                data = tar.extractfile(member).read()
                if len(data) != member.size:
                    raise tarfile.ReadError(f"{member.name}: {len(data)} of {member.size} bytes")
                if current is not None and current["__key__"] != key:
                    yield current
                    current = None
                if current is None:
                    current = {"__key__": key, "__url__": url}
                current[ext] = data
        while tail.read(1 << 16):  # the rest of the end-of-archive padding
            pass
        if not tail.ends_with_zero_blocks():
            # tarfile takes a file that stops at a header boundary for a complete archive; a complete one
            # ends with two zero blocks
            raise tarfile.ReadError("no end-of-archive marker: the shard ends early")
        completed = True
    except (tarfile.TarError, EOFError, OSError, ValueError) as err:
        if isinstance(err, OSError) and url.startswith("pipe:"):
            raise ShardReadError(f"shard command failed: {url}: {err}") from err
        on_truncated(url, err)
        current = None  # its members are incomplete
        completed = True
    finally:
        try:
            stream.close()
        except Exception as err:  # noqa: BLE001 - webdataset's Pipe raises on a non-zero exit status
            if completed:  # not when the reader left early (a reset): the command was cut off on purpose
                raise ShardReadError(f"shard command failed: {url}: {err}") from err
    if current is not None:
        yield current


class _Tail:
    """A read-only stream that remembers its last 1024 bytes (to see a tar file's end-of-archive marker)."""

    def __init__(self, stream):
        self.stream, self.tail = stream, b""

    def read(self, n: int = -1) -> bytes:
        data = self.stream.read(n)
        if data:
            self.tail = (self.tail + data)[-1024:]
        return data

    def ends_with_zero_blocks(self) -> bool:
        return len(self.tail) == 1024 and not any(self.tail)


def sample_id(url: str, key: str) -> int:
    """A stable non-negative int63 for (shard, key): the ``index`` of the sample (retrieval's image id)."""
    return int.from_bytes(hashlib.sha1(f"{url}#{key}".encode()).digest()[:8], "little") >> 1


def first_of(sample: Dict[str, Any], exts) -> Optional[bytes]:
    return next((sample[e] for e in exts if e in sample), None)


class ShardDataset(IterableDataset):
    """Samples of a shard list, shaped like the file readers' training samples:

    * ``kind="pairs"``: ``{"image", "caption", "image_id", "index"}`` (caption from ``.txt``, else the
      ``caption`` field of ``.json``);
    * ``kind="label"``: ``{"image", "label", "image_id", "index"}`` (label from ``.cls``, else the ``label`` /
      ``cls`` field of ``.json``).

    Training iterates it through :meth:`stream` (the trainer's ``TaskStream`` does); plain ``iter()`` is one
    unshuffled pass over every shard.
    """

    def __init__(self, urls: List[str], *, kind: str, transform: Optional[Callable] = None, resampled: bool = False,
                 shuffle_buffer: int = 0, max_bad_fraction: float = 0.01, name: str = ""):
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        self.urls, self.kind, self.transform = list(urls), kind, transform
        self.resampled, self.shuffle_buffer = bool(resampled), max(1, int(shuffle_buffer))
        self.max_bad_fraction, self.name = float(max_bad_fraction), name or "shards"
        self._filters: List[Tuple[Callable[[dict], bool], str]] = []
        self.counts: Dict[str, int] = {}
        self.num_read = 0
        self.max_image_pixels = DEFAULT_MAX_IMAGE_PIXELS  # larger images are bad samples (DATALOADER.MAX_IMAGE_PIXELS)

    # The file readers' interface where it makes sense for a stream.
    def drop_records(self, bad: Callable[[dict], bool], reason: str, path: str = "") -> int:
        """Skip samples for which ``bad(sample)`` holds, counted under ``reason`` (checked as they are read)."""
        self._filters.append((bad, reason))
        return 0

    def check_workers(self, world_size: int, workers: int) -> None:
        """Every logical worker needs a shard of its own unless shards are drawn with replacement."""
        n = world_size * max(1, workers)
        if not self.resampled and len(self.urls) < n:
            raise ConfigError(
                f"{self.name}: {len(self.urls)} shards for {world_size} ranks x {max(1, workers)} workers = {n} "
                f"readers; every reader needs its own shard: write more, smaller shards (tools/make_shards.py "
                f"--shard-size), lower DATALOADER.NUM_WORKERS, or set DATALOADER.SHARD_RESAMPLED True")

    # -------------------------------------------------------------------------------------------- positions
    def pass_shards(self, seed: int, worker: int, num_workers: int, pass_: int) -> List[str]:
        """The shards logical worker ``worker`` of ``num_workers`` reads in pass ``pass_``."""
        if self.resampled:
            g = torch.Generator().manual_seed(derive_seed(seed, worker, pass_, RngStream.SHARD_RESAMPLE))
            return [self.urls[int(torch.randint(len(self.urls), (1,), generator=g))]]
        g = torch.Generator().manual_seed(derive_seed(seed, pass_, RngStream.SHARD_ORDER))
        perm = torch.randperm(len(self.urls), generator=g).tolist()
        return [self.urls[i] for i in perm[worker::num_workers]]

    def _raw(self, seed: int, worker: int, num_workers: int, pos: Dict[str, int]) -> Iterator[Tuple[dict, dict]]:
        """Raw samples from ``pos`` on, each with the (pass, shard, offset) at which it was read."""
        pass_, shard, offset = pos["pass"], pos["shard"], pos["offset"]
        while True:
            shards = self.pass_shards(seed, worker, num_workers, pass_)
            while shard < len(shards):
                for i, sample in enumerate(iter_shard(shards[shard], self._truncated)):
                    if i >= offset:
                        yield sample, {"pass": pass_, "shard": shard, "offset": i}
                shard, offset = shard + 1, 0
            pass_, shard = pass_ + 1, 0

    def _chunks(self, seed: int, rank: int, worker: int, num_workers: int,
                pos: Dict[str, int]) -> Iterator[Tuple[Optional[dict], dict]]:
        """``(raw sample, position after it)`` in shuffled order, from position ``pos``."""
        raw = self._raw(seed, worker, num_workers, pos)
        chunk, skip = pos["chunk"], pos["emitted"]
        while True:
            items = [next(raw) for _ in range(self.shuffle_buffer)]
            start = items[0][1]
            g = torch.Generator().manual_seed(derive_seed(seed, rank, worker, chunk, RngStream.SHUFFLE_BUFFER))
            order = torch.randperm(len(items), generator=g).tolist() if self.shuffle_buffer > 1 else [0]
            for emitted, j in enumerate(order[skip:], skip + 1):
                after = dict(start, chunk=chunk, emitted=emitted)
                if emitted == len(order):  # the next chunk starts right after this one's last raw sample
                    nxt = items[-1][1]
                    after = {"pass": nxt["pass"], "shard": nxt["shard"], "offset": nxt["offset"] + 1,
                             "chunk": chunk + 1, "emitted": 0}
                yield items[j][0], after
            chunk, skip = chunk + 1, 0

    def stream(self, seed: int, rank: int, worker: int, num_workers: int,
               pos: Optional[Dict[str, int]] = None) -> Iterator[Tuple[Optional[dict], dict]]:
        """``(sample or None if bad, position after it)`` for logical worker ``worker`` (global index) of
        ``num_workers``; the transforms of the n-th entry of chunk c run under RNGs seeded from (seed, rank,
        worker, c, n)."""
        pos = dict(pos or start_position())
        for raw, after in self._chunks(seed, rank, worker, num_workers, pos):
            with seeded_rng(derive_seed(seed, rank, worker, after["chunk"], after["emitted"], RngStream.SAMPLE)):
                yield self.decode(raw), after

    def __iter__(self) -> Iterator[dict]:
        """One pass over the shards in list order, unshuffled (for tools; training uses :meth:`stream`)."""
        for url in self.urls:
            for raw in iter_shard(url, self._truncated):
                sample = self.decode(raw)
                if sample is not None:
                    yield sample

    # ------------------------------------------------------------------------------------------ decoding
    def decode(self, raw: dict) -> Optional[dict]:
        """The sample of a raw tar sample, or None (counted) when it is bad."""
        self.num_read += 1
        image = first_of(raw, IMAGE_EXTS)
        if image is None:
            return self._bad(raw, "no image member")
        sample = {"image_id": raw["__key__"], "index": sample_id(raw["__url__"], raw["__key__"])}
        meta = {}
        if "json" in raw:
            try:
                meta = json.loads(raw["json"].decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError):
                meta = {}
            meta = meta if isinstance(meta, dict) else {}
        if self.kind == "pairs":
            text = first_of(raw, TEXT_EXTS)
            caption = text.decode("utf-8", errors="replace") if text is not None else meta.get("caption")
            if not isinstance(caption, str) or not caption.strip():
                return self._bad(raw, "no caption (.txt)")
            sample["caption"] = caption.strip()
        else:
            cls = raw.get("cls")
            label = cls.decode("ascii", errors="replace").strip() if cls is not None else meta.get("label",
                                                                                                 meta.get("cls"))
            try:
                sample["label"] = int(label)
            except (TypeError, ValueError):
                return self._bad(raw, "no label (.cls)")
        for bad, reason in self._filters:
            if bad(sample):
                return self._bad(raw, reason)
        try:
            img = load_rgb(io.BytesIO(image), self.max_image_pixels)
        except Exception as err:  # noqa: BLE001 - whatever PIL raises on non-image bytes is a bad sample
            return self._bad(raw, f"not an image ({type(err).__name__})")
        sample["image"] = self.transform(img) if self.transform is not None else img
        return sample

    def _bad(self, raw: dict, reason: str) -> None:
        self._count(reason, f"{raw['__url__']}:{raw['__key__']}")
        return None

    def _truncated(self, url: str, err: Exception) -> None:
        self._count("truncated shard", f"{url} ({type(err).__name__}: {err})")

    def _count(self, reason: str, where: str) -> None:
        self.counts[reason] = self.counts.get(reason, 0) + 1
        bad = sum(self.counts.values())
        if bad <= 10 or bad % 100 == 0:
            logger.warning("%s: skipping %s: %s; %d bad of %d read", self.name, where, reason, bad, self.num_read)
        if self.num_read >= MIN_SAMPLES_FOR_FRACTION and bad > self.max_bad_fraction * self.num_read:
            reasons = ", ".join(f"{k}: {v}" for k, v in sorted(self.counts.items()))
            raise TooManyBadSamples(
                f"{self.name}: {bad} of {self.num_read} shard samples read so far are bad ({reasons}), more than "
                f"DATALOADER.MAX_BAD_FRACTION={self.max_bad_fraction}; last: {where}. Fix the shards or raise "
                f"the fraction.")


def start_position() -> Dict[str, int]:
    return {"pass": 0, "shard": 0, "offset": 0, "chunk": 0, "emitted": 0}


class ShardBatches(IterableDataset):
    """What a task's DataLoader iterates for a shard stream: ``(logical worker, position, batch)`` per batch.

    ``positions[w]`` is where logical worker ``w`` (of this rank) resumes; ``consumed`` batches were already
    taken, so physical worker ``p`` serves logical worker ``(p + consumed) mod W`` (module docstring)."""

    def __init__(self, dataset: ShardDataset, *, batch_size: int, collate_fn: Callable, seed: int, rank: int,
                 world_size: int, workers: int, positions: Dict[int, dict], consumed: int):
        self.dataset, self.batch_size, self.collate_fn = dataset, int(batch_size), collate_fn
        self.seed, self.rank, self.world_size = int(seed), int(rank), int(world_size)
        self.workers, self.positions, self.consumed = max(1, int(workers)), dict(positions), int(consumed)

    def __iter__(self):
        info = get_worker_info()
        physical = info.id if info is not None else 0
        local = (physical + self.consumed) % self.workers
        worker = self.rank * self.workers + local
        stream = self.dataset.stream(self.seed, self.rank, worker, self.world_size * self.workers,
                                     self.positions.get(local))
        batch: List[dict] = []
        for sample, after in stream:
            if sample is None:
                continue
            batch.append(sample)
            if len(batch) == self.batch_size:
                with seeded_rng(derive_seed(self.seed, self.rank, worker, after["chunk"], after["emitted"],
                                             RngStream.COLLATE)):
                    collated = self.collate_fn(batch)
                yield local, after, collated
                batch = []
