"""Reading an A/V offset off scores over candidate lags (the av_sync head's output, summed over windows)."""

from __future__ import annotations

import numpy as np


def offset_from_lag_scores(scores: np.ndarray, lags_s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """[..., M] lag probabilities (not necessarily normalised) -> (offset_s, peak mass) per row.

    The offset is the probability-weighted mean of the peak lag and its larger neighbour: the
    trainer splits an offset between exactly those two lags, so their ratio reads it back at
    sub-step resolution. The peak mass is the normalised probability of the peak and both
    neighbours (how much the distribution agrees on one place).
    """
    scores = np.asarray(scores, np.float64)
    lags = np.asarray(lags_s, np.float64)
    probs = scores / np.maximum(scores.sum(-1, keepdims=True), 1e-12)
    last = probs.shape[-1] - 1
    peak = probs.argmax(-1)[..., None]
    below = np.where(peak == 0, 0.0, np.take_along_axis(probs, np.maximum(peak - 1, 0), -1))
    above = np.where(peak == last, 0.0, np.take_along_axis(probs, np.minimum(peak + 1, last), -1))
    partner = np.clip(np.where(above >= below, peak + 1, peak - 1), 0, last)
    partner_p = np.maximum(above, below)
    peak_p = np.take_along_axis(probs, peak, -1)
    offset = (peak_p * lags[peak] + partner_p * lags[partner]) / np.maximum(peak_p + partner_p, 1e-12)
    mass = (peak_p + above + below)[..., 0]
    return offset[..., 0], mass
