"""The synthetic demo clip: known events at known times, written with PyAV.

Timeline (stream clock, seconds), the ground truth the tests check:
    0.0-3.0   scene A: blue background, a white square moving right
    3.0       scene cut to scene B: orange background, a dark square moving down
    5.0-5.4   white flash (video) and a 1 kHz beep at -3 dBFS (audio)
    6.0-7.0   digital silence (audio)
    8.0-9.5   black frames
    9.5-12.0  a still picture (frozen video)
Audio elsewhere is a 220 Hz tone at -20 dBFS.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

DURATION_S = 12.0
CUT_S = 3.0
FLASH_S = (5.0, 5.4)
BEEP_S = (5.0, 5.4)
SILENCE_S = (6.0, 7.0)
BLACK_S = (8.0, 9.5)
FROZEN_S = (9.5, 12.0)


@dataclass(frozen=True)
class ClipSpec:
    duration_s: float = DURATION_S
    width: int = 320
    height: int = 240
    fps: int = 25
    video: bool = True
    audio: bool = True
    audio_rate_hz: int = 16000
    audio_channels: int = 1
    audio_offset_s: float = 0.0  # audio starts this long after the video
    variable_frame_rate: bool = False


def video_frame_at(t_s: float, width: int, height: int) -> np.ndarray:
    """RGB uint8 [H, W, 3] of the timeline at time t_s."""
    frame = np.empty((height, width, 3), np.uint8)
    side = height // 4
    if FLASH_S[0] <= t_s < FLASH_S[1]:
        frame[:] = 255
    elif BLACK_S[0] <= t_s < BLACK_S[1]:
        frame[:] = 0
    elif t_s >= FROZEN_S[0]:
        frame[:] = (40, 160, 60)
        frame[height // 3 : 2 * height // 3, width // 3 : 2 * width // 3] = (230, 230, 90)
    elif t_s < CUT_S:
        frame[:] = (30, 60, 200)
        x = int((width - side) * (t_s / CUT_S))
        frame[height // 2 - side // 2 : height // 2 + side // 2, x : x + side] = 255
    else:
        frame[:] = (230, 120, 30)
        y = int((height - side) * ((t_s - CUT_S) / (BLACK_S[0] - CUT_S)))
        frame[y : y + side, width // 2 - side // 2 : width // 2 + side // 2] = (40, 20, 10)
    return frame


def audio_signal(t_s: np.ndarray) -> np.ndarray:
    """Mono float32 samples of the timeline at times t_s."""
    tone = 0.1 * np.sin(2 * np.pi * 220.0 * t_s)  # -20 dBFS peak
    beep = np.where((t_s >= BEEP_S[0]) & (t_s < BEEP_S[1]), 0.7 * np.sin(2 * np.pi * 1000.0 * t_s), 0.0)
    signal = tone + beep
    signal[(t_s >= SILENCE_S[0]) & (t_s < SILENCE_S[1])] = 0.0
    return signal.astype(np.float32)


def _frame_times(spec: ClipSpec) -> list[float]:
    if not spec.variable_frame_rate:
        return [i / spec.fps for i in range(int(spec.duration_s * spec.fps))]
    # Alternate short and long frame durations (20, 40, 60 ms) so that the
    # sampler must read PTS; the event boundaries stay frame-exact.
    times, t, step = [], 0.0, 0
    boundaries = sorted({CUT_S, *FLASH_S, *BLACK_S})
    while t < spec.duration_s - 1e-9:
        times.append(round(t, 3))
        t_next = round(t + (0.02, 0.04, 0.06)[step % 3], 3)
        for b in boundaries:  # never step across an event boundary
            if t < b < t_next:
                t_next = b
        t, step = t_next, step + 1
    return times


def write_clip(path: str | Path, spec: ClipSpec = ClipSpec()) -> Path:
    """Encode the timeline to ``path`` (container chosen by the suffix)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w") as container:
        video_stream = audio_stream = None
        if spec.video:
            video_stream = container.add_stream("libx264", rate=spec.fps)
            video_stream.width, video_stream.height = spec.width, spec.height
            video_stream.pix_fmt = "yuv420p"
            video_stream.time_base = Fraction(1, 1000)
            video_stream.codec_context.time_base = Fraction(1, 1000)
            video_stream.options = {"preset": "ultrafast", "g": "50"}
        if spec.audio:
            layout = "mono" if spec.audio_channels == 1 else "stereo"
            audio_stream = container.add_stream("aac", rate=spec.audio_rate_hz, layout=layout)
        # Encode in presentation order so the container comes out interleaved,
        # as a real recording would be.
        for _, kind, value in sorted(_media_timeline(spec)):
            if kind == "video":
                frame = av.VideoFrame.from_ndarray(video_frame_at(value, spec.width, spec.height), format="rgb24")
                frame.pts = int(round(value * 1000))
                frame.time_base = Fraction(1, 1000)
                container.mux(video_stream.encode(frame))
            else:
                container.mux(audio_stream.encode(_audio_frame(spec, value)))
        for stream in (video_stream, audio_stream):
            if stream is not None:
                container.mux(stream.encode(None))
    return path


AUDIO_BLOCK = 1024


def _media_timeline(spec: ClipSpec) -> list[tuple[float, str, float | int]]:
    items: list[tuple[float, str, float | int]] = []
    if spec.video:
        items += [(t_s, "video", t_s) for t_s in _frame_times(spec)]
    if spec.audio:
        rate = spec.audio_rate_hz
        first, total = int(round(spec.audio_offset_s * rate)), int(round(spec.duration_s * rate))
        items += [(start / rate, "audio", start) for start in range(first, total, AUDIO_BLOCK)]
    return items


def _audio_frame(spec: ClipSpec, first_sample: int) -> av.AudioFrame:
    rate = spec.audio_rate_hz
    n = min(AUDIO_BLOCK, int(round(spec.duration_s * rate)) - first_sample)
    mono = audio_signal(np.arange(first_sample, first_sample + n) / rate)
    planar = np.ascontiguousarray(np.repeat(mono[None, :], spec.audio_channels, axis=0))
    layout = "mono" if spec.audio_channels == 1 else "stereo"
    frame = av.AudioFrame.from_ndarray(planar, format="fltp", layout=layout)
    frame.sample_rate = rate
    frame.pts = first_sample
    frame.time_base = Fraction(1, rate)
    return frame


def concatenate_pieces(out_path: str | Path, pieces: list[Path], piece_s: float) -> Path:
    """The ``pieces`` (clips of one layout, each ``piece_s`` long: a whole number of video frames
    and of audio frames) back to back on one clock by stream copy, no re-encode: hours of media
    in seconds. The AAC priming packet (negative PTS) of every piece but the first is left out:
    it would overlap the piece before."""
    with av.open(str(out_path), "w") as out:
        targets = None
        for n, piece in enumerate(pieces):
            with av.open(str(piece)) as src:
                if targets is None:
                    targets = {s.type: out.add_stream_from_template(s) for s in src.streams}
                for packet in src.demux():
                    if packet.dts is None or packet.pts is None or (packet.pts < 0 and n > 0):
                        continue
                    shift = int(round(n * piece_s / packet.time_base))
                    packet.pts, packet.dts = packet.pts + shift, packet.dts + shift
                    packet.stream = targets[packet.stream.type]
                    out.mux(packet)
    return Path(out_path)
