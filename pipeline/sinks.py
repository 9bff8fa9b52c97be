"""Where records go. A Sink takes records in order and must not lose any it accepted.

Contract: ``write(record)`` may block (backpressure) but never drops; ``flush()``
returns once every accepted record is durable at the destination; ``close()``
flushes. The Kafka sink (service mode) implements the same interface.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import IO, Callable, Iterable, Protocol

from pipeline.records import Error, Event, Record, StreamEnd, StreamStart, Summary


class Sink(Protocol):
    def write(self, record: Record) -> None: ...
    def flush(self) -> None: ...
    def close(self) -> None: ...


class JsonlSink:
    """One JSON object per line, appended to a file (created with its folder)."""

    def __init__(self, path: str | Path, append: bool = False):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Line-buffered: each record reaches the file whole and at once (tail -f works,
        # and a killed process loses at most the line being written).
        self._file: IO[str] = self.path.open("a" if append else "w", encoding="utf-8", buffering=1)

    def write(self, record: Record) -> None:
        self._file.write(record.to_json() + "\n")

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        if not self._file.closed:
            self._file.flush()
            self._file.close()


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
                f"frozen {record.frozen_s:.1f}s, scenes {record.scenes}")
    if isinstance(record, StreamStart):
        return f"[{record.stream_id}] start    {record.uri}"
    if isinstance(record, StreamEnd):
        return f"[{record.stream_id}] end      {record.status}" + (f": {record.reason}" if record.reason else "")
    return None


class StdoutSink:
    """Human-readable lines for people watching a replay (windows are not printed)."""

    def __init__(self, print_line: Callable[[str], None] | None = None):
        # A progress display passes its own printer so lines appear above its bars.
        self._print_line = print_line or (lambda line: print(line, flush=True))

    def write(self, record: Record) -> None:
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

    def write(self, record: Record) -> None:
        if isinstance(record, Error):
            print(f"avfuse: [{record.stream_id}] {record.stage}: {record.reason}", file=self._stream or sys.stderr)

    def flush(self) -> None:
        (self._stream or sys.stderr).flush()

    def close(self) -> None:
        self.flush()


class FanoutSink:
    """Writes every record to each of several sinks, in order."""

    def __init__(self, sinks: Iterable[Sink]):
        self.sinks = list(sinks)

    def write(self, record: Record) -> None:
        for sink in self.sinks:
            sink.write(record)

    def flush(self) -> None:
        for sink in self.sinks:
            sink.flush()

    def close(self) -> None:
        for sink in self.sinks:
            sink.close()


class NullSink:
    """Accepts and discards records (benchmarks measure the pipeline, not a file system)."""

    def write(self, record: Record) -> None:
        pass

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass
