"""Model weights as safetensors: written by ``tools/convert_checkpoint.py --to safetensors``, read as MODEL.WEIGHTS.

A ``.safetensors`` file holds one state dict and nothing else (no optimizer, schedule or iteration), so it is a
weights file only: ``--resume`` and ``--eval-ema`` keep reading the ``.pth`` checkpoints.  Loading it goes
through the same strict key matching, MODEL.WEIGHTS_IGNORE and resize rules as a ``.pth``
(:meth:`Checkpointer.load_weights`).

Shared tensors: safetensors stores every tensor once and refuses names that share memory.  Names that are the
same view of one storage (tied weights) are written once, under the first name; the others are listed in the
metadata entry ``uniperceiver.aliases`` (JSON ``{alias: stored name}``) and restored on load, so the loaded
state dict has every key the model expects.  Distinct views of one storage are written as separate copies.
"""
from __future__ import annotations

import json
import os
import tempfile
from collections import defaultdict
from typing import Dict, Mapping, Optional, Tuple

import torch


def strip_prefix(state: Dict[str, torch.Tensor], prefix: str = "module.") -> Dict[str, torch.Tensor]:
    """``state`` without a DDP ``module.`` prefix that every key carries."""
    if state and all(k.startswith(prefix) for k in state):
        return {k[len(prefix):]: v for k, v in state.items()}
    return state

SUFFIX = ".safetensors"
ALIASES_KEY = "uniperceiver.aliases"


def is_safetensors(path: str) -> bool:
    return str(path).endswith(SUFFIX)


def _storage_key(t: torch.Tensor) -> Tuple:
    return (t.device.type, t.device.index, t.untyped_storage().data_ptr())


def dedupe_shared(state: Mapping[str, torch.Tensor]) -> Tuple[Dict[str, torch.Tensor], Dict[str, str]]:
    """(tensors to store, ``{alias: stored name}``): identical views are stored once; other tensors sharing a
    storage are cloned; everything contiguous, on CPU."""
    stored: Dict[str, torch.Tensor] = {}
    aliases: Dict[str, str] = {}
    first_name: Dict[Tuple, str] = {}
    for name, t in state.items():
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"state dict entry {name!r} is a {type(t).__name__}, not a tensor: safetensors "
                            f"holds tensors only")
        t = t.detach()
        if t.numel() > 0:
            view = _storage_key(t) + (t.storage_offset(), tuple(t.shape), tuple(t.stride()), t.dtype)
            if view in first_name:
                aliases[name] = first_name[view]
                continue
            first_name[view] = name
        stored[name] = t
    by_storage = defaultdict(list)
    for name, t in stored.items():
        if t.numel() > 0:
            by_storage[_storage_key(t)].append(name)
    out = {}
    for name, t in stored.items():
        shared = t.numel() > 0 and len(by_storage[_storage_key(t)]) > 1
        out[name] = (t.clone() if shared else t).contiguous().cpu()
    return out, aliases


def save_safetensors(state: Mapping[str, torch.Tensor], path: str,
                     metadata: Optional[Mapping[str, str]] = None) -> Dict[str, str]:
    """Write ``state`` to ``path`` atomically (shared tensors de-duplicated); returns the aliases."""
    from safetensors.torch import save_file

    tensors, aliases = dedupe_shared(state)
    meta = {"format": "pt", **{str(k): str(v) for k, v in (metadata or {}).items()}}
    if aliases:
        meta[ALIASES_KEY] = json.dumps(aliases, sort_keys=True)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=".tmp", dir=directory)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=meta)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return aliases


def read_metadata(path: str) -> Dict[str, str]:
    from safetensors import safe_open

    with safe_open(path, framework="pt", device="cpu") as f:
        return dict(f.metadata() or {})


def load_safetensors(path: str) -> Dict[str, torch.Tensor]:
    """The state dict in ``path`` (on CPU), aliases restored as the same tensor under each name."""
    from safetensors.torch import load_file

    state = load_file(path, device="cpu")
    aliases = json.loads(read_metadata(path).get(ALIASES_KEY, "{}"))
    for alias, name in aliases.items():
        if name not in state:
            raise ValueError(f"{path}: metadata alias {alias!r} -> {name!r} names no stored tensor")
        state[alias] = state[name]
    return state


def export_weights(data: Mapping[str, object], output: str, *, ema: bool = False, source: str = "") -> Dict[str, object]:
    """Write the weights of checkpoint ``data`` (a loaded ``.pth`` dict) to ``output`` (.safetensors).

    ``ema``: the ``model_ema`` average instead of ``model`` (the EMA keeps floating-point entries; integer
    buffers come from ``model``).  Returns ``{"tensors", "aliases", "weights"}``.  ValueError when ``ema`` is
    asked and the checkpoint has no average."""
    model = strip_prefix(dict(data["model"]))
    if ema:
        if not isinstance(data.get("model_ema"), Mapping) or "model" not in data["model_ema"]:
            raise ValueError(f"{source or 'the checkpoint'} has no model_ema weights (train with MODEL.MODEL_EMA "
                             f"True), so there is nothing for --ema to export")
        model = {**model, **strip_prefix(dict(data["model_ema"]["model"]))}
    metadata = {"uniperceiver.weights": "model_ema" if ema else "model"}
    if source:
        metadata["uniperceiver.source"] = os.path.basename(source)
    if "iteration" in data:
        metadata["uniperceiver.iteration"] = str(int(data["iteration"]))
    aliases = save_safetensors(model, output, metadata)
    return {"tensors": len(model) - len(aliases), "aliases": aliases, "weights": metadata["uniperceiver.weights"]}
