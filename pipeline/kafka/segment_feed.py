"""One media stream's segments on their way to its stream actor, without blocking the loop.

The service hands segments over with ``put`` (never waits); one task per stream feeds them
to the actor in order, awaiting each ``feed`` (which waits while the actor's pipe is full).
``buffered_bytes`` counts what was handed over and not yet taken by the actor: once it
reaches the bound, ``has_room`` is False and the service leaves the stream's next messages
in Kafka (``redelivery.py``).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque

log = logging.getLogger("avfuse.service")


class SegmentFeed:
    def __init__(self, actor, max_buffered_bytes: int):
        self._actor = actor
        self._max = max_buffered_bytes
        self._queue: deque[bytes] = deque()
        self._ended = False
        self._wake = asyncio.Event()
        self.buffered_bytes = 0  # handed over, not yet accepted by the actor
        self._task = asyncio.ensure_future(self._feed())

    def has_room(self) -> bool:
        return self.buffered_bytes < self._max

    def put(self, data: bytes) -> None:
        self._queue.append(data)
        self.buffered_bytes += len(data)
        self._wake.set()

    def end(self) -> None:
        """No more bytes: the actor is told once everything before is fed."""
        self._ended = True
        self._wake.set()

    def abandon(self) -> None:
        """The stream stops where it is (drain, stop job, rebalance): end the actor now."""
        self._queue.clear()
        self.buffered_bytes = 0
        self._ended = True
        self._wake.set()

    async def _feed(self) -> None:
        try:
            while True:
                while not self._queue and not self._ended:
                    self._wake.clear()
                    await self._wake.wait()
                if not self._queue:
                    self._actor.end.remote()
                    return
                data = self._queue[0]
                await self._actor.feed.remote(data)
                if self._queue and self._queue[0] is data:  # not abandoned meanwhile
                    self._queue.popleft()
                    self.buffered_bytes -= len(data)
        except Exception:  # the actor died: its stream's task reports it
            log.debug("feeding a stream actor failed", exc_info=True)
