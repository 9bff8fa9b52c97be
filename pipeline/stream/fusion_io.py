"""What a stream sends the shared fusion stage (its ready windows) and what it gets back."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from operators.windows import WindowInput


@dataclass
class FusionRequest:
    """One stream's ready windows for the fusion stage.

    windows:  the encoders' tokens per window (mobilenet frames at video.fps, 100 ms audio
              rows): what the A/V-sync and event heads were trained on.
    semantic: the same windows with the taggers' embeddings (EfficientNet-Lite0 frames,
              YAMNet patches), which the fusion then reads; None in the signal profile
              (the fusion reads ``windows``).
    """

    windows: list[WindowInput]
    semantic: list[WindowInput] | None = None

    def __len__(self) -> int:
        return len(self.windows)


@dataclass
class FusedWindows:
    """Fusion-stage output for one stream's ready windows (row i = window i).

    embedding [W, D] float32; sync_probs [W, M + 1] float32 (lag probabilities, then "no
    match"; see operators.av_sync) with sync_valid [W] bool, or None when A/V sync is off;
    label_probs [W, L] float32 of the event head's labels, or None without one.
    """

    embedding: np.ndarray
    sync_probs: np.ndarray | None = None
    sync_valid: np.ndarray | None = None
    sync_lags_s: np.ndarray | None = None  # [M] the lags of sync_probs' first M columns
    label_probs: np.ndarray | None = None
    labels: list[str] = field(default_factory=list)  # names of label_probs' columns
    head_version: str = ""  # the event head's checkpoint, as detector_version of its events
