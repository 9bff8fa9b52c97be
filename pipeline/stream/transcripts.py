"""A stream's transcript requests in flight: one task per speech segment, a bounded number at once,
their transcripts written in segment order.

The stream's pump hands each segment to ``submit`` and decodes on while the shared ASR stage
works. Only with more than ``MAX_INFLIGHT`` segments outstanding does ``submit`` wait for the
oldest: a stream that speaks faster than the recogniser keeps up slows its own decoding down
instead of queueing audio without bound. ``drain`` waits for the rest before the stream's final
summary, which counts their words.

Each transcript is written as soon as it and every earlier segment's are done, so a stream's
transcript records come in segment order whatever order the stage answers in (exactly-once
delivery resumes a stream by counting them; ``pipeline/kafka/delivery.py``).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import Protocol

from pipeline.core.errors import one_line
from pipeline.observe import metrics
from pipeline.stream.speech_segments import SpeechSegment

log = logging.getLogger("avfuse.transcripts")

MAX_INFLIGHT = 4  # segments per stream: at most 4 x asr.max_segment_s of audio waiting
DRAIN_TIMEOUT_S = 120.0  # far above MAX_INFLIGHT segments' work; a stuck stage must not hold the stream's end


class TranscriptSink(Protocol):
    """Where the answers go: the stream's session."""

    stream_id: str
    media_arrived_wall_s: float | None

    def on_transcript(self, segment: SpeechSegment, transcription, arrived_wall_s: float | None) -> None: ...
    def on_transcript_failed(self, segment: SpeechSegment, reason: str) -> None: ...


class TranscriptRequests:
    """One stream's segments on their way through the ASR stage (``actor.submit``)."""

    def __init__(self, actor, session: TranscriptSink):
        self._actor, self._session = actor, session
        self._tasks: deque[asyncio.Task] = deque()
        self._starts: deque[float] = deque()  # each task's segment start
        self._gauge = metrics.get().inflight.labels("asr")

    @property
    def inflight(self) -> int:
        return sum(not task.done() for task in self._tasks)

    def pending_from_s(self) -> float | None:
        """The earliest start of a segment whose transcript is not written yet (a checkpoint waits for it)."""
        return min((start_s for start_s, task in zip(self._starts, self._tasks) if not task.done()), default=None)

    async def submit(self, segment: SpeechSegment) -> None:
        """Start transcribing ``segment``; waits only while more than MAX_INFLIGHT are outstanding."""
        previous = self._tasks[-1] if self._tasks else None
        self._gauge.inc()
        self._tasks.append(asyncio.create_task(
            self._transcribe(segment, previous, self._session.media_arrived_wall_s)))
        self._starts.append(segment.start_s)
        while self._tasks and (len(self._tasks) > MAX_INFLIGHT or self._tasks[0].done()):
            await asyncio.wait([self._tasks[0]])
            self._tasks.popleft()
            self._starts.popleft()

    async def _transcribe(self, segment: SpeechSegment, previous: asyncio.Task | None,
                          arrived_wall_s: float | None) -> None:
        try:
            try:
                transcription, reason = await self._actor.submit.remote(segment), None
            except Exception as exc:  # one segment's failure costs its transcript, not the stream
                log.debug("transcript of %s at %.2f s failed", segment.stream_id, segment.start_s, exc_info=True)
                transcription, reason = None, one_line(getattr(exc, "cause", None) or exc)
        finally:
            self._gauge.dec()
        if previous is not None:
            await asyncio.wait([previous])  # segment order; a cancelled predecessor does not stop this one
        if reason is not None:
            self._session.on_transcript_failed(segment, reason)
        else:
            self._session.on_transcript(segment, transcription, arrived_wall_s)

    async def drain(self, timeout_s: float = DRAIN_TIMEOUT_S) -> None:
        """Wait until every submitted segment's transcript is written. Those still out after
        ``timeout_s``, or when this wait is cancelled (Ctrl-C: the stream's end is still written),
        are cancelled, with a warning."""
        tasks, self._tasks, self._starts = list(self._tasks), deque(), deque()
        if not tasks:
            return
        try:
            _, pending = await asyncio.wait(tasks, timeout=timeout_s)
        except asyncio.CancelledError:
            pending = [task for task in tasks if not task.done()]
        for task in pending:
            task.cancel()
        if pending:
            log.warning("%d speech segments were not transcribed before the stream ended", len(pending),
                        extra={"stream_id": self._session.stream_id, "stage": "asr"})

    def cancel(self) -> None:
        """Drop what is still outstanding (the stream ends without writing its end)."""
        for task in self._tasks:
            task.cancel()
        self._tasks.clear()
        self._starts.clear()
