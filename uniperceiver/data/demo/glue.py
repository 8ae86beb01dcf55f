"""GLUE demo data: the seven published GLUE tasks as small TSVs whose labels follow a learnable rule.

No PyPI package ships GLUE, so sentences are composed from word lists (subjects, sentiment adjectives,
verbs) and the label is a function of the words:

* SST-2: "the film was wonderful ..." -> 1 when the adjective is a positive one (held-out sentences use
  other subjects and templates, the same adjectives);
* CoLA: 1 for "the cat sees the dog .", 0 for the same words in a scrambled order;
* MRPC / QQP (paraphrase), RTE / QNLI (entailment): 1 when both sentences are about the same subject;
* MNLI: entailment (same subject, same sentiment), contradiction (same subject, opposite sentiment),
  neutral (another subject).

:func:`build_glue_demo` writes the GLUE benchmark's own files (``glue/<TASK>/<split>.tsv`` with their header
lines and columns; CoLA without a header, as GLUE ships it) and the class names ``glue/classnames/<TASK>.txt``
(the published order: SST-2 "bad", "wonderful"; CoLA "incorrect", "correct"; MNLI "no", "maybe", "yes";
the others "no", "yes").  :func:`write_published_glue` writes the published layout of the same data.
"""
from __future__ import annotations

import os
import pickle
import random
from typing import Dict, List, Sequence, Tuple

SUBJECTS = ["film", "movie", "book", "song", "meal", "play", "show", "trip", "game", "story", "hotel", "album",
            "concert", "lecture", "painting", "garden"]
HELDOUT_SUBJECTS = ["opera", "novel", "dinner", "museum"]
POSITIVE = ["wonderful", "great", "excellent", "delightful", "superb", "lovely", "brilliant", "charming"]
NEGATIVE = ["bad", "terrible", "awful", "boring", "dreadful", "poor", "dull", "horrible"]
TEMPLATES = ["the {s} was {a} .", "i thought the {s} was {a} .", "what a {a} {s} .", "this {s} is really {a} ."]
HELDOUT_TEMPLATES = ["honestly , the {s} felt {a} .", "everyone said the {s} was {a} ."]
ANIMALS = ["cat", "dog", "bird", "horse", "fox", "mouse", "cow", "duck"]
VERBS = ["sees", "chases", "likes", "follows", "hears", "helps"]

CLASS_NAMES = {
    "SST-2": ["bad", "wonderful"], "CoLA": ["incorrect", "correct"], "RTE": ["no", "yes"], "MRPC": ["no", "yes"],
    "QQP": ["no", "yes"], "QNLI": ["no", "yes"], "MNLI": ["no", "maybe", "yes"],
}
SIZES = {"train": 240, "dev": 48}

# GLUE benchmark headers (CoLA has none).
HEADERS = {
    "SST-2": ["sentence", "label"],
    "MRPC": ["Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"],
    "QQP": ["id", "qid1", "qid2", "question1", "question2", "is_duplicate"],
    "QNLI": ["index", "question", "sentence", "label"],
    "RTE": ["index", "sentence1", "sentence2", "label"],
    "MNLI/train": ["index", "promptID", "pairID", "genre", "sentence1_binary_parse", "sentence2_binary_parse",
                   "sentence1_parse", "sentence2_parse", "sentence1", "sentence2", "label1", "gold_label"],
    "MNLI/dev": ["index", "promptID", "pairID", "genre", "sentence1_binary_parse", "sentence2_binary_parse",
                 "sentence1_parse", "sentence2_parse", "sentence1", "sentence2", "label1", "label2", "label3",
                 "label4", "label5", "gold_label"],
}


def _review(rng: random.Random, heldout: bool, positive: bool, subject: str = "") -> str:
    """A review sentence; half of them use the class word itself ("wonderful" / "bad"), which is what lets a
    model trained from scratch (no MLM pre-training) tie the text to the class-name targets quickly."""
    subject = subject or rng.choice(HELDOUT_SUBJECTS if heldout else SUBJECTS)
    template = rng.choice(HELDOUT_TEMPLATES if heldout else TEMPLATES)
    words = POSITIVE if positive else NEGATIVE
    return template.format(s=subject, a=words[0] if rng.random() < 0.5 else rng.choice(words[1:]))


def _pair(rng: random.Random, heldout: bool, same: bool) -> Tuple[str, str]:
    pool = HELDOUT_SUBJECTS + SUBJECTS[:4] if heldout else SUBJECTS
    first = rng.choice(pool)
    second = first if same else rng.choice([s for s in pool if s != first])
    return (_review(rng, heldout, rng.random() < 0.5, first), _review(rng, heldout, rng.random() < 0.5, second))


def _cola(rng: random.Random, correct: bool) -> str:
    a, b = rng.sample(ANIMALS, 2)
    words = ["the", a, rng.choice(VERBS), "the", b, "."]
    if not correct:
        body = words[:-1]
        while body == words[:-1]:
            rng.shuffle(body)
        words = body + ["."]
    return " ".join(words)


def _rows(task: str, split: str, rng: random.Random) -> List[List[str]]:
    heldout = split != "train"
    rows = []
    for n in range(SIZES[split]):
        label = n % (3 if task == "MNLI" else 2)
        if task == "SST-2":
            rows.append([_review(rng, heldout, label == 1), str(label)])
        elif task == "CoLA":
            rows.append(["demo", str(label), "" if label else "*", _cola(rng, label == 1)])
        elif task in ("MRPC", "QQP", "QNLI", "RTE"):
            s1, s2 = _pair(rng, heldout, label == 1)
            if task == "MRPC":
                rows.append([str(label), str(2 * n), str(2 * n + 1), s1, s2])
            elif task == "QQP":
                rows.append([str(n), str(2 * n), str(2 * n + 1), s1, s2, str(label)])
            else:
                rows.append([str(n), s1, s2, "entailment" if label else "not_entailment"])
        else:  # MNLI: 0 contradiction, 1 neutral, 2 entailment
            pool = HELDOUT_SUBJECTS + SUBJECTS[:4] if heldout else SUBJECTS
            subject = rng.choice(pool)
            positive = rng.random() < 0.5
            s1 = _review(rng, heldout, positive, subject)
            if label == 1:
                s2 = _review(rng, heldout, rng.random() < 0.5, rng.choice([s for s in pool if s != subject]))
            else:
                s2 = _review(rng, heldout, positive == (label == 2), subject)
            gold = ["contradiction", "neutral", "entailment"][label]
            extra = [gold] * (5 if heldout else 1)
            rows.append([str(n), str(n), f"{n}e", "demo", s1, s2, s1, s2, s1, s2] + extra + [gold])
    return rows


def _files(task: str) -> Dict[str, str]:
    """split -> benchmark file stem."""
    if task == "MNLI":
        return {"train": "train", "dev": "dev_matched", "dev_mm": "dev_mismatched"}
    return {"train": "train", "dev": "dev"}


def _write_tsv(path: str, header: Sequence[str], rows: List[List[str]]) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        if header:
            f.write("\t".join(header) + "\n")
        for row in rows:
            f.write("\t".join(row) + "\n")


def build_glue_demo(out: str, seed: int = 0) -> None:
    """Write ``out/<TASK>/<file>.tsv`` (benchmark format) and ``out/classnames/<TASK>.txt``."""
    rng = random.Random(seed + 18)
    for task in CLASS_NAMES:
        for split, stem in _files(task).items():
            part = "train" if split == "train" else "dev"
            header = HEADERS.get(f"{task}/{part}", HEADERS.get(task, []))
            _write_tsv(os.path.join(out, task, f"{stem}.tsv"), header, _rows(task, part, rng))
    os.makedirs(os.path.join(out, "classnames"), exist_ok=True)
    for task, names in CLASS_NAMES.items():
        with open(os.path.join(out, "classnames", f"{task}.txt"), "w") as f:
            f.write("\n".join(names) + "\n")


def write_published_glue(glue_dir: str, data_root: str, tokenizer) -> None:
    """The published layout of the demo GLUE data under ``data_root`` (the published DATA_PATH):
    ``open_source_dataset/bert_pretrain_data/glue_data/<TASK>/processed/<file>.tsv`` (headers removed, as
    fairseq's preprocessing does) and the tokenised class names
    ``open_source_dataset/GLUE_classnames/<TASK>_class_name_CLIP_with_endoftext.pkl`` (the published
    notebook's format: ``{"data": [LongTensor ids of "<name> <|endoftext|>"], "modality": "text"}``)."""
    import torch

    base = os.path.join(data_root, "open_source_dataset")
    for task in CLASS_NAMES:
        for stem in _files(task).values():
            with open(os.path.join(glue_dir, task, f"{stem}.tsv"), encoding="utf-8") as f:
                lines = f.readlines()
            if task != "CoLA":
                lines = lines[1:]
            dst = os.path.join(base, "bert_pretrain_data", "glue_data", task, "processed", f"{stem}.tsv")
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            with open(dst, "w", encoding="utf-8") as f:
                f.writelines(lines)
        data = {"data": [torch.tensor(tokenizer.encode(name + " <|endoftext|>")) for name in CLASS_NAMES[task]],
                "modality": "text"}
        os.makedirs(os.path.join(base, "GLUE_classnames"), exist_ok=True)
        with open(os.path.join(base, "GLUE_classnames", f"{task}_class_name_CLIP_with_endoftext.pkl"), "wb") as f:
            pickle.dump(data, f)
