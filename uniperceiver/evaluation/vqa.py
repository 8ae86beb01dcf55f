"""VQAv2 accuracy as the official VQA evaluation computes it (github GT-Vision-Lab/VQA, master a013f00,
``PythonEvaluationTools/vqaEvaluation/vqaEval.py``), averaged over questions.

For one question (:func:`vqa_score`): new lines and tabs become spaces and the ends are stripped, in the
prediction and in each human answer.  Only when the human answers (so stripped) are not all the same are they
and the prediction normalised (``utils.vqa_text.normalize_answer``: punctuation, number words, articles,
contractions); when all humans agree, the prediction must equal their answer as it is.  The score is the mean,
over the human answers left out one at a time, of ``min(#other humans who gave the prediction / 3, 1)``: with
10 answers, a prediction given by 2 humans scores (2 * 1/3 + 8 * 2/3) / 10 = 0.6, by 3 humans 0.9, by 4 or
more 1.0.  (The official code compares answer records, which carry distinct ``answer_id`` s, so exactly one
answer is left out each time: here, by position.)
"""
from __future__ import annotations

from collections import Counter
from typing import Any, Dict, List, Sequence

from uniperceiver.utils import comm
from uniperceiver.utils.vqa_text import normalize_answer

from .evaluator import EVALUATOR_REGISTRY, DatasetEvaluator, gather_list

__all__ = ["vqa_score", "normalize_answer", "VQAEvaluator"]


def _strip(text: str) -> str:
    return text.replace("\n", " ").replace("\t", " ").strip()


def vqa_score(prediction: str, human_answers: Sequence[str]) -> float:
    """The official VQA accuracy of ``prediction`` for one question with these human answers (in [0, 1])."""
    humans = [_strip(a) for a in human_answers]
    if not humans:
        raise ValueError("vqa_score needs at least one human answer")
    pred = _strip(prediction)
    if len(set(humans)) > 1:
        humans = [normalize_answer(a) for a in humans]
        pred = normalize_answer(pred)
    total = 0.0
    for left_out in range(len(humans)):
        matches = sum(1 for i, a in enumerate(humans) if i != left_out and a == pred)
        total += min(1.0, matches / 3.0)
    return total / len(humans)


@EVALUATOR_REGISTRY.register()
class VQAEvaluator(DatasetEvaluator):
    """``outputs``: ``predictions`` List[str] (the chosen answers) and ``answers`` List[List[str]] (the human
    answers of each question).  Reports ``vqa_acc`` in percent over the questions that have human answers
    (none on test-dev: then nothing is reported)."""

    def reset(self) -> None:
        self._scores: List[float] = []
        self._answers: List[List[str]] = []
        self._chance: Dict[str, float] = {}

    def process(self, batch: Dict[str, Any], outputs: Dict[str, Any]) -> None:
        given = outputs.get("answer_scores") or [None] * len(outputs["predictions"])
        for pred, answers, scores in zip(outputs["predictions"], outputs["answers"], given):
            if answers:  # test-dev questions have no human answers
                self._scores.append(vqa_score(pred, answers))
                self._answers.append(list(answers))
            elif scores is not None:  # the published targets: the score of the predicted answer, as its VQAEvaler
                self._scores.append(float(scores.get(pred, 0.0)))
                self._answers.append(scores)

    def evaluate(self) -> Dict[str, float]:
        scores = gather_list(self._scores)
        answers = gather_list(self._answers)
        if not comm.is_main_process() or not scores:
            return {}
        # Baseline: answer every question with the split's most frequent (normalised) human answer; with the
        # published targets (answer -> score dicts), the answer of the highest total score.
        if all(isinstance(a, dict) for a in answers):
            total = Counter()
            for a in answers:
                total.update(a)
            if total:
                best = total.most_common(1)[0][0]
                self._chance = {"vqa_acc": 100.0 * sum(a.get(best, 0.0) for a in answers) / len(answers)}
            return {"vqa_acc": 100.0 * sum(scores) / len(scores)}
        top = Counter(normalize_answer(a) for ans in answers if not isinstance(ans, dict)
                      for a in ans).most_common(1)
        if top:
            self._chance = {"vqa_acc": 100.0 * sum(vqa_score(top[0][0], a) if not isinstance(a, dict) else
                                                   a.get(top[0][0], 0.0) for a in answers) / len(answers)}
        return {"vqa_acc": 100.0 * sum(scores) / len(scores)}
