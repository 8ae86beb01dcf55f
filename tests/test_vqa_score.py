"""VQAv2 accuracy as the official ``vqaEval.py`` (github GT-Vision-Lab/VQA, master a013f00) computes it, and
its answer normalisation, quirks included.  Every expectation is worked out in the comments; the same cases
(and 3,000 random ones) were also checked against the official script itself (not part of these tests)."""
import pytest

from uniperceiver.evaluation.vqa import VQAEvaluator, vqa_score
from uniperceiver.utils.vqa_text import normalize_answer, process_digit_article, process_punctuation


@pytest.mark.parametrize("humans_agreeing, expected", [
    (0, 0.0),
    (1, 0.3),   # left out: the 1 (0 others match) -> 0; each of 9 others -> 1/3: 3 / 10
    (2, 0.6),   # 2 * 1/3 + 8 * 2/3 = 6 -> 0.6 (not min(2/3, 1) = 0.667)
    (3, 0.9),   # 3 * 2/3 + 7 * 1 = 9
    (4, 1.0),   # 4 * 1 (3 others) + 6 * 1
    (10, 1.0),
])
def test_leave_one_out_over_ten_humans(humans_agreeing, expected):
    humans = ["red"] * humans_agreeing + ["blue"] * (10 - humans_agreeing)
    assert vqa_score("red", humans) == pytest.approx(expected, abs=1e-12)


def test_other_numbers_of_humans():
    assert vqa_score("2", ["2", "3", "3"]) == pytest.approx(2 / 9)  # (0 + 1/3 + 1/3) / 3
    assert vqa_score("yes", ["yes", "yes", "no"]) == pytest.approx(4 / 9)  # (1/3 + 1/3 + 2/3) / 3
    assert vqa_score("yes", ["yes"]) == 0.0  # the only human left out: nobody else to match
    with pytest.raises(ValueError):
        vqa_score("yes", [])


def test_answers_are_normalised_only_when_the_humans_disagree():
    # all ten agree: prediction and answers are only stripped (new lines, tabs, ends), then compared as they are
    assert vqa_score("Yes", ["yes"] * 10) == 0.0
    assert vqa_score(" yes\n", ["yes"] * 10) == 1.0
    assert vqa_score("two", ["2"] * 10) == 0.0
    # they disagree: both sides normalised, so "Yes" is "yes" (9 matches -> 1.0) and "two" is "2"
    assert vqa_score("Yes", ["yes"] * 9 + ["no"]) == 1.0
    assert vqa_score("two", ["2"] * 3 + ["3"] * 7) == pytest.approx(0.9)
    assert vqa_score("2", ["two"] * 3 + ["3"] * 7) == pytest.approx(0.9)
    # articles and contractions: "the dog" -> "dog"; "dont know" -> "don't know"
    assert vqa_score("the dog", ["dog"] * 5 + ["cat"] * 5) == 1.0
    assert vqa_score("dont know", ["don't know"] * 2 + ["no"] * 8) == pytest.approx(0.6)
    # punctuation: "/" touching a space is deleted, else it becomes a space: both give "black white"
    assert vqa_score("black/white", ["black / white"] * 2 + ["gray"] * 8) == pytest.approx(0.6)
    # a digit-comma-digit anywhere deletes every listed mark: "1,000" -> "1000"
    assert vqa_score("1000", ["1,000"] * 3 + ["100"] * 7) == pytest.approx(0.9)
    # a period is deleted unless a digit follows: "3." -> "3", "3.5" stays
    assert vqa_score("3", ["3."] * 2 + ["4"] * 8) == pytest.approx(0.6)
    assert vqa_score("35", ["3.5"] * 2 + ["4"] * 8) == 0.0


@pytest.mark.parametrize("text, expected", [
    ("Two.", "2"), ("a Dog", "dog"), ("The Two dogs", "2 dogs"), ("none", "0"), ("ten", "10"),
    ("yes\tno", "yes no"), (" yes\n", "yes"),
    ("red,white", "red white"),       # "," touches no space and no digit-comma-digit: a space
    ("red, white", "red white"),      # ", " touches a space: deleted
    ("yes, 1,000 no", "yes 1000 no"),  # digit-comma-digit: every listed mark deleted
    ("t-shirt", "t shirt"), ("(yes)", "yes"), ("hi!there", "hi there"), ("a -b", "b"),
    ("e.g.", "eg"), ("3.5", "3.5"), ("..5", ".5"),
    ("5:00", "5:00"), ("it's", "it's"), ("#1", "#1"),  # ":", "'", "#" are not in the official list
    ("dont", "don't"), ("whats", "what's"), ("wheres", "where's"),
    ("Im", "im"), ("ive", "ive"),     # the map's "Im" / "Ive" keys hold capitals: never matched
    ("somebody'd", "somebodyd"),      # as the official map says
    ("an apple", "apple"), ("a", ""),
])
def test_normalisation_quirks(text, expected):
    assert normalize_answer(text) == expected


def test_at_most_32_periods_are_deleted():
    # the official code passes re.UNICODE (32) as re.sub's count
    assert process_punctuation("a." * 40) == "a" * 33 + ".a" * 7 + "."
    assert process_digit_article("The  ONE   an") == "1"


def test_evaluator_averages_questions_with_answers():
    ev = VQAEvaluator()
    ev.reset()
    ev.process({}, {"predictions": ["red", "yes", "dog"],
                    "answers": [["red"] * 2 + ["blue"] * 8, ["yes"] * 10, []]})  # the last: no answers (test-dev)
    assert ev.evaluate() == pytest.approx({"vqa_acc": 100.0 * (0.6 + 1.0) / 2})
    ev.reset()
    ev.process({}, {"predictions": ["dog"], "answers": [[]]})
    assert ev.evaluate() == {}
