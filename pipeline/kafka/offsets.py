"""Which input offsets may be committed: where the Kafka offset commit is decided.

An input message is *done* once every record derived from it has been
acknowledged by the broker. A partition's committable offset is the lowest
offset not yet done (Kafka commits mean "everything before this is done"), so a
long job never lets a later, finished one commit past it.
"""

from __future__ import annotations

from collections import defaultdict


class OffsetTracker:
    def __init__(self) -> None:
        self._pending: dict[tuple[str, int], set[int]] = defaultdict(set)
        self._next: dict[tuple[str, int], int] = {}  # one past the highest offset seen
        self._committed: dict[tuple[str, int], int] = {}

    def received(self, topic: str, partition: int, offset: int) -> None:
        key = (topic, partition)
        self._pending[key].add(offset)
        self._next[key] = max(self._next.get(key, 0), offset + 1)

    def done(self, topic: str, partition: int, offset: int) -> None:
        self._pending[(topic, partition)].discard(offset)

    def committable(self) -> dict[tuple[str, int], int]:
        """Offsets to commit now: only partitions that moved since the last ``committed``."""
        offsets = {}
        for key, next_offset in self._next.items():
            pending = self._pending.get(key)
            offset = min(pending) if pending else next_offset
            if offset > self._committed.get(key, -1):
                offsets[key] = offset
        return offsets

    def positions(self) -> dict[tuple[str, int], int]:
        """Every tracked partition's committable offset, moved or not: exactly-once sends them with
        every transaction, so that the broker checks the group generation each time (KIP-447) and a
        consumer dropped from the group cannot commit what its partitions' new owner also writes."""
        return {key: min(self._pending[key]) if self._pending.get(key) else next_offset
                for key, next_offset in self._next.items()}

    def committed(self, offsets: dict[tuple[str, int], int]) -> None:
        self._committed.update(offsets)

    def forget(self, topic: str, partition: int) -> None:
        """A revoked partition: another consumer owns it now."""
        for table in (self._pending, self._next, self._committed):
            table.pop((topic, partition), None)
