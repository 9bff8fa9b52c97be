"""Deterministic, parameter-free signal measurements for the event detectors.

Black frames, frozen video, scene cuts, silence and loud onsets are judged on
these plain measurements rather than on learned embeddings, so thresholds in
the config keep their meaning (luma 0..1, dBFS, histogram distance 0..1).
Written in torch so the same code runs next to the encoders on the GPU.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

HIST_BINS = 16  # per colour channel
THUMB_SIZE = 16  # luma thumbnails are THUMB_SIZE x THUMB_SIZE
SUBFRAME_PER_S = 100  # audio sub-frames of 10 ms
AUDIO_BANDS = 24
DBFS_FLOOR = -120.0  # digital silence reads as this, not -inf
BAND_EPS = 1e-10

# ITU-R BT.601 luma weights for R, G, B.
_BT601 = (0.299, 0.587, 0.114)


@dataclass
class VideoSignals:
    """Per-frame measurements, tensors on the input's device.

    luma_mean:  float32 [N], mean BT.601 luma in 0..1.
    color_hist: float32 [N, 3 * 16], 16-bin histograms of R, G, B; each channel's bins sum to 1.
    luma_thumb: float32 [N, 256], 16 x 16 area-averaged luma in 0..1, row-major.
    """

    luma_mean: torch.Tensor
    color_hist: torch.Tensor
    luma_thumb: torch.Tensor


@dataclass
class AudioSignals:
    """Per-10 ms sub-frame measurements, tensors on the input's device.

    rms_dbfs:        float32 [K, S], 20*log10(rms), floored at -120 (full-scale sine ~ -3.01).
    band_log_energy: float32 [K, S, 24], natural log of the power in 24 equal-width
                     frequency bands (0 Hz to Nyquist) of each Hann-windowed sub-frame.
    """

    rms_dbfs: torch.Tensor
    band_log_energy: torch.Tensor


def _band_matrix(n_bins: int, device: torch.device) -> torch.Tensor:
    """[n_bins, 24] 0/1 matrix assigning each rfft bin to one of 24 equal-width bands of 0 Hz..Nyquist."""
    # Bin i sits at i / (n_bins - 1) of Nyquist; the Nyquist bin itself joins the top band.
    position = torch.arange(n_bins, device=device) * AUDIO_BANDS // max(n_bins - 1, 1)
    band_of_bin = torch.clamp(position, max=AUDIO_BANDS - 1)
    return F.one_hot(band_of_bin, AUDIO_BANDS).float()


class SignalFeatures(nn.Module):
    """Stateless feature extractor; ``.to(device)`` is a no-op, tensors decide the device."""

    def video(self, frames_rgb_u8: torch.Tensor) -> VideoSignals:
        """uint8 [N, H, W, 3] RGB frames -> VideoSignals."""
        if frames_rgb_u8.dtype != torch.uint8 or frames_rgb_u8.ndim != 4 or frames_rgb_u8.shape[-1] != 3:
            got = f"{frames_rgb_u8.dtype} {list(frames_rgb_u8.shape)}"
            raise ValueError(f"expected uint8 frames [N, H, W, 3], got {got}")
        n, h, w, _ = frames_rgb_u8.shape
        weights = torch.tensor(_BT601, device=frames_rgb_u8.device)
        luma = (frames_rgb_u8.float() @ weights) / 255.0  # [N, H, W]
        thumb = F.adaptive_avg_pool2d(luma.unsqueeze(1), THUMB_SIZE).reshape(n, THUMB_SIZE * THUMB_SIZE)
        # 256 levels / 16 bins: the bin is the value's top four bits.
        bins = (frames_rgb_u8 >> 4).reshape(n, h * w, 3).long()
        hist = torch.zeros(n, 3, HIST_BINS, device=frames_rgb_u8.device)
        for channel in range(3):  # one channel at a time keeps the int64 index small
            hist[:, channel].scatter_add_(1, bins[:, :, channel], torch.ones(n, h * w, device=hist.device))
        hist /= max(h * w, 1)
        return VideoSignals(
            luma_mean=luma.mean(dim=(1, 2)), color_hist=hist.reshape(n, 3 * HIST_BINS), luma_thumb=thumb
        )

    def audio(self, rows: torch.Tensor, sample_rate_hz: int) -> AudioSignals:
        """float32 [K, R] mono rows in [-1, 1] -> AudioSignals with S = R // (sample_rate_hz // 100).

        Samples past the last whole sub-frame are ignored.
        """
        if rows.ndim != 2 or not rows.is_floating_point():
            raise ValueError(f"expected float rows [K, R], got {rows.dtype} {list(rows.shape)}")
        sub = sample_rate_hz // SUBFRAME_PER_S
        if sub < 1:
            raise ValueError(f"sample_rate_hz={sample_rate_hz} is too low for 10 ms sub-frames")
        k, r = rows.shape
        frames = rows.float()[:, : (r // sub) * sub].reshape(k, r // sub, sub)
        rms = frames.pow(2).mean(dim=2).sqrt()
        rms_dbfs = 20.0 * torch.log10(rms.clamp_min(10.0 ** (DBFS_FLOOR / 20.0)))
        window = torch.hann_window(sub, device=rows.device)
        power = torch.fft.rfft(frames * window, dim=2).abs().pow(2)  # [K, S, sub//2 + 1]
        band_energy = power @ _band_matrix(power.shape[-1], rows.device)
        return AudioSignals(rms_dbfs=rms_dbfs, band_log_energy=torch.log(band_energy + BAND_EPS))
