"""BooksWiki-style plain text for masked language modelling.

A corpus is a ``.txt`` file (or a folder of them): one paragraph or sentence per line, documents separated by
blank lines.  The reader indexes line offsets only (8 bytes a line, so BooksWiki-size files fit), and a sample
is a line plus the following lines of the same document until ``max_words`` words are collected.
"""
from __future__ import annotations

import os
from typing import List

import numpy as np
import torch

from .base import check_annotation_file


def _corpus_files(path: str, config_key: str) -> List[str]:
    if os.path.isdir(path):
        files = sorted(os.path.join(path, f) for f in os.listdir(path) if f.endswith(".txt"))
        if not files:
            raise FileNotFoundError(f"{path} (set by {config_key}) holds no .txt files")
        return files
    return [check_annotation_file(path, config_key)]


class TextCorpusDataset(torch.utils.data.Dataset):
    """Samples ``{"text": str, "index": int}``; ``max_words`` words at most per sample."""

    def __init__(self, path: str, *, max_words: int = 128, config_key: str = "DATASETS.TRAIN", name: str = ""):
        self.files = _corpus_files(path, config_key)
        self.max_words = int(max_words)
        self.name = name or f"text:{path}"
        file_ids, offsets, doc_end = [], [], []
        for fid, fname in enumerate(self.files):
            pos = 0
            with open(fname, "rb") as f:
                for line in f:
                    if line.strip():
                        file_ids.append(fid)
                        offsets.append(pos)
                        doc_end.append(False)
                    elif doc_end:
                        doc_end[-1] = True
                    pos += len(line)
            if doc_end:
                doc_end[-1] = True
        if not offsets:
            raise ValueError(f"{self.name}: the corpus holds no text")
        self.file_ids = np.asarray(file_ids, dtype=np.int32)
        self.offsets = np.asarray(offsets, dtype=np.int64)
        self.doc_end = np.asarray(doc_end, dtype=bool)  # True: the last line of its document

    def __len__(self) -> int:
        return len(self.offsets)

    def __getitem__(self, index: int) -> dict:
        words: List[str] = []
        i = index
        with open(self.files[self.file_ids[index]], "rb") as f:
            while i < len(self) and self.file_ids[i] == self.file_ids[index] and len(words) < self.max_words:
                f.seek(int(self.offsets[i]))
                words.extend(f.readline().decode("utf-8", errors="replace").split())
                if self.doc_end[i]:
                    break
                i += 1
        return {"text": " ".join(words[: self.max_words]), "index": index}
