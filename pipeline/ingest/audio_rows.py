"""Cut decoded audio into fixed rows (one per audio token) that keep their PTS.

PyAV resamples each decoded frame to mono float32; rows are cut from the
resampled samples and timed from the input PTS, so a gap in the source (as in
a stream whose audio PTS jumps, or where a packet was lost or undecodable)
leaves a gap in row times instead of shifting every later row.

Contract: row start times strictly increase and rows never overlap
(``start_s[i + 1] >= start_s[i] + row_s``), whatever the input PTS do; audio
that would overlap a row already cut is dropped, not re-timed.
"""

from __future__ import annotations

import math

import av
import numpy as np

from pipeline.core.media import AudioRows

# A PTS jump larger than this starts a new run of rows rather than being absorbed.
GAP_TOLERANCE_S = 0.02


class AudioRowCutter:
    """``grid``: (origin_s, step_s), a decoder resumed mid-stream: its first run starts at the first
    ``origin_s + n * step_s`` at or after its first sample, so that its rows (and the speech windows
    cut from them) fall where the first decoder's did."""

    def __init__(self, sample_rate_hz: int, row_s: float, grid: tuple[float, float] | None = None):
        self._grid = grid
        self.sample_rate_hz = sample_rate_hz
        self.row_samples = int(round(sample_rate_hz * row_s))
        self._resampler: av.AudioResampler | None = None
        self._resampler_input: tuple[str, str, int] | None = None  # (sample format, layout, rate) it takes
        self._anchor_s: float | None = None  # time of the first sample of the current run
        self._run_rows = 0  # rows already cut in the current run
        self._skip_samples = 0  # resampled samples to drop at the run's start: they lie under cut rows
        self._buffer: list[np.ndarray] = []
        self._buffered = 0
        self._expected_in_s: float | None = None
        self._rows: list[np.ndarray] = []
        self._row_starts: list[float] = []
        self._last_row_end_s = 0.0

    @property
    def watermark_s(self) -> float:
        """Every row starting before this time has been cut."""
        if self._anchor_s is None:
            return self._last_row_end_s
        return self._anchor_s + self._run_rows * self.row_samples / self.sample_rate_hz

    def push(self, frame: av.AudioFrame, t_s: float) -> None:
        if self._expected_in_s is not None and abs(t_s - self._expected_in_s) > GAP_TOLERANCE_S:
            self.flush(next_start_s=t_s)
        if self._anchor_s is None and not self._start_run(frame, t_s):
            return
        frame_input = (frame.format.name, frame.layout.name, frame.sample_rate)
        if frame_input != self._resampler_input:
            # PyAV's resampler refuses a frame unlike the ones it was built for (a stream that
            # switches from mono 44.1 kHz to stereo 48 kHz): drain it into this run, build anew.
            self._drain_resampler()
            self._resampler = av.AudioResampler(format="flt", layout="mono", rate=self.sample_rate_hz)
            self._resampler_input = frame_input
        self._expected_in_s = t_s + frame.samples / frame.sample_rate
        for out in self._resampler.resample(frame):
            self._append(out.to_ndarray()[0])
        self._cut(final=False)

    def flush(self, next_start_s: float | None = None) -> None:
        """End the current run: drain the resampler and keep the last partial row, padded to a
        full row, unless that row would reach past ``next_start_s`` (where the next run starts)."""
        self._drain_resampler()
        self._cut(final=True, tail_until_s=next_start_s)
        self._anchor_s = None
        self._run_rows = 0
        self._skip_samples = 0
        self._expected_in_s = None

    def take_rows(self, stream_id: str = "", last: bool = False) -> AudioRows | None:
        if not self._rows:
            return None
        rows = AudioRows(np.stack(self._rows), np.asarray(self._row_starts, np.float64), self.sample_rate_hz,
                         stream_id, last)
        self._rows, self._row_starts = [], []
        return rows

    def _start_run(self, frame: av.AudioFrame, t_s: float) -> bool:
        """Anchor a new run at ``frame``; False when all of it lies under rows already cut."""
        end_s = t_s + frame.samples / frame.sample_rate
        if end_s <= self._last_row_end_s:
            return False  # PTS went backwards (a broken stream): rows must stay in time order
        # A frame that starts under the last row (PTS stepping back a little) begins the run where
        # that row ends; its samples before then are dropped, so no audio is placed twice.
        self._anchor_s = max(t_s, self._last_row_end_s)
        if self._grid is not None:
            origin_s, step_s = self._grid
            start_s = origin_s + math.ceil((self._anchor_s - origin_s) / step_s - 1e-6) * step_s
            if start_s >= end_s:
                self._anchor_s = None
                return False  # all of it lies before the grid's next point
            self._grid = None
            # Timed as the first decoder timed them: from the run's origin, counting its rows.
            self._anchor_s = origin_s
            self._run_rows = round((start_s - origin_s) * self.sample_rate_hz / self.row_samples)
            self._skip_samples = int(round((start_s - t_s) * self.sample_rate_hz))
            return True
        self._skip_samples = int(round((self._anchor_s - t_s) * self.sample_rate_hz))
        return True

    def _drain_resampler(self) -> None:
        if self._resampler is not None:
            for out in self._resampler.resample(None):
                self._append(out.to_ndarray()[0])
        self._resampler = None
        self._resampler_input = None

    def _append(self, samples: np.ndarray) -> None:
        if self._skip_samples:
            skipped = min(self._skip_samples, samples.size)
            samples, self._skip_samples = samples[skipped:], self._skip_samples - skipped
        if samples.size:
            self._buffer.append(samples)
            self._buffered += samples.size

    def _cut(self, final: bool, tail_until_s: float | None = None) -> None:
        if self._anchor_s is None:
            return
        n_rows = self._buffered // self.row_samples
        remainder = self._buffered - n_rows * self.row_samples
        if n_rows == 0 and not (final and remainder):
            return
        samples = np.concatenate(self._buffer) if len(self._buffer) > 1 else self._buffer[0]
        for i in range(n_rows):
            self._emit_row(samples[i * self.row_samples:(i + 1) * self.row_samples])
        tail = samples[n_rows * self.row_samples:]
        row_s = self.row_samples / self.sample_rate_hz
        tail_fits = tail_until_s is None or self.watermark_s + row_s <= tail_until_s
        if final and tail.size * 2 >= self.row_samples and tail_fits:
            # Repeat the tail cyclically rather than zero-pad it: zeros would read
            # as a drop in loudness that is not in the media.
            self._emit_row(np.resize(tail, self.row_samples))
            tail = tail[:0]
        # A tail that does not fit before the next run is dropped: padded, it would overlap that
        # run's first row, and re-timed it would misplace the audio.
        self._buffer = [tail] if tail.size and not final else []
        self._buffered = tail.size if not final else 0

    def _emit_row(self, row: np.ndarray) -> None:
        row_s = self.row_samples / self.sample_rate_hz
        start_s = self._anchor_s + self._run_rows * row_s
        self._rows.append(row)
        self._row_starts.append(start_s)
        self._run_rows += 1
        self._last_row_end_s = start_s + row_s
