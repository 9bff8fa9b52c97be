"""Generated clips for A/V-sync training and tests: random audio-visual events at known times.

Each event is a coloured shape that appears on screen while a tone burst plays; between events
the picture is still and the sound is faint noise. ``audio_delay_s`` makes the audio late by
that much (negative: early), which is exactly what the sync model must measure.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np

FPS = 25
AUDIO_RATE_HZ = 16000
BLOCK = 1024


def event_times(seed: int, duration_s: float) -> list[tuple[float, float, int]]:
    """(start_s, end_s, event seed) of the clip's events, 0.6-1.6 s apart, 0.25-0.6 s long."""
    rng = np.random.default_rng(seed)
    events, t = [], float(rng.uniform(0.3, 1.0))
    while t < duration_s - 0.7:
        length = float(rng.uniform(0.25, 0.6))
        events.append((round(t, 3), round(t + length, 3), int(rng.integers(1 << 30))))
        t += length + float(rng.uniform(0.6, 1.6))
    return events


def _frame(t_s: float, events, background: np.ndarray, width: int, height: int) -> np.ndarray:
    frame = np.broadcast_to(background, (height, width, 3)).copy()
    for start_s, end_s, event_seed in events:
        if start_s <= t_s < end_s:
            rng = np.random.default_rng(event_seed)
            w, h = int(rng.integers(width // 4, width)), int(rng.integers(height // 4, height))
            x, y = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
            frame[y: y + h, x: x + w] = rng.integers(0, 256, 3)
    return frame


def _audio(times_s: np.ndarray, events, noise_seed: int) -> np.ndarray:
    rng = np.random.default_rng(noise_seed)
    signal = 0.01 * rng.standard_normal(len(times_s))
    for start_s, end_s, event_seed in events:
        inside = (times_s >= start_s) & (times_s < end_s)
        if inside.any():
            ev = np.random.default_rng(event_seed + 1)
            freq, amp = float(ev.uniform(300, 3000)), float(ev.uniform(0.3, 0.7))
            t = times_s[inside] - start_s
            fade = np.minimum(1.0, np.minimum(t, end_s - start_s - t) / 0.005)
            signal[inside] += amp * fade * np.sin(2 * np.pi * freq * t)
    return np.clip(signal, -1, 1).astype(np.float32)


def write_sync_clip(path: str | Path, seed: int, duration_s: float = 10.0, audio_delay_s: float = 0.0,
                    width: int = 160, height: int = 120,
                    events: list[tuple[float, float, int]] | None = None) -> Path:
    """An H.264 + AAC clip (container by suffix) whose audio is ``audio_delay_s`` late.

    ``events``: (start_s, end_s, event seed) to use instead of ``event_times(seed, duration_s)``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    events = event_times(seed, duration_s) if events is None else events
    background = np.random.default_rng(seed + 7).integers(0, 256, 3).astype(np.uint8)
    with av.open(str(path), mode="w") as container:
        video = container.add_stream("libx264", rate=FPS)
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        video.options = {"preset": "ultrafast"}
        audio = container.add_stream("aac", rate=AUDIO_RATE_HZ, layout="mono")
        n_frames, n_samples = int(duration_s * FPS), int(duration_s * AUDIO_RATE_HZ)
        items = [(i / FPS, "v", i) for i in range(n_frames)]
        items += [(s / AUDIO_RATE_HZ, "a", s) for s in range(0, n_samples, BLOCK)]
        for _, kind, index in sorted(items):
            if kind == "v":
                frame = av.VideoFrame.from_ndarray(_frame(index / FPS, events, background, width, height), "rgb24")
                frame.pts, frame.time_base = index, Fraction(1, FPS)
                container.mux(video.encode(frame))
            else:
                n = min(BLOCK, n_samples - index)
                content_t = (index + np.arange(n)) / AUDIO_RATE_HZ - audio_delay_s
                samples = _audio(content_t, events, seed + index)
                frame = av.AudioFrame.from_ndarray(samples[None, :], format="flt", layout="mono")
                frame.sample_rate, frame.pts, frame.time_base = AUDIO_RATE_HZ, index, Fraction(1, AUDIO_RATE_HZ)
                container.mux(audio.encode(frame))
        container.mux(video.encode(None))
        container.mux(audio.encode(None))
    return path
