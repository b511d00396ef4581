"""VQAv2 accuracy: the official answer normalisation and the ten leave-one-out average.

The normalisation follows the rules of the official VQA evaluation script (``vqaEval.py``):

1. new lines and tabs become spaces, then strip;
2. punctuation: each of ``; / [ ] " { } ( ) = + \\ _ - > < @ ` , ? !`` is deleted when it touches a
   space in the answer, or when the answer holds a digit-comma-digit group ("1,000"); otherwise
   it becomes a space. Then every period not followed by a digit is deleted ("3.5" keeps its);
3. lowercase, split on white space, number words ``none``, ``zero`` .. ``ten`` become digits,
   the articles ``a``, ``an``, ``the`` are dropped, and contracted words written without their
   apostrophe get it back (``dont`` -> ``don't``).

The official script skips steps 2-3 when all ten reference answers agree (they are already
normalised in the annotations); here both sides are always normalised, so a free-form "Two."
matches ten "2"s.

Accuracy of a prediction against ten answers: for each answer, the other nine count as a
leave-one-out subset scoring ``min(1, matches / 3)``; the ten subset scores are averaged.
"""

from __future__ import annotations

import re

from mllm_refine.metrics.base import MeanMetric

PUNCT = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!")
NUMBERS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
           "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}  # fmt: skip
ARTICLES = {"a", "an", "the"}
_COMMA_NUMBER = re.compile(r"(\d)(,)(\d)")
_PERIOD = re.compile(r"\.(?!\d)")

# Contracted forms of the official table (lowercase entries; its capitalised "I" forms can never
# match a lowercased word). Each is looked up by every spelling that lacks one of its apostrophes.
_CONTRACTED = """
ain't aren't can't could've couldn't couldn't've didn't doesn't don't hadn't hadn't've hasn't
haven't he'd he'd've he's how'd how'll how's isn't it'd it'd've it'll ma'am mightn't mightn't've
might've mustn't must've needn't not've o'clock oughtn't 'ow's'at shan't she'd've should've
shouldn't shouldn't've somebody'd've somebody'll somebody's someone'd someone'd've someone'll
someone's something'd something'd've something'll that's there'd there'd've there're there's
they'd they'd've they'll they're they've 'twas wasn't we'd've we've weren't what'll what're
what's what've when's where'd where's where've who'd who'd've who'll who's who've why'll why're
why's won't would've wouldn't wouldn't've y'all y'all'll y'all'd've you'd you'd've you'll you're
you've
""".split()


def _contractions() -> dict[str, str]:
    table = {}
    for word in _CONTRACTED:
        for i, ch in enumerate(word):
            if ch == "'":
                table[word[:i] + word[i + 1 :]] = word
    table["somebody'd"] = "somebodyd"  # the official table maps this one backwards; kept for parity
    return table


CONTRACTIONS = _contractions()


def process_punctuation(text: str) -> str:
    out = text
    delete = _COMMA_NUMBER.search(text) is not None
    for p in PUNCT:
        # The test reads the original answer, as the official script does.
        out = out.replace(p, "" if delete or p + " " in text or " " + p in text else " ")
    return _PERIOD.sub("", out)


def process_digit_article(text: str) -> str:
    words = [NUMBERS.get(w, w) for w in text.lower().split()]
    return " ".join(CONTRACTIONS.get(w, w) for w in words if w not in ARTICLES)


def normalize_answer(text: str) -> str:
    """The official VQA normalisation of one answer."""
    text = text.replace("\n", " ").replace("\t", " ").strip()
    return process_digit_article(process_punctuation(text))


def vqa_accuracy(prediction: str, answers: list[str]) -> float:
    """Mean over leave-one-out subsets of ``min(1, matches / 3)``; one answer scores 0 or 1."""
    if not answers:
        return 0.0
    pred = normalize_answer(prediction)
    hits = [normalize_answer(a) == pred for a in answers]
    total = sum(hits)
    return sum(min(1.0, (total - hit) / 3.0) for hit in hits) / len(hits) if len(hits) > 1 else float(total)


class VQAAccuracy(MeanMetric):
    """VQAv2 accuracy (official normalisation, ten leave-one-out subsets, min(1, matches/3))."""

    primary = "vqa_accuracy"

    def score(self, prediction: str, references: list[str]) -> float:
        return vqa_accuracy(prediction, references)
