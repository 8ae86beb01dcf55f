"""VQAv2 accuracy: an answer scores min(#humans who gave it / 3, 1), averaged over questions.

Answers are normalised as in the VQA evaluation script (lower case, punctuation, number words, articles,
common contractions) before matching.
"""
from __future__ import annotations

import re
from collections import Counter
from typing import Any, Dict, List, Sequence

from .evaluator import EVALUATOR_REGISTRY, DatasetEvaluator, gather_list
from uniperceiver.utils import comm

_NUMBERS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
            "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
_ARTICLES = {"a", "an", "the"}
_CONTRACTIONS = {"dont": "don't", "doesnt": "doesn't", "isnt": "isn't", "arent": "aren't", "cant": "can't",
                 "wont": "won't", "im": "i'm", "ive": "i've", "youre": "you're", "thats": "that's",
                 "whats": "what's", "wasnt": "wasn't", "werent": "weren't", "didnt": "didn't"}
_PUNCT = re.compile(r"[;/\[\]\"{}()=+\\_\-><@`,?!*#%^&$]")
_PERIOD = re.compile(r"(?!<=\d)(\.)(?!\d)")
_COMMA_NUM = re.compile(r"(\d)(,)(\d)")


def normalize_answer(answer: str) -> str:
    text = answer.replace("\n", " ").replace("\t", " ").strip().lower()
    text = _COMMA_NUM.sub(r"\1\3", text)
    text = _PUNCT.sub("", text)
    text = _PERIOD.sub("", text)
    words = []
    for w in text.split():
        w = _NUMBERS.get(w, w)
        if w in _ARTICLES:
            continue
        words.append(_CONTRACTIONS.get(w, w))
    return " ".join(words)


def vqa_score(prediction: str, human_answers: Sequence[str]) -> float:
    pred = normalize_answer(prediction)
    matches = sum(normalize_answer(a) == pred for a in human_answers)
    return min(matches / 3.0, 1.0)


@EVALUATOR_REGISTRY.register()
class VQAEvaluator(DatasetEvaluator):
    """``outputs``: ``predictions`` List[str] (the chosen answers) and ``answers`` List[List[str]] (the ten
    human answers of each question).  Reports ``vqa_acc`` in percent."""

    def reset(self) -> None:
        self._scores: List[float] = []
        self._answers: List[List[str]] = []
        self._chance: Dict[str, float] = {}

    def process(self, batch: Dict[str, Any], outputs: Dict[str, Any]) -> None:
        for pred, answers in zip(outputs["predictions"], outputs["answers"]):
            self._scores.append(vqa_score(pred, answers))
            self._answers.append(list(answers))

    def evaluate(self) -> Dict[str, float]:
        scores = gather_list(self._scores)
        answers = gather_list(self._answers)
        if not comm.is_main_process() or not scores:
            return {}
        # Baseline: answer every question with the split's most frequent (normalised) human answer.
        top = Counter(normalize_answer(a) for ans in answers for a in ans).most_common(1)
        if top:
            self._chance = {"vqa_acc": 100.0 * sum(vqa_score(top[0][0], a) for a in answers) / len(answers)}
        return {"vqa_acc": 100.0 * sum(scores) / len(scores)}
