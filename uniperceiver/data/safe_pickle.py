"""Reading the published ``.pkl`` files (tokenised target sets, VQA answer maps) without running their code.

A pickle can name any importable callable and call it while loading, so :func:`load_pickle` reads one with an
unpickler that resolves only:

* plain Python values: containers (``dict``, ``list``, ``tuple``, ``set``, ``OrderedDict``...), numbers,
  strings, bytes (``_codecs.encode`` of Python-2-era bytes);
* numpy arrays, dtypes and scalars;
* torch tensors, storages and sizes, as ``torch.load(weights_only=True)`` allows them (a plainly pickled
  tensor's storage is read back through ``torch.load(..., weights_only=True)`` too).

Anything else (``os.system``, ``builtins.eval``, a class of some package...) raises :class:`UnsafePickleError`
naming the file and the refused global.  A ``torch.save`` zip file is read with ``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import collections
import io
import pickle
import zipfile
from typing import Any, Callable, Dict, Tuple

import numpy as np
import torch


class UnsafePickleError(pickle.UnpicklingError):
    """A pickle names a global outside the allowed set."""


def _storage_from_bytes(data: bytes):
    """What ``torch.storage._load_from_bytes`` does for a plainly pickled tensor, with weights_only."""
    return torch.load(io.BytesIO(data), weights_only=True)


def _allowed_globals() -> Dict[Tuple[str, str], Any]:
    allowed: Dict[Tuple[str, str], Any] = {}
    for obj in (set, frozenset, list, dict, tuple, int, float, complex, str, bytes, bytearray, bool, slice, range):
        allowed[("builtins", obj.__name__)] = obj
        allowed[("__builtin__", obj.__name__)] = obj  # Python 2 pickles
    allowed[("collections", "OrderedDict")] = collections.OrderedDict
    allowed[("collections", "defaultdict")] = collections.defaultdict
    allowed[("collections", "Counter")] = collections.Counter
    import _codecs

    allowed[("_codecs", "encode")] = _codecs.encode  # bytes in protocol-2 pickles: encode(str, "latin1")
    import importlib

    try:  # numpy 2 (numpy.core is a deprecated alias there); numpy 1.x has only numpy.core
        multiarray = importlib.import_module("numpy._core.multiarray")
    except ImportError:  # pragma: no cover
        multiarray = importlib.import_module("numpy.core.multiarray")
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):  # pickles name either
        allowed[(module, "_reconstruct")] = multiarray._reconstruct
        allowed[(module, "scalar")] = multiarray.scalar
    allowed[("numpy", "ndarray")] = np.ndarray
    allowed[("numpy", "dtype")] = np.dtype
    for name in ("int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64", "float16", "float32",
                 "float64", "bool_"):
        allowed[("numpy", name)] = getattr(np, name)
    allowed[("numpy.dtypes", "Int64DType")] = type(np.dtype("int64"))
    try:  # what torch.load(weights_only=True) accepts: tensor rebuilds, storages, torch.Size, dtypes ...
        from torch._weights_only_unpickler import _get_allowed_globals

        for full, obj in _get_allowed_globals().items():
            module, _, name = full.rpartition(".")
            allowed[(module, name)] = obj
    except ImportError:  # pragma: no cover - older torch: the two globals a pickled tensor needs
        allowed[("torch._utils", "_rebuild_tensor_v2")] = torch._utils._rebuild_tensor_v2
    allowed[("torch.storage", "_load_from_bytes")] = _storage_from_bytes
    return allowed


_ALLOWED: Dict[Tuple[str, str], Any] = {}


class RestrictedUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` whose ``find_class`` resolves only the allowed globals (module docstring)."""

    def __init__(self, file, *, path: str = "<pickle>", **kwargs):
        super().__init__(file, **kwargs)
        self.path = path

    def find_class(self, module: str, name: str) -> Callable:
        if not _ALLOWED:
            _ALLOWED.update(_allowed_globals())
        obj = _ALLOWED.get((module, name))
        if obj is None:
            raise UnsafePickleError(
                f"{self.path}: refusing to load pickle global {module}.{name} (only plain containers, numbers, "
                f"strings, numpy arrays and torch tensors are read from .pkl files)")
        return obj


def load_pickle(path: str, encoding: str = "latin1") -> Any:
    """The object in the pickle file ``path``, read with :class:`RestrictedUnpickler` (``torch.save`` zips with
    ``torch.load(weights_only=True)``).  ``encoding`` decodes Python-2 strings (as the published loaders'
    ``pickle.load(..., encoding=...)``)."""
    if zipfile.is_zipfile(path):
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            raise UnsafePickleError(f"{path}: {e}") from None
    with open(path, "rb") as f:
        try:
            return RestrictedUnpickler(f, path=path, encoding=encoding).load()
        except UnsafePickleError:
            raise
        except Exception as e:  # truncated / not a pickle
            raise ValueError(f"{path}: not a readable pickle ({type(e).__name__}: {e})") from None
