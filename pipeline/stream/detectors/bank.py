"""The built-in event detectors of one stream, behind one ``DetectorBank``.

Detectors need no learned weights: they read per-frame video signals (``VideoSeries``) and
per-10 ms audio signals (``AudioSeries``) produced upstream, all timed in seconds on the stream
clock. Each detector is a small class (``name``, ``version``, ``update``, ``finish``) in
``detectors_video`` or ``detectors_audio``; thresholds live in ``config.DetectorsConfig``.
The optional ``speech`` detector (``detectors_speech``, ``config.SpeechConfig``) reads the
per-32 ms speech probabilities (``SpeechProbs``) that the decoders compute with silero-vad.

Contract of the bank:
- Feed each modality's chunks in time order; chunk boundaries never change the events.
- An event is returned once its end is known, exactly once, with the real PTS of its first
  frame / sub-frame and of the one that ended it (or of the end of the media).
- ``pending_from_s`` is the earliest start of a condition still open. No event returned later
  starts before it; None means every later event starts at or after the last t_s fed.
- ``finish`` closes what is still open at the end of the media.
- ``open_spans`` / ``adopt_open_spans``: the open conditions kept as running statistics (black,
  frozen, silence), so that a checkpoint carries them: a picture frozen for hours does not hold a
  stream's checkpoints back. The others (cut candidates, motion bursts, loud onsets, speech) hold
  a checkpoint's settled time back while open (``pending_from_s(carried=False)``).
"""

from __future__ import annotations

import numpy as np

from pipeline.core.config import DetectorsConfig, SpeechConfig
from pipeline.core.errors import AvfuseError
from pipeline.core.media import SpeechProbs
from pipeline.output.records import Event, event_id
from pipeline.stream.detectors.audio import AudioSeries, LoudOnsetDetector, SilenceDetector
from pipeline.stream.detectors.speech import SpeechDetector
from pipeline.stream.detectors.video import VideoDetectors, VideoSeries, carries_open_span
from pipeline.stream.spans import Span

__all__ = ["AudioSeries", "DetectorBank", "DetectorInputError", "VideoSeries"]


class DetectorInputError(AvfuseError):
    """Series fed out of time order, or after ``finish``."""


class DetectorBank:
    """All enabled built-in detectors of one stream, with their state across chunks."""

    def __init__(self, stream_id: str, cfg: DetectorsConfig, speech: SpeechConfig | None = None) -> None:
        self.stream_id = stream_id
        self._video = VideoDetectors(stream_id, cfg)
        self._audio = [
            detector
            for detector in (
                SilenceDetector(stream_id, cfg.silence) if cfg.silence.enabled else None,
                LoudOnsetDetector(stream_id, cfg.loud_onset) if cfg.loud_onset.enabled else None,
            )
            if detector is not None
        ]
        self._speech = [SpeechDetector(stream_id, speech)] if speech is not None and speech.enabled else []
        self._last_t_s: dict[str, float] = {}
        self._finished = False

    @property
    def detector_names(self) -> tuple[str, ...]:
        """Names of the detectors that run, i.e. the enabled ones."""
        return tuple(d.name for d in self._video.detectors + self._audio + self._speech)

    def on_video(self, series: VideoSeries) -> list[Event]:
        self._check_order("video", series.t_s)
        return _in_time_order(self._video.update(series))

    def on_audio(self, series: AudioSeries) -> list[Event]:
        self._check_order("audio", series.t_s)
        return _in_time_order([e for detector in self._audio for e in detector.update(series)])

    def on_speech(self, probs: SpeechProbs) -> list[Event]:
        self._check_order("speech", probs.t_s)
        return _in_time_order([e for detector in self._speech for e in detector.update(probs)])

    def finish(self, video_end_s: float | None, audio_end_s: float | None) -> list[Event]:
        """Close open conditions at the end of the media; None: that modality is absent.

        Video conditions end at ``video_end_s`` (never before the last frame seen); audio ones
        at ``audio_end_s``, but never past the last sub-frame (speech: window) seen. Later calls
        return nothing.
        """
        if self._finished:
            return []
        self._finished = True
        events = self._video.finish(video_end_s)
        for detector in self._audio + self._speech:
            events += detector.finish(audio_end_s)
        return _in_time_order(events)

    def close_at_gap(self, video_end_s: float | None, audio_end_s: float | None) -> list[Event]:
        """The media stops here for a while (a live source went down): close what is open as at the
        end of the media, so no event spans the gap; detection starts afresh after it."""
        if self._finished:
            return []
        events = self._video.finish(video_end_s)
        self._video.forget_frames()
        for detector in self._audio + self._speech:
            events += detector.finish(audio_end_s)
        return _in_time_order(events)

    def speech_open_from_s(self) -> float | None:
        """The start of the speech still open (not yet an event); None when none is, or speech is off."""
        return self._speech[0].pending_from_s() if self._speech else None

    def pending_from_s(self, carried: bool = True) -> float | None:
        """The earliest start of a condition still open; ``carried`` False: of those ``open_spans``
        does not carry."""
        starts = [self._video.pending_from_s(carried)] + [
            d.pending_from_s() for d in self._audio + self._speech if carried or not carries_open_span(d)]
        starts = [s for s in starts if s is not None]
        return min(starts) if starts else None

    def _carriers(self) -> list:
        return [d for d in self._video.detectors + self._audio + self._speech if carries_open_span(d)]

    def open_spans(self) -> dict[str, dict]:
        """The open conditions a checkpoint carries, by detector name (= event label): running statistics."""
        return {d.name: span.state() for d in self._carriers() if (span := d.open_span()) is not None}

    def open_event_ids(self) -> list[str]:
        """The ids the carried conditions' events will have (id: stream, label, start)."""
        return [event_id(self.stream_id, d.name, span.start_s) for d in self._carriers()
                if (span := d.open_span()) is not None]

    def adopt_open_spans(self, spans: dict[str, dict]) -> None:
        """A resumed run, at the checkpoint's processed time: the first run's open conditions replace
        what its own warm-up opened (a run it began at the resume point, not at the real start); one
        the first run had not open there is dropped."""
        for detector in self._carriers():
            state = spans.get(detector.name)
            detector.adopt_open_span(Span.from_state(state) if state is not None else None)

    def _check_order(self, modality: str, t_s: np.ndarray) -> None:
        if self._finished:
            raise DetectorInputError(self.stream_id, f"{modality} series fed after finish")
        if len(t_s) == 0:
            return
        last_t_s = self._last_t_s.get(modality)
        if (last_t_s is not None and t_s[0] <= last_t_s) or np.any(np.diff(t_s) <= 0):
            raise DetectorInputError(self.stream_id, f"{modality} t_s not increasing near {float(t_s[0]):.3f} s")
        self._last_t_s[modality] = float(t_s[-1])


def _in_time_order(events: list[Event]) -> list[Event]:
    return sorted(events, key=lambda e: (e.start_s, e.end_s, e.label))
