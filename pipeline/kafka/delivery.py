"""Delivery guarantees: how input offsets and output records become durable together.

At-least-once (default): offsets are committed to the consumer group only for
messages whose records were all acknowledged. A crash re-processes the rest;
windows and event ids are deterministic, so the repeats carry the same ids.

Exactly-once: one Kafka transaction per commit interval holds the records
written since the last one, the input offsets now done (sent to the
transaction, KIP-447 style) and, on a compacted progress topic, how many
records each open stream has committed so far. A stream's records come in a
deterministic order, so after a crash the restarted stream, processed again
from its first message, skips the records it had already committed: a
``read_committed`` consumer sees every record once. Transcripts are counted on
their own: they come in a deterministic order among themselves, but reach the
sink whenever the ASR stage answers, between any two other records. A failed transaction is
fatal (the process exits 1); a restart fences the old producer and resumes
from the last committed transaction.
"""

from __future__ import annotations

import json
import logging
import socket
from dataclasses import dataclass

from pipeline.core.config import KafkaConfig
from pipeline.core.errors import ServiceError
from pipeline.kafka.sink import KafkaSink, client_security, make_producer
from pipeline.kafka.topics import ensure_topics
from pipeline.output.records import Record, Transcript
from pipeline.output.sinks import Sink

log = logging.getLogger("avfuse.delivery")


@dataclass
class StreamProgress:
    records: int = 0  # records of the stream written (exactly-once: committed) so far, transcripts aside
    finished: bool = False
    resumed_from: int = 0  # records an earlier run committed: progress never goes below it
    transcripts: int = 0  # transcript records written so far
    resumed_transcripts: int = 0

    @property
    def committed_records(self) -> int:
        return max(self.records, self.resumed_from)

    @property
    def committed_transcripts(self) -> int:
        return max(self.transcripts, self.resumed_transcripts)


class DeliveryFailed(ServiceError):
    """Exactly-once could not commit a transaction; the process must restart."""


def _topic_partition_offsets(offsets: dict[tuple[str, int], int]):
    from kafka import TopicPartition
    from kafka.structs import OffsetAndMetadata

    return {TopicPartition(topic, partition): OffsetAndMetadata(offset, "", -1)
            for (topic, partition), offset in offsets.items()}


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
    def __init__(self, cfg: KafkaConfig, consumer):
        self.cfg, self.consumer = cfg, consumer
        self.producer = make_producer(cfg)
        self.sink = KafkaSink(self.producer, cfg, resend_failed=True)

    def stream_sink(self, stream_id: str, shared: Sink) -> Sink:
        return shared

    def finished(self, stream_id: str) -> None:
        pass

    def commit(self, offsets: dict[tuple[str, int], int]) -> None:
        """Commit offsets whose records are acknowledged (the caller flushed the sink)."""
        if offsets:
            self.consumer.commit(_topic_partition_offsets(offsets))

    def close(self) -> None:
        self.sink.flush()
        self.producer.close()


class ExactlyOnce:
    def __init__(self, cfg: KafkaConfig, consumer):
        self.cfg, self.consumer = cfg, consumer
        transactional_id = cfg.transactional_id or f"{cfg.client_id}-{socket.gethostname()}"
        self.progress: dict[str, StreamProgress] = read_progress(cfg)
        self.producer = make_producer(cfg, transactional_id)
        self.producer.init_transactions()  # fences a previous instance and aborts its open transaction
        self.producer.begin_transaction()
        self.sink = KafkaSink(self.producer, cfg, resend_failed=False)
        self._reported: dict[str, tuple[int, int, bool]] = {}
        self._sent_at_last_commit = 0

    def stream_sink(self, stream_id: str, shared: Sink) -> Sink:
        committed = self.progress.get(stream_id)
        # A finished stream whose id comes again is a new run, not a resumed one.
        resumed = committed is not None and not committed.finished
        skip = committed.records if resumed else 0
        skip_transcripts = committed.transcripts if resumed else 0
        if skip or skip_transcripts:
            log.info("resuming: skipping the %d records and %d transcripts already committed", skip,
                     skip_transcripts, extra={"stream_id": stream_id, "stage": "delivery"})
        progress = self.progress[stream_id] = StreamProgress(resumed_from=skip,
                                                             resumed_transcripts=skip_transcripts)
        self._reported.pop(stream_id, None)
        return _CountingSink(shared, progress, skip, skip_transcripts)

    def finished(self, stream_id: str) -> None:
        if stream_id in self.progress:
            self.progress[stream_id].finished = True

    def commit(self, offsets: dict[tuple[str, int], int]) -> None:
        """Commit one transaction: records so far, progress of changed streams, done offsets."""
        changed = {sid: p for sid, p in self.progress.items()
                   if self._reported.get(sid) != (p.committed_records, p.committed_transcripts, p.finished)}
        if not offsets and not changed and self.sink.sent == self._sent_at_last_commit:
            return
        try:
            for stream_id, p in changed.items():
                self.producer.send(self.cfg.topics.progress, key=stream_id.encode(),
                                   value=json.dumps({"records": p.committed_records,
                                                     "transcripts": p.committed_transcripts,
                                                     "finished": p.finished}).encode())
            if offsets:
                self.producer.send_offsets_to_transaction(_topic_partition_offsets(offsets),
                                                          self.consumer.group_metadata())
            self.producer.commit_transaction()
            if self.sink.fatal is not None:
                raise self.sink.fatal
        except Exception as exc:
            raise DeliveryFailed(None, f"exactly-once transaction failed, restart avfuse: "
                                       f"{type(exc).__name__}: {exc}") from exc
        self._sent_at_last_commit = self.sink.sent
        for stream_id, p in changed.items():
            self._reported[stream_id] = (p.committed_records, p.committed_transcripts, p.finished)
            if p.finished:
                self.progress.pop(stream_id, None)
        self.producer.begin_transaction()

    def close(self) -> None:
        try:
            self.producer.abort_transaction()  # the drain committed everything that was done
        finally:
            self.producer.close()


def read_progress(cfg: KafkaConfig) -> dict[str, StreamProgress]:
    """Every stream's committed progress, read to the end of the (compacted) progress topic."""
    from kafka import KafkaConsumer, TopicPartition

    ensure_topics(cfg, [cfg.topics.progress], {"cleanup.policy": "compact"})
    consumer = KafkaConsumer(client_id=f"{cfg.client_id}-progress", group_id=None, enable_auto_commit=False,
                             isolation_level="read_committed", **client_security(cfg))
    try:
        partitions = [TopicPartition(cfg.topics.progress, p)
                      for p in sorted(consumer.partitions_for_topic(cfg.topics.progress) or [])]
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        end = consumer.end_offsets(partitions)
        progress: dict[str, StreamProgress] = {}
        while any(consumer.position(tp) < end[tp] for tp in partitions):
            for messages in consumer.poll(timeout_ms=500).values():
                for message in messages:
                    value = json.loads(message.value)
                    progress[message.key.decode()] = StreamProgress(int(value["records"]), bool(value["finished"]),
                                                                    transcripts=int(value.get("transcripts", 0)))
        return progress
    finally:
        consumer.close()


class Committer:
    @staticmethod
    def create(cfg: KafkaConfig, consumer) -> AtLeastOnce | ExactlyOnce:
        return ExactlyOnce(cfg, consumer) if cfg.delivery == "exactly_once" else AtLeastOnce(cfg, consumer)
