"""Micro-batching for shared operators: requests from many streams, one forward pass.

Callers ``await batcher.submit(item)``; a single worker collects items until
their total size reaches ``max_batch`` or ``max_wait_s`` has passed since the
first one, runs ``run_batch(items)`` in a worker thread (so the event loop keeps
accepting requests meanwhile) and hands each caller its own result. Sizes are
in the operator's unit (frames, audio rows, windows); one item larger than
``max_batch`` runs alone rather than being split.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any, Callable, Generic, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")


@dataclass
class BatchStats:
    batches: int = 0
    items: int = 0
    size_total: int = 0
    last_batch_size: int = 0
    last_latency_s: float = 0.0
    cpu_s: float = 0.0  # CPU time of the thread that ran the batches: the operator's own, even in a shared process


class MicroBatcher(Generic[Item, Result]):
    def __init__(
        self,
        run_batch: Callable[[list[Item]], list[Result]],
        size_of: Callable[[Item], int],
        max_batch: int,
        max_wait_s: float,
        on_batch: Callable[[int, float], Any] | None = None,
    ):
        self._run_batch = run_batch
        self._size_of = size_of
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self._on_batch = on_batch
        self._queue: asyncio.Queue[tuple[Item, asyncio.Future]] | None = None
        self._worker: asyncio.Task | None = None
        self._carried: tuple[Item, asyncio.Future] | None = None  # did not fit the last batch
        self.stats = BatchStats()

    async def submit(self, item: Item) -> Result:
        loop = asyncio.get_running_loop()
        if self._queue is None:
            self._queue = asyncio.Queue()
        if self._worker is None or self._worker.done():
            self._worker = loop.create_task(self._work())
        future: asyncio.Future = loop.create_future()
        await self._queue.put((item, future))
        return await future

    async def _collect(self) -> list[tuple[Item, asyncio.Future]]:
        first, self._carried = (self._carried, None) if self._carried else (await self._queue.get(), None)
        batch, size = [first], self._size_of(first[0])
        deadline = time.monotonic() + self.max_wait_s
        while size < self.max_batch:
            try:
                pending = self._queue.get_nowait()
            except asyncio.QueueEmpty:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    pending = await asyncio.wait_for(self._queue.get(), remaining)
                except asyncio.TimeoutError:
                    break
            pending_size = self._size_of(pending[0])
            if size + pending_size > self.max_batch:
                self._carried = pending  # first of the next batch, so arrival order is kept
                break
            batch.append(pending)
            size += pending_size
        return batch

    def _timed_run(self, items: list[Item]) -> tuple[list[Result], float]:
        started = time.thread_time()
        return self._run_batch(items), time.thread_time() - started

    async def _work(self) -> None:
        while True:
            batch = await self._collect()
            items = [item for item, _ in batch]
            started = time.perf_counter()
            try:
                results, cpu_s = await asyncio.to_thread(self._timed_run, items)
            except Exception as exc:  # every caller of this batch learns why
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            latency_s = time.perf_counter() - started
            size = sum(self._size_of(item) for item in items)
            self.stats.batches += 1
            self.stats.items += len(items)
            self.stats.size_total += size
            self.stats.last_batch_size = size
            self.stats.last_latency_s = latency_s
            self.stats.cpu_s += cpu_s
            if self._on_batch is not None:
                self._on_batch(size, latency_s)
            for (_, future), result in zip(batch, results):
                if not future.done():
                    future.set_result(result)
