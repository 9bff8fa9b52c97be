"""One stream from open to end, inside its stream actor: where a stream's data path runs.

Decoding runs ahead on the actor's decode thread, at most ``decode.max_inflight_chunks``
chunks (so memory stays flat on long inputs). Each chunk is put into the object store
once and goes by reference to the shared operator actors (vision, audio, the taggers,
faces), which batch across streams; their tokens come back here, where the session
aligns, detects and sends ready windows to the fusion actor. Speech segments go to the
ASR actor as tasks of their own (``pipeline/stream/transcripts.py``). Records go to the
``RecordRelay``, the only thing the driver sees. The only things flowing back are the
bounded numbers of outstanding decode, transcript and record requests (backpressure).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import ray

from pipeline.compute.record_relay import RecordRelay, StreamResult
from pipeline.core.config import Config
from pipeline.core.errors import StreamOpenError, one_line
from pipeline.core.media import MediaChunk, SourceChange
from pipeline.ingest.decode import MediaDecoder
from pipeline.ingest.live_source import LiveSource
from pipeline.observe import metrics
from pipeline.output.records import Error, StreamEnd
from pipeline.stream.checkpoint import StreamCheckpoint
from pipeline.stream.session import StreamSession
from pipeline.stream.source_records import source_record
from pipeline.stream.transcripts import TranscriptRequests

log = logging.getLogger("avfuse.runtime")

# While it waits for the decoder, the runner looks this often at a stop and at the source's packet age.
_WAKE_S = 1.0


@dataclass(frozen=True)
class OperatorHandles:
    """The shared operator actors a stream sends its media to (None: that operator does not run)."""

    vision: Any
    audio: Any
    fusion: Any
    image_tags: Any = None
    sound_tags: Any = None
    faces: Any = None
    asr: Any = None


class StreamRunner:
    """Runs one stream: ``run()`` returns its StreamResult and never raises for the stream's own
    failures (they become error records); ``stop()`` ends it after the chunk in hand.

    ``checkpoints``: a stream fed in segments, or a live source; its session's checkpoints go to the
    relay in line with its records (the driver stores them once the records before are durable).
    ``resume``: the checkpoint this run starts from (the decoder was made from it too)."""

    def __init__(self, cfg: Config, operators: OperatorHandles, decoder: MediaDecoder | LiveSource,
                 relay: RecordRelay, decode_thread: ThreadPoolExecutor, live: bool,
                 checkpoints: bool = False, resume: StreamCheckpoint | None = None):
        self._checkpoints, self._resume = checkpoints, resume
        self.cfg, self.ops, self.decoder, self.relay = cfg, operators, decoder, relay
        self.stream_id, self.uri = decoder.stream_id, decoder.uri
        self._decode_thread = decode_thread
        self.source_is_live = isinstance(decoder, LiveSource)
        self.live = live or self.source_is_live
        self._stop = asyncio.Event()
        self._label = metrics.stream_label(self.stream_id)
        self._packet_age = metrics.get().source_last_packet_age.labels(self._label) if self.source_is_live else None
        self._errors_counted = 0

    def stop(self) -> None:
        self._stop.set()
        self.decoder.request_close()  # a live source waiting to reconnect wakes up

    async def _decoded(self, future: asyncio.Future):
        """``future``'s result, or the _STOPPED marker once ``stop`` is called first: a live source
        can be down for minutes, a connect can take live.open_timeout_s, and a stop must not wait."""
        while True:
            done, _ = await asyncio.wait({future}, timeout=_WAKE_S)
            if done:
                return future.result()
            if self._packet_age is not None:
                self._packet_age.set(time.monotonic() - self.decoder.last_packet_monotonic_s)
            if self._stop.is_set():
                return _STOPPED

    async def run(self) -> StreamResult:
        loop = asyncio.get_running_loop()
        if self.source_is_live:  # changes while it first connects: there is no session yet to say them
            self.decoder.on_change = lambda change: loop.call_soon_threadsafe(
                self.relay.write, source_record(self.stream_id, change))
        try:
            info = await self._decoded(loop.run_in_executor(self._decode_thread, self.decoder.open))
        except asyncio.CancelledError:  # interrupted by the user while a live source connects
            return self._ended_before_open("interrupted by the user")
        except StreamOpenError as exc:
            if self._stop.is_set():
                return self._ended_before_open("stopped before the source connected")
            return self._failed_to_open(exc.reason)
        except Exception as exc:  # an open that failed in a way the decoder did not name
            log.debug("stream %s: open failed", self.stream_id, exc_info=True)
            return self._failed_to_open(one_line(exc))
        if info is _STOPPED:
            return self._ended_before_open("stopped before the source connected")
        # A live source checkpoints its counters; a recording behind a playlist runs again from its start.
        live_checkpoints = self._checkpoints and self.source_is_live and not self.decoder.is_recording
        resume = self._resume
        if resume is not None and resume.live and not live_checkpoints:
            resume = None
        session = StreamSession(self.stream_id, self.uri, self.cfg, info, self.relay,
                                source_state="streaming" if self.source_is_live else "file",
                                resume=resume, checkpoints=self._checkpoints and not self.source_is_live,
                                live_checkpoints=live_checkpoints)
        if resume is not None and resume.live:
            log.info("stream %s: a live job run again from its checkpoint at %.2f s; media goes on at %.2f s",
                     self.stream_id, resume.processed_s, self.decoder.start_at_s)
            session.on_source_changes([restart_gap(resume, self.decoder.start_at_s)])
        elif resume is not None:
            log.info("stream %s resumes from its checkpoint at %.2f s (settled %.2f s)", self.stream_id,
                     resume.resume_s, resume.settled_s)
        self.relay.progress(0.0, info.duration_s)  # the stream's clock starts now
        transcripts = (TranscriptRequests(self.ops.asr, session)
                       if self.ops.asr is not None and session.segmenter else None)
        status, reason = "ok", None
        try:
            stopped = await self._pump(session, info.duration_s, transcripts)
            failed_reason = getattr(self.decoder, "failed_reason", None)  # a live source given up on
            reason = ("stopped before its end" if stopped else failed_reason
                      or _truncation(session.processed_s, info.duration_s))
            if stopped:
                status = "interrupted"
            elif failed_reason:
                status = "failed"
                self.relay.write(Error(self.stream_id, "input", failed_reason, uri=self.uri, fatal=True))
            elif reason:
                status = "failed"
                self.relay.write(Error(self.stream_id, "decode", reason, uri=self.uri, fatal=True))
        except asyncio.CancelledError:  # interrupted by the user (the driver's interrupt)
            status, reason = "interrupted", "interrupted by the user"
        except Exception as exc:  # one stream's failure must not stop the others
            log.debug("stream %s failed", self.stream_id, exc_info=True)
            status, reason = "failed", one_line(getattr(exc, "cause", None) or exc)
            self.relay.write(Error(self.stream_id, "runtime", reason, uri=self.uri, fatal=True))
        session.decode_errors = self.decoder.decode_errors
        if transcripts is not None:  # the final summary counts their words
            session.close_speech()
            await _finish_transcripts(transcripts, session)
        end = session.close(status, reason)
        self.ops.audio.forget.remote(self.stream_id)  # fire and forget: nothing waits on it
        return StreamResult(self.stream_id, self.uri, status, reason, end.processed_s, end.wall_s, end.events)

    def _ended_before_open(self, reason: str) -> StreamResult:
        self.relay.write(StreamEnd(self.stream_id, "interrupted", reason, 0.0, 0.0, 0, 0, 0, 0))
        return StreamResult(self.stream_id, self.uri, "interrupted", reason, 0.0, 0.0, 0)

    def _failed_to_open(self, reason: str) -> StreamResult:
        self.relay.write(Error(self.stream_id, "open", reason, uri=self.uri, fatal=True))
        self.relay.write(StreamEnd(self.stream_id, "failed", reason, 0.0, 0.0, 0, 0, 0, 0))
        return StreamResult(self.stream_id, self.uri, "failed", reason, 0.0, 0.0, 0)

    async def _pump(self, session: StreamSession, duration_s: float | None,
                    transcripts: TranscriptRequests | None) -> bool:
        """Decode, encode, align and fuse until the stream ends; True if ``stop`` ended it first."""
        m = metrics.get()
        inflight_gauge = {stage: m.inflight.labels(stage) for stage in ("decode", "vision", "audio", "fusion")}
        lag = m.live_lag.labels(self._label) if self.live else None
        loop = asyncio.get_running_loop()
        chunks = self.decoder.chunks()
        # One decode thread: the chunks come in order, each request the next one.
        decode_next = lambda: loop.run_in_executor(self._decode_thread, next, chunks, None)  # noqa: E731
        inflight = deque(decode_next() for _ in range(self.cfg.decode.max_inflight_chunks))
        inflight_gauge["decode"].inc(len(inflight))
        try:
            while inflight:
                chunk = await self._decoded(inflight[0])
                if chunk is _STOPPED:
                    return True
                inflight.popleft()
                inflight_gauge["decode"].dec()
                if chunk is None:
                    break
                self._count(chunk)
                if not chunk.finished:
                    inflight.append(decode_next())
                    inflight_gauge["decode"].inc()
                await self._process(chunk, session, transcripts, inflight_gauge, m)
                if lag is not None:
                    lag.set(max(0.0, time.monotonic() - session.started_wall_s - session.processed_s))
                if self._packet_age is not None:
                    self._packet_age.set(time.monotonic() - self.decoder.last_packet_monotonic_s)
                self.relay.progress(session.processed_s, duration_s)
                await self.relay.wait_for_room()  # the driver's sinks are behind: decode no further
                if chunk.finished:
                    break
                if self._stop.is_set():
                    return True
        finally:
            inflight_gauge["decode"].dec(len(inflight))
            for pending in inflight:  # decoded ahead, not needed: let the thread finish them
                pending.cancel()
        return False

    async def _process(self, chunk: MediaChunk, session: StreamSession, transcripts: TranscriptRequests | None,
                       inflight_gauge: dict, m) -> None:
        session.begin_chunk(chunk)
        # Put once; each operator reads its part from the object store, no copy.
        chunk_ref = ray.put(chunk)
        ops = self.ops
        with _inflight(inflight_gauge["vision"]), _inflight(inflight_gauge["audio"]):
            video, audio, sights, sounds, faces = await asyncio.gather(
                _submit_if(ops.vision, chunk_ref, "video", chunk.video),
                _submit_if(ops.audio, chunk_ref, "audio", chunk.audio),
                _submit_if(ops.image_tags, chunk_ref, "tag_frames", chunk.tag_frames),
                _submit_if(ops.sound_tags, chunk_ref, "audio_patches", chunk.audio_patches),
                _submit_if(ops.faces, chunk_ref, "face_frames", chunk.face_frames))
        session.on_tags(chunk, sights, sounds)
        session.on_faces(faces)
        windows = session.on_chunk(chunk, video, audio)
        if transcripts is not None:  # waits only when too many of the stream's segments are out
            for segment in session.take_speech_segments():
                await transcripts.submit(segment)
        if windows:
            started = time.perf_counter()
            with _inflight(inflight_gauge["fusion"]):
                fused = await ops.fusion.submit.remote(session.fusion_inputs(windows))
            m.fusion_seconds.observe(time.perf_counter() - started)
            session.on_fused(windows, fused)
        if self.source_is_live:
            checkpoint = session.live_checkpoint()
        elif self._checkpoints:
            checkpoint = session.checkpoint(self.decoder.clock.state(),
                                            transcripts.pending_from_s() if transcripts is not None else None)
        else:
            checkpoint = None
        if checkpoint is not None:
            self.relay.write(checkpoint)

    def _count(self, chunk: MediaChunk) -> None:
        m, label = metrics.get(), self._label
        m.frames_decoded.labels(label).inc(chunk.frames_decoded)
        m.frames_kept.labels(label).inc(len(chunk.video) if chunk.video is not None else 0)
        m.audio_decoded.labels(label).inc(chunk.audio_decoded_s)
        new_errors = self.decoder.decode_errors - self._errors_counted
        self._errors_counted += new_errors
        m.decode_errors.labels(label).inc(new_errors)


_STOPPED = object()  # what _decoded returns when the stream was stopped while it waited


def restart_gap(checkpoint: StreamCheckpoint, resume_s: float) -> SourceChange:
    """What a live job run again from its checkpoint says: its media stopped at the checkpoint (as
    far as this run knows) and goes on at ``resume_s``."""
    return SourceChange("resumed", "restart", checkpoint.processed_s,
                        detail="the service restarted; the job runs again from its checkpoint",
                        resume_s=resume_s, down_s=max(0.0, time.time() - checkpoint.at), wall_s=time.time())


async def _finish_transcripts(transcripts: TranscriptRequests, session: StreamSession) -> None:
    """Submit the stream's last speech segments and wait for every transcript (bounded)."""
    try:
        for segment in session.take_speech_segments():
            await transcripts.submit(segment)
    except asyncio.CancelledError:  # interrupted: end the stream with what was transcribed
        pass
    await transcripts.drain()


async def _submit_if(actor, chunk_ref, part: str, local_part):
    """An operator's answer for one part of the chunk; None when the operator does not run or the
    part is empty (checked here, so that no request is made for nothing)."""
    if actor is None or local_part is None or len(local_part) == 0:
        return None
    return await actor.submit.remote(chunk_ref, part)


@contextmanager
def _inflight(gauge):
    """Counts a request in a gauge while it is outstanding."""
    gauge.inc()
    try:
        yield
    finally:
        gauge.dec()


def _truncation(processed_s: float, duration_s: float | None) -> str | None:
    """A reason when decoding ended well before the duration the container declares."""
    if duration_s is None:
        return None
    missing_s = duration_s - processed_s
    if missing_s > max(1.0, 0.05 * duration_s):
        return f"input ended at {processed_s:.1f}s of a declared {duration_s:.1f}s (truncated or corrupt)"
    return None
