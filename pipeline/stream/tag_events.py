"""Tag events: a tagger's sustained classes become events (AudioSet sounds, ImageNet sights).

Input: ``ClassScores`` of one stream in time order, each row a tagger input (an audio patch,
a sampled frame) standing for [t_s - step_s/2, t_s + step_s/2). Per class, hysteresis spans
(``pipeline.stream.spans``) over those steps give an event labelled with the class name, from the
start of its first step to the end of its last. Scores are rounded to 1e-3 before any
threshold: batches of other sizes differ in the last float bits, and a class sitting on a
threshold must not flip between two runs of the same media.

Classes can be kept (``allow``) or dropped (``deny``) by name or id, each with its descendants
in the ontology (AudioSet's; ImageNet's list has none). Unless ``keep_ancestors``, a class whose
descendant is active (open, or entering) in the same step is left out of that step, so one
sound is "Race car", not also "Car", "Vehicle" and "Motor vehicle (road)".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

import numpy as np

from pipeline.core.media import ClassScores
from pipeline.output.records import Event, event_id
from pipeline.stream.spans import HysteresisSpans, Span

ALTERNATIVES = 3  # other classes named in an event's attributes


@dataclass(frozen=True)
class Vocabulary:
    """A tagger's classes: display names, optional ids (AudioSet mids), and each class's ancestors."""

    names: tuple[str, ...]
    ids: tuple[str, ...] = ()
    ancestors: tuple[tuple[int, ...], ...] = ()  # per class, parent first; () when unknown
    lookup: dict[str, int] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        self.lookup.update({name.lower(): i for i, name in enumerate(self.names)})
        self.lookup.update({mid.lower(): i for i, mid in enumerate(self.ids)})

    def ancestors_of(self, index: int) -> tuple[int, ...]:
        return self.ancestors[index] if self.ancestors else ()

    def resolve(self, names: Iterable[str], what: str) -> set[int]:
        """Class indices of ``names`` (names or ids, any case); ValueError naming an unknown one."""
        indices = set()
        for name in names:
            index = self.lookup.get(str(name).strip().lower())
            if index is None:
                raise ValueError(f"{what}: no class named {name!r}")
            indices.add(index)
        return indices


class TagTotals:
    """Per class heard or seen: seconds at or above the tag threshold and the highest score.

    The summary's audio_tags / visual_tags. Constant memory: one entry per class ever tagged.
    """

    def __init__(self, vocabulary: Vocabulary, min_score: float):
        self.vocabulary, self.min_score = vocabulary, min_score
        self._totals: dict[int, list[float]] = {}  # class -> [seconds, max score]

    def add(self, step: dict[int, float], step_s: float) -> None:
        for i, score in step.items():
            if score >= self.min_score:
                totals = self._totals.setdefault(i, [0.0, 0.0])
                totals[0] += step_s
                totals[1] = max(totals[1], score)

    def state(self) -> list[list]:
        return [[i, seconds, peak] for i, (seconds, peak) in self._totals.items()]

    def restore(self, state: list[list]) -> None:
        self._totals = {int(i): [float(seconds), float(peak)] for i, seconds, peak in state}

    def top(self, n: int) -> list[dict]:
        ranked = sorted(self._totals.items(), key=lambda kv: (-kv[1][0], -kv[1][1], kv[0]))[:n]
        return [{"label": self.vocabulary.names[i], "seconds": round(seconds, 3), "max_confidence": round(peak, 3)}
                for i, (seconds, peak) in ranked]


@dataclass(frozen=True)
class TagEventRules:
    detector: str  # "sound_tags" or "visual_tags", also the events' detector name
    modality: str  # "audio" or "video"
    enter: float
    exit: float
    min_duration_s: float
    step_s: float  # the time one scored input stands for
    allow: tuple[str, ...] = ()
    deny: tuple[str, ...] = ()
    keep_ancestors: bool = False
    tag_min: float = 0.2  # a class counts in the summary's tags from this score on
    version: str = "1"


class TagEventDetector:
    def __init__(self, stream_id: str, vocabulary: Vocabulary, rules: TagEventRules):
        self.stream_id, self.vocabulary, self.rules = stream_id, vocabulary, rules
        n = len(vocabulary.names)
        allow = vocabulary.resolve(rules.allow, f"{rules.detector}.allow")
        deny = vocabulary.resolve(rules.deny, f"{rules.detector}.deny")

        def lineage(i: int) -> set[int]:
            return {i, *vocabulary.ancestors_of(i)}

        self.eligible = np.array([(not allow or bool(lineage(i) & allow)) and not (lineage(i) & deny)
                                   for i in range(n)], dtype=bool)
        self._spans = HysteresisSpans(rules.enter, rules.exit, rules.min_duration_s, max_gap_s=rules.step_s)
        self.last_end_s: float | None = None
        self.totals = TagTotals(vocabulary, rules.tag_min)

    def update(self, scores: ClassScores) -> list[Event]:
        closed: list[tuple[int, Span]] = []
        half_s = self.rules.step_s / 2
        for t_s, indices, values in zip(scores.t_s.tolist(), scores.class_index.tolist(), scores.score.tolist()):
            step = {i: round(v, 3) for i, v in zip(indices, values) if self.eligible[i]}
            self.totals.add(step, self.rules.step_s)
            if not self.rules.keep_ancestors:
                step = self._most_specific(step)
            start_s = max(0.0, t_s - half_s)
            closed += self._spans.step(start_s, t_s + half_s, step)
            for i, span in self._spans.open.items():  # running sums of the other classes, for alternatives
                for j, v in step.items():
                    if j != i:
                        span.context[j] = span.context.get(j, 0.0) + v
            self.last_end_s = t_s + half_s
        return [self._event(i, span) for i, span in closed]

    def finish(self, end_s: float | None) -> list[Event]:
        if self.last_end_s is not None and end_s is not None:
            end_s = min(end_s, self.last_end_s)
        return [self._event(i, span) for i, span in self._spans.close_all(end_s)]

    def pending_from_s(self) -> float | None:
        return self._spans.pending_from_s()

    def state(self) -> dict:
        """What a checkpoint carries: the open spans, the summary's totals, the last step's end."""
        return {"spans": self._spans.state(), "last_end_s": self.last_end_s, "totals": self.totals.state()}

    def adopt(self, state: dict) -> None:
        self._spans.adopt(state["spans"])
        self.last_end_s = state["last_end_s"]
        self.totals.restore(state["totals"])

    def open_event_ids(self) -> list[str]:
        """The ids the open spans' events will have."""
        return [event_id(self.stream_id, self.vocabulary.names[i], round(span.start_s, 3))
                for i, span in self._spans.open.items()]

    def _most_specific(self, step: dict[int, float]) -> dict[int, float]:
        active = [i for i, v in step.items() if v >= self.rules.enter or (i in self._spans.open and v >= self.rules.exit)]
        claimed = {a for i in active for a in self.vocabulary.ancestors_of(i)}
        return {i: v for i, v in step.items() if i not in claimed}

    def _event(self, index: int, span: Span) -> Event:
        vocabulary = self.vocabulary
        others = sorted(span.context.items(), key=lambda kv: (-kv[1], kv[0]))[:ALTERNATIVES]
        attributes = {
            "modality": self.rules.modality,
            "class_index": index,
            "peak_score": round(span.peak, 3),
            "alternatives": [{"label": vocabulary.names[j], "mean_score": round(total / span.steps, 3)}
                             for j, total in others],
        }
        if vocabulary.ids:
            attributes["mid"] = vocabulary.ids[index]
        if vocabulary.ancestors:
            attributes["ancestors"] = [vocabulary.names[a] for a in vocabulary.ancestors_of(index)]
        return Event(self.stream_id, vocabulary.names[index], round(span.start_s, 3), round(span.end_s, 3),
                     confidence=round(span.mean, 3), detector=self.rules.detector,
                     detector_version=self.rules.version, attributes=attributes)
