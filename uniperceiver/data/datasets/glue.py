"""GLUE readers and the published Uni-Perceiver prompt of each GLUE task.

Two file kinds are read, both tab-separated, one example a line:

* the published ``processed/<split>.tsv`` files (GLUE TSVs with the header line removed, as fairseq's
  ``preprocess_GLUE_tasks.sh`` writes them): columns are taken by position, as the published ``GLUEDataset``;
* the GLUE benchmark's own ``<split>.tsv`` files (a header line; CoLA's train / dev have none): columns are
  taken by their header name.

``<ANNO_FOLDER>/<TASK>/processed/<file>.tsv`` is read when it exists, else ``<ANNO_FOLDER>/<TASK>/<file>.tsv``;
``<file>`` is ``train`` / ``dev`` / ``test`` (MNLI: ``dev_matched`` / ``test_matched``, or ``*_mismatched``
for ``MNLI_Mismatch``).  Whether a file has a header is read from its first line (the task's column names).

Labels: RTE / QNLI ``entailment`` -> 1, else 0; MNLI ``contradiction`` 0, ``neutral`` 1, ``entailment`` 2;
the others the integer in the label column (test files have none: label -1).  STS-B's score is read
(``score / 5``) but no task type uses it (the published code has no STS-B prompt; see docs/glue.md).

:func:`glue_prompt` builds the published input of a task: the sentence(s) with a ``<|spe|>`` placed inside the
text (SST-2: ``"<s> <|endoftext|> It is <|spe|>. <|endoftext|>"``), whose output is scored against the
task's class names ("bad" / "wonderful", "no" / "yes", ...).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from uniperceiver.config import ConfigError

from .base import AnnotationProblems, check_annotation_file

PERIOD_ID = 269  # CLIP BPE "." at the end of a word: dropped from the first sentence of some pair prompts


@dataclass(frozen=True)
class GlueTask:
    """How one GLUE task is stored and prompted.

    ``columns`` / ``test_columns``: 1-based input columns of the headerless (processed) files; ``label_column``
    (per split, 1-based); ``names``: the header names of (inputs..., label) in the benchmark files."""

    folder: str
    prompt: str  # key of _PAIR_SUFFIX / _SINGLE_PROMPT
    columns: Tuple[int, ...]
    test_columns: Tuple[int, ...]
    label_column: Dict[str, int]
    names: Tuple[str, ...]
    files: Dict[str, str] = field(default_factory=lambda: {"train": "train", "val": "dev", "test": "test"})
    label_map: Optional[Dict[str, int]] = None
    regression: bool = False
    metrics: Tuple[str, ...] = ("accuracy",)

    @property
    def num_inputs(self) -> int:
        return len(self.columns)


_ENTAIL = {"entailment": 1, "not_entailment": 0}
_MNLI = {"contradiction": 0, "neutral": 1, "entailment": 2}
_MNLI_FILES = {"train": "train", "val": "dev_matched", "test": "test_matched"}

GLUE_TASKS: Dict[str, GlueTask] = {
    "CoLA": GlueTask("CoLA", "cola", (4,), (2,), {"train": 2, "val": 2}, ("sentence", "label"),
                     metrics=("accuracy", "mcc")),
    "SST-2": GlueTask("SST-2", "sst2", (1,), (2,), {"train": 2, "val": 2}, ("sentence", "label")),
    "MRPC": GlueTask("MRPC", "mrpc", (4, 5), (4, 5), {"train": 1, "val": 1}, ("#1 String", "#2 String", "Quality"),
                     metrics=("accuracy", "f1")),
    "QQP": GlueTask("QQP", "qqp", (4, 5), (2, 3), {"train": 6, "val": 6}, ("question1", "question2", "is_duplicate"),
                    metrics=("accuracy", "f1")),
    "QNLI": GlueTask("QNLI", "qnli", (2, 3), (2, 3), {"train": 4, "val": 4}, ("question", "sentence", "label"),
                     label_map=_ENTAIL),
    "RTE": GlueTask("RTE", "rte", (2, 3), (2, 3), {"train": 4, "val": 4}, ("sentence1", "sentence2", "label"),
                    label_map=_ENTAIL),
    "MNLI_Match": GlueTask("MNLI", "mnli", (9, 10), (9, 10), {"train": 12, "val": 16},
                           ("sentence1", "sentence2", "gold_label"), files=_MNLI_FILES, label_map=_MNLI),
    "MNLI_Mismatch": GlueTask("MNLI", "mnli", (9, 10), (9, 10), {"train": 12, "val": 16},
                              ("sentence1", "sentence2", "gold_label"),
                              files={"train": "train", "val": "dev_mismatched", "test": "test_mismatched"},
                              label_map=_MNLI),
    "STS-B": GlueTask("STS-B", "", (8, 9), (8, 9), {"train": 10, "val": 10}, ("sentence1", "sentence2", "score"),
                      regression=True, metrics=()),
}
# Published names and common spellings -> the entries above (the published "MNLI" reads the matched files).
_ALIASES = {"cola": "CoLA", "sst-2": "SST-2", "sst2": "SST-2", "mrpc": "MRPC", "qqp": "QQP", "qnli": "QNLI",
            "rte": "RTE", "mnli": "MNLI_Match", "mnli_match": "MNLI_Match", "mnli-m": "MNLI_Match",
            "mnli_mismatch": "MNLI_Mismatch", "mnli-mm": "MNLI_Mismatch", "sts-b": "STS-B", "stsb": "STS-B"}
DATASET_NAMES = tuple(_ALIASES)


def glue_task(name: str, key: str = "DATASETS.DATASET_NAME") -> Tuple[str, GlueTask]:
    """``(canonical name, GlueTask)`` of a published GLUE task name (case-insensitive)."""
    canonical = _ALIASES.get(name.lower())
    if canonical is None:
        raise ConfigError(f"{key} {name!r} is not a GLUE task; known: {', '.join(sorted(GLUE_TASKS))}")
    return canonical, GLUE_TASKS[canonical]


def glue_file(anno_folder: str, name: str, split: str, value: str = "") -> str:
    """The TSV of ``split``: ``value`` when it names a ``.tsv`` (relative to ``anno_folder``), else the task's
    ``processed/<file>.tsv`` when it exists, else the benchmark's ``<file>.tsv``."""
    _, spec = glue_task(name)
    if value.endswith(".tsv"):
        return value if os.path.isabs(value) else os.path.join(anno_folder, value)
    stem = spec.files[split] + ".tsv"
    processed = os.path.join(anno_folder, spec.folder, "processed", stem)
    return processed if os.path.isfile(processed) else os.path.join(anno_folder, spec.folder, stem)


def _parse_label(spec: GlueTask, text: str) -> float:
    text = text.strip()
    if spec.label_map is not None:
        if text not in spec.label_map:
            raise ValueError(f"label {text!r} not one of {sorted(spec.label_map)}")
        return spec.label_map[text]
    if spec.regression:
        return float(text) / 5.0
    value = float(text)
    if value != int(value):
        raise ValueError(f"label {text!r} is not an integer")
    return int(value)


def read_glue_tsv(path: str, name: str, split: str, *, config_key: str = "",
                  max_bad_fraction: Optional[float] = None) -> List[dict]:
    """Records ``{"sentences": [str, ...], "label": int | float (-1: none), "line": n}`` of a GLUE TSV, with or
    without its header line.  Malformed lines: ``ValueError`` naming ``path:line`` when ``max_bad_fraction``
    is None, else skipped and counted (``TooManyBadSamples`` above the fraction)."""
    _, spec = glue_task(name)
    check_annotation_file(path, config_key or f"GLUE {name} {split}")
    with open(path, encoding="utf-8", errors="replace") as f:
        lines = [line.rstrip("\r\n") for line in f]
    problems = AnnotationProblems(path, max_bad_fraction)
    first = lines[0].split("\t") if lines else []
    header = bool(first) and all(n in first for n in spec.names[: spec.num_inputs])
    if header:  # the benchmark's own file: columns by name, the label when the file has it
        inputs = [first.index(n) for n in spec.names[: spec.num_inputs]]
        label_col = first.index(spec.names[-1]) if spec.names[-1] in first else None
        start = 1
    else:  # processed (or CoLA's headerless train / dev): columns by position
        inputs = [c - 1 for c in (spec.test_columns if split == "test" else spec.columns)]
        label_col = spec.label_column[split] - 1 if split in spec.label_column else None
        start = 0
    records = []
    for lineno in range(start + 1, len(lines) + 1):
        line = lines[lineno - 1]
        if not line.strip():
            continue
        fields = line.split("\t")
        need = max(inputs + ([label_col] if label_col is not None else []))
        if len(fields) <= need:
            problems.add(lineno, f"expected at least {need + 1} tab-separated fields, got {len(fields)}")
            continue
        try:
            label = _parse_label(spec, fields[label_col]) if label_col is not None else -1
        except ValueError as e:
            problems.add(lineno, str(e))
            continue
        records.append({"sentences": [fields[i] for i in inputs], "label": label, "line": lineno})
    if max_bad_fraction is not None:
        problems.check(len(records))
    if not records:
        raise ValueError(f"{path}: no GLUE {name} examples")
    return records


# ------------------------------------------------------------------------------------------------ prompts
_SINGLE_PROMPT = {"sst2": "  <|endoftext|> It is <|spe|>.   <|endoftext|>", "cola": " This is <|spe|>. <|endoftext|>"}
# Pair tasks: (text appended to the first sentence, drop a final "." of the first sentence first)
_PAIR_SUFFIX = {"rte": (" ? <|endoftext|> it is  ", True), "mrpc": (" . ", True), "qqp": (" <|endoftext|> ", True),
                "qnli": ("  <|endoftext|> it is ", True), "mnli": ("", False)}
_SECOND_PREFIX = "  <|spe|> , "
MIN_SEQ_LEN = 16


def glue_prompt(prompt: str, sentences: Sequence[str], tokenizer, max_len: int) -> Tuple[List[int], int]:
    """``(token ids, spe_index)``: the published input of one example and the position of its ``<|spe|>``
    (the token whose output is scored), at most ``max_len`` tokens (no leading ``<spe>``: the model adds it).

    Single sentence: ``sentence + prompt`` (SST-2 "It is <|spe|>.", CoLA "This is <|spe|>."), cut before the
    prompt's last four tokens when too long.  Pairs: ``first [+ suffix] + "<|spe|> ," + second <|endoftext|>``;
    the second part keeps at most half of ``max_len`` (QNLI: what the first leaves), the first the rest, each
    cut keeping its last token.  The published code takes the single-sentence index before cutting; here it
    is taken after, so it always points at the ``<|spe|>``."""
    if max_len < MIN_SEQ_LEN:
        raise ValueError(f"GLUE prompts need MAX_SEQ_LEN >= {MIN_SEQ_LEN}, got {max_len}")
    enc = tokenizer.encode
    if prompt in _SINGLE_PROMPT:
        tokens = enc(sentences[0] + _SINGLE_PROMPT[prompt])
        if len(tokens) > max_len:
            tokens = tokens[: max_len - 4] + tokens[-4:]
        return tokens, len(tokens) - 3
    if prompt not in _PAIR_SUFFIX:
        raise ValueError(f"no published prompt {prompt!r}")
    suffix, drop_period = _PAIR_SUFFIX[prompt]
    first = enc(sentences[0])
    if drop_period and first and first[-1] == PERIOD_ID:
        first = first[:-1]
    if suffix:
        first = first + enc(suffix)
    second = enc(_SECOND_PREFIX) + enc(sentences[1] + " <|endoftext|> ")
    limit = max_len - len(first) if prompt == "qnli" else max_len // 2
    limit = max(limit, 2)  # always the <|spe|> and the final <|endoftext|>
    if len(second) > limit:
        second = second[: limit - 1] + [second[-1]]
    room = max_len - len(second)
    if len(first) > room:
        first = first[: room - 1] + [first[-1]]
    return first + second, len(first)


class GLUEDataset(torch.utils.data.Dataset):
    """Records of one GLUE TSV; with a ``tokenizer``, samples are ``{"ids": [...], "spe_index", "label",
    "index"}`` (the published prompt), else ``{"sentences", "label", "index"}``."""

    def __init__(self, records: List[dict], name: str, *, tokenizer=None, max_seq_len: int = 0, label: str = ""):
        self.records = records
        self.task_name, self.spec = glue_task(name)
        self.tokenizer = tokenizer
        self.max_seq_len = int(max_seq_len)
        self.name = label or self.task_name

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict:
        record = self.records[index]
        if self.tokenizer is None:
            return {"sentences": list(record["sentences"]), "label": record["label"], "index": index}
        ids, spe_index = glue_prompt(self.spec.prompt, record["sentences"], self.tokenizer, self.max_seq_len)
        return {"ids": ids, "spe_index": spe_index, "label": record["label"], "index": index}
