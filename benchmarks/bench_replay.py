"""Replay throughput against PyAV decode-only, measured in the same run.

Generates 60 s 1280x720 25 fps H.264 clips with AAC audio (moving textured
content, so decoding costs what real footage costs): an I/P-only one (typical of
cameras) and, with ``--bframes``, one with B-frames (typical of files). Prints, per clip:
  - decode-only fps: PyAV demux + decode of every video and audio frame, threaded,
    no conversion (1 decoder; and 4 decoders at once for the 4-stream baseline);
  - pipeline fps for 1 stream and for 4 concurrent streams (decoded frames per
    wall second, after the operators are warm);
  - the ratio pipeline / decode-only (target >= 0.7);
  - with the default profile, ``benchmarks.naive_loop`` (the same models at the same rates in one
    plain process) and the ratio pipeline / naive;
  - peak RSS and PSS of the driver plus every Ray worker process, sampled during the run,
    and the RSS by role at the peak;
  - CPU seconds per media second by process role (driver, stream actors: decode + stream logic,
    each operator actor, Ray's own processes) over the 1-stream run; by operator (the CPU time
    of the threads that ran its batches, apart even when operators share a process); and of
    decode alone (a decode-only pass in this process), which the stream actors' figure includes;
  - a stream's start-up: from run_stream to its first record, and the same less PyAV's own open
    (probe) of the file measured in this process.

Usage: python -m benchmarks.bench_replay [--seconds 60] [--streams 4] [--keep-clip PATH] [--bframes PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import av
import psutil
import ray

from benchmarks.bench_media import decode_only, decode_only_parallel, write_bench_clip
from pipeline.compute.runtime import Pipeline
from pipeline.core.config import load_config
from pipeline.output.sinks import NullSink


class ProcessRoles:
    """Which avfuse role each process of the node plays: driver, stream actors, each operator, Ray."""

    def __init__(self, pipeline: Pipeline):
        pids = ray.get([handle.pid.remote() for handle in pipeline.operators.values()])
        kinds_by_pid: dict[int, list[str]] = {}
        for pid, kind in zip(pids, pipeline.operators):
            kinds_by_pid.setdefault(pid, []).append(kind)  # several when they share a process
        self.operators = {pid: "operator " + "+".join(kinds) for pid, kinds in kinds_by_pid.items()}
        self.me = os.getpid()

    def processes(self):
        """(role, psutil.Process) of every process that plays one."""
        for proc in psutil.process_iter(["pid", "name", "cmdline"]):
            try:
                cmd = " ".join(proc.info["cmdline"] or [])
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            if proc.info["pid"] == self.me:
                yield "driver", proc
            elif proc.info["pid"] in self.operators:
                yield self.operators[proc.info["pid"]], proc
            elif "StreamActor" in cmd:
                yield "stream actors (decode + stream logic)", proc
            elif "ray" in cmd or "raylet" in cmd or "gcs_server" in cmd:
                yield "ray's own processes", proc


class MemorySampler:
    """Peak summed RSS and PSS of every process with a role, and the RSS by role at the RSS peak.

    RSS counts a shared library (importing torch's CUDA build maps ~0.7 GiB) in every process using it;
    PSS splits shared pages among the processes sharing them, so its sum is what the node
    actually holds.
    """

    def __init__(self, roles: ProcessRoles, interval_s: float = 1.0):  # scanning costs CPU: not too often
        self.roles, self.interval_s = roles, interval_s
        self.peak_rss, self.peak_pss, self.rss_by_role = 0, 0, {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def _pss_bytes(pid: int) -> int:
        # smaps_rollup, not psutil's memory_full_info: that parses the full smaps (thousands of
        # mappings with torch), which costs the sampler's CPU and stalls the sampled processes.
        with open(f"/proc/{pid}/smaps_rollup") as rollup:
            for line in rollup:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
        return 0

    def _run(self) -> None:
        while not self._stop.is_set():
            by_role: dict[str, int] = {}
            pss = 0
            for role, proc in self.roles.processes():
                try:
                    rss = proc.memory_info().rss
                    pss += self._pss_bytes(proc.pid)
                except (psutil.NoSuchProcess, psutil.AccessDenied, FileNotFoundError, ProcessLookupError):
                    continue
                by_role[role] = by_role.get(role, 0) + rss
            if sum(by_role.values()) > self.peak_rss:
                self.peak_rss, self.rss_by_role = sum(by_role.values()), by_role
            self.peak_pss = max(self.peak_pss, pss)
            self._stop.wait(self.interval_s)

    def __enter__(self) -> "MemorySampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


class CpuByRole:
    """CPU seconds of the driver and of every Ray process between start() and stop(), by role."""

    def __init__(self, roles: ProcessRoles):
        self.roles = roles

    def _snapshot(self) -> dict[str, float]:
        found: dict[str, float] = {}
        for role, proc in self.roles.processes():
            try:
                times = proc.cpu_times()
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            found[role] = found.get(role, 0.0) + times.user + times.system
        return found

    def __enter__(self) -> "CpuByRole":
        self._before = self._snapshot()
        return self

    def __exit__(self, *exc) -> None:
        after = self._snapshot()
        self.seconds = {role: after[role] - self._before.get(role, 0.0) for role in after}


class CpuByOperator:
    """CPU seconds of each operator's batches (their threads' CPU time, from the operators' own
    stats), between enter and exit: each operator apart, even when they share one process."""

    def __init__(self, pipeline: Pipeline):
        self.handles = pipeline.operators

    def _snapshot(self) -> dict[str, float]:
        stats = ray.get([handle.stats.remote() for handle in self.handles.values()])
        return {kind: s["cpu_s"] for kind, s in zip(self.handles, stats)}

    def __enter__(self) -> "CpuByOperator":
        self._before = self._snapshot()
        return self

    def __exit__(self, *exc) -> None:
        after = self._snapshot()
        self.seconds = {kind: after[kind] - self._before[kind] for kind in after}


class FirstRecord:
    """A sink that notes when the first record arrived."""

    def __init__(self):
        self.at: float | None = None

    def write(self, record, arrived_wall_s=None) -> None:
        if self.at is None:
            self.at = time.perf_counter()

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


def startup_s(pipeline: Pipeline, path: str) -> tuple[float, float]:
    """(run_stream to first record, the same less PyAV's open of the file), best of 3."""
    best = None
    for _ in range(3):
        sink = FirstRecord()
        started = time.perf_counter()
        asyncio.run(pipeline.replay([path], sink))
        best = min(best or 1e9, sink.at - started)
    probe = 1e9
    for _ in range(3):
        started = time.perf_counter()
        with av.open(path) as container:
            container.streams.video[0].codec_context  # noqa: B018 (the probe happens in open)
        probe = min(probe, time.perf_counter() - started)
    return best, best - probe


def decode_only_cpu_s(path: str) -> float:
    """Process CPU seconds of one decode-only pass (FFmpeg's threads included), best of 2."""
    best = float("inf")
    for _ in range(2):
        started = time.process_time()
        decode_only(path)
        best = min(best, time.process_time() - started)
    return best


def pipeline_fps(pipeline: Pipeline, path: str, streams: int, frames_per_stream: int) -> float:
    started = time.perf_counter()
    results = asyncio.run(pipeline.replay([path] * streams, NullSink()))
    wall_s = time.perf_counter() - started
    assert all(r.status == "ok" for r in results), [r.reason for r in results]
    return frames_per_stream * streams / wall_s


def naive_loop_fps(clip: Path) -> float:
    """benchmarks.naive_loop's fps on the clip, in a process of its own (as a user runs it)."""
    done = subprocess.run([sys.executable, "-m", "benchmarks.naive_loop", str(clip)], capture_output=True,
                          text=True, check=True)
    return float(re.search(r"loop: (\d+) fps", done.stdout).group(1))


def bench_clip(label: str, clip: Path, pipeline: Pipeline, streams: int, seconds: float) -> None:
    naive = naive_loop_fps(clip) if pipeline.cfg.profile == "pretrained" else None
    frames, decode_s = decode_only(str(clip))
    decode_fps_1 = frames / decode_s
    decode_fps_n = decode_only_parallel(str(clip), streams)
    # Warm the operators' first batches and the stream pool to `streams` actors: start-up is
    # measured on its own below, not inside the throughput.
    pipeline_fps(pipeline, str(clip), streams, frames)
    roles = ProcessRoles(pipeline)
    with CpuByRole(roles) as cpu, CpuByOperator(pipeline) as operator_cpu:
        fps_1 = pipeline_fps(pipeline, str(clip), 1, frames)
    fps_n = pipeline_fps(pipeline, str(clip), streams, frames)
    # Memory in a run of its own: scanning every process each second costs CPU the fps runs must not pay.
    with MemorySampler(roles) as memory:
        pipeline_fps(pipeline, str(clip), streams, frames)
    # The machine is noisy: take the baseline again after the pipeline and keep the best of
    # each, so a slow moment in the baseline cannot flatter the ratio.
    decode_fps_1 = max(decode_fps_1, frames / decode_only(str(clip))[1])
    decode_fps_n = max(decode_fps_n, decode_only_parallel(str(clip), streams))
    if naive is not None:
        naive = max(naive, naive_loop_fps(clip))
    first_s, first_less_probe_s = startup_s(pipeline, str(clip))
    print(f"[{label}] decode-only (PyAV, threaded, every frame, best of 2): 1 stream {decode_fps_1:.0f} fps; "
          f"{streams} streams {decode_fps_n:.0f} fps aggregate")
    print(f"[{label}] pipeline: 1 stream {fps_1:.0f} fps (ratio {fps_1 / decode_fps_1:.2f}); "
          f"{streams} streams {fps_n:.0f} fps aggregate (ratio {fps_n / decode_fps_n:.2f})")
    if naive is not None:
        print(f"[{label}] naive single-process loop (benchmarks/naive_loop.py, same models and rates, best of 2): "
              f"{naive:.0f} fps; pipeline / naive: 1 stream {fps_1 / naive:.2f}, {streams} streams {fps_n / naive:.2f}")
    print(f"[{label}] peak memory (driver + Ray workers, {streams} streams): RSS {memory.peak_rss / 2**30:.2f} GiB, "
          f"PSS {memory.peak_pss / 2**30:.2f} GiB; RSS by role: " + ", ".join(
              f"{role} {value / 2**30:.2f}" for role, value in sorted(memory.rss_by_role.items(), key=lambda kv: -kv[1])))
    print(f"[{label}] CPU s per media s, 1 stream: " + ", ".join(
        f"{role} {value / seconds:.3f}" for role, value in sorted(cpu.seconds.items(), key=lambda kv: -kv[1])))
    print(f"[{label}] CPU s per media s by operator, 1 stream (its batches' thread; ASR's own threads not "
          "counted): " + ", ".join(f"{kind} {value / seconds:.3f}" for kind, value in
                                   sorted(operator_cpu.seconds.items(), key=lambda kv: -kv[1])))
    decode_cpu_s = decode_only_cpu_s(str(clip))
    print(f"[{label}] decode alone (decode-only, this process): {decode_cpu_s / seconds:.3f} CPU s per media s")
    print(f"[{label}] stream start-up: {first_s * 1000:.0f} ms to the first record, "
          f"{first_less_probe_s * 1000:.0f} ms of it not PyAV's open")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--streams", type=int, default=4)
    parser.add_argument("--keep-clip", type=Path, help="write (or reuse) the I/P clip here")
    parser.add_argument("--bframes", type=Path, help="write (or reuse) a B-frame clip here and measure it too")
    parser.add_argument("--set", dest="sets", action="append", default=[], help="config override")
    args = parser.parse_args()

    clips = {"ip": args.keep_clip or Path(tempfile.mkdtemp()) / "bench720p.mp4"}
    if args.bframes:
        clips["b-frames"] = args.bframes
    for label, clip in clips.items():
        if not clip.exists():
            started = time.perf_counter()
            write_bench_clip(clip, args.seconds, bframes=label != "ip")
            print(f"clip: {clip} ({clip.stat().st_size / 1e6:.1f} MB, written in {time.perf_counter() - started:.1f}s)")

    cfg = load_config(None, ["records.stdout=false", *args.sets])
    ray.init(address="local", include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False)
    pipeline = Pipeline(cfg)
    asyncio.run(pipeline.warm_up())
    for label, clip in clips.items():
        bench_clip(label, clip, pipeline, args.streams, args.seconds)
    pipeline.shutdown()
    ray.shutdown()


if __name__ == "__main__":
    main()
