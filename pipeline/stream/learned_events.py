"""Events from a trained event head: per-label hysteresis over window probabilities.

A label's event opens at the first window whose probability reaches ``event_head.enter`` and
extends over every following window that stays at or above ``event_head.exit``; it starts at
the start of its first window and ends at the end of its last one (windows are the head's
resolution). Confidence is the highest window probability. Ids are the records' deterministic
ids (stream, label, start), like every built-in detector's.
"""

from __future__ import annotations

from pipeline.core.config import EventHeadConfig
from pipeline.output.records import Event

DETECTOR = "event_head"


class LearnedEvents:
    def __init__(self, stream_id: str, cfg: EventHeadConfig, labels: list[str], version: str):
        self.stream_id, self.cfg, self.labels, self.version = stream_id, cfg, list(labels), version
        self._open: dict[str, list[float]] = {}  # label -> [start_s, end_s, peak probability]

    def update(self, start_s: float, end_s: float, probs) -> list[Event]:
        """One window (in time order) and its [L] label probabilities; returns events that ended."""
        ended = []
        for label, p in zip(self.labels, map(float, probs)):
            span = self._open.get(label)
            if span is None:
                if p >= self.cfg.enter:
                    self._open[label] = [start_s, end_s, p]
            elif p >= self.cfg.exit:
                span[1], span[2] = end_s, max(span[2], p)
            else:
                ended.append(self._close(label))
        return ended

    def finish(self) -> list[Event]:
        return [self._close(label) for label in list(self._open)]

    def _close(self, label: str) -> Event:
        start_s, end_s, peak = self._open.pop(label)
        return Event(self.stream_id, label, start_s, end_s, confidence=round(peak, 3), detector=DETECTOR,
                     detector_version=self.version)
