"""The speech detector: silero-vad window probabilities (``SpeechProbs``) become ``speech`` events.

Hysteresis as in silero's ``get_speech_timestamps`` (its defaults are ``config.SpeechConfig``'s),
without its 30 ms padding, so that event times are window times:
- a window with prob >= enter_prob opens speech at that window's t_s;
- in speech, the first window below exit_prob marks a possible end (its t_s); a window at
  >= enter_prob before min_silence_s have passed cancels it (the pause is merged); a window
  below exit_prob at least min_silence_s after the possible end closes the speech there;
- a source gap (no window for more than AUDIO_GAP_S) or the end of the media closes it at the
  end of the last window before (or at the possible end, when one is pending);
- speech that lasted less than min_speech_s is no event.
Confidence is the mean probability of the windows inside the event. Windows are handled one at a
time with all state kept across chunks, so chunk boundaries never change the events.
"""

from __future__ import annotations

from pipeline.core.config import SpeechConfig
from pipeline.core.media import SpeechProbs
from pipeline.output.records import Event
from pipeline.stream.detectors.audio import _TIME_EPS_S, _AudioDetector
from pipeline.stream.spans import Span


class SpeechDetector(_AudioDetector):
    name = "speech"

    def __init__(self, stream_id: str, cfg: SpeechConfig) -> None:
        super().__init__(stream_id)
        self._cfg = cfg
        self._speech: Span | None = None  # the open speech, up to its possible end
        self._pause: Span | None = None  # from the possible end on: the first quiet window since speech was sure

    def update(self, speech: SpeechProbs) -> list[Event]:
        events = []
        cfg = self._cfg
        for t_s, prob in zip(speech.t_s.tolist(), speech.prob.tolist()):
            if self._speech is not None and self._gap_before(t_s):
                events += self._close_at_pause_or(self._last_end_s, "gap")
            if self._speech is None:
                if prob >= cfg.enter_prob:
                    self._speech, self._pause = Span.open(t_s), None
                    self._speech.extend(t_s, prob)
            elif prob >= cfg.enter_prob:
                if self._pause is not None:  # the pause was too short: it is part of the speech
                    self._speech.absorb(self._pause)
                    self._pause = None
                self._speech.extend(t_s, prob)
            elif prob < cfg.exit_prob:
                if self._pause is None:
                    self._pause = Span.open(t_s)
                self._pause.extend(t_s, prob)
                if t_s - self._pause.start_s >= cfg.min_silence_s - _TIME_EPS_S:
                    events += self._close_at_pause_or(t_s, "silence")
            else:
                (self._pause if self._pause is not None else self._speech).extend(t_s, prob)
            self._last_end_s = t_s + speech.window_s
        return events

    def finish(self, end_s: float | None) -> list[Event]:
        """Close open speech at the end of the media, never past the last window seen."""
        if self._speech is None:
            return []
        return self._close_at_pause_or(max(self._speech.start_s, self._media_end(end_s)), "end")

    def pending_from_s(self) -> float | None:
        return None if self._speech is None else self._speech.start_s

    def _close_at_pause_or(self, end_s: float, closed_by: str) -> list[Event]:
        """Close at the possible end when one is pending (without the pause's windows), else at ``end_s``."""
        speech, pause = self._speech, self._pause
        self._speech = self._pause = None
        if pause is not None:
            end_s = pause.start_s
        if end_s - speech.start_s < self._cfg.min_speech_s - _TIME_EPS_S or not speech.steps:
            return []
        attributes = {"duration_s": end_s - speech.start_s, "mean_prob": speech.mean,
                      "max_prob": speech.max, "closed_by": closed_by}
        return [self._event(speech.start_s, end_s, speech.mean, attributes)]
