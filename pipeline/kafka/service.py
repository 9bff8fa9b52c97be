"""``avfuse run``: the Kafka service. Consumes jobs and media segments, publishes records.

One asyncio loop owns the pipeline; the KafkaConsumer lives on one worker thread
(kafka-python consumers are not thread-safe) and every call to it goes there.
Per message:
- a job starts a stream from a URI (checked by the URI policy) or stops one;
- a media segment is fed to its stream's actor, starting the stream on the
  first segment and ending it on ``eos``.
A message's offset is done when the stream it belongs to has ended and every
record of that stream is acknowledged (``pipeline/kafka/offsets.py``); bad messages
become error records and are done at once. Delivery (at-least-once or
exactly-once with transactions) is the Committer's business.

SIGTERM drains: no new messages, in-flight streams are stopped where they are
(their windows finish, records flush), done offsets are committed, exit 0.
Stopped streams are not done: after a restart they are processed again from
the start, and deterministic event ids let consumers drop the repeats.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import ray
from kafka import ConsumerRebalanceListener
from kafka.errors import KafkaError

from pipeline.compute.ray_init import connect_ray, init_metrics, start_node_exporters
from pipeline.compute.runtime import CLUSTER_CHECK_TIMEOUT_S, Pipeline
from pipeline.core.config import Config
from pipeline.core.errors import ClusterLost, ServiceError
from pipeline.ingest.egress import guard as egress
from pipeline.ingest.egress.uri_policy import UriPolicy, UriRefused, redact
from pipeline.ingest.segments import SequenceCheck, parse_headers
from pipeline.kafka.delivery import Committer
from pipeline.kafka.jobs import BadJob, StopJob, parse_job
from pipeline.kafka.offsets import OffsetTracker
from pipeline.kafka.sink import client_security
from pipeline.kafka.topics import ensure_topics
from pipeline.observe import metrics
from pipeline.observe.exporter import Exporter, Readiness
from pipeline.output.records import Error
from pipeline.output.sinks import FanoutSink, LogSink, Sink
from pipeline.stream.speech_segments import transcripts_wanted

log = logging.getLogger("avfuse.service")


@dataclass
class _Stream:
    stream_id: str
    task: asyncio.Task
    offsets: list[tuple[str, int, int]] = field(default_factory=list)  # every message that fed it
    actor: object | None = None  # segmented streams: the stream actor fed with bytes
    sequence: SequenceCheck | None = None
    ended: bool = False  # eos seen (segmented)
    stop: asyncio.Event = field(default_factory=asyncio.Event)  # ends it after the chunk in hand
    stop_requested: bool = False  # a stop job: stopping is its end, the stream is done


class Service:
    def __init__(self, cfg: Config):
        self.cfg = cfg
        k = cfg.kafka
        self.topics = {"jobs": k.topics.jobs, "media": k.topics.media}
        self.policy = UriPolicy.from_config(k.uri_policy)
        self.readiness = Readiness("ray", "operators", "kafka")
        self.offsets = OffsetTracker()
        self.streams: dict[str, _Stream] = {}
        self._consumer_thread = ThreadPoolExecutor(1, thread_name_prefix="avfuse-consumer")
        self._stopping = asyncio.Event()
        self._endings: set[asyncio.Future] = set()  # streams that ended, their records not yet flushed
        self._cluster_lost: str | None = None  # why the Ray cluster is gone, once it is
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
            # Notice topics matching the subscription that appear later within seconds, not minutes.
            metadata_max_age_ms=10000, **client_security(k))
        topics = [self.topics[name] for name in k.consume]
        consumer.subscribe(topics, listener=_Rebalance(self))
        return consumer

    # -- main loop -------------------------------------------------------------------

    async def run(self) -> int:
        loop = self._loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stopping.set)
        self.pipeline = Pipeline(self.cfg)
        self.readiness.set("ray", True)
        await self.pipeline.warm_up()
        self.readiness.set("operators", True)
        await self._connect()
        self.sink: Sink = FanoutSink([LogSink(), self.committer.sink])
        self.readiness.set("kafka", True)
        log.info("consuming %s from %s", ", ".join(self.topics[n] for n in self.cfg.kafka.consume),
                 self.cfg.kafka.bootstrap_servers)
        last_commit = last_cluster_check = time.monotonic()
        while not self._stopping.is_set():
            try:
                batches = await self._on_consumer(self.consumer.poll, timeout_ms=200)
            except KafkaError as exc:  # the broker is away: streams go on, records wait in the sink
                log.warning("polling failed (%s); retrying", exc, extra={"stage": "consume"})
                self.readiness.set("kafka", False, f"polling failed: {exc}")
                await asyncio.sleep(1.0)
                continue
            self.readiness.set("kafka", True)
            for tp, messages in batches.items():
                for message in messages:
                    self._m.kafka_messages.labels(message.topic).inc()
                    await self._dispatch(message)
            if time.monotonic() - last_commit >= self.cfg.kafka.commit_interval_s:
                await self._commit()
                await self._on_consumer(self._update_lag)
                last_commit = time.monotonic()
            if time.monotonic() - last_cluster_check >= self.cfg.runtime.cluster_check_s:
                # Streams notice a lost cluster when their calls fail; an idle service only here.
                lost = await self.pipeline.cluster_lost()
                if lost is not None:
                    self._lose_cluster(f"lost the Ray cluster or its operator actors ({lost})")
                last_cluster_check = time.monotonic()
        if self._cluster_lost is not None:
            await self._abandon()
            raise ServiceError(None, f"{self._cluster_lost}; exiting, to be restarted and join it again")
        await self._drain()
        return 0

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
                *(self.topics[name] for name in self.cfg.kafka.consume), t.events, t.summaries, t.errors,
                *([t.windows] if self.cfg.records.windows else []),
                *([t.transcripts] if transcripts_wanted(self.cfg) else [])])
            self.consumer = await self._on_consumer(self._make_consumer)
            self.committer = await self._on_consumer(Committer.create, self.cfg.kafka, self.consumer)
        except KafkaError as exc:
            self.pipeline.shutdown()
            raise ServiceError(None, f"Kafka at {self.cfg.kafka.bootstrap_servers} is not usable: "
                                     f"{str(exc).removeprefix(type(exc).__name__ + ': ')}") from None

    async def _drain(self) -> None:
        log.info("stopping: %d streams in flight", len(self.streams))
        for stream in list(self.streams.values()):
            stream.stop.set()
            if stream.actor is not None:
                stream.actor.end.remote()  # a segmented decoder must not wait for bytes that will not come
        await asyncio.gather(*(s.task for s in list(self.streams.values())), return_exceptions=True)
        await asyncio.gather(*list(self._endings), return_exceptions=True)
        await self._commit()
        await self._on_consumer(self.committer.close)
        await self._on_consumer(self.consumer.close, autocommit=False)
        self.pipeline.shutdown()

    async def _abandon(self) -> None:
        """The cluster is gone: streams in flight end without being done, so that they run again
        from their first message after the restart; what was done before is committed."""
        in_flight = [s.task for s in self.streams.values()]
        if in_flight:  # each ends once its next Ray call fails and its own check times out
            await asyncio.wait(in_flight, timeout=2 * CLUSTER_CHECK_TIMEOUT_S + 10)
        await asyncio.gather(*list(self._endings), return_exceptions=True)
        await self._commit()
        await self._on_consumer(self.committer.close)
        await self._on_consumer(self.consumer.close, autocommit=False)

    async def _commit(self) -> None:
        offsets = self.offsets.committable()
        try:
            if self.cfg.kafka.delivery == "exactly_once":
                # On this thread: nothing may be sent while the transaction commits. Every
                # stream waits meanwhile (milliseconds; the whole outage if the broker is away).
                self.committer.commit(offsets)
            else:
                await asyncio.to_thread(self.committer.sink.flush)
                await self._on_consumer(self.committer.commit, offsets)
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

    # -- messages --------------------------------------------------------------------

    async def _dispatch(self, message) -> None:
        where = (message.topic, message.partition, message.offset)
        self.offsets.received(*where)
        try:
            if message.topic == self.topics["jobs"]:
                self._on_job(message, where)
            else:
                await self._on_segment(message, where)
        except (BadJob, UriRefused, _BadSegment) as exc:
            self._bad_message(message, where, exc.reason if hasattr(exc, "reason") else str(exc))

    def _bad_message(self, message, where: tuple[str, int, int], reason: str) -> None:
        topic, partition, offset = where
        key = message.key.decode("utf-8", "replace") if message.key else f"{topic}:{partition}:{offset}"
        self._m.kafka_bad_messages.labels(topic, reason.split(":")[0][:40]).inc()
        self.sink.write(Error(key or "-", "input", reason,
                              input={"topic": topic, "partition": partition, "offset": offset}))
        self.offsets.done(*where)

    def _on_job(self, message, where) -> None:
        job = parse_job(message.value)
        if isinstance(job, StopJob):
            stream = self.streams.get(job.stream_id)
            if stream is not None:
                stream.stop_requested = True
                stream.stop.set()
                if stream.actor is not None:
                    stream.actor.end.remote()
            else:
                log.info("stop for a stream that is not running", extra={"stream_id": job.stream_id, "stage": "jobs"})
            self.offsets.done(*where)
            return
        if job.stream_id in self.streams:
            raise BadJob(f"stream {job.stream_id!r} is already running")
        # Options that widen what a job reaches were refused by parse_job. The URI is checked
        # here for a quick refusal; the decoder's egress guard checks every hop of the open.
        uri = self.policy.check(job.uri)
        cfg = None
        if job.live:  # the job's own live.* settings
            base = self.pipeline.cfg
            cfg = base.model_copy(update={"live": base.live.model_copy(update=job.live)})
        self._start(job.stream_id, redact(uri), where, open_uri=uri, options=egress.for_job(job.options), cfg=cfg)

    async def _on_segment(self, message, where) -> None:
        if not message.key:
            raise _BadSegment("media message without a key (the key must be the stream_id)")
        stream_id = message.key.decode("utf-8", "replace")
        try:
            seq, eos = parse_headers(message.headers)
        except ValueError as exc:
            raise _BadSegment(str(exc)) from None
        stream = self.streams.get(stream_id)
        if stream is not None and stream.ended:
            raise _BadSegment(f"segment after the end of stream {stream_id!r}")
        if stream is None:
            stream = self._start(stream_id, f"kafka://{message.topic}/{stream_id}", where, segmented=True)
        else:
            stream.offsets.append(where)
        problem = stream.sequence.check(seq)
        if problem is not None:
            if "gap" in problem:
                self._m.segment_gaps.labels(metrics.stream_label(stream_id)).inc()
            self.sink.write(Error(stream_id, "input", problem, uri=None,
                                  input={"topic": where[0], "partition": where[1], "offset": where[2]}))
            if "out of order" in problem:
                return
        if message.value:
            await stream.actor.feed.remote(message.value)
        if eos:
            stream.ended = True
            stream.actor.end.remote()

    def _start(self, stream_id: str, uri: str, where, open_uri: str | None = None,
               options: dict[str, str] | None = None, segmented: bool = False, cfg=None) -> _Stream:
        actor = self.pipeline.segmented_stream(stream_id, uri) if segmented else None
        sink = self.committer.stream_sink(stream_id, self.sink)
        if open_uri is not None:
            sink = _JobSink(sink, where, open_uri, uri)
        stop = asyncio.Event()
        coro = self.pipeline.run_stream(stream_id, open_uri or uri, sink, actor=actor, live=segmented,
                                        open_options=options, stop=stop, cfg=cfg)
        stream = _Stream(stream_id, asyncio.ensure_future(coro), [where], actor,
                         SequenceCheck() if segmented else None, stop=stop)
        self.streams[stream_id] = stream
        stream.task.add_done_callback(self._on_task_done(stream))
        return stream

    def _on_task_done(self, stream: _Stream):
        def done(task: asyncio.Task) -> None:
            ending = asyncio.ensure_future(self._ended(stream, task))
            self._endings.add(ending)
            ending.add_done_callback(self._endings.discard)
        return done

    async def _ended(self, stream: _Stream, task: asyncio.Task) -> None:
        """A stream ended: once its records are acknowledged, its messages are done."""
        if self.streams.get(stream.stream_id) is stream:
            self.streams.pop(stream.stream_id)
        if not task.cancelled() and isinstance(task.exception(), ClusterLost):
            self._lose_cluster(task.exception().reason)
            return  # not done: the stream runs again once avfuse has restarted and rejoined
        if not task.cancelled() and task.exception() is not None:
            log.error("stream failed: %s", task.exception(), extra={"stream_id": stream.stream_id, "stage": "runtime"})
        interrupted = task.cancelled() or (task.exception() is None and task.result().status == "interrupted")
        if interrupted and not stream.stop_requested:
            return  # a drain or a rebalance stopped it: not done, it runs again from its first message
        await asyncio.to_thread(self.committer.sink.flush)
        self.committer.finished(stream.stream_id)
        for where in stream.offsets:
            self.offsets.done(*where)

    def reassigned(self, assigned) -> None:
        """Rebalance (consumer thread): stop streams fed from partitions this consumer no longer owns.

        Decided on assignment, not revocation: an eager rebalance revokes every partition
        first (a broker restart does that too), and most come straight back.
        """
        owned = {(tp.topic, tp.partition) for tp in assigned}
        lost = set()
        for stream in list(self.streams.values()):
            if any((topic, partition) not in owned for topic, partition, _ in stream.offsets):
                self._loop.call_soon_threadsafe(stream.task.cancel)
                lost.update((topic, partition) for topic, partition, _ in stream.offsets)
        for topic, partition in lost - owned:
            self.offsets.forget(topic, partition)


class _JobSink:
    """A job stream's records as the job's writer should see them: an error (a refused hop, say)
    names the job message (topic, partition, offset), and the URI is shown redacted."""

    def __init__(self, inner: Sink, where: tuple[str, int, int], open_uri: str, shown_uri: str):
        self._inner, self._open_uri, self._shown_uri = inner, open_uri, shown_uri
        self._input = {"topic": where[0], "partition": where[1], "offset": where[2]}

    def write(self, record, arrived_wall_s: float | None = None) -> None:
        if getattr(record, "uri", None) == self._open_uri:
            record = dataclasses.replace(record, uri=self._shown_uri)
        if isinstance(record, Error) and record.input is None:
            record = dataclasses.replace(record, input=self._input)
        self._inner.write(record, arrived_wall_s)

    def flush(self) -> None:
        self._inner.flush()

    def close(self) -> None:
        pass  # the shared sink outlives the stream


class _BadSegment(ValueError):
    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class _Rebalance(ConsumerRebalanceListener):

    def __init__(self, service: Service):
        self.service = service

    def on_partitions_revoked(self, revoked) -> None:
        if revoked:
            log.info("partitions revoked: %s", sorted(f"{tp.topic}:{tp.partition}" for tp in revoked))

    def on_partitions_assigned(self, assigned) -> None:
        log.info("partitions assigned: %s", sorted(f"{tp.topic}:{tp.partition}" for tp in assigned))
        self.service.reassigned(assigned)


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
