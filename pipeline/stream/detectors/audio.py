"""Audio event detectors: silence and loud_onset.

They run per stream on ``AudioSeries`` chunks of 10 ms sub-frames in time order and emit an
``Event`` only once its end is known. Sub-frames are handled one at a time with all state kept
across chunks, so any chunking of the same series gives the same events.
"""

from __future__ import annotations

from bisect import bisect_left, insort
from collections import deque
from dataclasses import dataclass

import numpy as np

from pipeline.core.config import LoudOnsetConfig, SilenceConfig
from pipeline.output.records import Event
from pipeline.stream.spans import Span

# Audio missing for longer than this between two sub-frames is a source gap: conditions close at
# the end of the last sub-frame before it, and nothing is assumed about the audio inside it.
AUDIO_GAP_S = 0.1
# loud_onset confidence is the rise over the baseline divided by this, capped at 1.
FULL_CONFIDENCE_RISE_DB = 30.0
_TIME_EPS_S = 1e-6  # PTS are floats


def _clip01(x: float) -> float:
    return min(1.0, max(0.0, float(x)))


@dataclass
class AudioSeries:
    """Per-sub-frame signals of one chunk of one stream; every array is float64 [M].

    t_s:      start of each sub-frame in seconds on the stream clock, increasing; contiguous
              (step frame_s) except across source gaps.
    rms_dbfs: RMS level in dBFS, -120 for digital silence, about -3 for a full-scale sine.
    flux:     spectral flux >= 0; NaN at the stream's first sub-frame.
    frame_s:  sub-frame duration in seconds.
    """

    t_s: np.ndarray
    rms_dbfs: np.ndarray
    flux: np.ndarray
    frame_s: float = 0.01

    def __post_init__(self) -> None:
        self.t_s = np.asarray(self.t_s, dtype=np.float64)
        if self.t_s.ndim != 1:
            raise ValueError(f"AudioSeries.t_s must be 1-D, got shape {self.t_s.shape}")
        for name in ("rms_dbfs", "flux"):
            values = np.asarray(getattr(self, name), dtype=np.float64)
            if values.shape != self.t_s.shape:
                raise ValueError(f"AudioSeries.{name} has shape {values.shape}, expected {self.t_s.shape}")
            setattr(self, name, values)
        if not self.frame_s > 0:
            raise ValueError(f"AudioSeries.frame_s must be > 0, got {self.frame_s}")

    def __len__(self) -> int:
        return int(self.t_s.shape[0])


class _AudioDetector:
    """Shared bookkeeping: the end of the last sub-frame seen, for gaps and for the end of media."""

    name = "audio"
    version = "1"

    def __init__(self, stream_id: str) -> None:
        self._stream_id = stream_id
        self._last_end_s: float | None = None

    def _gap_before(self, t_s: float) -> bool:
        return self._last_end_s is not None and t_s - self._last_end_s > AUDIO_GAP_S + _TIME_EPS_S

    def _media_end(self, end_s: float | None) -> float | None:
        # Never past the last sub-frame seen: audio that was not decoded is not invented.
        if end_s is None or self._last_end_s is None:
            return self._last_end_s if end_s is None else end_s
        return min(end_s, self._last_end_s)

    def _event(self, start_s: float, end_s: float, confidence: float, attributes: dict) -> Event:
        return Event(self._stream_id, self.name, start_s, end_s, _clip01(confidence),
                     self.name, self.version, attributes=attributes)


class SilenceDetector(_AudioDetector):
    """rms_dbfs < enter_dbfs opens a silence at that sub-frame's t_s; the first sub-frame with
    rms_dbfs > exit_dbfs (or a gap, or the end of the media) closes it; emitted when it lasted
    at least min_duration_s."""

    name = "silence"

    def __init__(self, stream_id: str, cfg: SilenceConfig) -> None:
        super().__init__(stream_id)
        self._cfg = cfg
        self._silence: Span | None = None  # levels in running statistics: hours of silence, constant memory

    def update(self, series: AudioSeries) -> list[Event]:
        events = []
        enter, exit_ = self._cfg.enter_dbfs, self._cfg.exit_dbfs
        for t_s, level in zip(series.t_s.tolist(), series.rms_dbfs.tolist()):
            if self._silence is not None and self._gap_before(t_s):
                events += self._close(self._last_end_s, "gap")
            if self._silence is None:
                if level < enter:
                    self._silence = Span.open(t_s)
                    self._silence.extend(t_s, level)
            elif level > exit_:
                events += self._close(t_s, "sound")
            else:
                self._silence.extend(t_s, level)
            self._last_end_s = t_s + series.frame_s
        return events

    def finish(self, end_s: float | None) -> list[Event]:
        if self._silence is None:
            return []
        return self._close(max(self._silence.start_s, self._media_end(end_s)), "end")

    def pending_from_s(self) -> float | None:
        return None if self._silence is None else self._silence.start_s

    carries_open_span = True  # a checkpoint carries its open silence (DetectorBank.open_spans)

    def open_span(self) -> Span | None:
        return self._silence

    def adopt_open_span(self, span: Span | None) -> None:
        """A resumed run takes the first run's open silence as it was at the checkpoint."""
        self._silence = span

    def _close(self, end_s: float, closed_by: str) -> list[Event]:
        silence, self._silence = self._silence, None
        start_s = silence.start_s
        if end_s - start_s < self._cfg.min_duration_s - _TIME_EPS_S:
            return []
        mean_dbfs = silence.mean
        # enter_dbfs -> 0.5, 20 dB quieter or more -> 1.
        confidence = 0.5 + (self._cfg.enter_dbfs - mean_dbfs) / 40.0
        attributes = {"duration_s": end_s - start_s, "mean_dbfs": mean_dbfs, "max_dbfs": silence.max,
                      "closed_by": closed_by}
        return [self._event(start_s, end_s, confidence, attributes)]


class LoudOnsetDetector(_AudioDetector):
    """A sub-frame at >= min_dbfs and >= rise_db above the baseline (median of the previous
    baseline_s of contiguous sub-frames) opens an onset at its t_s; the first sub-frame back
    within rise_db / 2 of that baseline (or a gap, or the end of the media) closes it, and only
    then can the next onset open. No onset opens before a full baseline exists.

    An onset is a transient: once it has lasted baseline_s and the running baseline has caught
    up with the level (sound that came back and stayed, e.g. after a silence), it closes as
    "settled" instead of lasting as long as the sound does."""

    name = "loud_onset"

    def __init__(self, stream_id: str, cfg: LoudOnsetConfig) -> None:
        super().__init__(stream_id)
        self._cfg = cfg
        self._history: deque[float] | None = None  # sized on the first series, from frame_s
        self._sorted: list[float] = []  # the history, sorted, for a cheap running median
        self._onset: dict | None = None

    def update(self, series: AudioSeries) -> list[Event]:
        if self._history is None:
            self._history = deque(maxlen=max(1, round(self._cfg.baseline_s / series.frame_s)))
        history, cfg = self._history, self._cfg
        events = []
        for t_s, level in zip(series.t_s.tolist(), series.rms_dbfs.tolist()):
            if self._gap_before(t_s):
                if self._onset is not None:
                    events.append(self._close(self._last_end_s, "gap"))
                history.clear()  # the level before a gap says nothing about the level after it
                self._sorted.clear()
            onset = self._onset
            if onset is not None:
                if level - onset["baseline_dbfs"] < cfg.rise_db / 2.0:
                    events.append(self._close(t_s, "fall"))
                elif t_s - onset["start_s"] >= cfg.baseline_s and level - self._median() < cfg.rise_db / 2.0:
                    events.append(self._close(t_s, "settled"))
                elif level > onset["peak_dbfs"]:
                    onset["peak_dbfs"], onset["peak_t_s"] = level, t_s
            elif level >= cfg.min_dbfs and len(history) == history.maxlen:
                baseline_dbfs = self._median()
                if level - baseline_dbfs >= cfg.rise_db:
                    self._onset = {"start_s": t_s, "baseline_dbfs": baseline_dbfs, "onset_dbfs": level,
                                   "peak_dbfs": level, "peak_t_s": t_s}
            if len(history) == history.maxlen:
                del self._sorted[bisect_left(self._sorted, history[0])]
            history.append(level)
            insort(self._sorted, level)
            self._last_end_s = t_s + series.frame_s
        return events

    def _median(self) -> float:
        values, middle = self._sorted, len(self._sorted) // 2
        return values[middle] if len(values) % 2 else 0.5 * (values[middle - 1] + values[middle])

    def finish(self, end_s: float | None) -> list[Event]:
        if self._onset is None:
            return []
        return [self._close(max(self._onset["start_s"], self._media_end(end_s)), "end")]

    def pending_from_s(self) -> float | None:
        return None if self._onset is None else self._onset["start_s"]

    def _close(self, end_s: float, closed_by: str) -> Event:
        onset, self._onset = self._onset, None
        rise_db = onset["peak_dbfs"] - onset["baseline_dbfs"]
        attributes = {"baseline_dbfs": onset["baseline_dbfs"], "onset_dbfs": onset["onset_dbfs"],
                      "peak_dbfs": onset["peak_dbfs"], "peak_t_s": onset["peak_t_s"], "rise_db": rise_db,
                      "closed_by": closed_by}
        return self._event(onset["start_s"], end_s, rise_db / FULL_CONFIDENCE_RISE_DB, attributes)
