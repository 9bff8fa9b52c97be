"""What the fusion operator takes per window: plain arrays, so a stream actor builds one without torch."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class WindowInput:
    """One aligned window of one stream.

    start_s:      window start on the stream clock, seconds.
    video_tokens: float32 [Tv, Dv] or None; video_t_s: float64 [Tv], frame times in seconds.
    audio_tokens: float32 [Ta, Da] or None; audio_t_s: float64 [Ta], row start times in seconds.
    None or zero rows means the modality is missing from this window.
    """

    start_s: float
    video_tokens: np.ndarray | None = None
    video_t_s: np.ndarray | None = None
    audio_tokens: np.ndarray | None = None
    audio_t_s: np.ndarray | None = None
