"""Speech activity on the audio path: one silero-vad state per stream, kept in the audio stage.

silero-vad is recurrent over 32 ms windows, so each stream needs its own state; the shared
audio stage (which already holds torch and the audio encoder) keeps them keyed by stream id.
Decoders stay free of torch: importing it in every per-stream decoder cost ~4 s of CPU and
~600 MB per stream. Chunks of one stream reach the stage in order (the driver awaits each
chunk's encoding before sending the next), which is all a recurrent state needs.

A stream's state is dropped with its last rows or when the driver says the stream ended
(``forget``); as a safety net, states are evicted least recently used beyond ``max_streams``.
A dropped state's model is reset and kept for the next stream: loading silero costs 6 ms of CPU
(its ONNX export at 16 kHz) to 60 ms (TorchScript, 8 kHz), which short streams (Kafka segments,
tests) would otherwise pay each.
"""

from __future__ import annotations

import functools
import logging
from collections import OrderedDict

import numpy as np

from pipeline.core.config import Config
from pipeline.core.errors import one_line
from pipeline.core.media import AudioRows, SpeechProbs

log = logging.getLogger("avfuse.speech")


class SpeechScoring:
    def __init__(self, cfg: Config, max_streams: int):
        self.sample_rate_hz = cfg.audio.sample_rate_hz
        self.max_streams = max_streams
        self.unavailable: str | None = None  # why speech activity is off although enabled
        self._streams: OrderedDict[str, object] = OrderedDict()
        self._spare: list = []  # reset states of ended streams (and the first one), for the next ones
        try:
            from operators.speech import SpeechActivity

            # Threads are the hosting actor's to set (runtime.torch_threads), not each state's.
            self._make = functools.partial(SpeechActivity, torch_threads=None)
            self._spare.append(self._make(self.sample_rate_hz))  # fail here, once, not per stream
        except Exception as exc:  # an optional detector must not stop the audio stage
            self.unavailable = one_line(exc)
            log.warning("speech detection disabled: %s", self.unavailable, extra={"stage": "speech"})

    def score(self, rows: AudioRows) -> SpeechProbs | None:
        """Speech probabilities of the windows these rows complete (their stream's state carries on)."""
        if self.unavailable is not None:
            return None
        activity = self._streams.pop(rows.stream_id, None) or self._take_spare()
        parts = [activity.feed(row, start_s) for row, start_s in zip(rows.samples_f32, rows.start_s.tolist())]
        if rows.last:
            self._keep_spare(activity)
        else:
            self._streams[rows.stream_id] = activity  # most recently used last
            while len(self._streams) > self.max_streams:
                self._keep_spare(self._streams.popitem(last=False)[1])
        return SpeechProbs(np.concatenate([p for p, _ in parts]).astype(np.float32),
                           np.concatenate([t for _, t in parts]), activity.window_s)

    def forget(self, stream_id: str) -> None:
        """The stream ended (however): drop its state."""
        activity = self._streams.pop(stream_id, None)
        if activity is not None:
            self._keep_spare(activity)

    def _take_spare(self):
        return self._spare.pop() if self._spare else self._make(self.sample_rate_hz)

    def _keep_spare(self, activity) -> None:
        if len(self._spare) < self.max_streams:
            activity.reset()  # a fresh run: nothing of the old stream carries over
            self._spare.append(activity)

    @property
    def open_streams(self) -> int:
        return len(self._streams)
