"""BooksWiki-style plain text for masked language modelling.

A corpus is a ``.txt`` file (or a folder of them): one paragraph or sentence per line, documents separated by
blank lines.  The reader indexes line offsets only (8 bytes a line, so BooksWiki-size files fit), and a sample
is a line plus the following lines of the same document until ``max_words`` words are collected.  With a
``cache_dir`` the index is saved there (``text_index/<hash>.npz``, keyed by the files' paths, sizes and
modification times), so later runs and other ranks skip the scan.
"""
from __future__ import annotations

import hashlib
import os
from collections import OrderedDict
from typing import List, Optional, Tuple

import numpy as np
import torch

from .base import AnnotationFileError, check_annotation_file


def _corpus_files(path: str, config_key: str) -> List[str]:
    if os.path.isdir(path):
        files = sorted(os.path.join(path, f) for f in os.listdir(path) if f.endswith(".txt"))
        if not files:
            raise FileNotFoundError(f"{path} (set by {config_key}) holds no .txt files")
        return files
    return [check_annotation_file(path, config_key)]


class TextCorpusDataset(torch.utils.data.Dataset):
    """Samples ``{"text": str, "index": int}``; ``max_words`` words at most per sample."""

    def __init__(self, path: str, *, max_words: int = 128, config_key: str = "DATASETS.TRAIN", name: str = "",
                 cache_dir: str = ""):
        self.files = _corpus_files(path, config_key)
        self.max_words = int(max_words)
        self.name = name or f"text:{path}"
        cache = self._cache_path(cache_dir)
        index = self._load_index(cache) if cache else None
        if index is None:
            index = self._scan()
            if cache:
                os.makedirs(os.path.dirname(cache), exist_ok=True)
                tmp = f"{cache}.tmp{os.getpid()}.npz"
                np.savez(tmp, file_ids=index[0], offsets=index[1], doc_end=index[2])
                os.replace(tmp, cache)
        self.file_ids, self.offsets, self.doc_end = index
        if not len(self.offsets):
            raise AnnotationFileError(f"{self.name}: the corpus holds no text (empty annotation file)")

    def _cache_path(self, cache_dir: str) -> str:
        if not cache_dir:
            return ""
        h = hashlib.sha1()
        for f in self.files:
            st = os.stat(f)
            h.update(f"{os.path.abspath(f)}|{st.st_size}|{st.st_mtime_ns};".encode())
        return os.path.join(cache_dir, "text_index", h.hexdigest()[:20] + ".npz")

    @staticmethod
    def _load_index(cache: str) -> Optional[Tuple[np.ndarray, np.ndarray, np.ndarray]]:
        try:
            with np.load(cache, allow_pickle=False) as data:
                return data["file_ids"], data["offsets"], data["doc_end"]
        except (OSError, KeyError, ValueError):
            return None

    def _scan(self) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(file id, byte offset, last-line-of-document flag) of every non-empty line."""
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
        return (np.asarray(file_ids, dtype=np.int32), np.asarray(offsets, dtype=np.int64),
                np.asarray(doc_end, dtype=bool))

    def __len__(self) -> int:
        return len(self.offsets)

    MAX_OPEN_FILES = 32  # corpus files kept open per process (least recently used closed first)

    def _open(self, file_id: int):
        """Corpus file ``file_id`` opened for reading, kept open for the next samples (an open per sample cost
        as much as reading its lines).  Per process: a forked worker opens its own, since a descriptor shared
        with the parent would share its seek position."""
        handles = self.__dict__.get("_handles")
        if handles is None or self._handles_pid != os.getpid():
            handles = self._handles = OrderedDict()
            self._handles_pid = os.getpid()
        f = handles.get(file_id)
        if f is None:
            if len(handles) >= self.MAX_OPEN_FILES:
                handles.popitem(last=False)[1].close()
            f = handles[file_id] = open(self.files[file_id], "rb")
        else:
            handles.move_to_end(file_id)
        return f

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state.pop("_handles", None)  # open files stay with their process
        return state

    def __getitem__(self, index: int) -> dict:
        words: List[str] = []
        i, file_id = index, self.file_ids[index]
        f = self._open(int(file_id))
        while i < len(self) and self.file_ids[i] == file_id and len(words) < self.max_words:
            f.seek(int(self.offsets[i]))
            words.extend(f.readline().decode("utf-8", errors="replace").split())
            if self.doc_end[i]:
                break
            i += 1
        return {"text": " ".join(words[: self.max_words]), "index": index}
