"""Signal curves of one stream: loudness, luma and motion per second, for the timeline report.

Input: the session's kept-frame series (luma, motion) and audio sub-frame levels (dBFS), in
time order per modality. Output: ``Signals`` records, each covering consecutive bins of
``step_s`` (mean and peak per bin, None for a bin without samples), emitted up to where both
modalities have been seen, then the rest at the end. Running sums per open bin only, so a
24/7 stream keeps flat memory; a few floats per second reach the sink.
"""

from __future__ import annotations

import math

import numpy as np

from pipeline.output.records import Signals

SIGNALS = ("loudness_dbfs", "luma", "motion")


class _Bins:
    """Running mean and peak of one signal per bin, for bins not yet emitted."""

    def __init__(self):
        self.sums: dict[int, float] = {}
        self.counts: dict[int, int] = {}
        self.peaks: dict[int, float] = {}

    def add(self, bins: np.ndarray, values: np.ndarray) -> None:
        for index, value in zip(bins.tolist(), values.tolist()):
            if math.isnan(value):
                continue
            self.sums[index] = self.sums.get(index, 0.0) + value
            self.counts[index] = self.counts.get(index, 0) + 1
            self.peaks[index] = max(self.peaks.get(index, -math.inf), value)

    def pop(self, first: int, end: int) -> tuple[list[float | None], list[float | None]]:
        means, peaks = [], []
        for index in range(first, end):
            count = self.counts.pop(index, 0)
            total, peak = self.sums.pop(index, 0.0), self.peaks.pop(index, None)
            means.append(round(total / count, 4) if count else None)
            peaks.append(round(peak, 4) if peak is not None else None)
        return means, peaks


class SignalCurves:
    def __init__(self, stream_id: str, step_s: float = 1.0, has_video: bool = True, has_audio: bool = True):
        self.stream_id, self.step_s = stream_id, step_s
        self._bins = {name: _Bins() for name in SIGNALS}
        self._seen_s = {"video": 0.0 if has_video else math.inf, "audio": 0.0 if has_audio else math.inf}
        self._emitted = 0  # bins before this one are in records already
        self._last = -1  # the highest bin with a sample

    @property
    def emitted_s(self) -> float:
        """Every bin before this time is in a record already."""
        return self._emitted * self.step_s

    def resume_from(self, emitted_s: float) -> None:
        """A resumed run: the bins before ``emitted_s`` were written by the first run."""
        self._emitted = max(self._emitted, int(round(emitted_s / self.step_s)))

    def _index(self, t_s: np.ndarray) -> np.ndarray:
        return np.floor(np.asarray(t_s, dtype=np.float64) / self.step_s).astype(np.int64)

    def add_video(self, t_s: np.ndarray, luma: np.ndarray, motion: np.ndarray, end_s: float) -> None:
        self._add("luma", t_s, luma)
        self._add("motion", t_s, motion)
        self._seen_s["video"] = max(self._seen_s["video"], end_s)

    def add_audio(self, t_s: np.ndarray, rms_dbfs: np.ndarray, end_s: float) -> None:
        self._add("loudness_dbfs", t_s, rms_dbfs)
        self._seen_s["audio"] = max(self._seen_s["audio"], end_s)

    def _add(self, name: str, t_s: np.ndarray, values: np.ndarray) -> None:
        if len(t_s) == 0:
            return
        bins = self._index(t_s)
        keep = bins >= self._emitted  # late samples of an emitted bin are dropped, not re-sent
        self._bins[name].add(bins[keep], np.asarray(values, dtype=np.float64)[keep])
        self._last = max(self._last, int(bins.max()))

    def take(self, final: bool = False) -> Signals | None:
        """A record of the bins complete in both modalities (all of them when ``final``); None when
        there are none."""
        if final:
            end = self._last + 1
        else:
            seen_s = min(self._seen_s.values())
            end = int(math.floor(seen_s / self.step_s)) if math.isfinite(seen_s) else self._last
        if end <= self._emitted:
            return None
        first, self._emitted = self._emitted, end
        curves = {name: dict(zip(("mean", "peak"), self._bins[name].pop(first, end))) for name in SIGNALS}
        return Signals(self.stream_id, round(first * self.step_s, 6), self.step_s, **curves)
