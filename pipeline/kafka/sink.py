"""Records to Kafka: one topic per record kind, keyed by stream_id, JSON values.

Contract (the Sink's): ``write`` never drops a record. It blocks while
``max_outstanding_records`` are unacknowledged, so a slow or unreachable broker
slows the pipeline down instead of growing memory. The producer is idempotent
with acks=all and retries each record for ``delivery_timeout_ms``; a record that
still fails is counted and sent again. ``flush`` returns when every record
written so far is acknowledged. In exactly-once mode the same producer is
transactional and the service (``pipeline/kafka/service.py``) wraps writes in
transactions; a failed record then aborts the transaction instead of a resend.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from typing import Any

from kafka.errors import KafkaError

from pipeline.core.config import KafkaConfig
from pipeline.output.records import Error, Event, Record, Transcript, Window
from pipeline.output.sinks import PublishMeter

log = logging.getLogger("avfuse.kafka")

CONTENT_TYPE = b"application/json"


def client_security(cfg: KafkaConfig) -> dict[str, Any]:
    """kafka-python connection settings shared by producers, consumers and admin clients."""
    sec = cfg.security
    settings: dict[str, Any] = {"bootstrap_servers": cfg.bootstrap_servers.split(","),
                                "security_protocol": sec.protocol}
    if sec.sasl_mechanism:
        settings.update(sasl_mechanism=sec.sasl_mechanism, sasl_plain_username=sec.sasl_username,
                        sasl_plain_password=sec.sasl_password.get_secret_value() if sec.sasl_password else None)
    if sec.protocol in ("SSL", "SASL_SSL"):
        settings.update(ssl_cafile=sec.ssl_cafile, ssl_certfile=sec.ssl_certfile, ssl_keyfile=sec.ssl_keyfile,
                        ssl_check_hostname=sec.ssl_check_hostname,
                        ssl_password=sec.ssl_password.get_secret_value() if sec.ssl_password else None)
    return settings


def make_producer(cfg: KafkaConfig, transactional_id: str | None = None):
    from kafka import KafkaProducer

    return KafkaProducer(
        client_id=cfg.client_id, acks="all", enable_idempotence=True, linger_ms=cfg.linger_ms,
        delivery_timeout_ms=cfg.delivery_timeout_ms, request_timeout_ms=min(30000, cfg.delivery_timeout_ms),
        # send() may block this long for metadata or buffer space; our own bound comes first.
        max_block_ms=cfg.delivery_timeout_ms, transactional_id=transactional_id,
        **client_security(cfg))


def topic_for(record: Record, cfg: KafkaConfig) -> str:
    topics = cfg.topics
    if isinstance(record, Event):
        return topics.events
    if isinstance(record, Error):
        return topics.errors
    if isinstance(record, Window):
        return topics.windows
    if isinstance(record, Transcript):
        return topics.transcripts
    return topics.summaries  # summaries, and each stream's start and end


def headers_for(record: Record) -> list[tuple[str, bytes]]:
    return [("schema", f"avfuse.{record.record_type}".encode()), ("schema_version", str(record.version).encode()),
            ("content-type", CONTENT_TYPE)]


class KafkaSink:
    def __init__(self, producer, cfg: KafkaConfig, resend_failed: bool = True):
        self._producer = producer
        self._cfg = cfg
        self._resend_failed = resend_failed
        self._meter = PublishMeter("kafka")
        self._lock = threading.Condition()
        self._outstanding = 0
        self._failed: deque[tuple[Record, float | None]] = deque()  # to send again, from the writer's thread
        self.fatal: BaseException | None = None  # exactly-once: a failure that must abort the transaction
        self.sent = self.acked = self.failures = 0

    def write(self, record: Record, arrived_wall_s: float | None = None) -> None:
        while True:
            self._resend()  # failed records count as outstanding: only sending them again frees room
            with self._lock:
                if self._outstanding < self._cfg.max_outstanding_records:
                    self._outstanding += 1
                    break
                if not self._failed:
                    self._lock.wait(0.5)  # backpressure: the broker has not caught up
        self._send(record, arrived_wall_s)

    def _send(self, record: Record, arrived_wall_s: float | None) -> None:
        handed_wall_s = time.time()
        try:
            future = self._producer.send(topic_for(record, self._cfg), key=record.stream_id.encode(),
                                         value=record.to_json().encode(), headers=headers_for(record))
        except KafkaError as exc:
            # Refused before it was handed over (no metadata within max_block_ms: the broker is
            # away). It holds a slot like a record that failed later: without this, the slot
            # leaked and flush() waited for it for ever.
            self._on_error(record, arrived_wall_s, exc)
            return
        self.sent += 1
        future.add_callback(self._on_ack, record, handed_wall_s, arrived_wall_s)
        future.add_errback(self._on_error, record, arrived_wall_s)

    # Callbacks run on the producer's I/O thread: count, and leave sending to the writer.
    def _on_ack(self, record: Record, handed_wall_s: float, arrived_wall_s: float | None, _metadata) -> None:
        self._meter.acked(record, handed_wall_s, arrived_wall_s)
        with self._lock:
            self.acked += 1
            self._outstanding -= 1
            self._lock.notify_all()

    def _on_error(self, record: Record, arrived_wall_s: float | None, exc: BaseException) -> None:
        self._meter.failed(type(exc).__name__)
        log.warning("publishing a %s record failed (%s); %s", record.record_type, exc,
                    "sending it again" if self._resend_failed else "the transaction will abort",
                    extra={"stream_id": record.stream_id, "stage": "sink"})
        with self._lock:
            self.failures += 1
            if self._resend_failed:
                self._failed.append((record, arrived_wall_s))  # still outstanding
            else:
                self.fatal = exc
                self._outstanding -= 1
            self._lock.notify_all()

    def _resend(self) -> None:
        while True:
            with self._lock:
                if not self._failed:
                    return
                record, arrived_wall_s = self._failed.popleft()
            self._send(record, arrived_wall_s)

    def flush(self) -> None:
        """Block until every record written so far is acknowledged (retrying failed ones)."""
        while True:
            self._resend()
            self._producer.flush()
            with self._lock:
                if self._outstanding == 0 or (self.fatal is not None and not self._failed):
                    return
                self._lock.wait(0.2)

    @property
    def outstanding(self) -> int:
        with self._lock:
            return self._outstanding

    def close(self) -> None:
        self.flush()
