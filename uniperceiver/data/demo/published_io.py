"""File helpers of the published-layout demo writers (published.py, published_tasks.py)."""
from __future__ import annotations

import os
import pickle
import shutil
from typing import Iterable, List

import torch


def link(src: str, dst: str) -> None:
    """Hard-link ``src`` at ``dst`` (a copy where links are not possible); an existing ``dst`` is kept (one image
    behind several records, as VQA questions)."""
    if os.path.exists(dst):
        return
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def dump_target_set(path: str, seqs: Iterable[List[int]]) -> None:
    """A tokenised target set as the published notebook pickles it: ``{"data": [LongTensor], "modality"}``."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump({"data": [torch.tensor(s, dtype=torch.long) for s in seqs], "modality": "text"}, f)
