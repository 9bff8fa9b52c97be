"""Moments: what in avfuse records can be searched for, and when it happened.

A ``Moment`` is one span of one stream (``start_s`` .. ``end_s``, stream clock) of one
``kind``, with the text shown for it and the ``MatchText``s a query is compared with,
each with a ``role`` and a ``weight`` (a match on a class's ancestor counts a little
less than one on the class itself). Per record:

- ``transcript``: one moment per sentence (times from its words) or, without word
  times, per segment; kind ``transcript``; its words keep their times, so an exact
  phrase can be timed to the words that say it.
- ``event`` from ``sound_tags`` (kind ``sound``): the AudioSet class, its ancestors
  (so "vehicle" finds "Race car, auto racing") and the alternatives that scored at
  least ``ALTERNATIVE_MIN`` on average over the event; ``visual_tags`` (``sight``):
  the ImageNet class and its alternatives; ``scene`` events (``scene``): the scene's
  visual tags; ``av_event`` (``av_event``): the concept and both classes; ``speech``
  (``speech``); every other event (``signal``, or ``event`` for learned labels) by
  the words of its label ("black video") and a few plain-words aliases.
- ``summary``: per stream, the last summary (the final one when there is one): its
  ``audio_tags`` (kind ``heard``) and ``visual_tags`` (``seen``) over the whole stream
  processed, only for classes that no event of the stream names (as label, ancestor,
  alternative or scene tag): where a class was heard is better told by its event.

Records of other known types (stream_start, stream_end, error, window) hold nothing to
search; unknown types (future records) are skipped and counted. ``read_moments`` reads a
JSONL file: a last line cut short (no newline, not JSON: a writer that was stopped) is
left out with a note; any other line that is not an avfuse record (JSON with an
``avfuse.`` ``schema`` and a ``type``) is a ``SearchInputError``.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, NamedTuple

# Weights of a match by what it matched, against the moment's own name (1.0).
ANCESTOR_WEIGHT = 0.9
ALTERNATIVE_WEIGHT = 0.85
SCENE_TAG_WEIGHT = 0.95
AV_CLASS_WEIGHT = 0.95
ALIAS_WEIGHT = 0.9
SUMMARY_TAG_WEIGHT = 0.9
# An event's alternatives are the classes that scored beside it; the faint ones (a mean of
# 0.01 for "Rain" under "Music") would make false hits.
ALTERNATIVE_MIN = 0.1

KNOWN_UNSEARCHED = frozenset({"stream_start", "stream_end", "error", "window"})
SIGNAL_DETECTORS = frozenset({"scene_cut", "motion_burst", "black_video", "frozen_video", "silence", "loud_onset",
                              "av_desync"})
# Plain words for the built-in detectors' labels, which are identifiers.
ALIASES: dict[str, tuple[str, ...]] = {
    "scene_cut": ("shot change",),
    "black_video": ("black screen",),
    "frozen_video": ("frozen picture", "still image"),
    "silence": ("quiet", "no sound"),
    "loud_onset": ("sudden loud sound",),
    "motion_burst": ("sudden motion", "flash"),
    "av_desync": ("audio and video out of sync",),
    "speech": ("someone speaking", "talking"),
}
_SENTENCE_END = re.compile(r"[.?!…。？！][\"'”’»)\]]*$")
_APOSTROPHES = re.compile(r"['’`]")
_NON_WORD = re.compile(r"[\W_]+")


class SearchInputError(ValueError):
    """A file that search cannot read as avfuse records; the message is one line for the user."""


def words_of(text: str) -> list[str]:
    """Lower-case word tokens, punctuation dropped: "Don't stop—launch!" -> ["dont", "stop", "launch"]."""
    return _NON_WORD.sub(" ", _APOSTROPHES.sub("", str(text).lower())).split()


class MatchText(NamedTuple):  # tuples: an index of a day's records loads hundreds of thousands
    text: str
    role: str  # "label" (the moment's own name), "said", "ancestor", "alternative", "tag", "alias", ...
    weight: float = 1.0


class Word(NamedTuple):
    """One spoken word token (``words_of`` of the transcript's word) and when it was said."""

    token: str
    start_s: float
    end_s: float


@dataclass(frozen=True)
class Moment:
    stream_id: str
    start_s: float
    end_s: float
    kind: str  # transcript | sound | sight | scene | av_event | speech | signal | event | heard | seen
    text: str  # what the result shows
    record_id: str  # the event_id / transcript_id (#sentence) it came from: duplicates across files are one
    texts: tuple[MatchText, ...]
    words: tuple[Word, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"stream_id": self.stream_id, "start_s": self.start_s, "end_s": self.end_s, "kind": self.kind,
                "text": self.text, "record_id": self.record_id,
                "texts": [[t.text, t.role, t.weight] for t in self.texts],
                "words": [[w.token, w.start_s, w.end_s] for w in self.words]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Moment":
        return cls(d["stream_id"], d["start_s"], d["end_s"], d["kind"], d["text"], d["record_id"],
                   tuple(MatchText(*t) for t in d["texts"]), tuple(Word(*w) for w in d["words"]))


@dataclass
class FileMoments:
    """The moments of one records file, and what was left out of it (``notes``, one line each)."""

    path: Path
    moments: list[Moment]
    notes: list[str] = field(default_factory=list)


# ---------------------------------------------------------------- records -> moments


def _label_words(label: str) -> str:
    return " ".join(str(label).replace("_", " ").split())


def _alternatives(attributes: dict[str, Any]) -> list[str]:
    return [str(a["label"]) for a in attributes.get("alternatives") or []
            if isinstance(a, dict) and "label" in a and float(a.get("mean_score", 0.0)) >= ALTERNATIVE_MIN]


def _event_moment(r: dict[str, Any]) -> Moment:
    label, detector = str(r["label"]), str(r.get("detector", ""))
    attributes = r.get("attributes") or {}

    def moment(kind: str, text: str, texts: list[MatchText]) -> Moment:
        return Moment(str(r["stream_id"]), float(r["start_s"]), float(r["end_s"]), kind, text,
                      str(r.get("event_id") or f"{r['stream_id']}|{label}|{r['start_s']}"), tuple(texts))

    if detector in ("sound_tags", "visual_tags"):
        texts = [MatchText(label, "label")]
        texts += [MatchText(a, "ancestor", ANCESTOR_WEIGHT) for a in attributes.get("ancestors") or []]
        texts += [MatchText(a, "alternative", ALTERNATIVE_WEIGHT) for a in _alternatives(attributes)]
        return moment("sound" if detector == "sound_tags" else "sight", label, texts)
    if label == "scene" or detector == "scene_tags":
        tags = [str(t["label"]) for t in attributes.get("visual_tags") or [] if isinstance(t, dict) and "label" in t]
        texts = [MatchText(t, "tag", SCENE_TAG_WEIGHT) for t in tags] or [MatchText("scene", "label")]
        return moment("scene", "scene: " + ", ".join(tags) if tags else "scene", texts)
    if label == "av_event":
        concept = str(attributes.get("concept", "audio-visual event"))
        heard, seen = attributes.get("audio_class"), attributes.get("visual_class")
        texts = [MatchText(concept, "concept")]
        texts += [MatchText(str(c), role, AV_CLASS_WEIGHT) for c, role in ((heard, "sound"), (seen, "sight")) if c]
        return moment("av_event", f"{concept}: heard {heard}, seen {seen}", texts)
    kind = "speech" if label == "speech" else "signal" if detector in SIGNAL_DETECTORS else "event"
    words = _label_words(label)
    texts = [MatchText(words, "label")] + [MatchText(a, "alias", ALIAS_WEIGHT) for a in ALIASES.get(label, ())]
    return moment(kind, words, texts)


def _word_times(raw_words: Iterable[Any]) -> list[tuple[str, float, float]]:
    """(word as said, start_s, end_s) of the words that carry both times."""
    out = []
    for w in raw_words or ():
        timed = isinstance(w, dict) and all(isinstance(w.get(k), (int, float)) for k in ("start_s", "end_s"))
        if timed:
            out.append((str(w.get("word", "")), float(w["start_s"]), float(w["end_s"])))
    return out


def _tokens(said: list[tuple[str, float, float]]) -> tuple[Word, ...]:
    return tuple(Word(token, start_s, end_s) for word, start_s, end_s in said for token in words_of(word))


def _transcript_moments(r: dict[str, Any]) -> list[Moment]:
    stream_id, text = str(r["stream_id"]), " ".join(str(r.get("text") or "").split())
    record_id = str(r.get("transcript_id") or f"{stream_id}|transcript|{r['start_s']}")
    said = _word_times(r.get("words"))
    sentences: list[list[tuple[str, float, float]]] = [[]]
    for word in said:
        sentences[-1].append(word)
        if _SENTENCE_END.search(word[0].strip()):
            sentences.append([])
    sentences = [s for s in sentences if s]
    if len(sentences) <= 1:  # one sentence (or no word times): the segment as it was transcribed
        if not text:
            return []
        return [Moment(stream_id, float(r["start_s"]), float(r["end_s"]), "transcript", text, record_id,
                       (MatchText(text, "said"),), _tokens(said))]
    moments = []
    for n, sentence in enumerate(sentences):
        sentence_text = " ".join(word.strip() for word, _, _ in sentence if word.strip())
        moments.append(Moment(stream_id, sentence[0][1], sentence[-1][2], "transcript", sentence_text,
                              f"{record_id}#{n}", (MatchText(sentence_text, "said"),), _tokens(sentence)))
    return moments


def _summary_moments(summary: dict[str, Any], covered: set[str]) -> list[Moment]:
    stream_id = str(summary["stream_id"])
    end_s = float(summary.get("processed_s") or 0.0)
    moments = []
    for field_name, kind in (("audio_tags", "heard"), ("visual_tags", "seen")):
        for tag in summary.get(field_name) or []:
            label = str(tag["label"])
            if label.lower() not in covered:
                moments.append(Moment(stream_id, 0.0, end_s, kind, label, f"{stream_id}|summary|{kind}|{label}",
                                      (MatchText(label, "label", SUMMARY_TAG_WEIGHT),)))
    return moments


def _names_in(moment: Moment) -> set[str]:
    if moment.kind in ("sound", "sight", "scene", "av_event"):
        return {t.text.lower() for t in moment.texts}
    return set()


def moments_of_records(records: Iterable[dict[str, Any]]) -> tuple[list[Moment], Counter]:
    """The moments of avfuse records (dicts as read from JSON), in record order, summaries last.

    Returns them with a Counter of what was left out: ``type:<t>`` per record of an unknown
    type, ``malformed:<t>`` per record of a searched type that lacks a field it needs.
    """
    moments: list[Moment] = []
    skipped: Counter = Counter()
    summaries: dict[str, dict[str, Any]] = {}
    for r in records:
        record_type = r.get("type")
        try:
            if record_type == "event":
                moments.append(_event_moment(r))
            elif record_type == "transcript":
                moments += _transcript_moments(r)
            elif record_type == "summary":
                previous = summaries.get(str(r["stream_id"]))
                if previous is None or r.get("final") or not previous.get("final"):
                    summaries[str(r["stream_id"])] = r
            elif record_type not in KNOWN_UNSEARCHED:
                skipped[f"type:{record_type}"] += 1
        except (KeyError, TypeError, ValueError, AttributeError):
            skipped[f"malformed:{record_type}"] += 1
    covered: dict[str, set[str]] = {}
    for m in moments:
        covered.setdefault(m.stream_id, set()).update(_names_in(m))
    for stream_id, summary in summaries.items():
        try:
            moments += _summary_moments(summary, covered.get(stream_id, set()))
        except (KeyError, TypeError, ValueError):
            skipped["malformed:summary"] += 1
    return moments, skipped


# ---------------------------------------------------------------- files


def _is_avfuse_record(obj: Any) -> bool:
    return (isinstance(obj, dict) and isinstance(obj.get("type"), str) and isinstance(obj.get("schema"), str)
            and obj["schema"].startswith("avfuse."))


def read_records(path: Path, notes: list[str]) -> Iterable[dict[str, Any]]:
    """The records of a JSONL file, one dict per line (blank lines skipped).

    A last line without its newline that is not JSON is left out, with a note appended to
    ``notes``; every other line that is not an avfuse record raises SearchInputError.
    """
    try:
        handle = open(path, "rb")
    except OSError as exc:
        raise SearchInputError(f"{path}: {exc.strerror or exc}") from None
    with handle:
        for lineno, raw in enumerate(handle, 1):
            if not raw.strip():
                continue
            try:
                obj = json.loads(raw)
            except ValueError as exc:  # UnicodeDecodeError is a ValueError too
                if not raw.endswith(b"\n"):
                    notes.append(f"{path}: line {lineno} is cut short (a writer stopped mid-line?); left out")
                    return
                reason = "not UTF-8" if isinstance(exc, UnicodeDecodeError) else "not JSON"
                raise SearchInputError(f"{path}: line {lineno} is {reason}: not an avfuse records file") from None
            if not _is_avfuse_record(obj):
                raise SearchInputError(
                    f"{path}: line {lineno} is no avfuse record (no 'schema' avfuse.<type>/<n> and 'type')")
            yield obj


def read_moments(path: str | Path) -> FileMoments:
    """The moments of one avfuse JSONL file; SearchInputError (one line) if it is none."""
    path = Path(path)
    if path.is_dir():
        raise SearchInputError(f"{path}: is a folder, not a records file")
    notes: list[str] = []
    moments, skipped = moments_of_records(read_records(path, notes))
    unknown = {k.split(":", 1)[1]: n for k, n in sorted(skipped.items()) if k.startswith("type:")}
    malformed = {k.split(":", 1)[1]: n for k, n in sorted(skipped.items()) if k.startswith("malformed:")}
    if unknown:
        notes.append(f"{path}: skipped {sum(unknown.values())} records of types search does not know: "
                     + ", ".join(f"{t} ({n})" for t, n in unknown.items()))
    if malformed:
        notes.append(f"{path}: skipped {sum(malformed.values())} records missing fields search needs: "
                     + ", ".join(f"{t} ({n})" for t, n in malformed.items()))
    return FileMoments(path, moments, notes)
