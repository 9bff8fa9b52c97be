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

import numpy as np

from pipeline.core.config import SpeechConfig
from pipeline.core.media import SpeechProbs
from pipeline.output.records import Event
from pipeline.stream.detectors.audio import _TIME_EPS_S, _AudioDetector


class SpeechDetector(_AudioDetector):
    name = "speech"

    def __init__(self, stream_id: str, cfg: SpeechConfig) -> None:
        super().__init__(stream_id)
        self._cfg = cfg
        self._start_s: float | None = None  # first window of the open speech
        self._quiet_from_s: float | None = None  # the possible end: first quiet window since speech was sure
        self._quiet_index = 0  # len(self._probs) at the possible end
        self._probs: list[float] = []  # probabilities of the windows since the start

    def update(self, speech: SpeechProbs) -> list[Event]:
        events = []
        cfg = self._cfg
        for t_s, prob in zip(speech.t_s.tolist(), speech.prob.tolist()):
            if self._start_s is not None and self._gap_before(t_s):
                events += self._close_at_pause_or(self._last_end_s, "gap")
            if self._start_s is None:
                if prob >= cfg.enter_prob:
                    self._start_s, self._probs, self._quiet_from_s = t_s, [prob], None
            elif prob >= cfg.enter_prob:
                self._quiet_from_s = None
                self._probs.append(prob)
            elif prob < cfg.exit_prob:
                if self._quiet_from_s is None:
                    self._quiet_from_s, self._quiet_index = t_s, len(self._probs)
                self._probs.append(prob)
                if t_s - self._quiet_from_s >= cfg.min_silence_s - _TIME_EPS_S:
                    events += self._close_at_pause_or(t_s, "silence")
            else:
                self._probs.append(prob)
            self._last_end_s = t_s + speech.window_s
        return events

    def finish(self, end_s: float | None) -> list[Event]:
        """Close open speech at the end of the media, never past the last window seen."""
        if self._start_s is None:
            return []
        return self._close_at_pause_or(max(self._start_s, self._media_end(end_s)), "end")

    def pending_from_s(self) -> float | None:
        return self._start_s

    def _close_at_pause_or(self, end_s: float, closed_by: str) -> list[Event]:
        """Close at the possible end when one is pending, else at ``end_s``."""
        start_s, probs = self._start_s, self._probs
        if self._quiet_from_s is not None:
            end_s, probs = self._quiet_from_s, probs[: self._quiet_index]
        self._start_s, self._quiet_from_s, self._probs = None, None, []
        if end_s - start_s < self._cfg.min_speech_s - _TIME_EPS_S or not probs:
            return []
        attributes = {"duration_s": end_s - start_s, "mean_prob": float(np.mean(probs)),
                      "max_prob": float(max(probs)), "closed_by": closed_by}
        return [self._event(start_s, end_s, float(np.mean(probs)), attributes)]
