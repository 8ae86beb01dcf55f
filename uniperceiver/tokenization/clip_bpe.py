"""CLIP byte-level BPE text tokenizer with Uni-Perceiver's special tokens (49411 ids in all).

Ids 0..49405 are CLIP's BPE vocabulary (256 byte symbols, the same 256 with an end-of-word marker, then
48894 merges); then ``<|startoftext|>`` 49406, ``<|endoftext|>`` 49407, ``<|mask|>`` 49408, ``<|gen|>`` 49409
and ``<|spe|>`` 49410, the ordering of the published Uni-Perceiver vocabulary.  The merges file is the one
``open_clip_torch`` ships (``bpe_simple_vocab_16e6.txt.gz``); it is located on disk without importing
``open_clip`` (which would pull in torchvision models and hub code).
"""
from __future__ import annotations

import gzip
import html
import importlib.util
import os
from functools import lru_cache
from typing import Dict, Iterable, List, Sequence, Tuple, Union

import ftfy
import numpy as np
import regex
import torch

BPE_FILE_NAME = "bpe_simple_vocab_16e6.txt.gz"
NUM_MERGES = 49152 - 256 - 2  # CLIP uses the first 48894 merges of the file
BPE_VOCAB_SIZE = 2 * 256 + NUM_MERGES  # 49406
SPECIAL_TOKENS = ("<|startoftext|>", "<|endoftext|>", "<|mask|>", "<|gen|>", "<|spe|>")
SOT_ID, EOT_ID, MASK_ID, GEN_ID, SPE_ID = range(BPE_VOCAB_SIZE, BPE_VOCAB_SIZE + len(SPECIAL_TOKENS))
VOCAB_SIZE = BPE_VOCAB_SIZE + len(SPECIAL_TOKENS)  # 49411

_END_OF_WORD = "</w>"


def default_bpe_path() -> str:
    """Path of the BPE merges file shipped inside the installed ``open_clip`` package (not imported)."""
    spec = importlib.util.find_spec("open_clip")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for folder in locations:
        path = os.path.join(folder, BPE_FILE_NAME)
        if os.path.isfile(path):
            return path
    raise FileNotFoundError(
        f"{BPE_FILE_NAME} not found: install open-clip-torch (it ships the CLIP BPE merges file); "
        f"searched {locations or 'no open_clip package'}"
    )


def _byte_symbols() -> Tuple[List[str], Dict[int, str]]:
    """One printable unicode character per byte value 0..255, so BPE never sees whitespace/control bytes.

    Bytes that are already printable Latin-1 characters map to themselves; the rest are shifted to code
    points from 256 upwards, in byte order."""
    printable = set(range(ord("!"), ord("~") + 1))
    printable |= set(range(ord("\u00a1"), ord("\u00ac") + 1))
    printable |= set(range(ord("\u00ae"), ord("\u00ff") + 1))
    symbols = {b: chr(b) for b in printable}
    shift = 0
    for b in range(256):
        if b not in symbols:
            symbols[b] = chr(256 + shift)
            shift += 1
    # CLIP orders the byte vocabulary as: the printable bytes ascending, then the shifted ones ascending.
    ordered = sorted(printable) + [b for b in range(256) if b not in printable]
    return [symbols[b] for b in ordered], symbols


def _clean(text: str) -> str:
    """CLIP's normalisation: fix mojibake, unescape HTML twice, collapse whitespace, lower-case.

    Printable ASCII without ``&`` (most captions and words) skips ftfy and the unescaping: none of their steps
    changes such text (mojibake, ligatures, wide or curly characters and C1 controls are non-ASCII; control
    characters, terminal escapes and line breaks are not printable; entities need ``&``), and ftfy is about half
    the cost of encoding a new caption.  ``tests/test_data_fastpath.py`` checks the two paths agree."""
    if not (text.isascii() and text.isprintable() and "&" not in text):
        text = html.unescape(html.unescape(ftfy.fix_text(text)))
    return " ".join(text.split()).lower()


TEXT_CACHE_SIZE = 1_000_000  # texts whose ids are kept (a caption: ~20 ints); beyond it, encoded each time


class ClipTokenizer:
    """CLIP BPE over bytes, plus the five special tokens of :data:`SPECIAL_TOKENS`.

    ``encode`` cleans and lower-cases text; special tokens written literally in the text (``<|mask|>``...)
    become their ids.  ``tokenize`` packs a batch into fixed-length id / mask tensors."""

    def __init__(self, bpe_path: str = ""):
        bpe_path = bpe_path or default_bpe_path()
        with gzip.open(bpe_path, "rt", encoding="utf-8") as f:
            lines = f.read().split("\n")
        merges = [tuple(line.split()) for line in lines[1 : NUM_MERGES + 1]]  # line 0 is a version header
        byte_vocab, byte_to_symbol = _byte_symbols()
        vocab = byte_vocab + [s + _END_OF_WORD for s in byte_vocab] + ["".join(m) for m in merges]
        vocab += list(SPECIAL_TOKENS)
        if len(vocab) != VOCAB_SIZE:
            raise ValueError(f"{bpe_path}: expected {VOCAB_SIZE} tokens, built {len(vocab)}")
        self.token_to_id: Dict[str, int] = {tok: i for i, tok in enumerate(vocab)}
        self.id_to_token: List[str] = vocab
        self.merge_rank: Dict[Tuple[str, str], int] = {pair: i for i, pair in enumerate(merges)}
        self.byte_to_symbol = byte_to_symbol
        self.symbol_to_byte = {s: b for b, s in byte_to_symbol.items()}
        specials = "|".join(regex.escape(t) for t in SPECIAL_TOKENS)
        # Special tokens; common English contractions; runs of letters; single digits; runs of other symbols.
        self.pattern = regex.compile(
            specials + r"""|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""", regex.IGNORECASE
        )
        self._word_cache: Dict[str, List[int]] = {}
        self._text_cache: Dict[str, List[int]] = {}
        self.sot_id, self.eot_id, self.mask_id, self.gen_id, self.spe_id = (
            self.token_to_id[t] for t in SPECIAL_TOKENS
        )
        self.vocab_size = len(vocab)

    # ---------------------------------------------------------------------------------------------- BPE
    def _bpe_word(self, word: str) -> List[int]:
        """Ids of one pre-tokenised word (already mapped to byte symbols), merging pairs by rank."""
        cached = self._word_cache.get(word)
        if cached is not None:
            return cached
        parts = list(word[:-1]) + [word[-1] + _END_OF_WORD]
        while len(parts) > 1:
            ranked = [(self.merge_rank.get(pair, NUM_MERGES), i) for i, pair in enumerate(zip(parts, parts[1:]))]
            best_rank = min(ranked)[0]
            if best_rank == NUM_MERGES:
                break
            first, second = next(p for p in zip(parts, parts[1:]) if self.merge_rank.get(p) == best_rank)
            merged: List[str] = []
            i = 0
            while i < len(parts):  # merge every non-overlapping occurrence, left to right
                if i + 1 < len(parts) and parts[i] == first and parts[i + 1] == second:
                    merged.append(first + second)
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            parts = merged
        ids = [self.token_to_id[p] for p in parts]
        if len(self._word_cache) < 200_000:
            self._word_cache[word] = ids
        return ids

    # ------------------------------------------------------------------------------------------- public
    def encode(self, text: str) -> List[int]:
        """Token ids of ``text`` (no start/end tokens added).  Texts seen before come from a cache (captions and
        sentences repeat every epoch; cleaning + BPE of a caption costs far more than the lookup)."""
        return list(self._cached_encode(text))

    def _cached_encode(self, text: str) -> List[int]:
        """:meth:`encode`'s list itself, from the cache: callers must not modify it."""
        cached = self._text_cache.get(text)
        if cached is None:
            cached = self._encode(text)
            if len(self._text_cache) < TEXT_CACHE_SIZE:
                self._text_cache[text] = cached
        return cached

    def _encode(self, text: str) -> List[int]:
        ids: List[int] = []
        for piece in self.pattern.findall(_clean(text)):
            special = self.token_to_id.get(piece) if piece.startswith("<|") else None
            if special is not None and special >= BPE_VOCAB_SIZE:
                ids.append(special)
                continue
            word = "".join(self.byte_to_symbol[b] for b in piece.encode("utf-8"))
            ids.extend(self._bpe_word(word))
        return ids

    def decode(self, ids: Iterable[int], skip_special: bool = False) -> str:
        """Text of ``ids``; end-of-word markers become spaces.  ``skip_special`` drops the special tokens."""
        chunks: List[str] = []
        data = bytearray()
        for i in ids:
            i = int(i)
            if i >= BPE_VOCAB_SIZE:
                if data:
                    chunks.append(data.decode("utf-8", errors="replace"))
                    data = bytearray()
                if not skip_special:
                    chunks.append(self.id_to_token[i] + " ")
                continue
            token = self.id_to_token[i]
            end = token.endswith(_END_OF_WORD)
            if end:
                token = token[: -len(_END_OF_WORD)]
            data.extend(self.symbol_to_byte[c] for c in token)
            if end:
                data.extend(b" ")
        if data:
            chunks.append(data.decode("utf-8", errors="replace"))
        return "".join(chunks).strip()

    def tokenize(
        self,
        texts: Union[str, Sequence[str]],
        context_length: int = 77,
        add_sot: bool = False,
        add_eot: bool = False,
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Pack ``texts`` into ``(ids [N, context_length] long, mask [N, context_length] bool)``.

        Ids are right-padded with 0 (mask False); too-long texts are cut to ``context_length`` (keeping
        the end token when ``add_eot``).  No ``<|spe|>`` is added: the model prepends it."""
        if isinstance(texts, str):
            texts = [texts]
        flat, lengths = [], []  # the padded rows, one after the other: numpy packs a flat list of ints fastest
        for text in texts:
            tokens = self._cached_encode(text)  # not modified: every step below makes a new list
            if add_sot:
                tokens = [self.sot_id] + tokens
            if add_eot:
                tokens = tokens[: context_length - 1] + [self.eot_id]
            tokens = tokens[:context_length]
            lengths.append(len(tokens))
            flat += tokens
            flat += [0] * (context_length - len(tokens))
        ids = torch.from_numpy(np.array(flat, dtype=np.int64).reshape(len(lengths), context_length))
        mask = torch.from_numpy(np.arange(context_length) < np.array(lengths, dtype=np.int64).reshape(-1, 1))
        return ids, mask

    def __len__(self) -> int:
        return self.vocab_size


@lru_cache(maxsize=None)
def get_tokenizer(bpe_path: str = "") -> ClipTokenizer:
    """The process-wide tokenizer (built once: reading the merges file takes a fraction of a second)."""
    return ClipTokenizer(bpe_path)
