"""How late a live stream's transcripts arrive: wall time from the speech's end to its record.

Replays a clip at media speed (``decode.realtime``, as a live source arrives) through the real
pipeline (local Ray, default config plus --set) and notes the wall time at which each
transcript record reaches the sink. Its delay is that time minus the wall time at which the
stream had played to the transcript's ``end_s`` (the stream's clock starts when its first
chunk is asked for). Prints each transcript's delay, then the mean and the maximum, against
the bound the config implies: one decode chunk (``decode.chunk_s``), the speech detector's
``min_silence_s`` and the recognition itself. The baseline in the same run is the delay of
the clip's other records (events, which need no recognition).

Usage: python -m benchmarks.bench_transcript_delay [CLIP] [--set KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import time
from pathlib import Path

import ray

from pipeline.compute.runtime import Pipeline
from pipeline.core.config import load_config
from pipeline.output.records import Event, Record, Transcript
from pipeline.output.sinks import Sink

NARRATION = Path(__file__).resolve().parents[2] / "shared" / "media" / "nasa_13013.mp4"


class TimingSink(Sink):
    """Notes when each record arrives (wall seconds since ``started``)."""

    def __init__(self) -> None:
        self.started: float | None = None
        self.arrivals: list[tuple[float, Record]] = []

    def write(self, record: Record, media_arrived_wall_s: float | None = None) -> None:
        if self.started is not None:
            self.arrivals.append((time.monotonic() - self.started, record))

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("clip", nargs="?", type=Path, default=NARRATION)
    parser.add_argument("--set", dest="sets", action="append", default=[])
    args = parser.parse_args()
    cfg = load_config(None, ["records.stdout=false", "decode.realtime=true", *args.sets])
    ray.init(address="local", include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False)
    pipeline = Pipeline(cfg)
    asyncio.run(pipeline.warm_up())

    def on_progress(stream_id: str, processed_s: float, duration_s: float | None) -> None:
        if sink.started is None:  # the stream's clock starts now (see Pipeline.run_stream)
            sink.started = time.monotonic()

    sink = TimingSink()
    asyncio.run(pipeline.replay([str(args.clip)], sink, on_progress))
    pipeline.shutdown()
    ray.shutdown()

    def delays(kind: type) -> list[float]:
        return [at_s - record.end_s for at_s, record in sink.arrivals if isinstance(record, kind)]

    transcripts = [(at_s, r) for at_s, r in sink.arrivals if isinstance(r, Transcript)]
    for at_s, record in transcripts:
        print(f"transcript {record.start_s:6.2f}-{record.end_s:6.2f} s arrived at {at_s:6.2f} s: "
              f"delay {at_s - record.end_s:5.2f} s  {record.text[:50]!r}")
    bound_s = cfg.decode.chunk_s + cfg.speech.min_silence_s
    for name, values in (("transcripts", delays(Transcript)), ("events (baseline)", delays(Event))):
        if values:
            print(f"{name}: {len(values)}, delay after their end mean {sum(values) / len(values):.2f} s, "
                  f"max {max(values):.2f} s")
    print(f"bound from the config without recognition: decode.chunk_s + speech.min_silence_s = {bound_s:.2f} s; "
          f"asr.max_segment_s {cfg.asr.max_segment_s:.0f} s caps how long one segment waits to start")


if __name__ == "__main__":
    main()
