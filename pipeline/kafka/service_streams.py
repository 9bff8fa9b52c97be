"""What the service keeps per stream in flight, and the sink each stream writes through.

One ``ServiceStream`` per stream_id: its task, every message that fed it (its offsets are
done when it ends), how it is fed (segmented streams), how many times it ran, and what
it takes to run it again (a job's start, or where its first media message lies).
"""

from __future__ import annotations

import asyncio
import dataclasses
from dataclasses import dataclass, field
from typing import Any

from pipeline.ingest.segments import SequenceCheck
from pipeline.kafka.segment_feed import SegmentFeed
from pipeline.output.records import Error
from pipeline.output.sinks import Sink
from pipeline.stream.checkpoint import StreamCheckpoint

Where = tuple[str, int, int]  # topic, partition, offset


@dataclass
class ServiceStream:
    stream_id: str
    first: Where  # the message that started it: a job, or the first media segment
    task: asyncio.Task | None = None
    offsets: list[Where] = field(default_factory=list)  # every message that fed it
    actor: object | None = None  # segmented streams: the stream actor fed with bytes
    feed: SegmentFeed | None = None
    sequence: SequenceCheck | None = None
    sink: Sink | None = None  # its counted sink: every record of the stream goes through it
    ended: bool = False  # eos seen (segmented)
    stop: asyncio.Event = field(default_factory=asyncio.Event)  # ends it after the chunk in hand
    stop_requested: bool = False  # a stop job: stopping is its end, the stream is done
    attempt: int = 1
    job: dict[str, Any] | None = None  # a job stream: how to start it again
    _spans: dict[tuple[str, int], tuple[int, int]] = field(default_factory=dict)  # see inputs()
    resume: StreamCheckpoint | None = None  # the checkpoint this run started from
    checkpoint: StreamCheckpoint | None = None  # its latest durable checkpoint
    fed: dict[int, Where] = field(default_factory=dict)  # segment index (this run's feed order) -> message
    fed_count: int = 0  # segments fed to this run's actor

    def fed_segment(self, where: Where) -> None:
        self.fed[self.fed_count] = where
        self.fed_count += 1

    def checkpointed(self, checkpoint: StreamCheckpoint, where: Where) -> list[Where]:
        """Its checkpoint, resuming at the message ``where``, is durable: returns the messages
        before it (done now) and forgets them."""
        self.checkpoint = checkpoint
        before = [w for w in self.offsets if w[:2] == where[:2] and w[2] < where[2]]
        self.offsets = [w for w in self.offsets if not (w[:2] == where[:2] and w[2] < where[2])]
        for index in [i for i in self.fed if i < checkpoint.resume_segment]:
            del self.fed[index]
        return before

    @property
    def segmented(self) -> bool:
        return self.job is None

    def add_offset(self, where: Where) -> None:
        self.offsets.append(where)
        topic, partition, offset = where
        first, last = self._spans.get((topic, partition), (offset, offset))
        self._spans[(topic, partition)] = (min(first, offset), max(last, offset))

    def restart_input(self) -> None:
        """Run again from its first message: what fed the last attempt no longer counts."""
        self.offsets, self._spans = [], {}
        self.sequence, self.ended = SequenceCheck(), False
        self.fed, self.fed_count = {}, 0

    def inputs(self) -> dict[tuple[str, int], tuple[int, int]]:
        """First and last offset per partition of the messages that fed it (kept as they come:
        an endless stream has many)."""
        return dict(self._spans)

    def partitions(self) -> set[tuple[str, int]]:
        return set(self._spans)

    def stop_now(self) -> None:
        self.stop.set()
        if self.feed is not None:
            self.feed.abandon()  # a segmented decoder must not wait for bytes that will not come


class StreamSink:
    """A stream's records as the service writes them: counted (exactly-once), an error names the
    stream's first message, a job's URI is shown redacted. ``flush`` does nothing: the service
    waits for the records' acknowledgements itself, without blocking its loop.

    During a rebalance (exactly-once) the stream's records are *held*: the transaction committed
    at the revocation holds exactly what its progress counts, so a new owner of the partition
    resumes from there. They are released if the partition comes back, dropped if it went."""

    def __init__(self, inner: Sink, where: Where, open_uri: str | None = None, shown_uri: str | None = None):
        self._inner, self._open_uri, self._shown_uri = inner, open_uri, shown_uri
        self._input = {"topic": where[0], "partition": where[1], "offset": where[2]}
        self._held: list | None = None
        self.released = asyncio.Event()
        self.released.set()
        self.dropped = False  # held records were dropped: its partition went to another consumer

    def write(self, record, arrived_wall_s: float | None = None) -> None:
        if self.dropped:
            return
        if self._held is not None:
            self._held.append((record, arrived_wall_s))
            return
        if self._open_uri is not None and getattr(record, "uri", None) == self._open_uri:
            record = dataclasses.replace(record, uri=self._shown_uri)
        if isinstance(record, Error) and record.input is None:
            record = dataclasses.replace(record, input=self._input)
        self._inner.write(record, arrived_wall_s)

    @property
    def holding(self) -> bool:
        return self._held is not None or self.dropped

    def hold(self) -> None:
        if self._held is None and not self.dropped:
            self._held = []
            self.released.clear()

    def release(self) -> None:
        held, self._held = self._held, None
        for record, arrived_wall_s in held or []:
            self.write(record, arrived_wall_s)
        self.released.set()

    def drop(self) -> None:
        self._held, self.dropped = None, True
        self.released.set()

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass  # the shared sink outlives the stream
