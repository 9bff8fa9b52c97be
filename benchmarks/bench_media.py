"""The benchmark clip and the decode-only baseline (PyAV and numpy only: runs without Ray)."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from pipeline.app.sample import audio_signal

WIDTH, HEIGHT, FPS, AUDIO_RATE = 1280, 720, 25, 48000


def write_bench_clip(path: Path, seconds: float, bframes: bool = False) -> Path:
    """The benchmark clip; ``bframes``: with 3 B-frames between references, as files have (x264
    chooses none for this grainy content by itself, like a camera's I/P stream)."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float32)
    grain = rng.normal(0, 6, (HEIGHT, WIDTH, 1)).astype(np.float32)
    with av.open(str(path), "w") as container:
        video = container.add_stream("libx264", rate=FPS)
        video.width, video.height, video.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        video.options = {"preset": "veryfast", "crf": "23", "g": "50",
                         **({"x264-params": "bframes=3:b-adapt=0:b-pyramid=none"} if bframes else {})}
        audio = container.add_stream("aac", rate=AUDIO_RATE, layout="stereo")
        samples_per_frame = AUDIO_RATE // FPS
        for i in range(int(seconds * FPS)):
            # Drifting colour waves, film grain and a moving bright bar: motion everywhere,
            # at a bitrate like real 720p footage (a few Mbit/s), not like pure noise.
            phase = i * 0.08
            image = np.empty((HEIGHT, WIDTH, 3), np.float32)
            image[..., 0] = 128 + 70 * np.sin(xx / 41 + phase) * np.cos(yy / 57 - phase / 2)
            image[..., 1] = 128 + 60 * np.sin((xx + yy) / 73 - phase)
            image[..., 2] = 128 + 70 * np.cos(yy / 29 + phase / 3)
            image += np.roll(grain, i * 7, axis=1)
            bar = (i * 16) % WIDTH
            image[:, bar : bar + 40] = 255
            image = np.clip(image, 0, 255).astype(np.uint8)
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = i
            frame.time_base = Fraction(1, FPS)
            container.mux(video.encode(frame))
            t = (np.arange(samples_per_frame) + i * samples_per_frame) / AUDIO_RATE
            mono = audio_signal(t % 12.0)
            block = av.AudioFrame.from_ndarray(np.stack([mono, mono]), format="fltp", layout="stereo")
            block.sample_rate, block.pts, block.time_base = AUDIO_RATE, i * samples_per_frame, Fraction(1, AUDIO_RATE)
            container.mux(audio.encode(block))
        container.mux(video.encode(None))
        container.mux(audio.encode(None))
    return path


def decoded_frames(path: str):
    """Every video and audio frame of the file, decoded as the pipeline does (threaded, in demux order)."""
    with av.open(path) as container:
        streams = [container.streams.video[0], container.streams.audio[0]]
        for stream in streams:
            stream.thread_type = "AUTO"
        for packet in container.demux(*streams):
            yield from packet.decode()


def decode_only(path: str) -> tuple[int, float]:
    """Frames of video decoded and seconds taken, decoding video and audio like the pipeline."""
    started = time.perf_counter()
    frames = sum(isinstance(frame, av.VideoFrame) for frame in decoded_frames(path))
    return frames, time.perf_counter() - started


def decode_only_parallel(path: str, streams: int) -> float:
    """Aggregate decode-only fps of ``streams`` decoders at once (PyAV releases the GIL while decoding)."""
    with ThreadPoolExecutor(streams) as pool:
        started = time.perf_counter()
        results = list(pool.map(decode_only, [path] * streams))
        wall_s = time.perf_counter() - started
    return sum(frames for frames, _ in results) / wall_s
