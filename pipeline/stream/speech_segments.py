"""Where a stream's speech is cut into segments for the recogniser, and the audio they carry.

Named concepts:
- the *audio buffer*: the stream's recent 16 kHz samples in runs (a run is contiguous; a gap in
  the source PTS starts a new one), each sample timed from its run's PTS, never from a count of
  samples since the stream began;
- *open speech*: the span the speech detector has opened but not yet closed (its start is the
  detector's ``pending`` start), heard up to the last scored VAD window (*heard until*);
- a *segment*: speech from its start (or from the last cut inside the same speech) to its end,
  with ``PAD_BEFORE_S`` of audio before a speech's start and ``settle_s`` after its end (no more:
  that much is certainly heard when the detector closes it), where the run has them, and none at
  a cut, which is a pause between words whose neighbours must not be heard twice. Speech that the detector closes
  becomes one segment; speech longer than ``max_segment_s`` is cut at the quietest 20 ms in the
  ``QUIET_SEARCH_S`` before that limit (a pause between words, usually). Open speech is cut as
  soon as it is sure to reach the limit: ``max_segment_s + settle_s`` heard, ``settle_s`` being
  how long after its end the detector may still close a speech (its min_silence_s plus one VAD
  window). So a live stream's transcript lags its speech by at most that plus one decode chunk
  and the recogniser's time. Segments shorter than ``min_segment_s`` are dropped: Whisper
  invents text on a fraction of a word.

Memory: outside speech the buffer keeps only ``PAD_BEFORE_S`` before what was heard; inside it,
the open segment (at most ``max_segment_s + settle_s`` plus one chunk). Segments depend on the samples and the
speech spans only, never on how the stream was cut into chunks.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.core.config import Config

# Whisper hears the first phoneme whole (the VAD opens at the first sure window); on nasa_13013
# 0.3 s gave the fewest errors of 0-0.5 s.
PAD_BEFORE_S = 0.3
QUIET_SEARCH_S = 1.5
QUIET_FRAME_S = 0.02
_CONTIGUOUS_S = 0.001  # rows this close to where the previous ended continue its run


@dataclass
class SpeechSegment:
    """One stretch of speech of one stream, for the ASR stage (one request: ``len`` is 1).

    start_s, end_s: the speech it covers, in seconds on the stream clock.
    samples_f32:    [N] float32 mono at sample_rate_hz, from audio_start_s (start_s minus the
                    padding, or later where the audio run begins later) to a little past end_s.
    closed_by:      "speech_end" (the detector closed the speech) or "max_segment" (cut inside it).
    """

    stream_id: str
    start_s: float
    end_s: float
    audio_start_s: float
    samples_f32: np.ndarray
    sample_rate_hz: int
    closed_by: str

    def __len__(self) -> int:
        return 1

    @property
    def duration_s(self) -> float:
        return self.end_s - self.start_s


class _Run:
    """Contiguous samples, kept as the arrays they arrived in; sample i of the run (counted from
    its first, dropped ones included) is at ``origin_s + i / rate_hz``, whatever was trimmed."""

    def __init__(self, origin_s: float, rate_hz: int):
        self.origin_s, self.rate_hz = origin_s, rate_hz
        self.parts: list[np.ndarray] = []
        self.first = 0  # samples dropped from the front
        self.samples = 0  # samples kept

    @property
    def start_s(self) -> float:
        return self.origin_s + self.first / self.rate_hz

    @property
    def end_s(self) -> float:
        return self.origin_s + (self.first + self.samples) / self.rate_hz

    def time_of(self, index: int) -> float:
        """The time of kept sample ``index``."""
        return self.origin_s + (self.first + index) / self.rate_hz

    def append(self, samples: np.ndarray) -> None:
        self.parts.append(samples)
        self.samples += samples.size

    def index(self, t_s: float) -> int:
        """The kept sample at (or just after) ``t_s``, clipped to the kept ones."""
        return int(np.clip(round((t_s - self.origin_s) * self.rate_hz) - self.first, 0, self.samples))

    def _whole(self) -> np.ndarray:
        if len(self.parts) > 1:
            self.parts = [np.concatenate(self.parts)]
        return self.parts[0] if self.parts else np.zeros(0, np.float32)

    def between(self, start_s: float, end_s: float) -> np.ndarray:
        return self._whole()[self.index(start_s):self.index(end_s)]

    def drop_before(self, t_s: float) -> None:
        cut = self.index(t_s)
        if cut > 0:
            self.parts = [self._whole()[cut:].copy()]
            self.first, self.samples = self.first + cut, self.samples - cut


class SpeechSegmenter:
    """Cuts one stream's speech into segments; see the module docstring.

    Per chunk, in time order: ``add_audio`` with the chunk's samples, then ``on_speech`` with the
    speech spans the detector closed in that chunk, the start of the speech still open (None when
    none is) and how far the VAD has heard; it returns the segments now complete.
    """

    def __init__(self, stream_id: str, sample_rate_hz: int, max_segment_s: float, min_segment_s: float,
                 settle_s: float, pad_before_s: float = PAD_BEFORE_S):
        if max_segment_s <= QUIET_SEARCH_S:
            raise ValueError(f"max_segment_s must exceed {QUIET_SEARCH_S} s")
        self.stream_id, self.rate_hz = stream_id, sample_rate_hz
        self.max_segment_s, self.min_segment_s = max_segment_s, min_segment_s
        self.settle_s, self.pad_before_s = settle_s, pad_before_s
        self._runs: list[_Run] = []
        self._cut_s: float | None = None  # the last cut inside a speech: its next segment starts here

    @property
    def buffered_s(self) -> float:
        return sum(run.samples for run in self._runs) / self.rate_hz

    def add_audio(self, samples_f32: np.ndarray, start_s: np.ndarray) -> None:
        """Rows of samples ([K, R], or one row [N]) and the time of each row's first sample ([K])."""
        rows = np.asarray(samples_f32, np.float32)
        rows = rows.reshape(1, -1) if rows.ndim == 1 else rows
        for row, row_start_s in zip(rows, np.atleast_1d(start_s).tolist()):
            last = self._runs[-1] if self._runs else None
            if last is None or abs(row_start_s - last.end_s) > _CONTIGUOUS_S:
                last = _Run(row_start_s, self.rate_hz)
                self._runs.append(last)
            last.append(row)

    def on_speech(self, ended: list[tuple[float, float]], open_from_s: float | None,
                  heard_until_s: float) -> list[SpeechSegment]:
        """Segments completed by the closed spans ``ended`` and by the open speech heard so far."""
        segments: list[SpeechSegment] = []
        for start_s, end_s in ended:
            cuts = self._cut_long(self._from(start_s), end_s)
            from_s = cuts[-1].end_s if cuts else self._from(start_s)
            segments += cuts
            if end_s - from_s >= self.min_segment_s:
                segments.append(self._segment(from_s, end_s, "speech_end", pad_before=from_s != self._cut_s))
            self._cut_s = None
        if open_from_s is not None:
            # Only what is sure to be cut however the speech goes on: it may still close up to
            # settle_s before what was heard.
            segments += self._cut_long(self._from(open_from_s), heard_until_s - self.settle_s)
        keep_from_s = self._from(open_from_s) if open_from_s is not None else heard_until_s
        self._trim(keep_from_s - self.pad_before_s)
        return [segment for segment in segments if segment.samples_f32.size]  # no audio (a gap): nothing to hear

    def _from(self, speech_start_s: float) -> float:
        return speech_start_s if self._cut_s is None else max(speech_start_s, self._cut_s)

    def _cut_long(self, from_s: float, until_s: float) -> list[SpeechSegment]:
        """Cuts inside speech that lasts from ``from_s`` to at least ``until_s``, each near max_segment_s long."""
        segments = []
        while until_s - from_s >= self.max_segment_s:
            cut_s = self._quietest_s(from_s + self.max_segment_s - QUIET_SEARCH_S, from_s + self.max_segment_s)
            segments.append(self._segment(from_s, cut_s, "max_segment", pad_before=from_s != self._cut_s))
            from_s = self._cut_s = cut_s
        return segments

    def _run_at(self, t_s: float) -> _Run | None:
        for run in self._runs:
            if run.start_s - _CONTIGUOUS_S <= t_s < run.end_s:
                return run
        return None

    def _quietest_s(self, start_s: float, end_s: float) -> float:
        """The centre of the 20 ms frame with the least energy in [start_s, end_s); end_s without audio there."""
        run = self._run_at(start_s)
        if run is None:
            return end_s
        samples = run.between(start_s, end_s)
        frame = int(round(QUIET_FRAME_S * self.rate_hz))
        frames = samples[: samples.size // frame * frame].reshape(-1, frame)
        if len(frames) == 0:
            return end_s
        # The last quiet frame wins a tie: the longest segment within the limit.
        energy = (frames.astype(np.float64) ** 2).mean(axis=1)
        quietest = len(energy) - 1 - int(np.argmin(energy[::-1]))
        return run.time_of(run.index(start_s) + quietest * frame) + frame / 2 / self.rate_hz

    def _segment(self, start_s: float, end_s: float, closed_by: str, pad_before: bool) -> SpeechSegment:
        run = self._run_at(start_s)
        if run is None:  # speech the VAD scored but whose audio is gone: nothing to hear
            audio_start_s, samples = start_s, np.zeros(0, np.float32)
        else:
            audio_start_s = run.time_of(run.index(start_s - (self.pad_before_s if pad_before else 0.0)))
            audio_end_s = end_s + (self.settle_s if closed_by == "speech_end" else 0.0)
            samples = run.between(audio_start_s, min(run.end_s, audio_end_s)).copy()
        return SpeechSegment(self.stream_id, start_s, end_s, audio_start_s, samples, self.rate_hz, closed_by)

    def _trim(self, before_s: float) -> None:
        self._runs = [run for run in self._runs if run.end_s > before_s]
        if self._runs:
            self._runs[0].drop_before(before_s)


ASR_SAMPLE_RATE_HZ = 16000  # operators.asr.SAMPLE_RATE_HZ, without importing faster-whisper here


def transcripts_off_reason(cfg: Config) -> str | None:
    """Why ``asr.enabled`` cannot be honoured with this config; None when it can (or is not asked)."""
    if not cfg.asr.enabled:
        return None
    if not cfg.speech.enabled:
        return "they need speech detection (speech.enabled: false)"
    if cfg.audio.sample_rate_hz != ASR_SAMPLE_RATE_HZ:
        return f"Whisper hears 16 kHz audio, audio.sample_rate_hz is {cfg.audio.sample_rate_hz}"
    from operators.speech import unavailable_reason

    reason = unavailable_reason(cfg.audio.sample_rate_hz)
    return None if reason is None else f"they need speech detection ({reason})"


def transcripts_wanted(cfg: Config) -> bool:
    return cfg.asr.enabled and transcripts_off_reason(cfg) is None
