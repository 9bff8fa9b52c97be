"""Audio-visual events: a sound and its visible source in the same window (as in AVE).

A concept table (``operators/data/av_concepts.json``, or ``av_events.concepts``) maps a concept
to AudioSet classes (each with its descendants in the ontology) and to ImageNet classes. The
stream's aligner cuts the taggers' rows ("sounds", "sights") into the fusion's windows; a
concept is present in a window when its best sound reaches ``min_audio`` and its best sight
``min_visual`` there. Consecutive windows with the concept make one
``av_event`` from the first window's start to the last one's end; its attributes name the
concept and the best sound and sight with their scores.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from pipeline.core.config import AVEventsConfig
from pipeline.output.records import Event, event_id
from pipeline.stream.alignment import AlignedWindow, TimedRows
from pipeline.stream.spans import HysteresisSpans, Span
from pipeline.stream.tag_events import Vocabulary

LABEL = "av_event"
DETECTOR = "av_concepts"


@dataclass(frozen=True)
class Concept:
    name: str
    sound_classes: frozenset[int]
    sight_classes: frozenset[int]


def load_concepts(path: str | None, sounds: Vocabulary, sights: Vocabulary) -> tuple[list[Concept], str]:
    """The concept table at ``path`` (default: the shipped one) and its version.

    Raises ValueError with one line: an unreadable file, or a class neither tagger knows.
    """
    where = path or "operators/data/av_concepts.json"
    try:
        text = Path(path).read_text() if path else resources.files("operators.data").joinpath(
            "av_concepts.json").read_text()
        table = json.loads(text)
        entries = table["concepts"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"av_events.concepts {where}: not a concept table ({exc})") from None
    concepts = []
    for name, entry in sorted(entries.items()):
        roots = sounds.resolve(entry.get("audioset", []), f"av_events.concepts {where}: {name}.audioset")
        # A concept named by a parent class ("Vehicle") also covers its children ("Car").
        sound_classes = {i for i in range(len(sounds.names)) if ({i, *sounds.ancestors_of(i)} & roots)}
        sight_classes = sights.resolve(entry.get("imagenet", []), f"av_events.concepts {where}: {name}.imagenet")
        if sound_classes and sight_classes:
            concepts.append(Concept(name, frozenset(sound_classes), frozenset(sight_classes)))
    return concepts, str(table.get("version", "1"))


def _best(rows: TimedRows | None, classes: frozenset[int]) -> tuple[float, int | None]:
    """The highest score of any of ``classes`` in the rows, and which class it was."""
    if rows is None or len(rows) == 0:
        return 0.0, None
    index, score = rows.columns["class_index"], rows.columns["score"]
    hit = np.isin(index, list(classes))
    if not hit.any():
        return 0.0, None
    flat = np.argmax(np.where(hit, score, -1.0))
    return round(float(score.flat[flat]), 3), int(index.flat[flat])


class AVEventDetector:
    """Windows in (index order, from the stream's aligner), ``av_event``s out once they end."""

    def __init__(self, stream_id: str, cfg: AVEventsConfig, hop_s: float, concepts: list[Concept],
                 version: str, sounds: Vocabulary, sights: Vocabulary):
        self.stream_id, self.cfg, self.concepts, self.version = stream_id, cfg, concepts, version
        self.sounds, self.sights = sounds, sights
        # Consecutive windows overlap; a skipped one (no media) ends the event.
        self._spans = HysteresisSpans(1.0, 1.0, 0.0, max_gap_s=hop_s)

    def on_windows(self, windows: list[AlignedWindow]) -> list[Event]:
        closed: list[tuple[str, Span]] = []
        for window in windows:
            closed += self._on_window(window)
        return [self._event(name, span) for name, span in closed]

    def close(self) -> list[Event]:
        return [self._event(name, span) for name, span in self._spans.close_all()]

    def state(self) -> dict:
        """What a checkpoint carries: the open concepts' spans."""
        return {"spans": self._spans.state()}

    def adopt(self, state: dict) -> None:
        self._spans.adopt(state["spans"])

    def open_event_ids(self) -> list[str]:
        return [event_id(self.stream_id, f"{LABEL}/{name}", round(span.start_s, 3))
                for name, span in self._spans.open.items()]

    def _on_window(self, window: AlignedWindow) -> list[tuple[str, Span]]:
        present, found = {}, {}
        for concept in self.concepts:
            sound = _best(window.rows.get("sounds"), concept.sound_classes)
            sight = _best(window.rows.get("sights"), concept.sight_classes)
            if sound[0] >= self.cfg.min_audio and sight[0] >= self.cfg.min_visual:
                present[concept.name], found[concept.name] = 1.0, (sound, sight)
        closed = self._spans.step(window.start_s, window.end_s, present)
        for name, (sound, sight) in found.items():
            best = self._spans.open[name].context
            if sound[0] > best.get("audio_confidence", -1.0):
                best.update(audio_class=self.sounds.names[sound[1]], audio_confidence=sound[0])
            if sight[0] > best.get("visual_confidence", -1.0):
                best.update(visual_class=self.sights.names[sight[1]], visual_confidence=sight[0])
        return closed

    def _event(self, concept: str, span: Span) -> Event:
        found = span.context
        confidence = min(found["audio_confidence"], found["visual_confidence"])
        start_s, end_s = round(span.start_s, 3), round(span.end_s, 3)
        return Event(self.stream_id, LABEL, start_s, end_s, confidence=confidence, detector=DETECTOR,
                     detector_version=self.version,
                     # Two concepts can start in one window: the id names the concept too.
                     event_id=event_id(self.stream_id, f"{LABEL}/{concept}", start_s),
                     attributes={"concept": concept, **found})
