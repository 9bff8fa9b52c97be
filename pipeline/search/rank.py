"""Ranking: a query against moment tables, exact phrases first, then by similarity above a floor.

Score: the cosine of the query's all-MiniLM-L6-v2 embedding with each of a moment's match
texts, times that text's weight (moments.py), the best of them. A moment whose text holds
the query's words in order (``words_of``: case, punctuation and apostrophes ignored, on
word boundaries; or every "quoted" part of the query) is an exact phrase match: those
come first, whatever their score, and a transcript's is timed to the words that say it.
Every other moment needs a score of at least the floor: ``FLOOR``, or
``UNKNOWN_WORDS_FLOOR`` for a query none of whose words the model knows as a word (each
one cut into word pieces: "xqzvbnm plorf", "blorptang"), which it can only match by
spelling.

Calibrated on the AudioSet (632 names with the ontology's) and ImageNet (1000) class
names, the detectors' words and a few transcript sentences (README "Search"): a query of
word pieces scores up to 0.57 ("blorptang" with "Bleat"), real words unrelated to any
class up to 0.45 ("democracy" with "limousine", "spreadsheet" with "spatula"), while
"automobile" scores 0.86 with "Car", "guitar" 0.65 with "Plucked string instrument",
"show me the dog" 0.58 with "Dog", "launch window" 0.59 with "The launch window opens at
noon tomorrow."

Duplicates are one result: a record id (event_id, transcript_id) seen in an earlier
table is skipped, so replaying into two files, or naming a file twice, does not repeat
moments.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Iterable

import numpy as np

from pipeline.search.moments import Moment, Word, words_of
from pipeline.search.table import MomentTable

FLOOR = 0.5
UNKNOWN_WORDS_FLOOR = 0.7
PRIMARY_ROLES = frozenset({"label", "said"})
_QUOTED = re.compile(r'"([^"]+)"|“([^”]+)”')


@dataclass(frozen=True)
class Result:
    stream_id: str
    start_s: float
    end_s: float
    kind: str
    text: str
    score: float  # weighted cosine, rounded to 1e-4
    why: str  # e.g. 'transcript, phrase' or 'sound, via ancestor "Vehicle"'
    phrase: bool  # an exact phrase match (ranked before every other result)
    record_id: str

    def to_dict(self) -> dict:
        return asdict(self)

    def line(self) -> str:
        return f'{self.stream_id}  {self.start_s:.1f}–{self.end_s:.1f} s  {self.score:.2f}  {self.why}: "{self.text}"'


@dataclass(frozen=True)
class Query:
    text: str  # what is embedded: the query without its quote marks
    phrases: tuple[tuple[str, ...], ...]  # word tokens of each phrase that must occur in order

    @classmethod
    def parse(cls, query: str) -> "Query":
        quoted = [a or b for a, b in _QUOTED.findall(query)]
        phrases = tuple(tuple(words_of(q)) for q in quoted if words_of(q))
        if not phrases and words_of(query):
            phrases = (tuple(words_of(query)),)
        return cls(" ".join(re.sub(r'["“”]', " ", query).split()), phrases)


def _phrase_span(words: tuple[Word, ...], phrase: tuple[str, ...]) -> tuple[float, float] | None:
    """When the first occurrence of ``phrase`` is said, from its first word's start to its last's end."""
    tokens = [w.token for w in words]
    n = len(phrase)
    for i in range(len(tokens) - n + 1):
        if tuple(tokens[i:i + n]) == phrase:
            return words[i].start_s, words[i + n - 1].end_s
    return None


def _why(moment: Moment, phrase: bool, role: str, matched: str) -> str:
    parts = [moment.kind]
    if phrase:
        parts.append("phrase")
    if role not in PRIMARY_ROLES:
        parts.append(f'via {role} "{matched}"')
    if moment.kind in ("heard", "seen"):
        parts.append("in the summary, not timed")
    return ", ".join(parts)


def rank(query: str, tables: Iterable[MomentTable], encoder, top_k: int = 10, floor: float = FLOOR) -> list[Result]:
    """The ``top_k`` best moments of ``tables`` for ``query``: phrase matches first, then by score."""
    parsed = Query.parse(query)
    if not parsed.text:
        return []
    if not any(encoder.knows_word(word) for word in words_of(parsed.text)):
        floor = max(floor, UNKNOWN_WORDS_FLOOR)
    q = encoder.encode([parsed.text])[0].astype(np.float32)
    needles = [f" {' '.join(p)} " for p in parsed.phrases]
    seen: set[str] = set()
    found: list[tuple[tuple, Result]] = []
    for table in tables:
        if not table.moments:
            continue
        cosines = table.embeddings.astype(np.float32) @ q
        ref_scores = cosines[table.ref_text] * table.ref_weight
        text_phrase = np.array([bool(needles) and all(n in padded for n in needles) for padded in table.padded_words])
        ref_phrase = text_phrase[table.ref_text]
        best = np.maximum.reduceat(ref_scores, table.ref_start)
        has_phrase = np.logical_or.reduceat(ref_phrase, table.ref_start)
        for i in np.flatnonzero(has_phrase | (best >= floor)).tolist():
            moment = table.moments[i]
            if moment.record_id in seen:
                continue
            seen.add(moment.record_id)
            refs = range(table.ref_start[i], table.ref_start[i] + len(moment.texts))
            phrase = bool(has_phrase[i])
            pick = max((r for r in refs if ref_phrase[r] or not phrase), key=lambda r: ref_scores[r])
            match = moment.texts[pick - table.ref_start[i]]
            start_s, end_s = moment.start_s, moment.end_s
            if phrase and moment.words:
                span = _phrase_span(moment.words, parsed.phrases[0])
                if span is not None:
                    start_s, end_s = span
            score = round(float(ref_scores[pick]), 4)
            result = Result(moment.stream_id, start_s, end_s, moment.kind, moment.text, score,
                            _why(moment, phrase, match.role, match.text), phrase, moment.record_id)
            found.append(((not phrase, -score, moment.stream_id, start_s, moment.kind, moment.text), result))
    found.sort(key=lambda pair: pair[0])
    return [result for _, result in found[:top_k]]
