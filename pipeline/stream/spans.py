"""Spans: the one shape of "a condition opens, extends, closes", with running statistics.

``Span`` is the open condition every detector keeps (black, frozen, silence, speech, tags,
av_events, faces): where it started, how far it reached, and the peak, sum and count of its
values, never the values themselves, so a condition that lasts for hours costs constant memory.

``HysteresisSpans`` is its scored-steps form. A step is a stretch of stream time [start_s, end_s)
with a score per key (a class, a concept). Per key, a span opens at a step scoring at least
``enter``, extends over every following step scoring at least ``exit`` and closes at the first
one below (a key absent from a step scores 0).
A pause in the steps longer than ``max_gap_s`` closes every span at the end of the last step
before it: nothing is assumed about media that was not seen. Spans keep running statistics,
not their steps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Hashable

_TIME_EPS_S = 1e-6


@dataclass
class Span:
    start_s: float
    end_s: float
    peak: float
    total: float = 0.0
    steps: int = 0
    context: dict = field(default_factory=dict)  # caller's running sums (e.g. scores of other classes)

    @classmethod
    def open(cls, start_s: float) -> "Span":
        """A span opening at ``start_s`` with no value yet."""
        return cls(start_s, start_s, -math.inf)

    def extend(self, end_s: float, score: float) -> None:
        self.end_s = max(self.end_s, end_s)
        self.peak = max(self.peak, score)
        self.total += score
        self.steps += 1

    def absorb(self, other: "Span") -> None:
        """Take in a later stretch's values (a pause that turned out to be part of this span)."""
        self.end_s = max(self.end_s, other.end_s)
        self.peak = max(self.peak, other.peak)
        self.total += other.total
        self.steps += other.steps

    def state(self) -> dict:
        """Its running statistics as JSON values (a checkpoint carries an open span)."""
        # context as [key, value] pairs: its keys may be class indices, which JSON objects would make strings
        return {"start_s": self.start_s, "end_s": self.end_s, "peak": self.peak if self.steps else None,
                "total": self.total, "steps": self.steps, "context": [[k, v] for k, v in self.context.items()]}

    @classmethod
    def from_state(cls, state: dict) -> "Span":
        peak = state["peak"]
        return cls(float(state["start_s"]), float(state["end_s"]), -math.inf if peak is None else float(peak),
                   float(state["total"]), int(state["steps"]), {k: v for k, v in state.get("context") or []})

    @property
    def max(self) -> float:
        """The peak value, 0.0 before any."""
        return self.peak if self.steps else 0.0

    @property
    def mean(self) -> float:
        return self.total / self.steps if self.steps else 0.0

    @property
    def duration_s(self) -> float:
        return self.end_s - self.start_s


class HysteresisSpans:
    """Open spans per key; ``step`` returns the spans it closed, as (key, span), oldest first."""

    def __init__(self, enter: float, exit: float, min_duration_s: float, max_gap_s: float):
        if exit > enter:
            raise ValueError(f"exit {exit} must not exceed enter {enter}")
        self.enter, self.exit = enter, exit
        self.min_duration_s, self.max_gap_s = min_duration_s, max_gap_s
        self.open: dict[Hashable, Span] = {}
        self._last_end_s: float | None = None

    def step(self, start_s: float, end_s: float, scores: dict[Hashable, float]) -> list[tuple[Hashable, Span]]:
        closed = []
        if self._last_end_s is not None and start_s - self._last_end_s > self.max_gap_s + _TIME_EPS_S:
            closed += self.close_all(self._last_end_s)
        for key in [k for k in self.open if scores.get(k, 0.0) < self.exit]:
            closed += self._close(key, self.open[key].end_s)  # the end of its last step at or above exit
        for key, score in scores.items():
            span = self.open.get(key)
            if span is None and score >= self.enter:
                span = self.open[key] = Span(start_s, end_s, score)
            if span is not None:
                span.extend(end_s, score)
        self._last_end_s = end_s if self._last_end_s is None else max(self._last_end_s, end_s)
        return closed

    def close_all(self, end_s: float | None = None) -> list[tuple[Hashable, Span]]:
        """Close every open span at ``end_s`` (never past its last step; default: that step's end)."""
        closed = []
        for key in list(self.open):
            closed += self._close(key, self.open[key].end_s if end_s is None else end_s)
        return closed

    def pending_from_s(self) -> float | None:
        return min((span.start_s for span in self.open.values()), default=None)

    def state(self) -> dict:
        """The open spans (as [key, Span.state()] pairs: keys stay ints or strings) and the last step's end."""
        return {"open": [[key, span.state()] for key, span in self.open.items()], "last_end_s": self._last_end_s}

    def adopt(self, state: dict) -> None:
        """Continue from ``state()``: a resumed run takes over the first run's open spans."""
        self.open = {key: Span.from_state(span) for key, span in state["open"]}
        self._last_end_s = state["last_end_s"]

    def _close(self, key: Hashable, end_s: float) -> list[tuple[Hashable, Span]]:
        span = self.open.pop(key)
        span.end_s = min(span.end_s, end_s)
        if span.duration_s < self.min_duration_s - _TIME_EPS_S:
            return []
        return [(key, span)]
