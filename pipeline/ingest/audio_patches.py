"""Cut a stream's audio rows into the sound tagger's overlapping patches, keeping their PTS.

YAMNet scores 0.96 s of 16 kHz audio at a time (96 frames of 10 ms, each frame a 25 ms window,
so 15 600 samples), every 0.48 s. The rows the decoder already cuts (``AudioRowCutter``) are
contiguous runs timed from the input PTS; patches are cut from those runs, so a source gap
starts a new run of patches instead of shifting every later one. Pure numpy: the stream actor
cuts patches without loading torch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.core.config import Config
from pipeline.core.media import AudioPatches, AudioRows

SAMPLE_RATE_HZ = 16000
PATCH_SAMPLES = 400 + 95 * 160  # 96 frames of a 25 ms window at a 10 ms hop
HOP_SAMPLES = 48 * 160  # 0.48 s
_GAP_TOLERANCE_S = 0.02


@dataclass
class _Run:
    """Samples of the current contiguous run not yet fully used by a patch."""

    start_s: float  # time of samples[0]
    samples: np.ndarray
    patches: int = 0  # patches cut from this run so far


class PatchCutter:
    """Rows in (``push``, in time order), patches out (``take``); ``flush`` at the end of a run.

    Patch k of a run starts k * HOP_SAMPLES after the run's first sample. A run shorter than
    one patch but at least one hop long gives one patch, its samples repeated cyclically (as
    the row cutter pads its last row: zeros would read as silence that is not in the media).
    """

    def __init__(self) -> None:
        self._run: _Run | None = None
        self._patches: list[np.ndarray] = []
        self._starts: list[float] = []

    def push(self, rows: AudioRows) -> None:
        if rows.sample_rate_hz != SAMPLE_RATE_HZ:
            raise ValueError(f"sound patches need {SAMPLE_RATE_HZ} Hz rows, got {rows.sample_rate_hz} Hz")
        for start_s, row in zip(rows.start_s.tolist(), rows.samples_f32):
            run = self._run
            if run is not None and abs(start_s - (run.start_s + len(run.samples) / SAMPLE_RATE_HZ)) > _GAP_TOLERANCE_S:
                self.flush()
                run = None
            if run is None:
                self._run = _Run(start_s, row.copy())
            else:
                run.samples = np.concatenate([run.samples, row])
            self._cut()

    def flush(self) -> None:
        """End the current run (a gap or the end of the media)."""
        run = self._run
        self._run = None
        if run is None:
            return
        # The tail after the last patch's hop is audio no patch stood for yet.
        if run.patches == 0 and len(run.samples) >= HOP_SAMPLES:
            self._emit(run.start_s, np.resize(run.samples, PATCH_SAMPLES))

    def take(self) -> AudioPatches | None:
        if not self._patches:
            return None
        patches = AudioPatches(np.stack(self._patches), np.asarray(self._starts, np.float64), SAMPLE_RATE_HZ)
        self._patches, self._starts = [], []
        return patches

    def _cut(self) -> None:
        run = self._run
        while len(run.samples) >= PATCH_SAMPLES:
            self._emit(run.start_s, run.samples[:PATCH_SAMPLES].copy())
            run.samples = run.samples[HOP_SAMPLES:]
            run.start_s += HOP_SAMPLES / SAMPLE_RATE_HZ
            run.patches += 1

    def _emit(self, start_s: float, patch: np.ndarray) -> None:
        self._patches.append(patch)
        self._starts.append(round(start_s, 6))


def sound_patches_wanted(cfg: Config) -> bool:
    """Whether the decoder cuts patches for the sound tagger (it needs 16 kHz rows)."""
    return cfg.sound_tags.enabled and cfg.audio.sample_rate_hz == SAMPLE_RATE_HZ
