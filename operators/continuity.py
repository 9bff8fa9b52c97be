"""Distances between consecutive frames' and sub-frames' signal measurements.

Inputs are rows of ``operators.signal_features`` outputs, as numpy arrays: each
stream compares its own consecutive rows (a few per chunk), so this runs in the
stream's process, in numpy, and needs no torch there.
"""

from __future__ import annotations

import numpy as np


def histogram_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """[N, 3*B] colour histograms -> [N] in 0..1: half the L1 distance per channel, mean of channels."""
    a3, b3 = a.reshape(a.shape[0], 3, -1), b.reshape(b.shape[0], 3, -1)
    return 0.5 * np.abs(a3 - b3).sum(axis=2).mean(axis=1)


def frame_difference(a_thumbs: np.ndarray, b_thumbs: np.ndarray) -> np.ndarray:
    """[N, P] luma thumbnails in 0..1 -> [N] mean absolute difference in 0..1."""
    return np.abs(a_thumbs - b_thumbs).mean(axis=-1)


def spectral_flux(prev_bands: np.ndarray, bands: np.ndarray) -> np.ndarray:
    """[N, B] band log energies -> [N] mean over bands of the positive log-energy increase."""
    return np.maximum(bands - prev_bands, 0.0).mean(axis=-1)
