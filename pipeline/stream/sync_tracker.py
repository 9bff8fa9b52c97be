"""Per-stream A/V offset estimate from the sync head's window beliefs, and ``av_desync`` events.

Each fused window with both modalities brings a probability per lag and one for "no match"
(``operators.av_sync``). Windows are combined by the geometric mean of their lag probabilities:
the offset is where they agree, and a window that says nothing (flat) moves nothing.

- ``estimate()``: over the last ``horizon_s`` of windows (what the stream does now), used for
  periodic summaries and for events.
- ``estimate(whole_stream=True)``: over every window so far, used by the final summary.
- ``av_desync`` opens at the first window whose recent estimate is confident and further than
  ``desync_threshold_s`` from zero, and closes at the end of the last such window once the
  estimate falls back within ``0.75 x`` the threshold (hysteresis), loses confidence or changes
  side (audio late / early: a new event may open), or at the end of the stream.
"""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass

import numpy as np

from operators.lag_offset import offset_from_lag_scores
from pipeline.core.config import AVSyncConfig
from pipeline.output.records import Event

DETECTOR = "av_sync"
VERSION = "1"
EXIT_FRACTION = 0.75
_LOG_FLOOR = 1e-6


@dataclass(frozen=True)
class _Evidence:
    """What windows say, in sums that add up: a window that found no match in its audio says
    little about the lag, so it counts for as much as it matched (weight 1 - p(no match))."""

    weighted_log_p: np.ndarray  # sum of weight * log p(lag)
    weight: float
    log_no_match: float  # sum of log p(no match): how likely it is that no window matched
    windows: int

    @staticmethod
    def of(log_p: np.ndarray, no_match: float) -> "_Evidence":
        return _Evidence((1.0 - no_match) * log_p, 1.0 - no_match, float(np.log(max(no_match, _LOG_FLOOR))), 1)

    def __add__(self, other: "_Evidence") -> "_Evidence":
        return _Evidence(self.weighted_log_p + other.weighted_log_p, self.weight + other.weight,
                         self.log_no_match + other.log_no_match, self.windows + other.windows)


@dataclass
class SyncEstimate:
    offset_s: float  # positive: audio is late
    confidence: float  # 0..1: agreement of the windows on that lag, times how often they matched
    windows: int


class _OpenDesync:
    """An av_desync being built, in constant memory however long it lasts: the windows' estimates
    are counted per value (offsets are whole milliseconds within the head's lags, so there are
    few distinct ones) for an exact median, and their confidences summed for the mean."""

    def __init__(self, start_s: float, end_s: float, side: float):
        self.start_s, self.end_s, self.side = start_s, end_s, side
        self._offsets: Counter[float] = Counter()
        self._confidence_sum, self._windows = 0.0, 0

    def add(self, end_s: float, estimate: SyncEstimate) -> None:
        self.end_s = end_s
        self._offsets[estimate.offset_s] += 1
        self._confidence_sum += estimate.confidence
        self._windows += 1

    @property
    def distinct_offsets(self) -> int:
        return len(self._offsets)

    @property
    def mean_confidence(self) -> float:
        return self._confidence_sum / self._windows

    @property
    def median_offset_s(self) -> float:
        """As ``np.median`` of every window's offset: the middle one, or the mean of the middle two."""
        lower, upper = (self._windows - 1) // 2, self._windows // 2
        below, low_value = 0, None
        for value in sorted(self._offsets):
            below += self._offsets[value]
            if low_value is None and below > lower:
                low_value = value
            if below > upper:
                return float(low_value) if lower == upper else (low_value + value) / 2.0
        raise ValueError("an av_desync with no window")


class SyncTracker:
    def __init__(self, stream_id: str, cfg: AVSyncConfig, lags_s: np.ndarray):
        self.stream_id, self.cfg = stream_id, cfg
        self.lags_s = np.asarray(lags_s, np.float64)
        self._recent: deque[tuple[float, _Evidence]] = deque()  # (window end_s, its evidence)
        self._total: _Evidence | None = None  # every window so far, in constant memory
        self._open: _OpenDesync | None = None  # the av_desync being built

    def add(self, start_s: float, end_s: float, probs: np.ndarray, evidence: bool = True) -> list[Event]:
        """One window's [M + 1] probabilities (lags, no match); returns av_desync events that ended.

        ``evidence``: whether the window can tell (the session decides): its picture shows
        something that moves, and both modalities fill it. A black or frozen picture cannot be
        in or out of step with its sound, whatever the head believes there (on real footage it
        believed in offsets that were not), and a window past the media's end holds a fraction
        of one; such a window adds nothing, while an open av_desync still runs through it.
        """
        if evidence:
            lag_probs = np.asarray(probs[:-1], np.float64)
            log_p = np.log(np.maximum(lag_probs / max(lag_probs.sum(), _LOG_FLOOR), _LOG_FLOOR))
            window = _Evidence.of(log_p, float(np.clip(probs[-1], 0.0, 1.0)))
            self._recent.append((end_s, window))
            self._total = window if self._total is None else self._total + window
        while self._recent and self._recent[0][0] <= end_s - self.cfg.horizon_s:
            self._recent.popleft()
        return self._update_events(start_s, end_s)

    def estimate(self, whole_stream: bool = False) -> SyncEstimate | None:
        """The current offset estimate, None before any window with both modalities."""
        if whole_stream:
            evidence = self._total
        else:
            evidence = None
            for _, window in self._recent:
                evidence = window if evidence is None else evidence + window
        return None if evidence is None else self._combine(evidence)

    def _combine(self, evidence: "_Evidence") -> SyncEstimate:
        log_mean = evidence.weighted_log_p / max(evidence.weight, _LOG_FLOOR)
        offset, mass = offset_from_lag_scores(np.exp(log_mean - log_mean.max()), self.lags_s)
        matched = 1.0 - float(np.exp(evidence.log_no_match))  # that some window matched at all
        return SyncEstimate(round(float(offset), 3), round(float(mass) * matched, 3), evidence.windows)

    def _update_events(self, start_s: float, end_s: float) -> list[Event]:
        current = self.estimate()
        if current is None or len(self._recent) < self.cfg.min_windows:
            return []
        threshold = self.cfg.desync_threshold_s
        confident = current.confidence >= self.cfg.min_confidence
        if self._open is None:
            if confident and abs(current.offset_s) > threshold:
                self._open = _OpenDesync(start_s, end_s, np.sign(current.offset_s))
                self._open.add(end_s, current)
            return []
        same_side = np.sign(current.offset_s) == self._open.side
        if confident and same_side and abs(current.offset_s) >= EXIT_FRACTION * threshold:
            self._open.add(end_s, current)
            return []
        return self._close()

    def pending_from_s(self) -> float | None:
        """The start of the av_desync being built; None when none is."""
        return None if self._open is None else self._open.start_s

    def finish(self) -> list[Event]:
        """Close an open av_desync at the end of its last window."""
        return self._close() if self._open is not None else []

    def _close(self) -> list[Event]:
        span, self._open = self._open, None
        return [Event(self.stream_id, "av_desync", span.start_s, span.end_s,
                      confidence=round(span.mean_confidence, 3), detector=DETECTOR,
                      detector_version=VERSION, attributes={"offset_s": round(span.median_offset_s, 3)})]
