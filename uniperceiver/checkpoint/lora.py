"""Folding LoRA adapters into a plain checkpoint file (tools/merge_lora.py, ``convert_checkpoint.py --from lora``)."""
from __future__ import annotations

import os
from typing import Dict

import torch

from uniperceiver.modeling.lora import merge_lora_state_dict

from .checkpointer import load_checkpoint_file


def merge_lora_checkpoint(src: str, dst: str) -> Dict[str, torch.Tensor]:
    """Read checkpoint ``src`` (weights only), write ``{"model": merged state}`` to ``dst`` atomically (no
    optimizer or trainer state).  Returns the merged state dict."""
    state = load_checkpoint_file(src)["model"]
    if not any(k.endswith(".lora_A") for k in state):
        raise ValueError(f"{src} holds no LoRA weights (no '*.lora_A' entries)")
    merged = merge_lora_state_dict(state)
    os.makedirs(os.path.dirname(os.path.abspath(dst)), exist_ok=True)
    tmp = dst + ".tmp"
    torch.save({"model": merged}, tmp)
    os.replace(tmp, dst)
    return merged
