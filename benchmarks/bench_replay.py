"""Replay throughput against PyAV decode-only, measured in the same run.

Generates a 60 s 1280x720 25 fps H.264 clip with AAC audio (moving textured
content, so decoding costs what real footage costs), then prints:
  - decode-only fps: PyAV demux + decode of every video and audio frame, threaded,
    no conversion (1 decoder; and 4 decoders at once for the 4-stream baseline);
  - pipeline fps for 1 stream and for 4 concurrent streams (decoded frames per
    wall second, after the operators are warm);
  - the ratio pipeline / decode-only (target >= 0.7);
  - peak RSS of the driver plus every Ray worker process, sampled during the run.

Usage: python -m benchmarks.bench_replay [--seconds 60] [--streams 4] [--keep-clip PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import tempfile
import threading
import time
from pathlib import Path

import psutil
import ray

from benchmarks.bench_media import decode_only, decode_only_parallel, write_bench_clip
from pipeline.compute.runtime import Pipeline
from pipeline.core.config import load_config
from pipeline.output.sinks import NullSink


class RssSampler:
    """Peak summed RSS of this process and every Ray worker on the node."""

    def __init__(self, interval_s: float = 1.0):  # scanning processes costs CPU: not too often
        self.interval_s, self.peak_bytes = interval_s, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        me = psutil.Process()
        while not self._stop.is_set():
            total = me.memory_info().rss
            for proc in psutil.process_iter(["name", "cmdline"]):
                try:
                    cmd = " ".join(proc.info["cmdline"] or [])
                    if "ray::" in cmd or (proc.info["name"] or "").startswith("ray::"):
                        total += proc.memory_info().rss
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    continue
            self.peak_bytes = max(self.peak_bytes, total)
            self._stop.wait(self.interval_s)

    def __enter__(self) -> "RssSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def pipeline_fps(pipeline: Pipeline, path: str, streams: int, frames_per_stream: int) -> float:
    started = time.perf_counter()
    results = asyncio.run(pipeline.replay([path] * streams, NullSink()))
    wall_s = time.perf_counter() - started
    assert all(r.status == "ok" for r in results), [r.reason for r in results]
    return frames_per_stream * streams / wall_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--streams", type=int, default=4)
    parser.add_argument("--keep-clip", type=Path, help="write (or reuse) the clip here")
    parser.add_argument("--set", dest="sets", action="append", default=[], help="config override")
    args = parser.parse_args()

    clip = args.keep_clip or Path(tempfile.mkdtemp()) / "bench720p.mp4"
    if not clip.exists():
        started = time.perf_counter()
        write_bench_clip(clip, args.seconds)
        print(f"clip: {clip} ({clip.stat().st_size / 1e6:.1f} MB, written in {time.perf_counter() - started:.1f}s)")

    frames, decode_s = decode_only(str(clip))
    decode_fps_1 = frames / decode_s
    decode_fps_n = decode_only_parallel(str(clip), args.streams)

    cfg = load_config(None, ["records.stdout=false", *args.sets])
    ray.init(address="local", include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False)
    pipeline = Pipeline(cfg)
    asyncio.run(pipeline.warm_up())
    pipeline_fps(pipeline, str(clip), 1, frames)  # warm the worker pool and the operators' first batches
    with RssSampler() as rss:
        fps_1 = pipeline_fps(pipeline, str(clip), 1, frames)
        fps_n = pipeline_fps(pipeline, str(clip), args.streams, frames)
    pipeline.shutdown()
    ray.shutdown()
    # The machine is noisy: take the baseline again after the pipeline and keep the best of
    # each, so a slow moment in the baseline cannot flatter the ratio.
    decode_fps_1 = max(decode_fps_1, frames / decode_only(str(clip))[1])
    decode_fps_n = max(decode_fps_n, decode_only_parallel(str(clip), args.streams))
    print(f"decode-only (PyAV, threaded, best of 2): 1 stream {decode_fps_1:.0f} fps; "
          f"{args.streams} streams {decode_fps_n:.0f} fps aggregate")
    print(f"pipeline: 1 stream {fps_1:.0f} fps (ratio {fps_1 / decode_fps_1:.2f}); "
          f"{args.streams} streams {fps_n:.0f} fps aggregate (ratio {fps_n / decode_fps_n:.2f}); target ratio >= 0.70")
    print(f"peak RSS (driver + Ray workers): {rss.peak_bytes / 2**20:.0f} MiB")


if __name__ == "__main__":
    main()
