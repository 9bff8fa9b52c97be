"""Word error rate: word-level Levenshtein distance over the reference's word count.

Both texts are lowercased, curly apostrophes made straight, and every character that is not a
letter, digit, apostrophe or space dropped (hyphens split words), so "NASA’s Goddard, Maryland."
and "nasa's goddard maryland" are the same three words.
"""

from __future__ import annotations

import re

_NOT_WORD = re.compile(r"[^\w' ]+")


def words(text: str) -> list[str]:
    text = text.lower().replace("\u2019", "'").replace("\u2018", "'").replace("-", " ")
    return [w.strip("'") for w in _NOT_WORD.sub(" ", text.replace("_", " ")).split() if w.strip("'")]


def edit_distance(reference: list[str], hypothesis: list[str]) -> int:
    """Substitutions + deletions + insertions that turn ``reference`` into ``hypothesis``."""
    previous = list(range(len(hypothesis) + 1))
    for i, ref in enumerate(reference, 1):
        current = [i]
        for j, hyp in enumerate(hypothesis, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ref != hyp)))
        previous = current
    return previous[-1]


def word_error_rate(reference: str, hypothesis: str) -> float:
    """Errors per reference word (0 is perfect; may exceed 1 when the hypothesis adds words)."""
    ref = words(reference)
    if not ref:
        raise ValueError("the reference has no words")
    return edit_distance(ref, words(hypothesis)) / len(ref)
