"""``avfuse run``: the Kafka service. Consumes jobs and media segments, publishes records.

One asyncio loop owns the pipeline and never waits on the broker: the KafkaConsumer lives
on one worker thread (kafka-python consumers are not thread-safe) and the producer on the
sink's sender thread (``sink.py``). Per message:
- a job starts a stream from a URI (checked by the URI policy) or stops one;
- a media segment is handed to its stream's feed, starting the stream on the first
  segment and ending it on ``eos``. A stream that has buffered ``kafka.segment_buffer_bytes``
  (waiting for a slot, or its decoder behind) leaves its next messages in Kafka, to be read
  again once it has room (``redelivery.py``): other streams never wait for it.
A message's offset is done when the stream it belongs to has ended and every record of
that stream is acknowledged (``offsets.py``); bad messages become error records and are
done at once. A media stream that never ends checkpoints every ``kafka.checkpoint_interval_s``
of media (``pipeline/stream/checkpoint.py``): once a checkpoint is durable (with its progress,
``delivery.py``), the stream's messages before its resume segment are done; after a restart
the stream starts again at that segment, from the checkpoint's state, and its messages
before it that are read again are skipped (where a stream resumes: ``resume.py``). Delivery
(at-least-once or exactly-once with transactions) is the Committer's business (``delivery.py``);
what a rebalance stops, holds and commits is ``rebalance.py``'s.

A stream whose actor died (the OOM killer, a lost node) runs again after a backoff, up to
``kafka.max_stream_retries`` times; then its job goes to ``topics.dead`` with the reason,
and is done. Bad input is not retried: its error record is its end.

While the broker is away, records wait in the sink (bounded; the streams slow down),
``/readyz`` says so, and consumption is paused (the consumer keeps polling, so the group
does not evict it). SIGTERM drains within ``kafka.drain_timeout_s``: no new messages, the
streams in flight are stopped where they are, what is acknowledged is committed, nothing
else; stopped streams run again after a restart.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import ray
from kafka.errors import KafkaError

from pipeline.compute.ray_init import connect_ray, init_metrics, start_node_exporters
from pipeline.compute.runtime import CLUSTER_CHECK_TIMEOUT_S, Pipeline
from pipeline.core.config import Config
from pipeline.core.errors import ClusterLost, ServiceError, StreamActorLost, one_line
from pipeline.ingest.egress import guard as egress
from pipeline.ingest.egress.uri_policy import UriPolicy, UriRefused, redact
from pipeline.ingest.segments import SequenceCheck, parse_headers
from pipeline.kafka.delivery import Committer, DeliveryFailed
from pipeline.kafka.jobs import BadJob, StartJob, StopJob, parse_job
from pipeline.kafka.offsets import OffsetTracker
from pipeline.kafka.rebalance import GroupRebalance
from pipeline.kafka.redelivery import Redelivery, Verdict
from pipeline.kafka.resume import BEFORE_CHECKPOINT, live_resume_point, media_resume_point
from pipeline.kafka.segment_feed import SegmentFeed
from pipeline.kafka.service_streams import ServiceStream, StreamSink, Where
from pipeline.kafka.sink import STALL_S, client_security
from pipeline.kafka.topics import ensure_topics
from pipeline.observe import metrics
from pipeline.observe.exporter import Exporter, Readiness
from pipeline.output.records import DeadLetter, Error, StreamEnd
from pipeline.output.sinks import FanoutSink, LogSink, Sink
from pipeline.stream.checkpoint import StreamCheckpoint
from pipeline.stream.speech_segments import transcripts_wanted

log = logging.getLogger("avfuse.service")

class Service:
    def __init__(self, cfg: Config):
        self.cfg = cfg
        k = cfg.kafka
        self.topics = {"jobs": k.topics.jobs, "media": k.topics.media}
        self.policy = UriPolicy.from_config(k.uri_policy)
        self.readiness = Readiness("ray", "operators", "kafka")
        self.offsets = OffsetTracker()
        self.redelivery = Redelivery()
        self.streams: dict[str, ServiceStream] = {}
        self._discarding: set[str] = set()  # failed media streams whose deferred messages are dropped
        self._consumer_thread = ThreadPoolExecutor(1, thread_name_prefix="avfuse-consumer")
        self._stopping = asyncio.Event()
        self._endings: set[asyncio.Future] = set()  # streams that ended, their records not yet acknowledged
        self._retries: set[asyncio.Future] = set()  # streams waiting out a backoff before running again
        self._committing: asyncio.Task | None = None
        self._paused = False
        self.rebalance = GroupRebalance(self)  # the group's rebalances (rebalance.py)
        self.committer: Committer | None = None  # once connected
        self._cluster_lost: str | None = None  # why the Ray cluster is gone, once it is
        self._fatal: BaseException | None = None  # a failed transaction: exit 1
        self._m = metrics.get()

    # -- consumer thread -------------------------------------------------------------

    async def _on_consumer(self, fn, *args, **kwargs):
        return await asyncio.get_running_loop().run_in_executor(self._consumer_thread, lambda: fn(*args, **kwargs))

    def _make_consumer(self):
        from kafka import KafkaConsumer

        k = self.cfg.kafka
        consumer = KafkaConsumer(
            client_id=k.client_id, group_id=k.group_id, enable_auto_commit=False, auto_offset_reset="earliest",
            # Offsets we commit say where work resumes; only committed input counts as done.
            isolation_level="read_committed", max_poll_records=50,
            # A killed replica's partitions wait out its session; heartbeats a third of it apart.
            session_timeout_ms=int(k.session_timeout_s * 1000),
            heartbeat_interval_ms=int(min(3.0, k.session_timeout_s / 3) * 1000),
            # Notice topics matching the subscription that appear later within seconds, not minutes.
            metadata_max_age_ms=10000, **client_security(k))
        topics = [self.topics[name] for name in k.consume]
        consumer.subscribe(topics, listener=self.rebalance)
        return consumer

    # -- main loop -------------------------------------------------------------------

    async def run(self) -> int:
        loop = self.loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stopping.set)
        heartbeat = asyncio.ensure_future(self._heartbeat())
        self.pipeline = Pipeline(self.cfg)
        self.readiness.set("ray", True)
        await self.pipeline.warm_up()
        self.readiness.set("operators", True)
        await self._connect()
        self.kafka_sink = self.committer.sink
        self.sink: Sink = FanoutSink([LogSink(), self.kafka_sink])
        self.readiness.set("kafka", True)
        log.info("consuming %s from %s", ", ".join(self.topics[n] for n in self.cfg.kafka.consume),
                 self.cfg.kafka.bootstrap_servers)
        last_commit = last_cluster_check = time.monotonic()
        while not self._stopping.is_set():
            await self._apply_flow()
            try:
                batches = await self._polled()
            except KafkaError as exc:  # the broker is away: streams go on, records wait in the sink
                log.warning("polling failed (%s); retrying", exc, extra={"stage": "consume"})
                self.readiness.set("kafka", False, f"polling failed: {exc}")
                await asyncio.sleep(1.0)
                continue
            if self.rebalance.assignment_pending():
                await self._on_consumer(self.rebalance.read_assignment)
            for tp, messages in batches.items():
                for message in messages:
                    self._m.kafka_messages.labels(message.topic).inc()
                    self._dispatch(message)
            if time.monotonic() - last_commit >= self.cfg.kafka.commit_interval_s:
                self._start_commit()
                await self._on_consumer(self._update_lag)
                last_commit = time.monotonic()
            if time.monotonic() - last_cluster_check >= self.cfg.runtime.cluster_check_s:
                # Streams notice a lost cluster when their calls fail; an idle service only here.
                lost = await self.pipeline.cluster_lost()
                if lost is not None:
                    self._lose_cluster(f"lost the Ray cluster or its operator actors ({lost})")
                last_cluster_check = time.monotonic()
        heartbeat.cancel()
        if self._fatal is not None:
            await self._abandon(self.cfg.kafka.drain_timeout_s, commit=False)
            raise self._fatal
        if self._cluster_lost is not None:
            await self._abandon(2 * CLUSTER_CHECK_TIMEOUT_S + 10)
            raise ServiceError(None, f"{self._cluster_lost}; exiting, to be restarted and join it again")
        await self._drain()
        return 0

    async def _polled(self) -> dict:
        """One poll, or nothing once SIGTERM came: a consumer thread busy with a broker that is away
        (a commit timing out) must not hold the drain back."""
        poll = asyncio.ensure_future(self._on_consumer(self.consumer.poll, timeout_ms=200))
        stopping = asyncio.ensure_future(self._stopping.wait())
        await asyncio.wait([poll, stopping], return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        if not poll.done():
            poll.add_done_callback(lambda f: f.cancelled() or f.exception())  # its messages come again later
            return {}
        return poll.result()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    async def _heartbeat(self) -> None:
        """/healthz: the loop answers (a loop frozen by a blocking call would not beat)."""
        while True:
            self.readiness.beat()
            await asyncio.sleep(1.0)

    def _lose_cluster(self, reason: str) -> None:
        """Nothing running on Ray can go on: stop consuming, and let the orchestrator restart us."""
        if self._cluster_lost is None:
            self._cluster_lost = reason
            log.error("%s", reason, extra={"stage": "ray"})
            self.readiness.set("ray", False, reason)
        self._stopping.set()

    async def _connect(self) -> None:
        t = self.cfg.kafka.topics
        try:
            await self._on_consumer(ensure_topics, self.cfg.kafka, [
                *(self.topics[name] for name in self.cfg.kafka.consume), t.events, t.summaries, t.errors, t.dead,
                *([t.windows] if self.cfg.records.windows else []),
                *([t.transcripts] if transcripts_wanted(self.cfg) else [])])
            self.consumer = await self._on_consumer(self._make_consumer)
            self.committer = await self._on_consumer(Committer.create, self.cfg.kafka, self.consumer)
        except KafkaError as exc:
            self.pipeline.shutdown()
            raise ServiceError(None, f"Kafka at {self.cfg.kafka.bootstrap_servers} is not usable: "
                                     f"{str(exc).removeprefix(type(exc).__name__ + ': ')}") from None

    # -- flow: the broker's health, paused consumption, re-reads -----------------------

    async def _apply_flow(self) -> None:
        """Before each poll: pause consumption while records cannot be delivered, and read
        partitions again where streams that deferred messages have room now."""
        stalled_s = self.kafka_sink.stalled_s()
        if stalled_s > STALL_S:
            self.readiness.set("kafka", False, f"records unacknowledged for {stalled_s:.0f} s")
        else:
            self.readiness.set("kafka", True)
        pause = stalled_s > STALL_S or not self.kafka_sink.has_room()
        if pause != self._paused:
            await self._on_consumer(self._pause_all, pause)
            self._paused = pause
            log.info("%s consuming: %s", "pausing" if pause else "resuming",
                     f"records unacknowledged for {stalled_s:.0f} s" if pause else "the sink has room",
                     extra={"stage": "consume"})
        for tp, stream_ids in self.redelivery.waiting().items():
            for stream_id in stream_ids:
                stream = self.streams.get(stream_id)
                if stream is None or stream.feed is None or stream.feed.has_room():
                    self.redelivery.reread(tp, stream_id)
        seeks = self.redelivery.seeks()
        if seeks:
            await self._on_consumer(self._seek, seeks)

    def _pause_all(self, pause: bool) -> None:
        assigned = list(self.consumer.assignment())
        if pause:
            self.consumer.pause(*assigned)
        else:
            self.consumer.resume(*self.consumer.paused())

    def _seek(self, seeks: dict[tuple[str, int], int]) -> None:
        from kafka import TopicPartition

        owned = self.consumer.assignment()
        for (topic, partition), offset in seeks.items():
            tp = TopicPartition(topic, partition)
            if tp in owned:
                self.consumer.seek(tp, offset)

    # -- committing ----------------------------------------------------------------------

    def _start_commit(self) -> None:
        """Commit in the background: a commit waits for the broker, the loop must not. Not while the
        group rebalances (revoked, not yet assigned): the revocation committed, and a transaction's
        offsets would be refused until the group settles."""
        if self.rebalance.rebalancing:
            return
        if self._committing is None or self._committing.done():
            self._committing = asyncio.ensure_future(self._commit())

    async def commit_settled(self) -> None:
        """Once the commit under way (if any) has ended."""
        if self._committing is not None and not self._committing.done():
            await asyncio.wait([self._committing])

    async def commit_now(self) -> None:
        """A commit of everything written, after the one under way."""
        await self.commit_settled()
        self._committing = asyncio.ensure_future(self._commit())
        await self._committing

    async def _commit(self) -> None:
        offsets = self.offsets.committable()
        try:
            if self.cfg.kafka.delivery == "exactly_once":
                await self.committer.commit(offsets, self._on_consumer, positions=self.offsets.positions())
            else:
                await self.committer.commit(offsets, self._on_consumer)
        except DeliveryFailed as exc:
            self._fatal = exc
            log.error("%s", exc.reason, extra={"stage": "commit"})
            self._stopping.set()
            return
        except KafkaError as exc:  # at-least-once: the offsets stay pending and go with the next commit
            log.warning("committing offsets failed (%s); will retry", exc, extra={"stage": "commit"})
            return
        self.offsets.committed(offsets)

    def _update_lag(self) -> None:
        try:
            for tp in self.consumer.assignment():
                end = self.consumer.highwater(tp)
                if end is not None:
                    position = self.consumer.position(tp, timeout_ms=1000)
                    self._m.kafka_consumer_lag.labels(tp.topic, str(tp.partition)).set(max(0, end - position))
        except KafkaError as exc:  # only a gauge: next time
            log.debug("consumer lag not updated: %s", exc)

    # -- ending ------------------------------------------------------------------------------

    async def _drain(self) -> None:
        """SIGTERM: within kafka.drain_timeout_s, broker up or down."""
        deadline = time.monotonic() + self.cfg.kafka.drain_timeout_s
        log.info("stopping: %d streams in flight", len(self.streams))
        for retry in list(self._retries):
            retry.cancel()  # not done: it runs again after the restart
        for stream in list(self.streams.values()):
            stream.stop_now()
        # Most of the time for the streams to end and their records to be acknowledged; a little
        # for the commit and closing the clients.
        await _wait_within([s.task for s in self.streams.values() if s.task], deadline - 0.4 * _left(deadline))
        await _wait_within(list(self._endings), deadline - 0.3 * _left(deadline))
        for stream in list(self.streams.values()):  # still stuck (the broker is away): not done
            if stream.task is not None:
                stream.task.cancel()
        if self._committing is not None:
            await _wait_within([self._committing], deadline - 0.2 * _left(deadline))
        if self._committing is None or self._committing.done():
            self._committing = asyncio.ensure_future(self._commit())
            await _wait_within([self._committing], deadline - 0.15 * _left(deadline))
        await self._close_clients(deadline)

    async def _abandon(self, timeout_s: float, commit: bool = True) -> None:
        """The cluster is gone (or a transaction failed): streams in flight end without being
        done, so that they run again from their first message after the restart; what was done
        before is committed."""
        deadline = time.monotonic() + timeout_s
        await _wait_within([s.task for s in self.streams.values() if s.task], deadline - 0.3 * _left(deadline))
        if commit:
            await _wait_within(list(self._endings), deadline - 0.2 * _left(deadline))
            self._committing = asyncio.ensure_future(self._commit())
            await _wait_within([self._committing], deadline - 0.15 * _left(deadline))
        # A lost cluster cannot be asked to shut its actors down (Ray Client raises).
        await self._close_clients(deadline, shutdown_pipeline=self._cluster_lost is None)

    async def _close_clients(self, deadline: float, shutdown_pipeline: bool = True) -> None:
        closing = asyncio.ensure_future(asyncio.to_thread(self.committer.close, max(0.0, _left(deadline) * 0.6)))
        await _wait_within([closing], deadline)
        closing_ms = int(max(0.5, _left(deadline)) * 1000)
        await _wait_within([asyncio.ensure_future(self._on_consumer(self.consumer.close, autocommit=False,
                                                                    timeout_ms=closing_ms))], deadline + 2)
        if shutdown_pipeline:
            self.pipeline.shutdown()

    # -- messages --------------------------------------------------------------------

    def _dispatch(self, message) -> None:
        where = (message.topic, message.partition, message.offset)
        try:
            if message.topic == self.topics["jobs"]:
                self.offsets.received(*where)
                self._on_job(message, where)
            else:
                self._on_segment(message, where)
        except (BadJob, UriRefused, _BadSegment) as exc:
            self._bad_message(message, where, exc.reason if hasattr(exc, "reason") else str(exc))

    def _bad_message(self, message, where: Where, reason: str) -> None:
        topic, partition, offset = where
        key = message.key.decode("utf-8", "replace") if message.key else f"{topic}:{partition}:{offset}"
        self._m.kafka_bad_messages.labels(topic, reason.split(":")[0][:40]).inc()
        self.sink.write(Error(key or "-", "input", reason,
                              input={"topic": topic, "partition": partition, "offset": offset}))
        self.offsets.done(*where)

    def _on_job(self, message, where: Where) -> None:
        job = parse_job(message.value)
        if isinstance(job, StopJob):
            stream = self.streams.get(job.stream_id)
            if stream is not None:
                stream.stop_requested = True
                stream.stop_now()
            else:
                log.info("stop for a stream that is not running", extra={"stream_id": job.stream_id, "stage": "jobs"})
            self.offsets.done(*where)
            return
        if self.committer.finished_before(job.stream_id, *where):
            log.info("already done before a restart: not run again", extra={"stream_id": job.stream_id,
                                                                             "stage": "jobs"})
            self.offsets.done(*where)
            return
        if job.stream_id in self.streams:
            raise BadJob(f"stream {job.stream_id!r} is already running")
        # Options that widen what a job reaches were refused by parse_job. The URI is checked
        # here for a quick refusal; the decoder's egress guard checks every hop of the open.
        self.policy.check(job.uri)
        stream = ServiceStream(job.stream_id, where, job=json.loads(message.value))
        stream.add_offset(where)
        stream.resume = live_resume_point(self.committer.checkpoint_for(job.stream_id), job.stream_id, where)
        self.streams[job.stream_id] = stream
        self._run(stream, job)

    def _on_segment(self, message, where: Where) -> None:
        if not message.key:
            self.offsets.received(*where)
            raise _BadSegment("media message without a key (the key must be the stream_id)")
        stream_id = message.key.decode("utf-8", "replace")
        stream = self.streams.get(stream_id)
        has_room = stream is None or stream.feed is None or stream.feed.has_room()
        verdict = self.redelivery.verdict((where[0], where[1]), where[2], stream_id, has_room)
        if verdict is Verdict.SKIP:
            return
        self.offsets.received(*where)
        if verdict is Verdict.DEFER:
            self._m.deferred_messages.labels(where[0]).inc()
            return  # pending: read again once the stream has room
        if stream_id in self._discarding and stream is None:
            self.offsets.done(*where)  # a failed stream's rest: its failure record said so
            return
        self._discarding.discard(stream_id)
        try:
            seq, eos = parse_headers(message.headers)
        except ValueError as exc:
            raise _BadSegment(str(exc)) from None
        if stream is not None and stream.ended:
            raise _BadSegment(f"segment after the end of stream {stream_id!r}")
        if stream is None:
            if self.committer.finished_before(stream_id, *where):
                self.offsets.done(*where)  # a stream finished before a restart, its input not committed yet
                return
            resume = media_resume_point(self.committer.checkpoint_for(stream_id), stream_id, where, self.cfg)
            if resume is BEFORE_CHECKPOINT:
                self.offsets.done(*where)  # before the stream's checkpoint: done with it
                return
            stream = ServiceStream(stream_id, where, sequence=SequenceCheck(), resume=resume)
            self.streams[stream_id] = stream
            self._run(stream)
        stream.add_offset(where)
        self.committer.running(stream_id, stream.inputs())
        problem = stream.sequence.check(seq)
        if problem is not None:
            if "gap" in problem:
                self._m.segment_gaps.labels(metrics.stream_label(stream_id)).inc()
            stream.sink.write(Error(stream_id, "input", problem, uri=None,
                                    input={"topic": where[0], "partition": where[1], "offset": where[2]}))
            if "out of order" in problem:
                return
        if message.value:
            stream.fed_segment(where)
            stream.feed.put(message.value)
        if eos:
            stream.ended = True
            stream.feed.end()

    def _run(self, stream: ServiceStream, job: StartJob | None = None) -> None:
        """Start (or start again) the stream's run on a stream actor."""
        stream_id = stream.stream_id
        stream.sink = StreamSink(self.committer.stream_sink(stream_id, self.sink, stream.resume), stream.first,
                                 *((job.uri, redact(job.uri)) if job is not None else ()))
        if job is None:
            uri = f"kafka://{stream.first[0]}/{stream_id}"
            stream.actor = self.pipeline.segmented_stream(stream_id, uri, stream.resume)
            stream.feed = SegmentFeed(stream.actor, self.cfg.kafka.segment_buffer_bytes)
            coro = self.pipeline.run_stream(stream_id, uri, stream.sink, actor=stream.actor, live=True,
                                            stop=stream.stop, room=self.kafka_sink.room, raise_lost_actor=True,
                                            on_checkpoint=lambda checkpoint: self._on_checkpoint(stream, checkpoint))
        else:
            cfg = None
            if job.live:  # the job's own live.* settings
                base = self.pipeline.cfg
                cfg = base.model_copy(update={"live": base.live.model_copy(update=job.live)})
            coro = self.pipeline.run_stream(stream_id, job.uri, stream.sink, open_options=egress.for_job(job.options),
                                            stop=stream.stop, cfg=cfg, room=self.kafka_sink.room,
                                            raise_lost_actor=True, resume=stream.resume,
                                            on_checkpoint=lambda checkpoint: self._on_checkpoint(stream, checkpoint))
        self.committer.running(stream_id, stream.inputs())
        stream.task = asyncio.ensure_future(coro)
        stream.task.add_done_callback(self._on_task_done(stream))

    # -- checkpoints (media streams) -------------------------------------------------------

    def _on_checkpoint(self, stream: ServiceStream, checkpoint: StreamCheckpoint) -> None:
        """The stream's actor checkpointed, every record before it written to the sink: store it, then
        its messages before the resume segment are done (a live job's one message stays pending)."""
        where = stream.first if checkpoint.live else stream.fed.get(checkpoint.resume_segment)
        if (where is None or stream.sink is None or stream.sink.holding
                or self.streams.get(stream.stream_id) is not stream):
            return  # a rebalance holds its records (or took it): the next checkpoint will do
        topic, partition, offset = where
        checkpoint.input = {"topic": topic, "partition": partition, "offset": offset}
        self.committer.stamp(stream.stream_id, checkpoint)
        storing = asyncio.ensure_future(self._store_checkpoint(stream, checkpoint, where))
        self._endings.add(storing)
        storing.add_done_callback(self._endings.discard)

    async def _store_checkpoint(self, stream: ServiceStream, checkpoint: StreamCheckpoint, where: Where) -> None:
        try:
            await self.committer.checkpointed(stream.stream_id, checkpoint)
        except KafkaError as exc:  # at-least-once: its input stays pending until a later checkpoint
            log.warning("storing a checkpoint failed (%s)", exc, extra={"stream_id": stream.stream_id,
                                                                         "stage": "checkpoint"})
            return
        if self.streams.get(stream.stream_id) is not stream or stream.sink.holding:
            return
        for done in stream.checkpointed(checkpoint, where):
            self.offsets.done(*done)
        log.info("checkpoint: resumes at offset %d (media %.2f s, settled %.2f s)", where[2], checkpoint.resume_s,
                 checkpoint.settled_s, extra={"stream_id": stream.stream_id, "stage": "checkpoint"})

    def _on_task_done(self, stream: ServiceStream):
        def done(task: asyncio.Task) -> None:
            ending = asyncio.ensure_future(self._ended(stream, task))
            self._endings.add(ending)
            ending.add_done_callback(self._endings.discard)
        return done

    async def _ended(self, stream: ServiceStream, task: asyncio.Task) -> None:
        """A stream ended: once its records are acknowledged, its messages are done."""
        await stream.sink.released.wait()  # a rebalance decides first whether its records go out
        if stream.sink.dropped:
            self._forget(stream)
            return  # its partition went to another consumer, which runs it from its progress
        error = None if task.cancelled() else task.exception()
        if isinstance(error, ClusterLost):
            self._forget(stream)
            self._lose_cluster(error.reason)
            return  # not done: the stream runs again once avfuse has restarted and rejoined
        if isinstance(error, StreamActorLost) and not self._stopping.is_set():
            if stream.attempt <= self.cfg.kafka.max_stream_retries:
                self._retry_later(stream, error.reason)
                return
            self._give_up(stream, error.reason)
        elif error is not None and not isinstance(error, StreamActorLost):
            log.error("stream failed: %s", one_line(error), extra={"stream_id": stream.stream_id, "stage": "runtime"})
        interrupted = (task.cancelled() or (isinstance(error, StreamActorLost) and self._stopping.is_set())
                       or (error is None and task.result().status == "interrupted"))
        if interrupted and not stream.stop_requested:
            self._forget(stream)
            return  # a drain or a rebalance stopped it: not done, it runs again from its first message
        if error is None and task.result().status == "failed" and stream.segmented:
            self._discarding.add(stream.stream_id)
            for topic, partition, _ in stream.offsets[:1]:
                self.redelivery.reread((topic, partition), stream.stream_id)  # its deferred rest is dropped
        self._forget(stream)
        written = self.kafka_sink.written
        try:
            await self.kafka_sink.wait_acked(written)
        except BaseException:
            return  # a record failed for good: exactly-once aborts; nothing of it is done
        self.committer.finished(stream.stream_id)
        for where in stream.offsets:
            self.offsets.done(*where)

    def _forget(self, stream: ServiceStream) -> None:
        if self.streams.get(stream.stream_id) is stream:
            self.streams.pop(stream.stream_id)

    def _retry_later(self, stream: ServiceStream, reason: str) -> None:
        backoff_s = self.cfg.kafka.retry_backoff_s * 2 ** (stream.attempt - 1)
        log.warning("%s; running it again in %.1f s (attempt %d of %d)", reason, backoff_s, stream.attempt + 1,
                    self.cfg.kafka.max_stream_retries + 1, extra={"stream_id": stream.stream_id, "stage": "runtime"})
        self._m.stream_retries.labels(metrics.stream_label(stream.stream_id)).inc()

        async def again() -> None:
            await asyncio.sleep(backoff_s)
            if self._stopping.is_set() or self.streams.get(stream.stream_id) is not stream:
                return
            if stream.stop_requested:  # a stop job came during the backoff: stopping is its end
                self._forget(stream)
                for where in stream.offsets:
                    self.offsets.done(*where)
                return
            stream.attempt += 1
            if stream.segmented:  # its bytes went with its actor: read its messages again from the first
                topic, partition, offset = stream.first
                if stream.checkpoint is not None:  # or from its checkpoint: those before it are done
                    at = stream.checkpoint.input
                    topic, partition, offset = at["topic"], at["partition"], at["offset"]
                    stream.resume = stream.checkpoint
                stream.restart_input()
                self.redelivery.reread((topic, partition), stream.stream_id, from_offset=offset)
                self._run(stream)
            else:  # a live job: from its latest checkpoint
                if stream.checkpoint is not None and stream.checkpoint.live:
                    stream.resume = stream.checkpoint
                self._run(stream, parse_job(json.dumps(stream.job).encode()))

        retry = asyncio.ensure_future(again())
        self._retries.add(retry)
        retry.add_done_callback(self._retries.discard)

    def _give_up(self, stream: ServiceStream, reason: str) -> None:
        """Retries spent: the stream's end says why, its job goes to the dead-letter topic."""
        topic, partition, offset = stream.first
        log.error("%s; giving up after %d attempts: to %s", reason, stream.attempt, self.cfg.kafka.topics.dead,
                  extra={"stream_id": stream.stream_id, "stage": "runtime"})
        stream.sink.write(Error(stream.stream_id, "runtime", reason, fatal=True))
        stream.sink.write(StreamEnd(stream.stream_id, "failed", reason, 0.0, 0.0, 0, 0, 0, 0))
        stream.sink.write(DeadLetter(stream.stream_id, reason, stream.attempt,
                                     {"topic": topic, "partition": partition, "offset": offset}, job=stream.job))
        self._m.dead_letters.inc()
        if stream.segmented:
            self._discarding.add(stream.stream_id)
            self.redelivery.reread((topic, partition), stream.stream_id)


def _left(deadline: float) -> float:
    return max(0.0, deadline - time.monotonic())


async def _wait_within(futures, until: float) -> None:
    futures = [f for f in futures if f is not None]
    if futures and _left(until) > 0:
        await asyncio.wait(futures, timeout=_left(until))


class _BadSegment(ValueError):
    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def run_service(cfg: Config, metrics_port: int | None, debug: bool = False) -> int:
    init_metrics(cfg)
    service = Service(cfg)
    port = metrics_port if metrics_port is not None else cfg.metrics.port
    # Up before Ray is joined: /healthz answers and /readyz says "ray: not yet" while a
    # cluster's head is still starting, so a liveness probe does not kill a waiting pod.
    exporter = Exporter(port, service.readiness).start() if port is not None else None
    node_exporters = []
    try:
        connect_ray(cfg, debug=debug)
        if port and cfg.metrics.node_exporters:  # one scrape target per node
            node_exporters = start_node_exporters(port)
        return asyncio.run(service.run())
    finally:
        if exporter is not None:
            exporter.stop()
        for actor in node_exporters:
            ray.kill(actor)
        if ray.is_initialized():
            ray.shutdown()
