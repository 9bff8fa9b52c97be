"""Records from a stream actor to the driver: the only data that crosses back.

A stream's session writes into its actor's ``RecordRelay`` (a Sink); the driver takes
them in ``RecordBatch``es and writes them to the real sinks (JSONL, Kafka, with their
offsets). Frames, audio and tokens never leave the stream actor and the operator actors.
The relay holds at most ``max_records`` before the stream's pump waits, so a driver whose
sinks are slow (a broker outage) holds the stream back instead of filling memory.

Records are numbered. A take names the first record the driver has not written yet and
the relay forgets only those before it, so a take whose answer never arrived (the
driver's await was cancelled by Ctrl-C, but the call still ran) loses nothing.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from pipeline.output.records import Record

# Far above what one chunk makes (a few dozen records), far below what would weigh on memory.
MAX_RECORDS = 2000


@dataclass
class StreamResult:
    stream_id: str
    uri: str
    status: str  # ok | failed | interrupted
    reason: str | None
    processed_s: float
    wall_s: float
    events: int


@dataclass
class RecordBatch:
    """What the driver gets per call: records in order with when their media arrived (unix s, or
    None), how far the stream got, and on the stream's last batch its result."""

    records: list[tuple[Record, float | None]] = field(default_factory=list)
    next_seq: int = 0  # the number of the record after these: the next take's from_seq
    version: int = 0  # the relay's state seen: the next take waits for a newer one
    processed_s: float | None = None  # None until the stream is open
    duration_s: float | None = None
    result: StreamResult | None = None


class RecordRelay:
    """A Sink the driver drains. write() never blocks (the session is synchronous); the pump
    awaits ``wait_for_room()`` between chunks instead."""

    def __init__(self, max_records: int = MAX_RECORDS):
        self.max_records = max_records
        self._records: list[tuple[Record, float | None]] = []
        self._first_seq = 0  # the number of _records[0]
        self._processed_s: float | None = None
        self._duration_s: float | None = None
        self._result: StreamResult | None = None
        self._version = 0
        self._changed = asyncio.Event()  # replaced on every change: each waiter wakes once
        self._taken = asyncio.Event()

    def _bump(self) -> None:
        self._version += 1
        self._changed.set()
        self._changed = asyncio.Event()

    # --- the stream's side -----------------------------------------------------------------
    def write(self, record: Record, arrived_wall_s: float | None = None) -> None:
        self._records.append((record, arrived_wall_s))
        self._bump()

    def flush(self) -> None:
        """Nothing to do here: records are durable once the driver's sinks flush them."""

    def close(self) -> None:
        pass

    def progress(self, processed_s: float, duration_s: float | None) -> None:
        self._processed_s, self._duration_s = processed_s, duration_s
        self._bump()

    def finish(self, result: StreamResult) -> None:
        self._result = result
        self._bump()

    async def wait_for_room(self) -> None:
        while len(self._records) >= self.max_records:
            self._taken.clear()
            await self._taken.wait()

    # --- the driver's side -----------------------------------------------------------------
    async def take(self, from_seq: int = 0, seen_version: int = -1) -> RecordBatch:
        """Records from number ``from_seq`` on (those before it were written: forgotten), once the
        relay changed since ``seen_version``."""
        if from_seq > self._first_seq:
            del self._records[:from_seq - self._first_seq]
            self._first_seq = from_seq
            self._taken.set()
        while self._version <= seen_version:
            await self._changed.wait()
        records = self._records[from_seq - self._first_seq:]
        return RecordBatch(records, from_seq + len(records), self._version, self._processed_s,
                           self._duration_s, self._result)
