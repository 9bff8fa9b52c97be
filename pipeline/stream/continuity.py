"""Feature continuity: each stream's encoded chunks become the detectors' series.

The operators measure each frame and 10 ms sub-frame on its own (luma, histograms, thumbnails,
band energies); what the detectors need besides is how each one differs from the one before,
across chunk boundaries. ``FeatureContinuity`` keeps the last row of each measurement, so the
first frame of a chunk is compared with the last of the previous chunk, and only the stream's
very first frame (or the first sub-frame after a gap in the audio) has no predecessor (NaN).
"""

from __future__ import annotations

import numpy as np

from operators.continuity import frame_difference, histogram_distance, spectral_flux
from pipeline.core.media import EncodedAudio, EncodedVideo
from pipeline.stream.detectors.bank import AudioSeries, VideoSeries

# Audio sub-frames further apart than this are not neighbours: no flux across a gap.
SUBFRAME_GAP_S = 0.015


def _diff_to_previous(previous: np.ndarray | None, current: np.ndarray, fn) -> np.ndarray:
    """fn(row i-1, row i) for every row, the first against ``previous`` (NaN without one)."""
    if len(current) == 0:
        return np.zeros(0, np.float32)
    if previous is None and len(current) == 1:  # nothing to compare (a resumed stream's first chunk can be one frame)
        return np.full(1, np.nan, np.float32)
    before = current[:-1] if previous is None else np.concatenate([previous[None], current[:-1]])
    after = current[1:] if previous is None else current
    values = np.asarray(fn(before, after), np.float32)
    return values if previous is not None else np.concatenate([[np.nan], values]).astype(np.float32)


class FeatureContinuity:
    def __init__(self):
        self._last_hist = self._last_thumb = self._last_bands = None
        self._last_subframe_t_s: float | None = None

    def forget_video(self) -> None:
        """A gap in the media: the first frame after it is compared with none before it."""
        self._last_hist = self._last_thumb = None

    def video_series(self, video: EncodedVideo) -> VideoSeries:
        """The kept frames of one chunk (non-empty), with their distances to the frames before."""
        hist_distance = _diff_to_previous(self._last_hist, video.color_hist, histogram_distance)
        motion = _diff_to_previous(self._last_thumb, video.luma_thumb, frame_difference)
        self._last_hist, self._last_thumb = video.color_hist[-1], video.luma_thumb[-1]
        return VideoSeries(video.t_s, video.luma_mean, hist_distance, motion)

    def audio_series(self, audio: EncodedAudio) -> AudioSeries:
        """The 10 ms sub-frames of one chunk's rows (non-empty), with their spectral flux."""
        k, s = audio.rms_dbfs.shape
        sub_t_s = (audio.t_s[:, None] + np.arange(s)[None, :] * audio.subframe_s).reshape(-1)
        bands = audio.band_log_energy.reshape(k * s, -1)
        neighbour = self._last_bands
        if self._last_subframe_t_s is not None and sub_t_s[0] - self._last_subframe_t_s > SUBFRAME_GAP_S:
            neighbour = None
        flux = _diff_to_previous(neighbour, bands, spectral_flux)
        flux[1:][np.diff(sub_t_s) > SUBFRAME_GAP_S] = np.nan
        self._last_bands, self._last_subframe_t_s = bands[-1], float(sub_t_s[-1])
        return AudioSeries(sub_t_s, audio.rms_dbfs.reshape(-1), flux, audio.subframe_s)
