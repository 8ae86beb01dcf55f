"""Label sets (``SHARED_TARGETS``): the candidate sequences a task scores against, and their encodings.

A label set is one of (``SHARED_TARGETS_CFG.FILE_PATH``, relative to the data root):

* a class-name file (``.txt``): one name per line, line i = label i.  With ``TEMPLATES`` every name is
  wrapped in each template ("a photo of a {}."); the encodings of a class's templates are averaged.
* a token list (``.tokens``): one BPE token id per line (optionally followed by a tab and the token text),
  a subset of the vocabulary (e.g. the words occurring in a corpus, written by ``tools/build_target_set.py``).
* ``vocabulary``: every token of the CLIP BPE vocabulary plus ``<|endoftext|>`` (49407 entries);
* a published tokenised set (``.pkl``, e.g. ``imagenet_class_name_CLIP_with_endoftext.pkl``): token ids of each
  ``"<name> <|endoftext|>"``, read with the restricted unpickler of ``data/safe_pickle.py`` (TEMPLATES unused).

A vocabulary-style set keeps ``token_ids`` (entry i stands for token ``token_ids[i]``), so MLM / captioning
labels (token ids) map to entries with :meth:`LabelSet.entry_of`.  Tokenised sets are cached in
``CACHE_DIR/target_sets`` as tensors (``torch.save`` of a dict of tensors, read back with
``weights_only=True``), keyed by a hash of the file content, templates and tokenizer.

:class:`TargetEncoder` encodes a set with the model: the whole set (chunked; cached while gradients are off
and the weights are unchanged), or a sampled subset (``MODEL.VOCAB_NEGATIVES``) for a cheap training step.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import torch

from uniperceiver.config import ConfigError
from uniperceiver.utils import comm
from uniperceiver.utils.paths import get_cache_dir, resolve_data_path

logger = logging.getLogger(__name__)

VOCABULARY = "vocabulary"
TOKEN_LIST_SUFFIX = ".tokens"
PICKLE_SUFFIXES = (".pkl", ".pickle")  # published tokenised target sets (restricted unpickler)
_CACHE_FORMAT = 1
# Rows encoded per forward pass when a whole label set is encoded.
ENCODE_CHUNK = 4096


@dataclass
class LabelSet:
    """Candidate sequences: rows ``ids [N * T, Lt]`` / ``mask``, class-major (row ``c * T + t``)."""

    name: str
    ids: torch.Tensor
    mask: torch.Tensor
    num_templates: int = 1
    token_ids: Optional[torch.Tensor] = None  # [N] for vocabulary-style sets
    _entry_of: Optional[torch.Tensor] = field(default=None, repr=False)

    def __len__(self) -> int:
        return self.ids.shape[0] // self.num_templates

    @property
    def is_vocabulary(self) -> bool:
        return self.token_ids is not None

    def entry_of(self, token_ids: torch.Tensor) -> torch.Tensor:
        """Entry index of each token id (-1 where the token is not in the set); vocabulary sets only."""
        if self.token_ids is None:
            raise ValueError(f"label set {self.name!r} is a class-name set, not a vocabulary set")
        if self._entry_of is None:
            size = int(self.token_ids.max()) + 1
            table = torch.full((size,), -1, dtype=torch.long)
            table[self.token_ids] = torch.arange(len(self.token_ids))
            self._entry_of = table
        table = self._entry_of.to(token_ids.device)
        inside = (token_ids >= 0) & (token_ids < table.numel())
        return torch.where(inside, table[token_ids.clamp(0, table.numel() - 1)], torch.full_like(token_ids, -1))

    def rows(self, entries: torch.Tensor) -> torch.Tensor:
        """Row indices of ``entries`` (all templates, entry-major)."""
        t = self.num_templates
        return (entries[:, None] * t + torch.arange(t, device=entries.device)[None]).reshape(-1)


# --------------------------------------------------------------------------------------------- building
def full_vocabulary_ids(tokenizer) -> List[int]:
    """Every BPE token plus ``<|endoftext|>`` (what captioning must be able to predict to stop)."""
    bpe = min(tokenizer.sot_id, tokenizer.eot_id, tokenizer.mask_id, tokenizer.gen_id, tokenizer.spe_id)
    return list(range(bpe)) + [tokenizer.eot_id]


def read_token_list(path: str) -> List[int]:
    ids = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            field0 = line.split("\t", 1)[0].strip()
            if not field0:
                continue
            if not field0.isdigit():
                raise ValueError(f"{path}:{lineno}: expected a token id, got {field0!r}")
            ids.append(int(field0))
    if not ids:
        raise ValueError(f"{path}: empty token list")
    return ids


def write_token_list(path: str, token_ids: Iterable[int], tokenizer) -> None:
    """``id<TAB>token`` per line, sorted, written atomically."""
    ids = sorted(set(int(i) for i in token_ids))
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        for i in ids:
            f.write(f"{i}\t{tokenizer.id_to_token[i]}\n")
    os.replace(tmp, path)


def corpus_texts(path: str) -> Iterable[str]:
    """Texts of a corpus file: COCO-caption ``.json`` captions, ``.jsonl`` ``caption`` fields, else lines."""
    if path.endswith(".json"):
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        for ann in data["annotations"]:
            yield ann["caption"]
    elif path.endswith(".jsonl"):
        with open(path, encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    yield json.loads(line)["caption"]
    else:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.strip():
                    yield line


def corpus_token_subset(paths: Sequence[str], tokenizer) -> List[int]:
    """Sorted ids of every token occurring in the corpus files, plus ``<|endoftext|>``."""
    seen = {tokenizer.eot_id}
    for path in paths:
        for text in corpus_texts(path):
            seen.update(tokenizer.encode(text))
    return sorted(seen)


def _pack(seqs: List[List[int]], context_length: int) -> Tuple[torch.Tensor, torch.Tensor]:
    length = max(1, min(context_length, max(len(s) for s in seqs)))
    ids = torch.zeros(len(seqs), length, dtype=torch.long)
    mask = torch.zeros(len(seqs), length, dtype=torch.bool)
    for r, s in enumerate(seqs):
        s = s[:length]
        ids[r, : len(s)] = torch.tensor(s, dtype=torch.long)
        mask[r, : len(s)] = True
    return ids, mask


def tokenize_label_set(path: str, tokenizer, templates: Sequence[str] = (), context_length: int = 77) -> dict:
    """The tensors of a label set file (see the module docstring), without caching."""
    if path == VOCABULARY or path.endswith(TOKEN_LIST_SUFFIX):
        token_ids = full_vocabulary_ids(tokenizer) if path == VOCABULARY else read_token_list(path)
        bad = [i for i in token_ids if not 0 <= i < tokenizer.vocab_size]
        if bad:
            raise ValueError(f"{path}: token ids outside the vocabulary, e.g. {bad[:5]}")
        t = torch.tensor(token_ids, dtype=torch.long)
        return {"ids": t[:, None].clone(), "mask": torch.ones(len(t), 1, dtype=torch.bool), "token_ids": t,
                "num_templates": torch.tensor(1)}
    if path.endswith(PICKLE_SUFFIXES):
        return read_published_target_set(path, tokenizer, context_length)
    from uniperceiver.data.datasets import read_class_names

    names = read_class_names(path)
    templates = list(templates) or ["{}"]
    seqs = [tokenizer.encode(tpl.replace("{}", name)) for name in names for tpl in templates]
    ids, mask = _pack(seqs, context_length)
    return {"ids": ids, "mask": mask, "num_templates": torch.tensor(len(templates))}


def _id_list(value, path: str, where: str) -> List[int]:
    if isinstance(value, torch.Tensor):
        value = value.reshape(-1).tolist()
    elif hasattr(value, "tolist"):  # numpy array
        value = list(value.reshape(-1).tolist())
    if not isinstance(value, (list, tuple)) or not value or not all(isinstance(i, int) for i in value):
        raise ValueError(f"{path}: {where} is not a non-empty sequence of token ids")
    return [int(i) for i in value]


def read_published_target_set(path: str, tokenizer, context_length: int = 77) -> dict:
    """A published tokenised target set (``*_CLIP_with_endoftext.pkl``, tools/generate_target_sets.ipynb):
    ``{"data": [ids of "<name> <|endoftext|>"], "modality": "text"}``, read with the restricted unpickler.
    Entries may be lists of synonyms (ImageNet-22k): the first is used.  A set whose every entry is
    ``[token, <|endoftext|>]`` and that is large (>= 1000) or named ``vocabulary*`` is a vocabulary set
    (``token_ids`` = the first column), as the published ``vocabulary_CLIP_with_endoftext.pkl``."""
    from .safe_pickle import load_pickle

    data = load_pickle(path)
    entries = data.get("data") if isinstance(data, dict) else data
    if not isinstance(entries, (list, tuple)) or not entries:
        raise ValueError(f"{path}: expected a dict with a non-empty 'data' list of token-id sequences")
    seqs = []
    for i, entry in enumerate(entries):
        if isinstance(entry, (list, tuple)) and entry and not isinstance(entry[0], int):
            entry = entry[0]  # synonyms of one class
        seqs.append(_id_list(entry, path, f"entry {i}"))
    bad = sorted({t for s in seqs for t in s if not 0 <= t < tokenizer.vocab_size})
    if bad:
        raise ValueError(f"{path}: token ids outside the vocabulary, e.g. {bad[:5]}")
    ids, mask = _pack(seqs, context_length)
    out = {"ids": ids, "mask": mask, "num_templates": torch.tensor(1)}
    pairs = all(len(s) == 2 and s[1] == tokenizer.eot_id for s in seqs)
    if pairs and (len(seqs) >= 1000 or os.path.basename(path).lower().startswith("vocab")):
        out["token_ids"] = ids[:, 0].clone()
    return out


def _cache_key(path: str, templates: Sequence[str], context_length: int, tokenizer) -> str:
    h = hashlib.sha1()
    h.update(f"{_CACHE_FORMAT}|{tokenizer.vocab_size}|{context_length}|{list(templates)}|".encode())
    if path == VOCABULARY:
        h.update(b"vocabulary")
    else:
        with open(path, "rb") as f:
            h.update(f.read())
    return h.hexdigest()[:16]


def load_label_set(
    name: str, path: str, tokenizer, *, templates: Sequence[str] = (), cache_dir: str = "", context_length: int = 77
) -> LabelSet:
    """Tokenise (or read from the cache) the label set in ``path``; ``path`` absolute or ``vocabulary``."""
    if path != VOCABULARY and not os.path.isfile(path):
        raise ConfigError(f"label set {name!r}: file not found: {path} (SHARED_TARGETS.{name}.FILE_PATH)")
    data = None
    cache_file = ""
    if cache_dir:
        key = _cache_key(path, templates, context_length, tokenizer)
        safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in name)
        cache_file = os.path.join(cache_dir, "target_sets", f"{safe}-{key}.pt")
        if os.path.isfile(cache_file):
            try:
                data = torch.load(cache_file, map_location="cpu", weights_only=True)
            except Exception as e:  # a torn or foreign file: rebuild it
                logger.warning("label set cache %s unreadable (%s); rebuilding", cache_file, e)
    if data is None:
        data = tokenize_label_set(path, tokenizer, templates, context_length)
        if cache_file:
            os.makedirs(os.path.dirname(cache_file), exist_ok=True)
            tmp = f"{cache_file}.tmp{os.getpid()}"
            torch.save(data, tmp)
            os.replace(tmp, cache_file)
    return LabelSet(
        name=name, ids=data["ids"], mask=data["mask"], num_templates=int(data["num_templates"]),
        token_ids=data.get("token_ids"),
    )


def shared_target_node(cfg, name: str, used_by: str = ""):
    for node in cfg.SHARED_TARGETS:
        if node.NAME == name:
            return node
    known = ", ".join(n.NAME for n in cfg.SHARED_TARGETS) or "none"
    raise ConfigError(f"{used_by or 'DATASETS.TARGET_SET'} names label set {name!r}, not in SHARED_TARGETS ({known})")


def build_label_set(cfg, name: str, used_by: str = "") -> LabelSet:
    """The ``SHARED_TARGETS`` entry ``name`` of a config, tokenised and cached in ``CACHE_DIR``."""
    from uniperceiver.tokenization import get_tokenizer

    node = shared_target_node(cfg, name, used_by)
    file_path = node.SHARED_TARGETS_CFG.FILE_PATH
    if not file_path:
        raise ConfigError(f"SHARED_TARGETS.{name}.SHARED_TARGETS_CFG.FILE_PATH is empty")
    path = file_path if file_path == VOCABULARY else resolve_data_path(cfg, file_path)
    context = min(int(cfg.MODEL.MAX_POSITION_EMBEDDINGS), 77)
    return load_label_set(
        name, path, get_tokenizer(), templates=node.SHARED_TARGETS_CFG.TEMPLATES, cache_dir=get_cache_dir(cfg),
        context_length=context,
    )


# --------------------------------------------------------------------------------------------- encoding
def weights_version(model: torch.nn.Module) -> Tuple[int, int]:
    """Changes whenever a parameter is updated in place (optimizer steps, ``load_state_dict``)."""
    return id(model), sum(p._version for p in model.parameters())


def sample_entries(positives: torch.Tensor, num_entries: int, num_negatives: int,
                   generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """The distinct ``positives`` (entry indices >= 0) plus up to ``num_negatives`` other random entries;
    all entries when ``num_negatives <= 0`` or the set is small.  Positives come first."""
    pos = torch.unique(positives[positives >= 0].cpu())
    if num_negatives <= 0 or num_negatives >= num_entries - pos.numel():
        return torch.arange(num_entries)
    keep = torch.ones(num_entries, dtype=torch.bool)
    keep[pos] = False
    others = keep.nonzero().squeeze(1)
    pick = torch.randperm(others.numel(), generator=generator)[:num_negatives]
    return torch.cat([pos, others[pick]])


def remap(labels: torch.Tensor, entries: torch.Tensor, num_entries: int, ignore_index: int = -100) -> torch.Tensor:
    """Entry-index labels -> positions in ``entries`` (``ignore_index`` where absent or already ignored)."""
    lookup = torch.full((num_entries + 1,), ignore_index, dtype=torch.long, device=labels.device)
    lookup[entries.to(labels.device)] = torch.arange(entries.numel(), device=labels.device)
    safe = torch.where(labels >= 0, labels, torch.full_like(labels, num_entries))
    return lookup[safe]


class TargetEncoder:
    """Encodes a :class:`LabelSet` with ``model.encode_targets``.

    ``encode(model)`` returns ``[N, D]`` (templates averaged and re-normalised).  While gradients are off the
    result is cached until the weights change (``weights_version``) or :meth:`clear` is called.
    ``distributed``: in training each rank encodes 1/world of the rows and the parts are all-gathered with
    autograd (only valid when every rank runs the same task in the step: ``DATALOADER.STRATEGY synced``).
    """

    def __init__(self, label_set: LabelSet, *, distributed: bool = False, attributes: Optional[Dict] = None):
        self.label_set = label_set
        self.distributed = distributed
        self.attributes = attributes
        self._cache: Optional[Tuple[Tuple[int, int], torch.device, torch.Tensor]] = None
        self._device_chunks: Optional[Tuple[torch.device, List[Tuple[torch.Tensor, torch.Tensor]]]] = None

    def clear(self) -> None:
        self._cache = None

    def _chunks(self, rows: Optional[torch.Tensor], device: torch.device) -> List[Tuple[torch.Tensor, torch.Tensor]]:
        """``(ids, mask)`` chunks of ENCODE_CHUNK rows without their all-padding columns (measured on the host),
        on ``device``.  The whole set's chunks are made once per device (no per-step copy or device read)."""
        if rows is None and self._device_chunks is not None and self._device_chunks[0] == device:
            return self._device_chunks[1]
        ids, mask = self.label_set.ids, self.label_set.mask
        if rows is not None:
            ids, mask = ids[rows.cpu()], mask[rows.cpu()]
        chunks = []
        for start in range(0, ids.shape[0], ENCODE_CHUNK):
            m = mask[start : start + ENCODE_CHUNK]
            width = int(m.sum(1).max())  # drop all-padding columns of this chunk
            chunks.append((ids[start : start + ENCODE_CHUNK, :width].to(device), m[:, :width].to(device)))
        if rows is None:
            self._device_chunks = (device, chunks)
        return chunks

    def _encode_rows(self, model, rows: Optional[torch.Tensor], device: torch.device) -> torch.Tensor:
        parts = [model.encode_targets(i, m, attributes=self.attributes) for i, m in self._chunks(rows, device)]
        return torch.cat(parts, 0)

    def _merge_templates(self, feats: torch.Tensor) -> torch.Tensor:
        t = self.label_set.num_templates
        if t == 1:
            return feats
        return torch.nn.functional.normalize(feats.view(-1, t, feats.shape[-1]).mean(1), dim=-1)

    def encode(self, model, device: Optional[torch.device] = None) -> torch.Tensor:
        device = device or next(model.parameters()).device
        cacheable = not torch.is_grad_enabled()
        if cacheable and self._cache is not None:
            version, dev, feats = self._cache
            if version == weights_version(model) and dev == device:
                return feats
        world = comm.get_world_size()
        if self.distributed and world > 1 and torch.is_grad_enabled():
            n = self.label_set.ids.shape[0]
            per = -(-n // world)
            start = min(n, comm.get_rank() * per)
            rows = torch.arange(start, min(n, start + per))
            local = self._encode_rows(model, rows, device) if rows.numel() else None
            dim = model.encode_targets(self.label_set.ids[:1].to(device), self.label_set.mask[:1].to(device),
                                       attributes=self.attributes).shape[-1] if local is None else local.shape[-1]
            padded = torch.zeros(per, dim, device=device, dtype=torch.float32)
            if local is not None:
                padded = torch.cat([local.float(), padded[local.shape[0]:]], 0)
            feats = comm.all_gather_with_grad(padded)[:n]
        else:
            feats = self._encode_rows(model, None, device)
        feats = self._merge_templates(feats)
        if cacheable:
            self._cache = (weights_version(model), device, feats)
        return feats

    def encode_entries(self, model, entries: torch.Tensor, device: Optional[torch.device] = None) -> torch.Tensor:
        """``[len(entries), D]`` encodings of some entries (a sampled vocabulary subset)."""
        device = device or next(model.parameters()).device
        if entries.numel() == len(self.label_set) and not torch.is_grad_enabled():
            return self.encode(model, device)[entries.to(device)]
        return self._merge_templates(self._encode_rows(model, self.label_set.rows(entries.cpu()), device))


def task_target_encoder(task, attributes: Optional[Dict] = None) -> TargetEncoder:
    """The :class:`TargetEncoder` of a task's ``DATASETS.TARGET_SET`` (one label set per task)."""
    names = task.cfg.DATASETS.TARGET_SET
    names = [names] if isinstance(names, str) else list(names)
    key = f"TASKS.{task.name}.DATASETS.TARGET_SET"
    if len(names) != 1 or not names[0]:
        raise ConfigError(f"{key} must name exactly one SHARED_TARGETS label set; got {names}")
    label_set = build_label_set(task.root_cfg, names[0], used_by=key)
    node = shared_target_node(task.root_cfg, names[0], key)
    distributed = bool(node.SHARED_TARGETS_CFG.DISTRIBUTED) and task.cfg.DATALOADER.STRATEGY == "synced"
    return TargetEncoder(label_set, distributed=distributed, attributes=attributes)
