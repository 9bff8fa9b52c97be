"""The driver: starts Ray, places the shared operator actors, and runs streams through them.

Per stream, a StreamActor (from a pool of idle ones) owns the stream: it decodes, sends
its media by reference to the shared operator actors, runs the session on their answers
(``stream_runner.py``) and hands the driver only records. The driver writes them to the
sinks (JSONL, Kafka with its offsets) and counts what it received. Data flows one way:
source -> stream actor -> shared operators -> stream actor -> records -> driver sinks;
backpressure flows back (a driver behind on its sinks leaves the records untaken, and
the stream actor decodes no further).
"""

from __future__ import annotations

import asyncio
import logging
import os
import pickle
import weakref
from typing import Awaitable, Callable

import ray

from pipeline.compute.actors import place_operators
from pipeline.compute.record_relay import RecordBatch, StreamResult
from pipeline.compute.stream_pool import StreamPool, kill
from pipeline.compute.stream_runner import OperatorHandles
from pipeline.core.config import Config
from pipeline.core.errors import ClusterLost, OperatorLoadError, StreamActorLost, one_line
from pipeline.ingest.audio_patches import sound_patches_wanted
from pipeline.observe import metrics
from pipeline.output.records import Error, StreamEnd
from pipeline.output.sinks import Sink
from pipeline.stream.checkpoint import StreamCheckpoint
from pipeline.stream.speech_segments import transcripts_off_reason, transcripts_wanted
from pipeline.stream.understanding import check_rules

log = logging.getLogger("avfuse.runtime")

ProgressFn = Callable[[str, float, float | None], None]
# How long the shared operator actors may take to answer before the cluster counts as gone:
# far above one batch (they answer between batches), far below a stuck pod's patience.
CLUSTER_CHECK_TIMEOUT_S = 30.0
# How long an interrupted stream may take to hand over its last records (its transcripts drain first).
INTERRUPT_DRAIN_S = 30.0


def _cause(exc: BaseException) -> BaseException:
    """The user-level error inside a Ray task error, when there is one."""
    return getattr(exc, "cause", None) or exc


class Pipeline:
    """Shared operator actors, reused by every stream (and by every replay in one process)."""

    def __init__(self, cfg: Config):
        self.cfg = cfg
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
        self.operators = place_operators(kinds, cfg)
        self.vision, self.audio, self.fusion = (self.operators[k] for k in ("vision", "audio", "fusion"))
        self.image_tags = self.operators.get("image_tags")
        self.sound_tags = self.operators.get("sound_tags")
        self.faces = self.operators.get("faces")
        self.asr = self.operators.get("asr")
        self._slots: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        handles = OperatorHandles(self.vision, self.audio, self.fusion, self.image_tags, self.sound_tags,
                                  self.faces, self.asr)
        self.streams = StreamPool(cfg, handles, cfg.runtime.max_concurrent_streams)

    async def warm_up(self) -> list[str]:
        """Wait until every operator is loaded; returns their devices, or raises OperatorLoadError."""
        try:
            check_rules(self.cfg)
        except ValueError as exc:
            raise OperatorLoadError(None, str(exc)) from None
        self.streams.prestart()
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
            return one_line(_cause(exc))
        return None

    async def _unless_cluster_lost(self, stream_id: str, exc: BaseException) -> None:
        """Raise ClusterLost for a Ray failure that took the whole cluster, not just this stream."""
        if isinstance(exc, (ray.exceptions.RayError, ConnectionError)):
            lost = await self.cluster_lost()
            if lost is not None:
                raise ClusterLost(stream_id, f"lost the Ray cluster or its operator actors ({lost})") from None

    def shutdown(self) -> None:
        self.streams.shutdown()
        actors = tuple({id(h.actor): h.actor for h in self.operators.values()}.values())  # hosts, once each
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

    def segmented_stream(self, stream_id: str, uri: str, resume: StreamCheckpoint | None = None):
        """A stream actor for a stream whose bytes the caller feeds (Kafka media segments); ``resume``:
        its bytes start at that checkpoint's resume segment."""
        return self.streams.segmented(stream_id, uri, resume)

    async def run_stream(self, stream_id: str, uri: str, sink: Sink,
                         on_progress: ProgressFn | None = None, actor=None, live: bool | None = None,
                         open_options: dict[str, str] | None = None,
                         stop: asyncio.Event | None = None, cfg: Config | None = None,
                         room: Callable[[], Awaitable[None]] | None = None,
                         raise_lost_actor: bool = False,
                         on_checkpoint: Callable[[StreamCheckpoint], None] | None = None,
                         resume: StreamCheckpoint | None = None) -> StreamResult:
        """Run one stream to its end. ``actor``: a segmented_stream() the caller feeds;
        ``live``: its media arrives in real time (counts lag behind real time); ``stop``: once
        set, the stream ends after the chunk in hand, its windows fused (status interrupted); ``cfg``:
        the stream's own config (a job's live.* settings), else the pipeline's; ``room``: awaited
        after each batch of records (a sink that must not block the loop says when it has room);
        ``raise_lost_actor``: a dead stream actor raises StreamActorLost (the caller retries)
        instead of ending the stream as failed; ``on_checkpoint``: takes a segmented stream's checkpoints
        or a live source's, each once every record before it is written to the sink (without it they are
        dropped); ``resume``: a live source's checkpoint this run goes on from (a segmented actor was
        made with its own)."""
        # One semaphore per event loop: a Pipeline outlives the asyncio.run() of one replay.
        slots = self._slots.setdefault(asyncio.get_running_loop(),
                                       asyncio.Semaphore(self.cfg.runtime.max_concurrent_streams))
        async with slots:
            pooled = actor is None
            # A pooled actor learns its stream from run(); a segmented one was made for it.
            cfg = cfg or self.cfg
            stream = ((stream_id, uri, open_options, cfg.decode.realtime if live is None else live, cfg, resume)
                      if pooled else ())
            if pooled:
                actor = self.streams.take()
            active = metrics.get().streams_active
            active.inc()
            try:
                result = await self._drive(actor, stream, stream_id, uri, sink, on_progress, stop, room,
                                           raise_lost_actor, on_checkpoint)
            except BaseException:  # cancelled, or the cluster is gone: no stream will reuse it
                kill(actor)
                raise
            finally:
                active.dec()
            if pooled:
                await self.streams.give_back(actor)
            else:
                kill(actor)
            return result

    async def _drive(self, actor, stream: tuple, stream_id: str, uri: str, sink: Sink,
                     on_progress: ProgressFn | None, stop: asyncio.Event | None,
                     room: Callable[[], Awaitable[None]] | None = None,
                     raise_lost_actor: bool = False, on_checkpoint=None) -> StreamResult:
        """Write the stream actor's records to the sink until its last batch; the stream's
        failures arrive as records, the actor's death or the cluster's as Ray errors."""
        received = metrics.get().driver_received_bytes.labels(metrics.stream_label(stream_id))
        stopper = None
        processed_s = 0.0
        try:
            await actor.run.remote(*stream)
            if stop is not None:
                stopper = asyncio.ensure_future(_forward_stop(stop, actor))
            taken = RecordBatch(version=-1)
            while True:
                try:
                    batch = await actor.take_records.remote(taken.next_seq, taken.version)
                except asyncio.CancelledError:  # Ctrl-C: the stream ends as interrupted, with its records
                    await self._interrupted(actor, sink, taken)
                    raise
                received.inc(len(pickle.dumps(batch, protocol=5)))
                _write(batch, sink, on_checkpoint)
                if room is not None:
                    await room()
                taken = batch
                if batch.processed_s is not None:
                    processed_s = batch.processed_s
                    if on_progress is not None:
                        on_progress(stream_id, batch.processed_s, batch.duration_s)
                if batch.result is not None:
                    return batch.result
        except (ray.exceptions.RayError, ConnectionError) as exc:
            log.debug("stream %s: its actor failed", stream_id, exc_info=True)
            await self._unless_cluster_lost(stream_id, exc)
            reason = f"its stream actor died ({one_line(_cause(exc))})"
            if raise_lost_actor:
                raise StreamActorLost(stream_id, reason) from None
            sink.write(Error(stream_id, "runtime", reason, uri=uri, fatal=True))
            sink.write(StreamEnd(stream_id, "failed", reason, processed_s, 0.0, 0, 0, 0, 0))
            return StreamResult(stream_id, uri, "failed", reason, processed_s, 0.0, 0)
        finally:
            if stopper is not None:
                stopper.cancel()
            sink.flush()

    async def _interrupted(self, actor, sink: Sink, taken: RecordBatch) -> None:
        """Ask the actor to end its stream now and write what it still has (bounded)."""
        actor.interrupt.remote()
        try:
            async with asyncio.timeout(INTERRUPT_DRAIN_S):
                while taken.result is None:
                    taken = await actor.take_records.remote(taken.next_seq, taken.version)
                    _write(taken, sink)
                return
        except (TimeoutError, ray.exceptions.RayError, ConnectionError, asyncio.CancelledError):
            log.debug("an interrupted stream did not hand over its last records", exc_info=True)


def _write(batch: RecordBatch, sink: Sink, on_checkpoint=None) -> None:
    for record, arrived_wall_s in batch.records:
        if isinstance(record, StreamCheckpoint):  # not a record: where the stream could resume
            if on_checkpoint is not None:
                on_checkpoint(record)
            continue
        sink.write(record, arrived_wall_s)


async def _forward_stop(stop: asyncio.Event, actor) -> None:
    await stop.wait()
    actor.stop.remote()


def unique_stream_ids(uris: list[str]) -> list[str]:
    """Readable, unique stream ids from file names: clip.mp4, clip.mp4#2, ..."""
    seen: dict[str, int] = {}
    ids = []
    for uri in uris:
        base = os.path.basename(uri.rstrip("/")) or uri
        seen[base] = seen.get(base, 0) + 1
        ids.append(base if seen[base] == 1 else f"{base}#{seen[base]}")
    return ids
