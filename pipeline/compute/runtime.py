"""The driver: starts Ray, places the shared operator actors, and runs streams through them.

Per stream: a DecodeActor (from a pool of idle ones) decodes ahead by at most ``decode.max_inflight_chunks``
chunks (so memory stays flat on long inputs); each chunk goes by reference to
the vision and audio actors, the session aligns and detects, and ready windows
go to the fusion actor. The speech segments the session cuts go to the ASR actor
as tasks of their own (``pipeline/stream/transcripts.py``), so the pump never waits on
them but past a bound. Data flows one way; the only thing flowing back is the
bounded number of outstanding decode and transcript requests (backpressure).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import weakref
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable

import ray
import torch

from pipeline.compute.actors import DecodeActor, StageActor
from pipeline.compute.decoder_pool import DecoderPool, kill
from pipeline.core.config import Config
from pipeline.core.errors import ClusterLost, OperatorLoadError, StreamOpenError
from pipeline.ingest.audio_patches import sound_patches_wanted
from pipeline.observe import metrics
from pipeline.output.records import Error, StreamEnd
from pipeline.output.sinks import Sink
from pipeline.stream.session import StreamSession
from pipeline.stream.speech_segments import transcripts_off_reason, transcripts_wanted
from pipeline.stream.transcripts import TranscriptRequests
from pipeline.stream.understanding import check_rules

log = logging.getLogger("avfuse.runtime")

ProgressFn = Callable[[str, float, float | None], None]
# How long the shared operator actors may take to answer before the cluster counts as gone:
# far above one batch (they answer between batches), far below a stuck pod's patience.
CLUSTER_CHECK_TIMEOUT_S = 30.0


@dataclass
class StreamResult:
    stream_id: str
    uri: str
    status: str  # ok | failed | interrupted
    reason: str | None
    processed_s: float
    wall_s: float
    events: int


def _cause(exc: BaseException) -> BaseException:
    """The user-level error inside a Ray task error, when there is one."""
    return getattr(exc, "cause", None) or exc


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


class Pipeline:
    """Shared operator actors, reused by every stream (and by every replay in one process)."""

    def __init__(self, cfg: Config):
        self.cfg = cfg
        # The driver's torch work (feature differences) is tiny; more intra-op threads
        # would only spin against the decoders for the same cores.
        torch.set_num_threads(cfg.runtime.torch_threads)
        placement = {"num_cpus": cfg.runtime.encoder_cpus, "num_gpus": cfg.runtime.encoder_gpus}
        threads = cfg.runtime.torch_threads
        if cfg.sound_tags.enabled and not sound_patches_wanted(cfg):
            log.warning("sound tags off: YAMNet hears 16 kHz audio, audio.sample_rate_hz is %d",
                        cfg.audio.sample_rate_hz)
        kinds = ["vision", "audio", "fusion"]
        kinds += ["image_tags"] if cfg.visual_tags.enabled else []
        kinds += ["sound_tags"] if sound_patches_wanted(cfg) else []
        kinds += ["faces"] if cfg.faces.enabled else []
        if transcripts_off_reason(cfg) is not None:
            log.warning("speech transcripts off: %s", transcripts_off_reason(cfg))
        kinds += ["asr"] if transcripts_wanted(cfg) else []
        # In pipeline order: warm-up reports the first that failed, an encoder before the heads behind it.
        self.operators = {kind: StageActor.options(**placement).remote(kind, cfg, threads) for kind in kinds}
        self.vision, self.audio, self.fusion = (self.operators[k] for k in ("vision", "audio", "fusion"))
        self.image_tags = self.operators.get("image_tags")
        self.sound_tags = self.operators.get("sound_tags")
        self.faces = self.operators.get("faces")
        self.asr = self.operators.get("asr")
        self._slots: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self.decoders = DecoderPool(cfg, cfg.runtime.max_concurrent_streams)

    async def warm_up(self) -> list[str]:
        """Wait until every operator is loaded; returns their devices, or raises OperatorLoadError."""
        try:
            check_rules(self.cfg)
        except ValueError as exc:
            raise OperatorLoadError(None, str(exc)) from None
        self.decoders.prestart()
        outcomes = await asyncio.gather(*(actor.ready.remote() for actor in self.operators.values()),
                                        return_exceptions=True)
        # Report in pipeline order, not in the order they failed: an encoder's own weights are the
        # cause when a head trained behind it refuses it too.
        for outcome in outcomes:
            if isinstance(outcome, ray.exceptions.RayTaskError):
                raise _cause(outcome) from None
            if isinstance(outcome, BaseException):
                raise outcome
        return list(outcomes)

    async def weights(self) -> dict[str, str]:
        """Where each pretrained operator's weights came from: operator -> description."""
        sources = await asyncio.gather(*(actor.weights.remote() for actor in self.operators.values()))
        return {kind: source for kind, source in zip(self.operators, sources) if source}

    async def cluster_lost(self, timeout_s: float = CLUSTER_CHECK_TIMEOUT_S) -> str | None:
        """None while the shared operator actors answer; else why they do not.

        They live as long as the cluster and their workers do: no answer means the head
        restarted, their worker is gone or the connection to the cluster is, not that one
        stream's input was bad. This process cannot make them again (see ClusterLost).
        """
        try:
            await asyncio.wait_for(asyncio.gather(*(actor.ready.remote() for actor in self.operators.values())),
                                   timeout_s)
        except asyncio.TimeoutError:
            return f"the operator actors did not answer within {timeout_s:.0f} s"
        except Exception as exc:  # whatever Ray raises for a cluster that is gone
            return _one_line(_cause(exc))
        return None

    async def _unless_cluster_lost(self, stream_id: str, exc: BaseException) -> None:
        """Raise ClusterLost for a Ray failure that took the whole cluster, not just this stream."""
        if isinstance(exc, (ray.exceptions.RayError, ConnectionError)):
            lost = await self.cluster_lost()
            if lost is not None:
                raise ClusterLost(stream_id, f"lost the Ray cluster or its operator actors ({lost})") from None

    def shutdown(self) -> None:
        self.decoders.shutdown()
        actors = tuple(self.operators.values())
        try:  # their live gauges (GPU memory) must not outlive them
            pids = ray.get([actor.pid.remote() for actor in actors], timeout=5)
        except (ray.exceptions.RayError, ray.exceptions.GetTimeoutError):
            pids = []
        for actor in actors:
            ray.kill(actor)
        for pid in pids:
            metrics.mark_process_dead(pid)

    async def replay(self, uris: list[str], sink: Sink, on_progress: ProgressFn | None = None,
                     stream_ids: list[str] | None = None) -> list[StreamResult]:
        stream_ids = stream_ids or unique_stream_ids(uris)
        tasks = [self.run_stream(sid, uri, sink, on_progress) for sid, uri in zip(stream_ids, uris)]
        return list(await asyncio.gather(*tasks))

    def segmented_decoder(self, stream_id: str, uri: str):
        """A decode actor for a stream whose bytes the caller feeds (Kafka media segments)."""
        return DecodeActor.options(num_cpus=self.cfg.runtime.decode_cpus).remote(
            self.cfg, stream_id, uri, segmented=True)

    async def run_stream(self, stream_id: str, uri: str, sink: Sink,
                         on_progress: ProgressFn | None = None, decoder=None, live: bool | None = None,
                         open_options: dict[str, str] | None = None,
                         stop: asyncio.Event | None = None) -> StreamResult:
        """Run one stream to its end. ``decoder``: a segmented_decoder() the caller feeds;
        ``live``: its media arrives in real time (counts lag behind real time); ``stop``: once
        set, the stream ends after the chunk in hand, its windows fused (status interrupted)."""
        # One semaphore per event loop: a Pipeline outlives the asyncio.run() of one replay.
        slots = self._slots.setdefault(asyncio.get_running_loop(),
                                       asyncio.Semaphore(self.cfg.runtime.max_concurrent_streams))
        async with slots:
            pooled = decoder is None
            if pooled:
                decoder = self.decoders.take(stream_id, uri, open_options)
            active = metrics.get().streams_active
            active.inc()
            try:
                result = await self._run_stream(decoder, stream_id, uri, sink, on_progress,
                                                self.cfg.decode.realtime if live is None else live, stop)
            except BaseException:  # cancelled, or the cluster is gone: no stream will reuse it
                kill(decoder)
                raise
            finally:
                active.dec()
            if pooled:
                await self.decoders.give_back(decoder)
            else:
                kill(decoder)
            return result

    async def _run_stream(self, decoder, stream_id: str, uri: str, sink: Sink,
                          on_progress: ProgressFn | None, live: bool, stop: asyncio.Event | None) -> StreamResult:
        try:
            info = await decoder.open.remote()
        except (ray.exceptions.RayError, StreamOpenError) as exc:
            await self._unless_cluster_lost(stream_id, exc)
            cause = _cause(exc)
            reason = cause.reason if isinstance(cause, StreamOpenError) else _one_line(cause)
            sink.write(Error(stream_id, "open", reason, uri=uri, fatal=True))
            sink.write(StreamEnd(stream_id, "failed", reason, 0.0, 0.0, 0, 0, 0, 0))
            return StreamResult(stream_id, uri, "failed", reason, 0.0, 0.0, 0)
        session = StreamSession(stream_id, uri, self.cfg, info, sink)
        transcripts = TranscriptRequests(self.asr, session) if self.asr is not None and session.segmenter else None
        if on_progress is not None:
            on_progress(stream_id, 0.0, info.duration_s)  # the stream's clock starts now
        status, reason = "ok", None
        lost: ClusterLost | None = None
        try:
            stopped = await self._pump(decoder, session, info.duration_s, on_progress, live, stop, transcripts)
            reason = "stopped before its end" if stopped else _truncation(session.processed_s, info.duration_s)
            if stopped:
                status = "interrupted"
            elif reason:
                status = "failed"
                sink.write(Error(stream_id, "decode", reason, uri=uri, fatal=True))
        except asyncio.CancelledError:
            status, reason = "interrupted", "interrupted by the user"
            raise
        except Exception as exc:  # one stream's failure must not stop the others
            log.debug("stream %s failed", stream_id, exc_info=True)
            try:
                await self._unless_cluster_lost(stream_id, exc)
            except ClusterLost as cluster_lost:
                lost = cluster_lost
            else:
                status, reason = "failed", _one_line(_cause(exc))
                sink.write(Error(stream_id, "runtime", reason, uri=uri, fatal=True))
        finally:
            if lost is None:  # a lost cluster's stream writes no end: it is not over, only cut off
                try:
                    counters = await asyncio.wait_for(decoder.counters.remote(), 5.0)
                    session.decode_errors = counters["decode_errors"]
                except (ray.exceptions.RayError, asyncio.TimeoutError, asyncio.CancelledError):
                    pass
                if transcripts is not None:  # the final summary counts their words
                    session.close_speech()
                    await _finish_transcripts(transcripts, session)
                end = session.close(status, reason)
                self.audio.forget.remote(stream_id)  # fire and forget: nothing waits on it
            elif transcripts is not None:
                transcripts.cancel()
            sink.flush()
        if lost is not None:
            raise lost
        return StreamResult(stream_id, uri, status, reason, end.processed_s, end.wall_s, end.events)

    async def _pump(self, decoder, session: StreamSession, duration_s: float | None,
                    on_progress: ProgressFn | None, live: bool, stop: asyncio.Event | None,
                    transcripts: TranscriptRequests | None = None) -> bool:
        """Decode, encode, align and fuse until the stream ends; True if ``stop`` ended it first."""
        m = metrics.get()
        inflight_gauge = {stage: m.inflight.labels(stage) for stage in ("decode", "vision", "audio", "fusion")}
        lag = m.live_lag.labels(metrics.stream_label(session.stream_id)) if live else None
        inflight = deque(decoder.next_chunk.remote() for _ in range(self.cfg.decode.max_inflight_chunks))
        inflight_gauge["decode"].inc(len(inflight))
        try:
            while inflight:
                chunk_ref = inflight.popleft()
                chunk = await chunk_ref
                inflight_gauge["decode"].dec()
                if chunk is None:
                    break
                if not chunk.finished:
                    inflight.append(decoder.next_chunk.remote())
                    inflight_gauge["decode"].inc()
                # The chunk travels by reference: each encoder reads it from the object store.
                with _inflight(inflight_gauge["vision"]), _inflight(inflight_gauge["audio"]):
                    video, audio, sights, sounds, faces = await asyncio.gather(
                        self.vision.submit.remote(chunk_ref, "video"),
                        self.audio.submit.remote(chunk_ref, "audio"),
                        _submit_if(self.image_tags, chunk_ref, "tag_frames"),
                        _submit_if(self.sound_tags, chunk_ref, "audio_patches"),
                        _submit_if(self.faces, chunk_ref, "face_frames"))
                session.on_tags(chunk, sights, sounds)
                session.on_faces(faces)
                windows = session.on_chunk(chunk, video, audio)
                if transcripts is not None:  # waits only when too many of the stream's segments are out
                    for segment in session.take_speech_segments():
                        await transcripts.submit(segment)
                if windows:
                    started = time.perf_counter()
                    with _inflight(inflight_gauge["fusion"]):
                        fused = await self.fusion.submit.remote(session.fusion_inputs(windows))
                    m.fusion_seconds.observe(time.perf_counter() - started)
                    session.on_fused(windows, fused)
                if lag is not None:
                    lag.set(max(0.0, time.monotonic() - session.started_wall_s - session.processed_s))
                if on_progress is not None:
                    on_progress(session.stream_id, session.processed_s, duration_s)
                if chunk.finished:
                    break
                if stop is not None and stop.is_set():
                    return True
        finally:
            inflight_gauge["decode"].dec(len(inflight))
        return False


async def _finish_transcripts(transcripts: TranscriptRequests, session: StreamSession) -> None:
    """Submit the stream's last speech segments and wait for every transcript (bounded)."""
    try:
        for segment in session.take_speech_segments():
            await transcripts.submit(segment)
    except asyncio.CancelledError:  # interrupted: end the stream with what was transcribed
        pass
    await transcripts.drain()


async def _submit_if(actor, chunk_ref, part: str):
    """An optional operator's answer (a tagger's, the faces') for one part of the chunk; None when it
    does not run."""
    return None if actor is None else await actor.submit.remote(chunk_ref, part)


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


def unique_stream_ids(uris: list[str]) -> list[str]:
    """Readable, unique stream ids from file names: clip.mp4, clip.mp4#2, ..."""
    seen: dict[str, int] = {}
    ids = []
    for uri in uris:
        base = os.path.basename(uri.rstrip("/")) or uri
        seen[base] = seen.get(base, 0) + 1
        ids.append(base if seen[base] == 1 else f"{base}#{seen[base]}")
    return ids
