"""Live end-to-end latency against a real RTSP camera: from a frame leaving the server to its record.

Serves a clip (default: a 20 s pipeline.app.sample clip, looped) in real time with
tests.live_sources.RtspServer, runs it through the real pipeline (local Ray, --profile plus
--set; window records on) for --seconds of wall time after the media starts, and stamps each
record's wall time as it reaches the sink. A record whose media ends at stream time end_s
was complete when the server sent the frame at started_wall_s + end_s (stream time 0 is
the first timestamp the server sent; the run checks this against the clip's known events),
so its latency is arrival - (started_wall_s + end_s). Prints, for window records (one per
align.hop_s) and for event records apart: samples, p50, p95 and max, against the target
p95 <= align.hop_s + 1 s; the time from the first packet of the chunk that completed the record
(the sink's arrived_wall_s: up to live.chunk_s before its end_s arrived) to the sink; and the
speed (media s per wall s) over the first 15 s and over the run. With the sample clip, the
stream clock is checked at its known scene cuts and black frames, and latencies corrected by
any offset found.

Usage: python -m benchmarks.bench_live_latency [--seconds 60] [--clip PATH] [--profile signal] [--set KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import ray

from pipeline.app.sample import BLACK_S, CUT_S, ClipSpec, write_clip
from pipeline.compute.runtime import Pipeline
from pipeline.core.config import load_config
from pipeline.output.records import Record
from tests.live_sources import RtspServer

SAMPLE_CLIP_S = 20.0
FIRST_S = 15.0  # "the first 15 s of a live stream must already run at real time"


@dataclass(frozen=True)
class Arrival:
    record_type: str
    label: str
    start_s: float | None
    end_s: float | None
    at_sink_wall_s: float  # when the sink got it
    media_arrived_wall_s: float | None  # when its media reached avfuse (the pipeline's own stamp)


class StampingSink:
    """Keeps every record's type, media span and arrival wall time; writes nothing."""

    def __init__(self) -> None:
        self.arrivals: list[Arrival] = []

    def write(self, record: Record, arrived_wall_s: float | None = None) -> None:
        now = time.time()
        self.arrivals.append(Arrival(record.record_type, getattr(record, "label", ""), getattr(record, "start_s", None),
                                     getattr(record, "end_s", None), now, arrived_wall_s))

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


async def run_live(pipeline: Pipeline, camera: RtspServer, seconds: float, sink: StampingSink):
    """Run the camera's stream until `seconds` of wall time after its media started; its StreamResult."""
    stop = asyncio.Event()
    stream = asyncio.create_task(pipeline.run_stream("cam", camera.url, sink, stop=stop))
    started_wall_s = await asyncio.to_thread(camera.wait_started, 60.0)
    done, _ = await asyncio.wait([stream], timeout=max(0.0, started_wall_s + seconds - time.time()))
    if not done:
        stop.set()
    return await stream


def spread(label: str, latencies_s: list[float], target_s: float | None = None) -> None:
    if not latencies_s:
        print(f"  {label:<9} no samples")
        return
    p50, p95 = np.percentile(latencies_s, [50, 95])
    verdict = "" if target_s is None else \
        f"  (target p95 <= {target_s:.1f} s: {'met' if p95 <= target_s else 'MISSED'})"
    print(f"  {label:<9} n={len(latencies_s):<4} p50 {p50:6.2f} s  p95 {p95:6.2f} s  max {max(latencies_s):6.2f} s"
          + verdict)


def speed(windows: list[Arrival], started_wall_s: float, by_wall_s: float) -> float:
    """Media seconds processed (largest window end_s arrived by then) per wall second, at by_wall_s."""
    ends = [a.end_s for a in windows if a.at_sink_wall_s - started_wall_s <= by_wall_s]
    return max(ends, default=0.0) / by_wall_s


def clock_offset_s(events: list[Arrival], clip_s: float) -> float | None:
    """Stream time less clip time at the sample clip's scene cuts and black frames (median), or None.

    A positive offset means stream time 0 came before the server's media time 0: the latencies
    above then come out too small by it."""
    known = {"scene_cut": (CUT_S, BLACK_S[0], BLACK_S[1], 0.0), "black_video": (BLACK_S[0],)}
    offsets = []
    for a in (a for a in events if a.label in known):
        # Against the nearest known time of its label, in the nearest loop of the clip.
        off = min(((a.start_s - at_s + clip_s / 2) % clip_s - clip_s / 2 for at_s in known[a.label]), key=abs)
        if abs(off) < 0.75:
            offsets.append(off)
    shown = ", ".join(f"{a.label} {a.start_s:.2f}" for a in events if a.label in known)
    print(f"  known events (clip: cuts at {CUT_S}, {BLACK_S[0]}, {BLACK_S[1]}, loop; black at {BLACK_S[0]} s "
          f"+ k*{clip_s:.0f} s) seen at: {shown or 'none'}")
    return float(np.median(offsets)) if offsets else None


def report(sink: StampingSink, camera: RtspServer, cfg, seconds: float, clip_s: float | None, result) -> None:
    started_wall_s = camera.started_walls_s[0]
    hop_s = cfg.align.hop_s
    windows = [a for a in sink.arrivals if a.record_type == "window"]
    events = [a for a in sink.arrivals if a.record_type == "event"]
    gaps = [a for a in sink.arrivals if a.record_type in ("discontinuity", "source_state")]
    print(f"stream: {result.status} ({result.reason or 'no reason'}), {result.processed_s:.1f} media s; "
          f"{len(sink.arrivals)} records; load average {' / '.join(f'{x:.2f}' for x in os.getloadavg())}")
    if len(camera.started_walls_s) > 1 or gaps:
        print(f"  WARNING: {len(camera.started_walls_s)} media starts, {len(gaps)} gap records: the stream "
              "reconnected, latencies after it are not measured from the right origin")
    if not windows:
        print("no window records: nothing to measure")
        return
    first = windows[0]
    latencies = {a: a.at_sink_wall_s - (started_wall_s + a.end_s) for a in windows + events}
    print(f"clock: first window {first.start_s:.2f}-{first.end_s:.2f} s, arrived "
          f"{first.at_sink_wall_s - started_wall_s:.2f} s after media time 0 left the server "
          f"(latency {latencies[first]:.2f} s); smallest latency seen {min(latencies.values()):.2f} s "
          "(negative: the stream clock runs ahead of the server's)")
    offset_s = clock_offset_s(events, clip_s) if clip_s is not None else None
    if offset_s is not None:
        print(f"  stream clock - clip clock at them: {offset_s:+.2f} s (0: the assumption holds)")
    print("latency, server send -> sink:")
    spread("windows", [latencies[a] for a in windows], hop_s + 1.0)
    spread("events", [latencies[a] for a in events])
    if offset_s is not None and abs(offset_s) >= 0.05:
        print(f"  corrected by the clock offset ({offset_s:+.2f} s):")
        spread("windows", [latencies[a] + offset_s for a in windows], hop_s + 1.0)
        spread("events", [latencies[a] + offset_s for a in events])
    print("  from the first packet of the record's last chunk (arrived_wall_s) -> sink:")
    for label, group in (("windows", windows), ("events", events)):
        spread(label, [a.at_sink_wall_s - a.media_arrived_wall_s for a in group if a.media_arrived_wall_s is not None])
    run_wall_s = min(seconds, max(a.at_sink_wall_s for a in windows) - started_wall_s)
    print(f"speed: first {FIRST_S:.0f} s {speed(windows, started_wall_s, FIRST_S):.2f}x real time; "
          f"whole run ({run_wall_s:.0f} s) {speed(windows, started_wall_s, run_wall_s):.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=60.0, help="wall seconds after the media starts")
    parser.add_argument("--clip", type=Path, help="H.264 + AAC mp4 to serve (default: a 20 s sample clip)")
    parser.add_argument("--profile", default="signal", help="signal (default) or pretrained (heavy on 2 cores)")
    parser.add_argument("--set", dest="sets", action="append", default=[], help="config override")
    args = parser.parse_args()

    cfg = load_config(None, ["records.stdout=false", "records.windows=true", f"profile={args.profile}", *args.sets])
    print(f"config: profile={cfg.profile} align.window_s={cfg.align.window_s} align.hop_s={cfg.align.hop_s} "
          f"live.chunk_s={cfg.live.chunk_s} live.rtsp_transport={cfg.live.rtsp_transport}; "
          f"sets: {' '.join(args.sets) or 'none'}")
    with tempfile.TemporaryDirectory() as folder:
        clip, clip_s = args.clip, None
        if clip is None:
            clip, clip_s = write_clip(Path(folder) / "live.mp4", ClipSpec(duration_s=SAMPLE_CLIP_S)), SAMPLE_CLIP_S
        print(f"clip: {clip}{' (sample, looped)' if clip_s else ' (looped)'}; run {args.seconds:.0f} s")
        ray.init(address="local", include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False)
        pipeline = Pipeline(cfg)
        try:
            asyncio.run(pipeline.warm_up())
            sink = StampingSink()
            with RtspServer(file=clip, loop=True) as camera:
                result = asyncio.run(run_live(pipeline, camera, args.seconds, sink))
            report(sink, camera, cfg, args.seconds, clip_s, result)
        finally:
            pipeline.shutdown()
            ray.shutdown()


if __name__ == "__main__":
    main()
