"""Delivery guarantees: how input offsets and output records become durable together.

At-least-once (default): offsets are committed to the consumer group only for
messages whose records were all acknowledged. A crash re-processes the rest;
windows and event ids are deterministic, so the repeats carry the same ids.

Exactly-once: one Kafka transaction per commit interval holds the records
written since the last one, the input offsets now done (sent to the
transaction, KIP-447 style) and, on a compacted progress topic, each stream's
progress: how many records it has committed so far, whether it finished, and
where its input lies. After a crash:
- a stream that had not finished runs again from its first message and skips the
  records it had already committed (a stream's records come in a deterministic
  order; transcripts, which reach the sink whenever the ASR stage answers, are
  counted apart);
- a finished stream whose input was not yet committed (a later job finished
  behind a long one on its partition) is recognised by its input offsets when
  its messages come again, and is not run again.
Progress is read after the producer fenced its previous instance, and again at
every partition assignment (another replica may have moved it). A finished
stream's progress is tombstoned once its input offsets are committed.

Checkpoints (both modes, ``pipeline/stream/checkpoint.py``): a media stream's (or a live
job's) latest checkpoint is part of its progress value. Exactly-once: it goes in the next transaction,
with the stream's input offsets before its resume segment (marked done by the service);
its ``records_before`` says how many of the stream's records came before it, so a stream
resumed there counts on from that number and skips up to what its progress had committed.
At-least-once: the progress value is written and acknowledged before those offsets are done;
once a finished stream's input is committed its progress is tombstoned. A live job's media
cannot be read again: run again from its checkpoint, it skips nothing and counts on from what
its progress had committed.

Everything that touches the producer runs on the sink's sender thread: a
transaction commit waits there for the broker, never on the service's loop. A
failed transaction, or one unanswered for ``kafka.transaction_timeout_s``, is fatal
(the process exits 1 with one line); a restart fences the old producer and resumes
from the last committed transaction.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import time
from dataclasses import dataclass, field

from pipeline.core.config import KafkaConfig
from pipeline.core.errors import ServiceError
from pipeline.kafka.sink import KafkaSink, client_security, make_producer
from pipeline.kafka.topics import ensure_topics
from pipeline.output.records import Record, Transcript
from pipeline.output.sinks import Sink
from pipeline.stream.checkpoint import StreamCheckpoint

log = logging.getLogger("avfuse.delivery")

# Reading the progress topic to its end waits at most this long for another producer's open
# transaction (read_committed stops at it) before going on with what was read.
PROGRESS_READ_TIMEOUT_S = 30.0

# An at-least-once offset commit gives up after this (the offsets go with the next one).
COMMIT_TIMEOUT_MS = 5000

Inputs = dict[tuple[str, int], tuple[int, int]]  # (topic, partition) -> first and last offset of a stream


@dataclass
class StreamProgress:
    records: int = 0  # records of the stream written (exactly-once: committed) so far, transcripts aside
    finished: bool = False
    resumed_from: int = 0  # records an earlier run committed: progress never goes below it
    transcripts: int = 0  # transcript records written so far
    resumed_transcripts: int = 0
    inputs: Inputs = field(default_factory=dict)  # where the stream's messages lie
    checkpoint: StreamCheckpoint | None = None  # where a media stream resumes (its latest checkpoint)
    here: bool = False  # a run of it started in this process (not only read from the topic)

    @property
    def committed_records(self) -> int:
        return max(self.records, self.resumed_from)

    @property
    def committed_transcripts(self) -> int:
        return max(self.transcripts, self.resumed_transcripts)

    def to_json(self) -> bytes:
        return json.dumps({"records": self.committed_records, "transcripts": self.committed_transcripts,
                           "finished": self.finished,
                           "inputs": [[t, p, first, last] for (t, p), (first, last) in sorted(self.inputs.items())],
                           **({"checkpoint": self.checkpoint.to_dict()} if self.checkpoint is not None else {}),
                           }).encode()

    @classmethod
    def from_json(cls, value: bytes) -> "StreamProgress":
        data = json.loads(value)
        checkpoint = data.get("checkpoint")
        return cls(int(data["records"]), bool(data["finished"]), transcripts=int(data.get("transcripts", 0)),
                   inputs={(t, int(p)): (int(first), int(last)) for t, p, first, last in data.get("inputs", [])},
                   checkpoint=StreamCheckpoint.from_dict(checkpoint) if checkpoint is not None else None)

    def resumable(self) -> StreamCheckpoint | None:
        """The checkpoint a stream still running resumes from; None once it finished."""
        return None if self.finished else self.checkpoint

    def holds(self, topic: str, partition: int, offset: int) -> bool:
        first_last = self.inputs.get((topic, partition))
        return first_last is not None and first_last[0] <= offset <= first_last[1]


class DeliveryFailed(ServiceError):
    """Exactly-once could not commit a transaction; the process must restart."""


def _topic_partition_offsets(offsets: dict[tuple[str, int], int]):
    from kafka import TopicPartition
    from kafka.structs import OffsetAndMetadata

    return {TopicPartition(topic, partition): OffsetAndMetadata(offset, "", -1)
            for (topic, partition), offset in offsets.items()}


def _close_producer(producer, timeout_s: float) -> None:
    """Close within ``timeout_s``; records still unacknowledged then were never counted as done."""
    from kafka.errors import KafkaError

    try:
        producer.close(timeout=max(0.0, timeout_s))
    except KafkaError as exc:  # kafka-python raises when its flush times out (the broker away)
        log.warning("the producer closed with records unacknowledged: %s", exc, extra={"stage": "delivery"})


class _CountingSink:
    """One stream's view of the shared sink: counts its records, skips the first ``skip`` (and
    the first ``skip_transcripts`` transcripts, counted apart)."""

    def __init__(self, inner: Sink, progress: StreamProgress, skip: int, skip_transcripts: int = 0):
        self._inner, self._progress, self._skip = inner, progress, skip
        self._skip_transcripts = skip_transcripts

    def write(self, record: Record, arrived_wall_s: float | None = None) -> None:
        if isinstance(record, Transcript):
            self._progress.transcripts += 1
            if self._progress.transcripts > self._skip_transcripts:
                self._inner.write(record, arrived_wall_s)
            return
        self._progress.records += 1
        if self._progress.records > self._skip:
            self._inner.write(record, arrived_wall_s)

    def flush(self) -> None:
        self._inner.flush()

    def close(self) -> None:
        pass  # the shared sink outlives the stream


class AtLeastOnce:
    """Progress is kept only for checkpointed media streams: their checkpoint."""

    def __init__(self, cfg: KafkaConfig, consumer):
        self.cfg, self.consumer = cfg, consumer
        self.producer = make_producer(cfg)
        self.progress = _checkpointed(read_progress(cfg))
        self._reread: dict[str, StreamProgress] | None = None
        self._committed: dict[tuple[str, int], int] = {}
        self.sink = KafkaSink(self.producer, cfg, resend_failed=True, block_writes=False)

    def stream_sink(self, stream_id: str, shared: Sink, resume: StreamCheckpoint | None = None) -> Sink:
        return shared

    def finished_before(self, stream_id: str, topic: str, partition: int, offset: int) -> bool:
        return False  # no record count is kept: a re-delivered stream runs again (same ids)

    def checkpoint_for(self, stream_id: str) -> StreamCheckpoint | None:
        self._merge_reread()
        progress = self.progress.get(stream_id)
        return progress.resumable() if progress is not None else None

    def stamp(self, stream_id: str, checkpoint: StreamCheckpoint) -> None:
        pass  # nothing is counted

    async def checkpointed(self, stream_id: str, checkpoint: StreamCheckpoint) -> None:
        """Write the stream's checkpoint and wait for its acknowledgement (raises KafkaError)."""
        progress = self.progress.setdefault(stream_id, StreamProgress())
        progress.checkpoint, progress.finished, progress.here = checkpoint, False, True
        value = progress.to_json()
        handed = self.sink.call_on_sender(
            lambda: self.producer.send(self.cfg.topics.progress, key=stream_id.encode(), value=value))
        sent = await asyncio.wrap_future(handed)
        await asyncio.to_thread(sent.get, self.cfg.delivery_timeout_ms / 1000)

    def reassigned(self, committed: dict[tuple[str, int], int]) -> None:
        self._reread = _checkpointed(read_progress(self.cfg))

    def _merge_reread(self) -> None:
        reread, self._reread = self._reread, None
        for stream_id, progress in (reread or {}).items():
            mine = self.progress.get(stream_id)
            if mine is None or mine.finished or not mine.here:
                self.progress[stream_id] = progress

    def running(self, stream_id: str, inputs: Inputs) -> None:
        if stream_id in self.progress:
            self.progress[stream_id].inputs = dict(inputs)

    def finished(self, stream_id: str) -> None:
        if stream_id in self.progress:
            self.progress[stream_id].finished = True

    async def commit(self, offsets: dict[tuple[str, int], int], on_consumer) -> None:
        """Commit offsets once every record written before now is acknowledged; then tombstone the
        checkpoints of finished streams whose input is committed."""
        await self.sink.wait_acked(self.sink.written)
        if offsets:
            # Bounded: the consumer's one thread also polls, and the loop waits on that.
            await on_consumer(self.consumer.commit, _topic_partition_offsets(offsets), timeout_ms=COMMIT_TIMEOUT_MS)
            self._committed.update(offsets)
        for stream_id, p in list(self.progress.items()):
            if p.finished and p.inputs and all(self._committed.get(tp, -1) > last
                                                for tp, (_, last) in p.inputs.items()):
                self.progress.pop(stream_id)
                self.sink.call_on_sender(lambda sid=stream_id: self.producer.send(
                    self.cfg.topics.progress, key=sid.encode(), value=None))

    def close(self, timeout_s: float) -> None:
        self.sink.close(timeout_s)
        _close_producer(self.producer, timeout_s)


class ExactlyOnce:
    def __init__(self, cfg: KafkaConfig, consumer):
        self.cfg, self.consumer = cfg, consumer
        transactional_id = cfg.transactional_id or f"{cfg.client_id}-{socket.gethostname()}"
        self.producer = make_producer(cfg, transactional_id)
        # Fences a previous instance and aborts its open transaction: only then is the progress
        # topic what the last committed transaction left.
        self.producer.init_transactions()
        self.progress: dict[str, StreamProgress] = read_progress(cfg)
        self.producer.begin_transaction()
        self.sink = KafkaSink(self.producer, cfg, resend_failed=False, block_writes=False)
        # The progress value last committed, per stream: what was read counts as committed, so a
        # transaction writes only what this process changed. (Writing back what it read at start
        # overwrote a running replica's newer count: its successor then wrote records again.)
        self._reported: dict[str, bytes | None] = {sid: p.to_json() for sid, p in self.progress.items()}
        self._committed: dict[tuple[str, int], int] = {}  # input offsets committed, as far as we know
        self._reread: dict[str, StreamProgress] | None = None  # progress read at an assignment, to merge
        self._committed_seen: dict[tuple[str, int], int] = {}  # the group's offsets at that assignment
        self._tombstones: set[str] = set()
        self._sent_at_last_commit = 0

    def stream_sink(self, stream_id: str, shared: Sink, resume: StreamCheckpoint | None = None) -> Sink:
        """``resume``: the stream runs from its checkpoint, whose records_before came before it."""
        self._merge_reread()
        committed = self.progress.get(stream_id)
        # A finished stream whose id comes again (not its own input) is a new run, not a resumed one.
        resumed = committed is not None and not committed.finished
        skip = committed.committed_records if resumed else 0
        skip_transcripts = committed.committed_transcripts if resumed else 0
        if resume is not None and resume.live:  # new media, not a replay: nothing to skip, count on
            counted, counted_transcripts = skip, skip_transcripts
        elif resume is not None:
            counted, counted_transcripts = resume.records_before, resume.transcripts_before
        else:
            counted, counted_transcripts = 0, 0
        if skip > counted or skip_transcripts > counted_transcripts:
            log.info("resuming: skipping the %d records and %d transcripts already committed", skip - counted,
                     skip_transcripts - counted_transcripts, extra={"stream_id": stream_id, "stage": "delivery"})
        progress = self.progress[stream_id] = StreamProgress(
            records=counted, transcripts=counted_transcripts, resumed_from=skip,
            resumed_transcripts=skip_transcripts, checkpoint=committed.checkpoint if resumed else None, here=True)
        self._tombstones.discard(stream_id)
        return _CountingSink(shared, progress, skip, skip_transcripts)

    def checkpoint_for(self, stream_id: str) -> StreamCheckpoint | None:
        self._merge_reread()
        progress = self.progress.get(stream_id)
        return progress.resumable() if progress is not None else None

    def stamp(self, stream_id: str, checkpoint: StreamCheckpoint) -> None:
        """How many of the stream's records (and transcripts) were written before its checkpoint."""
        progress = self.progress.get(stream_id)
        if progress is not None:
            checkpoint.records_before, checkpoint.transcripts_before = progress.records, progress.transcripts

    async def checkpointed(self, stream_id: str, checkpoint: StreamCheckpoint) -> None:
        """Durable with the next transaction, in which the offsets the service marks done now go too."""
        if stream_id in self.progress:
            self.progress[stream_id].checkpoint = checkpoint

    def finished_before(self, stream_id: str, topic: str, partition: int, offset: int) -> bool:
        """Whether this message fed a stream that finished, its input not committed yet."""
        self._merge_reread()
        progress = self.progress.get(stream_id)
        return progress is not None and progress.finished and progress.holds(topic, partition, offset)

    def running(self, stream_id: str, inputs: Inputs) -> None:
        """Where the stream's messages lie so far (its first message, and the last one seen)."""
        if stream_id in self.progress:
            self.progress[stream_id].inputs = dict(inputs)

    def finished(self, stream_id: str) -> None:
        if stream_id in self.progress:
            self.progress[stream_id].finished = True

    def reassigned(self, committed: dict[tuple[str, int], int]) -> None:
        """Consumer thread, at an assignment: read progress again (another replica may have moved
        it since we started); merged on the loop before the next stream starts."""
        self._reread = read_progress(self.cfg)
        self._committed_seen = committed

    def _merge_reread(self) -> None:
        reread, self._reread = self._reread, None
        if reread is None:
            return
        self._committed.update(self._committed_seen)
        for stream_id, progress in reread.items():
            mine = self.progress.get(stream_id)
            # A stream running here keeps its own count; what was only read before (at start, or at
            # an earlier assignment) is older than what was just read.
            if mine is None or mine.finished or not mine.here:
                self.progress[stream_id] = progress
                self._reported[stream_id] = progress.to_json()

    async def commit(self, offsets: dict[tuple[str, int], int], on_consumer=None,
                     positions: dict[tuple[str, int], int] | None = None) -> None:
        """One transaction: records so far, changed progress, tombstones of finished streams whose
        input is committed, and the done offsets (with ``positions``, every partition's, moved or
        not: the broker then checks this consumer's group generation for every transaction, and
        one dropped from the group fails instead of committing). Runs on the sender thread; the
        loop awaits it."""
        self._merge_reread()
        committed_after = {**self._committed, **offsets}
        for stream_id, p in self.progress.items():
            if p.finished and p.inputs and all(committed_after.get(tp, -1) > last
                                                for tp, (_, last) in p.inputs.items()):
                self._tombstones.add(stream_id)
        values = {sid: (None if sid in self._tombstones else p.to_json()) for sid, p in self.progress.items()}
        changed = {sid: v for sid, v in values.items() if self._reported.get(sid) != v}
        written = self.sink.written
        if not offsets and not changed and written == self._sent_at_last_commit:
            return
        sent_offsets = {**(positions or {}), **offsets}
        group = self.consumer.group_metadata() if sent_offsets else None
        future = self.sink.call_on_sender(lambda: self._commit_on_sender(changed, sent_offsets, group))
        await asyncio.wrap_future(future)
        self._sent_at_last_commit = written
        self._committed = committed_after
        for stream_id, value in changed.items():
            self._reported[stream_id] = value
            if value is None:  # tombstoned: gone from the topic once compacted, and from here
                self.progress.pop(stream_id, None)
                self._reported.pop(stream_id, None)
                self._tombstones.discard(stream_id)

    def _commit_on_sender(self, changed: dict[str, bytes | None], offsets, group) -> None:
        try:
            for stream_id, value in changed.items():
                self.producer.send(self.cfg.topics.progress, key=stream_id.encode(), value=value)
            txn = self.producer._transaction_manager
            if offsets:
                self._answered(lambda: txn.send_offsets_to_transaction(_topic_partition_offsets(offsets), group),
                               "sending the offsets to the transaction")
            self._answered(txn.begin_commit, "committing the transaction")
            if self.sink.fatal is not None:
                raise self.sink.fatal
        except Exception as exc:
            raise DeliveryFailed(None, f"exactly-once transaction failed, restart avfuse: "
                                       f"{type(exc).__name__}: {exc}") from exc
        self.producer.begin_transaction()

    def _answered(self, start_request, what: str) -> None:
        """KafkaProducer's send_offsets_to_transaction, commit_transaction and abort_transaction,
        bounded: theirs wait for the broker's answer for ever, and one sent as the broker goes away
        can stay unanswered after it is back (seen when the outage also dropped this consumer from
        its group). The same calls on kafka-python's transaction manager, then a bounded wait."""
        result = start_request()
        self.producer._sender.wakeup()
        if not result.wait(timeout_ms=int(self.cfg.transaction_timeout_s * 1000)):
            raise TimeoutError(f"{what} got no answer within {self.cfg.transaction_timeout_s:g} s")

    def _abort(self) -> None:
        """Sender thread: abort the open transaction, within the same bound."""
        self._answered(self.producer._transaction_manager.begin_abort, "aborting the transaction")

    async def abandon(self, stream_ids: list[str]) -> None:
        """This consumer was dropped from the group: abort the open transaction (the streams'
        records in it may be their new owner's too) and forget their counts (read again at the
        next assignment)."""
        written = self.sink.written

        def abort() -> None:
            self._abort()
            self.producer.begin_transaction()

        await asyncio.wrap_future(self.sink.call_on_sender(abort))
        self._sent_at_last_commit = written
        for stream_id in stream_ids:
            self.progress.pop(stream_id, None)
            self._reported.pop(stream_id, None)

    def close(self, timeout_s: float) -> None:
        """Abort what is open (the drain committed everything that was done) within ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        abort = self.sink.call_on_sender(self._abort)
        try:
            abort.result(timeout=max(0.0, timeout_s))
        except Exception:  # the broker is away: the transaction times out there on its own
            log.debug("aborting the open transaction failed", exc_info=True)
        finally:
            self.sink.close(0)
            _close_producer(self.producer, deadline - time.monotonic())


def _checkpointed(progress: dict[str, StreamProgress]) -> dict[str, StreamProgress]:
    return {stream_id: p for stream_id, p in progress.items() if p.checkpoint is not None}


def read_progress(cfg: KafkaConfig) -> dict[str, StreamProgress]:
    """Every stream's committed progress, read to the end of the (compacted) progress topic."""
    from kafka import KafkaConsumer, TopicPartition
    from kafka.errors import KafkaTimeoutError

    ensure_topics(cfg, [cfg.topics.progress], {"cleanup.policy": "compact"})
    consumer = KafkaConsumer(client_id=f"{cfg.client_id}-progress", group_id=None, enable_auto_commit=False,
                             isolation_level="read_committed", **client_security(cfg))
    try:
        # A topic created a moment ago may not be in this client's metadata yet.
        known_by = time.monotonic() + PROGRESS_READ_TIMEOUT_S
        while not consumer.partitions_for_topic(cfg.topics.progress):
            if time.monotonic() > known_by:
                raise KafkaTimeoutError(f"topic {cfg.topics.progress} has no partitions in the broker's metadata")
            consumer.topics()  # asks the broker again
            time.sleep(0.2)
        partitions = [TopicPartition(cfg.topics.progress, p)
                      for p in sorted(consumer.partitions_for_topic(cfg.topics.progress))]
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        end = consumer.end_offsets(partitions)  # read_committed: the last stable offsets

        def behind(tp) -> bool:
            # The last stable offset stops short of a transaction committed a moment ago whose
            # markers are still on their way to the partition (commit_transaction returns before
            # they land); the high watermark a fetch reports does not. Read to it: a new owner
            # must see the count its last owner committed at the revocation (else duplicates).
            high = consumer.highwater(tp)
            return high is None or consumer.position(tp) < max(end[tp], high)

        progress: dict[str, StreamProgress] = {}
        deadline = time.monotonic() + PROGRESS_READ_TIMEOUT_S
        while any(behind(tp) for tp in partitions):
            if time.monotonic() > deadline:  # another producer's transaction is still open
                log.warning("the progress topic was not read to its end within %.0f s", PROGRESS_READ_TIMEOUT_S,
                            extra={"stage": "delivery"})
                break
            for messages in consumer.poll(timeout_ms=500).values():
                for message in messages:
                    stream_id = message.key.decode()
                    if message.value is None:  # a tombstone
                        progress.pop(stream_id, None)
                    else:
                        progress[stream_id] = StreamProgress.from_json(message.value)
        return progress
    finally:
        consumer.close()


class Committer:
    @staticmethod
    def create(cfg: KafkaConfig, consumer) -> AtLeastOnce | ExactlyOnce:
        return ExactlyOnce(cfg, consumer) if cfg.delivery == "exactly_once" else AtLeastOnce(cfg, consumer)
