"""VQA answer normalisation of the official VQA evaluation (github GT-Vision-Lab/VQA, master a013f00,
``PythonEvaluationTools/vqaEvaluation/vqaEval.py``, ``processPunctuation`` / ``processDigitArticle``), rule for
rule and quirks included:

- punctuation: each mark of ``PUNCTUATION`` is deleted when the *original* text has it next to a space, or has
  a digit-comma-digit anywhere; otherwise it becomes a space.  Then a period not followed by a digit is deleted
  (the official ``(?!<=\d)`` is a look-ahead, not a look-behind, so "1." loses its period and "1.5" keeps it),
  at most 32 of them (the official code passes ``re.UNICODE`` (32) where ``re.sub`` takes the count).  ``'``,
  ``:``, ``*``, ``#``, ``&`` and other marks not listed are kept;
- digits and articles: lower case, split on white space, number words zero..ten (and "none") to digits, the
  articles a / an / the dropped, then the contractions map (keys such as "Im" hold capitals and so never match
  lower-cased words; "somebody'd" maps to "somebodyd": both as in the official map).

:func:`normalize_answer` is both steps after new lines and tabs become spaces and the ends are stripped.  The
VQAv2 accuracy (``evaluation/vqa.py``) applies it as the official code does (only when the humans disagree);
the VQA data reader (``data/datasets/vqa.py``) normalises every answer with it for the answer vocabulary and
the training targets.
"""
from __future__ import annotations

import re

__all__ = ["PUNCTUATION", "process_punctuation", "process_digit_article", "normalize_answer"]

PUNCTUATION = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",",
               "?", "!")
_PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")
_COMMA_STRIP = re.compile(r"(\d)(,)(\d)")
_PERIOD_STRIP_COUNT = 32  # official: re.UNICODE passed as the count argument

_NUMBER_WORDS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
                 "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
_ARTICLES = ("a", "an", "the")

# The official contractions map, entry for entry: "word as typed" -> "word with apostrophes".
_CONTRACTIONS = dict(pair.split("=") for pair in """
aint=ain't arent=aren't cant=can't couldve=could've couldnt=couldn't couldn'tve=couldn't've
couldnt've=couldn't've didnt=didn't doesnt=doesn't dont=don't hadnt=hadn't hadnt've=hadn't've hadn'tve=hadn't've
hasnt=hasn't havent=haven't hed=he'd hed've=he'd've he'dve=he'd've hes=he's howd=how'd howll=how'll hows=how's
Id've=I'd've I'dve=I'd've Im=I'm Ive=I've isnt=isn't itd=it'd itd've=it'd've it'dve=it'd've itll=it'll
let's=let's maam=ma'am mightnt=mightn't mightnt've=mightn't've mightn'tve=mightn't've mightve=might've
mustnt=mustn't mustve=must've neednt=needn't notve=not've oclock=o'clock oughtnt=oughtn't ow's'at='ow's'at
'ows'at='ow's'at 'ow'sat='ow's'at shant=shan't shed've=she'd've she'dve=she'd've she's=she's shouldve=should've
shouldnt=shouldn't shouldnt've=shouldn't've shouldn'tve=shouldn't've somebody'd=somebodyd
somebodyd've=somebody'd've somebody'dve=somebody'd've somebodyll=somebody'll somebodys=somebody's
someoned=someone'd someoned've=someone'd've someone'dve=someone'd've someonell=someone'll someones=someone's
somethingd=something'd somethingd've=something'd've something'dve=something'd've somethingll=something'll
thats=that's thered=there'd thered've=there'd've there'dve=there'd've therere=there're theres=there's
theyd=they'd theyd've=they'd've they'dve=they'd've theyll=they'll theyre=they're theyve=they've twas='twas
wasnt=wasn't wed've=we'd've we'dve=we'd've weve=we've werent=weren't whatll=what'll whatre=what're whats=what's
whatve=what've whens=when's whered=where'd wheres=where's whereve=where've whod=who'd whod've=who'd've
who'dve=who'd've wholl=who'll whos=who's whove=who've whyll=why'll whyre=why're whys=why's wont=won't
wouldve=would've wouldnt=wouldn't wouldnt've=wouldn't've wouldn'tve=wouldn't've yall=y'all yall'll=y'all'll
y'allll=y'all'll yall'd've=y'all'd've y'alld've=y'all'd've y'all'dve=y'all'd've youd=you'd youd've=you'd've
you'dve=you'd've youll=you'll youre=you're youve=you've
""".split())


def process_punctuation(text: str) -> str:
    """The official ``processPunctuation`` (see the module docstring)."""
    # the official test reads the text as given, not as already edited by earlier marks
    delete = _COMMA_STRIP.search(text) is not None
    out = text
    for mark in PUNCTUATION:
        if delete or (mark + " ") in text or (" " + mark) in text:
            out = out.replace(mark, "")
        else:
            out = out.replace(mark, " ")
    return _PERIOD_STRIP.sub("", out, count=_PERIOD_STRIP_COUNT)


def process_digit_article(text: str) -> str:
    """The official ``processDigitArticle``: lower case, number words to digits, no articles, contractions."""
    words = []
    for word in text.lower().split():
        word = _NUMBER_WORDS.get(word, word)
        if word not in _ARTICLES:
            words.append(word)
    return " ".join(_CONTRACTIONS.get(w, w) for w in words)


def normalize_answer(answer: str) -> str:
    """A predicted answer as the official evaluation compares it: new lines and tabs to spaces, stripped,
    then :func:`process_punctuation` and :func:`process_digit_article`."""
    text = answer.replace("\n", " ").replace("\t", " ").strip()
    return process_digit_article(process_punctuation(text))
