"""Environment helpers: seeding, a text report of the environment, and RNG state for checkpoints."""
from __future__ import annotations

import contextlib
import importlib.metadata
import logging
import os
import platform
import random
import subprocess
import sys
from enum import IntEnum
from typing import Any, Dict, List, Sequence

import numpy as np
import torch

logger = logging.getLogger(__name__)


def seed_all_rng(seed: int) -> int:
    """Seed python, numpy and torch.  ``seed < 0`` draws one from the OS.  Returns the seed used."""
    if seed is None or seed < 0:
        seed = int.from_bytes(os.urandom(4), "little") % (2**31)
        logger.info("Using a generated random seed %d", seed)
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    return seed


def git_hash(path: str = "") -> str:
    path = path or os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    try:
        out = subprocess.run(["git", "-C", path, "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             timeout=5)
        dirty = subprocess.run(["git", "-C", path, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5)
        if out.returncode != 0:
            return "unknown"
        return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _version(pkg: str) -> str:
    try:
        return importlib.metadata.version(pkg)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def collect_env_info() -> str:
    """Versions, devices, git hash and the world, one ``key: value`` per line."""
    from uniperceiver import __version__
    from uniperceiver.utils import comm

    rows = [
        ("uniperceiver", f"{__version__} (git {git_hash()})"),
        ("python", sys.version.replace("\n", " ")),
        ("platform", platform.platform()),
        ("torch", torch.__version__),
        ("torch CUDA build", str(torch.version.cuda)),
        ("CUDA available", str(torch.cuda.is_available())),
    ]
    if torch.cuda.is_available():
        rows.append(("GPUs", ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))))
    for pkg in ("torchvision", "numpy", "fvcore", "timm", "yacs", "deepspeed"):
        rows.append((pkg, _version(pkg)))
    rows.append(("world", f"rank {comm.get_rank()} / world size {comm.get_world_size()}, "
                          f"local rank {comm.get_local_rank()} / local size {comm.get_local_size()}"))
    if comm.is_dist():
        rows.append(("backend", torch.distributed.get_backend()))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)


class RNGState:
    """Checkpointable RNG state of python / numpy / torch (+ CUDA) of EVERY rank.

    ``state_dict`` is collective (all ranks gather to all); the result holds only tensors and plain types so
    ``torch.load(..., weights_only=True)`` reads it.  ``load_state_dict`` restores this rank's entry (rank
    modulo the saved world size when the world changed).
    """

    def state_dict(self) -> Dict[str, Any]:
        from uniperceiver.utils import comm

        return {"ranks": comm.all_gather(_local_rng_state())}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        from uniperceiver.utils import comm

        ranks = state.get("ranks", [])
        if not ranks:
            return
        if len(ranks) != comm.get_world_size():
            logger.warning("RNG state saved with %d ranks, restoring in %d; ranks reuse states modulo",
                           len(ranks), comm.get_world_size())
        _set_local_rng_state(ranks[comm.get_rank() % len(ranks)])


def _local_rng_state() -> Dict[str, Any]:
    version, internal, gauss = random.getstate()
    np_state = np.random.get_state()
    state = {
        "python": {"version": int(version), "state": torch.tensor(internal, dtype=torch.int64),
                   "gauss": None if gauss is None else float(gauss)},
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_local_rng_state(state: Dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((py["version"], tuple(int(x) for x in py["state"].tolist()), py["gauss"]))
    npst = state["numpy"]
    np.random.set_state(("MT19937", npst["keys"].numpy().astype(np.uint32), npst["pos"], npst["has_gauss"],
                         npst["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


class RngStream(IntEnum):
    """The last part of every :func:`derive_seed` call: which kind of random decision a seed is for, so two
    kinds drawn at the same position never share numbers.  The values are part of the run's reproducibility
    (a resumed run, and runs of earlier versions, draw the same numbers): never renumber; add new ones."""

    SAMPLE = 1  # a sample's transforms (augmentation, MLM masking): (seed, rank, position) / shards (.., chunk, n)
    COLLATE = 2  # a batch's collate: (seed, rank, batch position) / shards (seed, rank, worker, chunk, n)
    STEP = 3  # the global RNGs before each training step (StepSeed): (seed, rank, iteration)
    SHARD_RESAMPLE = 5  # the shard a worker reads in a pass, drawn with replacement: (seed, worker, pass)
    SHARD_ORDER = 6  # the shard permutation of a pass, split over workers: (seed, pass)
    SHUFFLE_BUFFER = 7  # the order within a shuffle-buffer chunk: (seed, rank, worker, chunk)


def derive_seed(*parts: int) -> int:
    """A seed in [0, 2**31) mixed from non-negative ints (numpy SeedSequence): e.g. (seed, rank, position,
    stream), the last part a :class:`RngStream`.

    Used to seed each random decision from WHERE it happens (sample position, iteration) instead of from the
    process's RNG history, so a resumed run, any NUM_WORKERS and any prefetch depth draw the same numbers."""
    return _seed_sequence_seed(parts)


# numpy's SeedSequence (a port of O'Neill's seed_seq_fe): hash constants, multipliers and the shift.
_SS_INIT_A, _SS_MULT_A, _SS_INIT_B, _SS_MULT_B = 0x43B0D7E5, 0x931E8875, 0x8B51F9DD, 0x58F38DED
_SS_MASK, _SS_MIX_L_INT, _SS_MIX_R_INT = 0xFFFFFFFF, 0xCA01F9DD, 0x4973F715
_SS_OUT_MUL_INT = (_SS_INIT_B * _SS_MULT_B) & _SS_MASK
_SS_POOL, _SS_MAX_WORDS = 4, 16  # pool size; entropy words handled vectorised (more: hashed row by row)


def _hash_constants(words: int) -> List[int]:
    """The hashmix constants of SeedSequence's mixing of ``words`` entropy words: hashmix k xors with constant
    k and multiplies by constant k + 1 (INIT_A * MULT_A**k mod 2**32)."""
    count = _SS_POOL + _SS_POOL * (_SS_POOL - 1) + _SS_POOL * max(0, words - _SS_POOL) + 1
    return [(_SS_INIT_A * pow(_SS_MULT_A, k, 2**32)) & _SS_MASK for k in range(count)]


_SS_HASH_INT = _hash_constants(_SS_MAX_WORDS)
# the same as numpy scalars, for the vectorised hash (uint32 arithmetic wraps like the C code)
_SS_HASH = [np.uint32(c) for c in _SS_HASH_INT]
_SS_MIX_L, _SS_MIX_R, _SS_SHIFT = np.uint32(_SS_MIX_L_INT), np.uint32(_SS_MIX_R_INT), np.uint32(16)
_SS_OUT_XOR, _SS_OUT_MUL = np.uint32(_SS_INIT_B), np.uint32(_SS_OUT_MUL_INT)


def _seed_sequence_seed(parts: Sequence[int]) -> int:
    """``SeedSequence([p % 2**63 for p in parts]).generate_state(1)[0] % 2**31`` in python ints: the same hashing
    (each part split into little-endian 32-bit words, as numpy does) without building a SeedSequence, whose
    construction costs ~15 us alone and over 100 us between two training steps."""
    words: List[int] = []
    for p in parts:
        p = int(p) % (2**63)
        words.append(p & _SS_MASK)
        while p > _SS_MASK:
            p >>= 32
            words.append(p & _SS_MASK)
    consts = _SS_HASH_INT if len(words) <= _SS_MAX_WORDS else _hash_constants(len(words))
    mask, left, right = _SS_MASK, _SS_MIX_L_INT, _SS_MIX_R_INT
    pool = []
    for k in range(_SS_POOL):  # hashmix k of word k (0 past the end)
        v = ((words[k] if k < len(words) else 0) ^ consts[k]) * consts[k + 1] & mask
        pool.append(v ^ (v >> 16))
    k = _SS_POOL
    sources = [(src, None) for src in range(_SS_POOL)] + [(None, word) for word in words[_SS_POOL:]]
    for src, word in sources:
        for dst in range(_SS_POOL):
            if src == dst:
                continue
            v = ((pool[src] if word is None else word) ^ consts[k]) * consts[k + 1] & mask  # hashmix
            v ^= v >> 16
            k += 1
            r = (left * pool[dst] - right * v) & mask  # mix
            pool[dst] = r ^ (r >> 16)
    v = ((pool[0] ^ _SS_INIT_B) * _SS_OUT_MUL_INT) & mask
    return (v ^ (v >> 16)) % (2**31)


def derive_seeds(rows: Sequence[Sequence[int]]) -> List[int]:
    """``[derive_seed(*row) for row in rows]``, vectorised over the rows: numpy's SeedSequence hashing on uint32
    arrays (one pass over a batch instead of one SeedSequence per sample; ``tests/test_data_fastpath.py``
    checks it against ``derive_seed``).  Rows of other lengths, or with a part outside [0, 2**32), are hashed one
    by one."""
    lengths = {len(row) for row in rows}
    if len(lengths) == 1 and 0 < next(iter(lengths)) <= _SS_MAX_WORDS:
        try:
            words = np.asarray(rows, dtype=np.int64)
        except OverflowError:
            words = None
        if words is not None and (words >= 0).all() and (words < 2**32).all():
            return (_seed_sequence_first_word(words.astype(np.uint32)) % np.uint32(2**31)).tolist()
    return [_seed_sequence_seed(row) for row in rows]


def _seed_sequence_first_word(entropy: np.ndarray) -> np.ndarray:
    """``SeedSequence(row).generate_state(1)[0]`` for each row of ``entropy`` (uint32 [n, words])."""
    step = iter(range(len(_SS_HASH) - 1))

    def hashmix(value: np.ndarray) -> np.ndarray:
        k = next(step)
        value = value ^ _SS_HASH[k]
        value *= _SS_HASH[k + 1]
        value ^= value >> _SS_SHIFT
        return value

    def mix(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        result = _SS_MIX_L * x
        result -= _SS_MIX_R * y
        result ^= result >> _SS_SHIFT
        return result

    n, words = entropy.shape
    zero = np.zeros(n, dtype=np.uint32)
    pool = [hashmix(entropy[:, i] if i < words else zero) for i in range(_SS_POOL)]
    for src in range(_SS_POOL):
        for dst in range(_SS_POOL):
            if src != dst:
                pool[dst] = mix(pool[dst], hashmix(pool[src]))
    for src in range(_SS_POOL, words):
        for dst in range(_SS_POOL):
            pool[dst] = mix(pool[dst], hashmix(entropy[:, src]))
    value = pool[0] ^ _SS_OUT_XOR
    value *= _SS_OUT_MUL
    value ^= value >> _SS_SHIFT
    return value


@contextlib.contextmanager
def preserved_rng():
    """Run the block and restore the python / numpy / torch-CPU global RNG states after it."""
    py, npst, th = random.getstate(), np.random.get_state(), torch.get_rng_state()
    try:
        yield
    finally:
        random.setstate(py)
        np.random.set_state(npst)
        torch.set_rng_state(th)


def seed_cpu_rng(seed: int) -> None:
    """Seed the python / numpy / torch-CPU global RNGs with ``seed``."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.default_generator.manual_seed(seed)


@contextlib.contextmanager
def seeded_rng(seed: int):
    """Run the block with python / numpy / torch-CPU global RNGs seeded with ``seed``; restore them after."""
    with preserved_rng():
        seed_cpu_rng(seed)
        yield


def seed_step_rng(seed: int) -> None:
    """Seed python, numpy and torch (CPU and every CUDA device) for one training step: ``torch.manual_seed``'s
    effect on CPU and CUDA without its walk over every other backend (1.3 ms a call on a CPU-only machine)."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.default_generator.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
