"""Where records go. A Sink takes records in order and must not lose any it accepted.

Contract: ``write(record, arrived_wall_s)`` may block (backpressure) but never
drops; ``arrived_wall_s`` is when the media the record was derived from reached
avfuse (unix seconds; None for records not derived from media), for the
end-to-end latency. ``flush()`` returns once every accepted record is durable at
the destination; ``close()`` flushes. Sinks that deliver records (JSONL, Kafka)
count what they acknowledged with a PublishMeter; display sinks do not.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import IO, Callable, Iterable, Protocol

from pipeline.observe import metrics
from pipeline.output.records import (
    Discontinuity,
    Error,
    Event,
    Record,
    SourceState,
    StreamEnd,
    StreamStart,
    Summary,
    Transcript,
)


class Sink(Protocol):
    def write(self, record: Record, arrived_wall_s: float | None = None) -> None: ...
    def flush(self) -> None: ...
    def close(self) -> None: ...


class PublishMeter:
    """Counts one sink's acknowledged records, its publish latency and the end-to-end latency."""

    def __init__(self, sink_name: str):
        self.sink_name = sink_name
        m = metrics.get()
        self._publish_s = m.sink_publish_seconds.labels(sink_name)
        self._end_to_end_s = m.end_to_end_seconds.labels(sink_name)

    def acked(self, record: Record, handed_wall_s: float, arrived_wall_s: float | None) -> None:
        now = time.time()
        label = record.label if isinstance(record, Event) else ""
        metrics.get().records_published.labels(self.sink_name, record.record_type, label).inc()
        self._publish_s.observe(max(0.0, now - handed_wall_s))
        if arrived_wall_s is not None:
            self._end_to_end_s.observe(max(0.0, now - arrived_wall_s))

    def failed(self, reason: str) -> None:
        metrics.get().sink_failures.labels(self.sink_name, reason).inc()


class JsonlSink:
    """One JSON object per line, appended to a file (created with its folder)."""

    def __init__(self, path: str | Path, append: bool = False):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Line-buffered: each record reaches the file whole and at once (tail -f works,
        # and a killed process loses at most the line being written).
        self._file: IO[str] = self.path.open("a" if append else "w", encoding="utf-8", buffering=1)
        self._meter = PublishMeter("jsonl")

    def write(self, record: Record, arrived_wall_s: float | None = None) -> None:
        handed_wall_s = time.time()
        self._file.write(record.to_json() + "\n")
        self._meter.acked(record, handed_wall_s, arrived_wall_s)

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        if not self._file.closed:
            self._file.flush()
            self._file.close()


def _av_offset(summary: Summary) -> str:
    if summary.av_sync_confidence is None:
        return ""
    if summary.av_offset_s is None:
        return f"; A/V offset unknown (confidence {summary.av_sync_confidence:.2f})"
    return f"; A/V offset {summary.av_offset_s:+.2f}s (confidence {summary.av_sync_confidence:.2f})"


def _tags(verb: str, tags: list[dict], shown: int = 5) -> str:
    if not tags:
        return ""
    return f"; {verb}: " + ", ".join(f"{t['label']} {t['seconds']:.0f}s" for t in tags[:shown])


def describe(record: Record) -> str | None:
    """One human-readable line for a record, or None for records not worth a line."""
    if isinstance(record, Event):
        span = f"{record.start_s:7.2f}s" if record.end_s == record.start_s else f"{record.start_s:7.2f}s-{record.end_s:.2f}s"
        return f"[{record.stream_id}] event    {record.label:<13} {span}  conf {record.confidence:.2f}"
    if isinstance(record, Summary):
        counts = ", ".join(f"{k}={v}" for k, v in sorted(record.counts_by_label.items())) or "no events"
        kind = "final summary" if record.final else "summary"
        return (f"[{record.stream_id}] {kind}: {record.processed_s:.1f}s at {record.speed_x_realtime:.1f}x realtime; "
                f"{counts}; silence {record.silence_s:.1f}s, black {record.black_s:.1f}s, "
                f"frozen {record.frozen_s:.1f}s, speech {record.speech_s:.1f}s, scenes {record.scenes}"
                + _av_offset(record) + _tags("heard", record.audio_tags) + _tags("seen", record.visual_tags)
                + (f"; {record.words} words spoken" if record.words else ""))
    if isinstance(record, Transcript):
        return f'[{record.stream_id}] {record.start_s:.1f}\u2013{record.end_s:.1f} s  "{record.text}"'
    if isinstance(record, SourceState):
        return f"[{record.stream_id}] " + _source_state(record)
    if isinstance(record, Discontinuity):
        if record.reason == "pts_jump":
            return (f"[{record.stream_id}] timestamps jumped {'back' if record.jump_s < 0 else 'forward'} "
                    f"{abs(record.jump_s):.2f}s at {record.at_s:.2f}s: re-based, times go on")
        return (f"[{record.stream_id}] reconnected after {record.down_s:.1f} s down ({record.attempts} "
                f"attempt{'s' if record.attempts != 1 else ''}): media resumes at {record.resume_s:.2f}s, "
                f"a {record.gap_s:.1f}s gap")
    if isinstance(record, StreamStart):
        return f"[{record.stream_id}] start    {record.uri}"
    if isinstance(record, StreamEnd):
        return f"[{record.stream_id}] end      {record.status}" + (f": {record.reason}" if record.reason else "")
    return None


def _source_state(record: SourceState) -> str:
    if record.state == "down":
        return f"source down at {record.at_s:.2f}s ({record.reason}: {record.detail})"
    if record.state == "retrying":
        return f"reconnecting (attempt {record.attempt + 1}, {record.down_s:.1f} s down)"
    return f"source given up after {record.down_s:.1f} s down: {record.detail}"


class StdoutSink:
    """Human-readable lines for people watching a replay (windows are not printed)."""

    def __init__(self, print_line: Callable[[str], None] | None = None):
        # A progress display passes its own printer so lines appear above its bars.
        self._print_line = print_line or (lambda line: print(line, flush=True))

    def write(self, record: Record, arrived_wall_s: float | None = None) -> None:
        line = describe(record)
        if line is not None:
            self._print_line(line)

    def flush(self) -> None:
        sys.stdout.flush()

    def close(self) -> None:
        self.flush()


class ErrorLinesSink:
    """Each error record as one line on stderr: the user's one-line reason, no traceback."""

    def __init__(self, stream: IO[str] | None = None):
        self._stream = stream

    def write(self, record: Record, arrived_wall_s: float | None = None) -> None:
        if isinstance(record, Error):
            print(f"avfuse: [{record.stream_id}] {record.stage}: {record.reason}", file=self._stream or sys.stderr)

    def flush(self) -> None:
        (self._stream or sys.stderr).flush()

    def close(self) -> None:
        self.flush()


class LogSink:
    """Stream starts and ends at INFO, error records at WARNING, with stream_id and stage as fields
    (service mode, where nobody watches stderr lines but a log aggregator does)."""

    def __init__(self, logger: logging.Logger | None = None):
        self._log = logger or logging.getLogger("avfuse.records")

    def write(self, record: Record, arrived_wall_s: float | None = None) -> None:
        if isinstance(record, Error):
            self._log.warning(record.reason, extra={"stream_id": record.stream_id, "stage": record.stage})
        elif isinstance(record, (StreamStart, StreamEnd, Discontinuity)):
            self._log.info(describe(record), extra={"stream_id": record.stream_id, "stage": "stream"})
        elif isinstance(record, SourceState):
            self._log.warning(describe(record), extra={"stream_id": record.stream_id, "stage": "source"})

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


class FanoutSink:
    """Writes every record to each of several sinks, in order."""

    def __init__(self, sinks: Iterable[Sink]):
        self.sinks = list(sinks)

    def write(self, record: Record, arrived_wall_s: float | None = None) -> None:
        for sink in self.sinks:
            sink.write(record, arrived_wall_s)

    def flush(self) -> None:
        for sink in self.sinks:
            sink.flush()

    def close(self) -> None:
        for sink in self.sinks:
            sink.close()


class NullSink:
    """Accepts and discards records (benchmarks measure the pipeline, not a file system)."""

    def write(self, record: Record, arrived_wall_s: float | None = None) -> None:
        pass

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass
