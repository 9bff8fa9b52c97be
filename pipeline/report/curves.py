"""``signals`` records into curves (loudness in dBFS, luma, motion), downsampled for drawing.

A signals record holds, per signal, ``mean`` and ``peak`` arrays over consecutive bins of ``step_s``
from ``start_s`` (null where there was no data); a stream has one per summary period. They are put
on one grid and reduced to at most ``MAX_POINTS`` points per curve (the mean of the means, the max of
the peaks, so a short spike survives downsampling), which bounds the page for any stream length.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

MAX_POINTS = 1500
# Known signals: heading and unit; a signal a later version adds is drawn with its own name.
KNOWN = {"loudness_dbfs": ("Loudness", "dBFS"), "luma": ("Luma", "0-1"), "motion": ("Motion", "0-1")}
_ORDER = list(KNOWN)


@dataclass
class Curve:
    name: str  # the signal's key in the records, e.g. loudness_dbfs
    title: str
    unit: str
    start_s: float
    step_s: float  # after downsampling
    mean: list[float | None]
    peak: list[float | None]


def _values(raw: Any) -> np.ndarray:
    if not isinstance(raw, list):
        return np.zeros(0)
    return np.array([float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                     else np.nan for v in raw], dtype=float)


def _signal_names(records: list[dict[str, Any]]) -> list[str]:
    names = {k for r in records for k, v in r.items() if isinstance(v, dict) and ("mean" in v or "peak" in v)}
    return sorted(names, key=lambda n: (_ORDER.index(n) if n in _ORDER else len(_ORDER), n))


def build_curves(records: list[dict[str, Any]], max_points: int = MAX_POINTS) -> list[Curve]:
    records = sorted((r for r in records if float(r["step_s"]) > 0), key=lambda r: float(r["start_s"]))
    if not records:
        return []
    curves = []
    for name in _signal_names(records):
        pieces = []  # (times_s, means, peaks) of each record
        for r in records:
            signal = r.get(name) if isinstance(r.get(name), dict) else {}
            mean, peak = _values(signal.get("mean")), _values(signal.get("peak"))
            n = max(len(mean), len(peak))
            if n:
                mean, peak = (np.pad(a, (0, n - len(a)), constant_values=np.nan) for a in (mean, peak))
                pieces.append((float(r["start_s"]) + float(r["step_s"]) * np.arange(n), mean, peak))
        if pieces:
            curves.append(_downsample(name, pieces, min(float(r["step_s"]) for r in records), max_points))
    return curves


def _downsample(name: str, pieces: list, step_s: float, max_points: int) -> Curve:
    times = np.concatenate([p[0] for p in pieces])
    means = np.concatenate([p[1] for p in pieces])
    peaks = np.concatenate([p[2] for p in pieces])
    start_s = float(times.min())
    span_s = float(times.max()) - start_s + step_s
    # Output step: a whole multiple of the records' step, coarse enough for max_points.
    out_step_s = step_s * max(1, math.ceil(span_s / step_s / max_points))
    n_out = max(1, min(max_points, math.ceil(span_s / out_step_s - 1e-9)))
    index = np.clip(((times - start_s) / out_step_s + 1e-9).astype(int), 0, n_out - 1)
    have_mean = ~np.isnan(means)
    sums, counts = np.zeros(n_out), np.zeros(n_out)
    np.add.at(sums, index[have_mean], means[have_mean])
    np.add.at(counts, index[have_mean], 1)
    out_peak = np.full(n_out, np.nan)
    np.fmax.at(out_peak, index, peaks)  # fmax: a null peak does not erase a number
    out_mean = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
    title, unit = KNOWN.get(name, (name.replace("_", " "), ""))
    return Curve(name, title, unit, round(start_s, 3), round(out_step_s, 6), _listed(out_mean), _listed(out_peak))


def _listed(values: np.ndarray) -> list[float | None]:
    return [None if math.isnan(v) else round(float(v), 4) for v in values]
