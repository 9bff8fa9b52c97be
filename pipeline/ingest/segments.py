"""Media segments from Kafka: the pieces of one container stream, fed to one decoder.

A media stream arrives as messages keyed by stream_id whose values are the next
bytes of an MPEG-TS, fragmented MP4 or Matroska stream, numbered by a ``seq``
header and ended by an ``eos`` header. The bytes of every message go into one
SegmentPipe, which PyAV reads as a file: decoding continues across messages.
"""

from __future__ import annotations

import bisect
import threading
from dataclasses import dataclass


class SegmentPipe:
    """A bounded byte pipe that PyAV reads like a non-seekable file.

    ``feed`` blocks while more than ``max_buffered_bytes`` wait to be read
    (backpressure towards the consumer); ``read`` blocks until bytes arrive or
    the pipe is ended, then returns b"" (end of file).
    """

    def __init__(self, max_buffered_bytes: int = 64 << 20):
        self._max = max_buffered_bytes
        self._buffer = bytearray()
        self._ended = False
        self._cond = threading.Condition()
        self.bytes_fed = 0
        self.segment_starts: list[int] = []  # the byte where each fed segment starts, in feed order

    def feed(self, data: bytes) -> None:
        with self._cond:
            while len(self._buffer) >= self._max and not self._ended:
                self._cond.wait()
            if self._ended:
                return
            self.segment_starts.append(self.bytes_fed)
            self._buffer += data
            self.bytes_fed += len(data)
            self._cond.notify_all()

    def end(self) -> None:
        with self._cond:
            self._ended = True
            self._cond.notify_all()

    def read(self, size: int = -1) -> bytes:
        with self._cond:
            while not self._buffer and not self._ended:
                self._cond.wait()
            n = len(self._buffer) if size is None or size < 0 else min(size, len(self._buffer))
            data = bytes(self._buffer[:n])
            del self._buffer[:n]
            self._cond.notify_all()
            return data

    @property
    def ended(self) -> bool:
        return self._ended

    def segment_at(self, position: int) -> int:
        """The index (in feed order) of the segment holding byte ``position``."""
        with self._cond:
            return bisect.bisect_right(self.segment_starts, position) - 1


@dataclass(frozen=True)
class Segment:
    """One media message: whose stream, which piece, and where it came from (for errors and offsets)."""

    stream_id: str
    seq: int | None
    eos: bool
    data: bytes
    topic: str
    partition: int
    offset: int


class SequenceCheck:
    """Per-stream ``seq`` bookkeeping: a gap or a repeat is reported, never hidden."""

    def __init__(self) -> None:
        self.expected: int | None = None
        self.gaps = 0

    def check(self, seq: int | None) -> str | None:
        """A one-line reason when ``seq`` is not the next one, else None."""
        if seq is None:
            return None
        expected, self.expected = self.expected, seq + 1
        if expected is None or seq == expected:
            return None
        if seq > expected:
            self.gaps += 1
            missing = seq - expected
            return f"segment gap: expected seq {expected}, got {seq} ({missing} missing)"
        self.expected = expected  # an old or repeated segment does not move the sequence back
        return f"segment out of order: expected seq {expected}, got {seq} (ignored)"


def parse_headers(headers: list[tuple[str, bytes]] | None) -> tuple[int | None, bool]:
    """(seq, eos) from a media message's headers; raises ValueError with a one-line reason."""
    found = {key: value for key, value in headers or []}
    seq = None
    if "seq" in found:
        try:
            seq = int(found["seq"].decode())
        except (UnicodeDecodeError, ValueError):
            raise ValueError(f"header seq is not an integer: {found['seq'][:20]!r}") from None
        if seq < 0:
            raise ValueError(f"header seq is negative: {seq}")
    eos = found.get("eos", b"").strip().lower() in (b"1", b"true", b"yes")
    return seq, eos
