"""The stream actor: one process that owns everything keyed by the stream it runs.

It holds the stream's decoder (its PyAV container, on a decode thread of its own), the
session (feature continuity, alignment, detectors, trackers, summaries) and the stream's
transcript requests; it sends kept frames and audio rows by reference to the shared
operator actors and returns only records to the driver (``take_records``). One stream at
a time: ``StreamPool`` hands a finished stream's actor to the next stream, so a stream's
start spawns no process and imports nothing. A segmented actor (Kafka media segments)
is made for its stream, since its bytes may arrive before any other call.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import ray

from pipeline.compute.heap import HeapTrimmer
from pipeline.compute.record_relay import RecordBatch, RecordRelay, StreamResult
from pipeline.compute.stream_runner import OperatorHandles, StreamRunner
from pipeline.core.config import Config
from pipeline.core.errors import one_line
from pipeline.ingest.decode import MediaDecoder
from pipeline.ingest.live_source import LiveSource, reconnects
from pipeline.ingest.segments import SegmentPipe
from pipeline.stream.checkpoint import StreamCheckpoint

log = logging.getLogger("avfuse.runtime")


@ray.remote
class StreamActor:
    """Calls: ``run`` (a pooled actor: with the stream to run; returns at once, the stream runs in
    the actor), then ``take_records`` until a batch carries the result; ``stop`` ends the stream
    after the chunk in hand, ``interrupt`` at once (both still end it with its records);
    ``feed``/``end`` hand a segmented stream its bytes; ``reset`` readies it for the next.

    An async actor runs its calls concurrently, not one after another in the order they were
    sent: so a call that depends on another is sent once that one has returned (the driver
    awaits ``run`` before its first ``take_records``)."""

    def __init__(self, cfg: Config, operators: OperatorHandles, stream_id: str | None = None, uri: str = "",
                 segmented: bool = False, resume: StreamCheckpoint | None = None):
        logging.getLogger("libav").setLevel(logging.ERROR)
        self._cfg, self._operators = cfg, operators
        self._pipe = SegmentPipe(cfg.kafka.segment_buffer_bytes) if segmented else None
        # PyAV calls block; on their own thread they leave the actor's event loop free to take
        # the operators' answers and the driver's calls while the next chunk decodes.
        self._decode_thread = ThreadPoolExecutor(1, thread_name_prefix="decode")
        self._decoder: MediaDecoder | LiveSource | None = None
        self._runner: StreamRunner | None = None
        self._relay = RecordRelay()
        self._task: asyncio.Task | None = None
        self._heap = HeapTrimmer(cfg.runtime.heap_trim_s)
        if stream_id is not None:
            self._start(stream_id, uri, live=segmented, resume=resume)

    def _start(self, stream_id: str, uri: str, open_options: dict[str, str] | None = None,
               live: bool = False, cfg: Config | None = None, resume: StreamCheckpoint | None = None) -> None:
        """Begin a new stream (under the driver's config as it is now, when given); whatever the
        previous one left open is closed first."""
        self.reset()
        self._cfg = cfg or self._cfg
        live_source = self._pipe is None and reconnects(self._cfg, uri)
        if resume is not None and resume.live != live_source:
            resume = None  # a live checkpoint of a source that now is not one, or the reverse: run afresh
        if live_source:
            # Run again from a live checkpoint: the clock goes on from there, plus the wall time since.
            start_at_s = resume.processed_s + max(0.0, time.time() - resume.at) if resume is not None else None
            self._decoder = LiveSource(stream_id, uri, self._cfg, open_options, start_at_s=start_at_s)
        else:
            grid = resume.audio_grid if resume is not None else None
            self._decoder = MediaDecoder(stream_id, uri, self._cfg, open_options, source=self._pipe,
                                         clock_state=resume.clock if resume is not None else None,
                                         audio_grid=(grid["origin_s"], grid["step_s"]) if grid else None)
        self._relay = RecordRelay()
        self._runner = StreamRunner(self._cfg, self._operators, self._decoder, self._relay,
                                    self._decode_thread, live, checkpoints=self._pipe is not None or live_source,
                                    resume=resume)

    async def run(self, stream_id: str | None = None, uri: str = "", open_options: dict[str, str] | None = None,
                  live: bool = False, cfg: Config | None = None, resume: StreamCheckpoint | None = None) -> None:
        if stream_id is not None:
            self._start(stream_id, uri, open_options, live, cfg, resume)
        self._task = asyncio.ensure_future(self._run(self._runner, self._relay, self._decoder))

    async def _run(self, runner: StreamRunner, relay: RecordRelay, decoder: MediaDecoder) -> None:
        try:
            result = await runner.run()
        except BaseException as exc:  # a bug of ours must still end the stream, not hang the driver
            log.debug("stream %s: runner failed", runner.stream_id, exc_info=True)
            result = StreamResult(runner.stream_id, runner.uri, "failed", one_line(exc), 0.0, 0.0, 0)
        finally:
            decoder.request_close()  # a live source's backoff or next connect ends now
            # Queued behind any decode still running, on the decoder's own thread.
            asyncio.get_running_loop().run_in_executor(self._decode_thread, decoder.close)
        relay.finish(result)

    async def take_records(self, from_seq: int = 0, seen_version: int = -1) -> RecordBatch:
        self._heap.maybe_trim()  # the driver calls this all along a stream
        return await self._relay.take(from_seq, seen_version)

    def stop(self) -> None:
        if self._runner is not None:
            self._runner.stop()

    def interrupt(self) -> None:
        """Interrupted by the user: the stream ends now, as interrupted, its records still taken."""
        if self._task is not None:
            self._task.cancel()

    async def feed(self, data: bytes) -> None:
        """The next bytes of a segmented stream (waits while the decoder is far behind)."""
        await asyncio.get_running_loop().run_in_executor(None, self._pipe.feed, data)

    def end(self) -> None:
        """No more bytes: the decoder finishes what it has and ends the stream."""
        self._pipe.end()

    def reset(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
        self._task = None
        if self._decoder is not None:
            self._decoder.request_close()
            self._decode_thread.submit(self._decoder.close)
        self._decoder = None

    def pid(self) -> int:
        return os.getpid()

    def imported(self, module: str) -> bool:
        """Whether this process has loaded ``module``: stream actors stay torch-free (see the tests)."""
        return module in sys.modules
