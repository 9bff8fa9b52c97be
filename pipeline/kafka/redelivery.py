"""Media messages a stream cannot take yet are read again later from Kafka, not buffered.

A media stream buffers at most ``kafka.segment_buffer_bytes`` (waiting for a slot, or with
its decoder behind). Its next message is then *deferred*: left where it is in the partition,
its offset pending, so no commit passes it. Other streams' messages on the same partition go
on being handled: pausing the partition would stall them, and if one of them holds the slot
the waiting stream needs, for ever. Once the stream has room again the partition is read
again from its first deferred message (a seek); messages handled the first time are skipped,
the stream's own are handled in their order.

Per partition: ``read_up_to`` (one past the highest offset read), and per deferred stream the
first offset of its messages not yet handled and whether the re-read has started. Pure
bookkeeping: the service asks ``verdict`` for each message and seeks where ``seeks`` says.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

Partition = tuple[str, int]


class Verdict(Enum):
    HANDLE = "handle"
    DEFER = "defer"  # leave it in Kafka, pending: it is read again later
    SKIP = "skip"  # handled when first read


@dataclass
class _Deferred:
    from_offset: int  # the stream's messages from here on are not handled yet
    rereading: bool = False  # a seek to at most from_offset was made: its messages are handled again


class Redelivery:
    def __init__(self) -> None:
        self._read_up_to: dict[Partition, int] = {}
        self._deferred: dict[Partition, dict[str, _Deferred]] = {}
        self._seeks: dict[Partition, int] = {}
        self._position: dict[Partition, int] = {}  # the offset the consumer reads next

    def verdict(self, tp: Partition, offset: int, stream_id: str, has_room: bool) -> Verdict:
        read_up_to = self._read_up_to.get(tp, 0)
        self._read_up_to[tp] = max(read_up_to, offset + 1)
        self._position[tp] = offset + 1
        streams = self._deferred.setdefault(tp, {})
        deferred = streams.get(stream_id)
        if offset < read_up_to and (deferred is None or offset < deferred.from_offset):
            return Verdict.SKIP
        if deferred is None:
            if has_room:
                return Verdict.HANDLE
            streams[stream_id] = _Deferred(offset)
            return Verdict.DEFER
        if not deferred.rereading:
            return Verdict.DEFER  # its earlier messages wait in Kafka: this one waits behind them
        if not has_room:
            deferred.from_offset, deferred.rereading = offset, False
            return Verdict.DEFER
        if offset >= read_up_to:  # past everything read before: caught up
            del streams[stream_id]
        else:
            deferred.from_offset = offset + 1
        return Verdict.HANDLE

    def waiting(self) -> dict[Partition, list[str]]:
        """Streams with deferred messages whose re-read has not started, per partition."""
        return {tp: [sid for sid, d in streams.items() if not d.rereading]
                for tp, streams in self._deferred.items() if any(not d.rereading for d in streams.values())}

    def reread(self, tp: Partition, stream_id: str, from_offset: int | None = None) -> None:
        """Read the stream's deferred messages again (it has room now); ``from_offset``: from there,
        whether deferred or handled before (a stream run again after a failure)."""
        streams = self._deferred.setdefault(tp, {})
        deferred = streams.get(stream_id)
        if from_offset is not None:
            deferred = streams[stream_id] = _Deferred(from_offset)
        if deferred is None:
            return
        deferred.rereading = True
        self._seeks[tp] = min(self._seeks.get(tp, deferred.from_offset), deferred.from_offset)

    def seeks(self) -> dict[Partition, int]:
        """Where to seek before the next poll (and forget the requests): only backwards, since a
        read that has not got there yet reaches it in order (a seek forward would skip messages)."""
        seeks, self._seeks = self._seeks, {}
        seeks = {tp: offset for tp, offset in seeks.items() if offset < self._position.get(tp, 0)}
        self._position.update(seeks)
        return seeks

    def forget(self, tp: Partition) -> None:
        """A partition this consumer no longer owns."""
        for table in (self._read_up_to, self._deferred, self._seeks, self._position):
            table.pop(tp, None)
