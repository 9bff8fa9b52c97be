"""Records to Kafka: one topic per record kind, keyed by stream_id, JSON values.

Contract (the Sink's): ``write`` never drops a record. Records queue for one sender
thread, which alone calls the producer: ``send`` may block (metadata, buffer space, a
transaction commit) and must never block the service's event loop. At most
``max_outstanding_records`` are written and not yet acknowledged: a blocking writer
(``block_writes``, a benchmark's loop) waits at the bound; the service writes without
waiting and awaits ``room()`` between batches, so a slow or unreachable broker slows the
streams down through their bounded relays instead of growing memory or freezing the loop.

The producer is idempotent with acks=all and retries each record for
``delivery_timeout_ms``; a record that still fails is counted and sent again. Every
record is numbered (``write`` returns its number): ``acked_through(n)`` says whether it
and every record before it are acknowledged, which is what an offset commit needs. In
exactly-once mode the same producer is transactional; ``call_on_sender`` runs the
transaction's commit on the sender thread, after every record written before it was
handed to the producer, and a failed record aborts the transaction instead of a resend.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from collections import deque
from typing import Any, Callable

from pipeline.core.config import KafkaConfig
from pipeline.output.records import Error, Event, Record, Transcript, Window
from pipeline.output.sinks import PublishMeter

log = logging.getLogger("avfuse.kafka")

CONTENT_TYPE = b"application/json"
# A failed record is sent again after this pause: during an outage, not in a tight loop.
RESEND_PAUSE_S = 0.5
# The broker counts as away once records wait this long without any acknowledgement.
STALL_S = 5.0


def client_security(cfg: KafkaConfig) -> dict[str, Any]:
    """kafka-python connection settings shared by producers, consumers and admin clients."""
    sec = cfg.security
    settings: dict[str, Any] = {"bootstrap_servers": cfg.bootstrap_servers.split(","),
                                "bootstrap_timeout_ms": int(cfg.connect_timeout_s * 1000),
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
        # send() may block this long for metadata or buffer space (on the sender thread).
        max_block_ms=cfg.delivery_timeout_ms, transactional_id=transactional_id,
        transaction_timeout_ms=int(cfg.transaction_timeout_s * 1000), **client_security(cfg))


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
    if record.record_type == "dead_letter":
        return topics.dead
    return topics.summaries  # summaries, and each stream's start and end


def headers_for(record: Record) -> list[tuple[str, bytes]]:
    return [("schema", f"avfuse.{record.record_type}".encode()), ("schema_version", str(record.version).encode()),
            ("content-type", CONTENT_TYPE)]


class KafkaSink:
    def __init__(self, producer, cfg: KafkaConfig, resend_failed: bool = True, block_writes: bool = True):
        self._producer = producer
        self._cfg = cfg
        self._resend_failed = resend_failed
        self._block_writes = block_writes
        self._meter = PublishMeter("kafka")
        self._lock = threading.Condition()
        self._queue: deque = deque()  # (seq, record, arrived) or (None, fn, future): the sender's work, in order
        self._failed: deque[tuple[int, Record, float | None]] = deque()  # to send again
        self._unacked: deque[int] = deque()  # record numbers in order, the first one not yet acknowledged first
        self._acked_early: set[int] = set()  # acknowledged behind an older unacknowledged one
        self._outstanding = 0  # written, not yet acknowledged (queued, in flight or failed)
        self._written = 0
        self._last_progress_s = time.monotonic()  # the last ack, or when the sink last became busy
        self._closing = False
        self._in_hand = 0  # taken off the queue by the sender, not yet handed over or failed
        self._resend_after = 0.0  # failed records wait until then: an outage is not a tight loop
        self.fatal: BaseException | None = None  # a failure that must abort the transaction (or the run)
        self.sent = self.acked = self.failures = 0
        self._sender = threading.Thread(target=self._send_loop, name="avfuse-kafka-sender", daemon=True)
        self._sender.start()

    # -- the writers' side (any thread) -------------------------------------------------

    def write(self, record: Record, arrived_wall_s: float | None = None) -> int:
        """Queue one record; returns its number. Blocks at the bound only with ``block_writes``."""
        with self._lock:
            while self._block_writes and self._outstanding >= self._cfg.max_outstanding_records:
                self._lock.wait(0.5)  # backpressure: the broker has not caught up
            seq = self._written
            self._written += 1
            if self._outstanding == 0:
                self._last_progress_s = time.monotonic()
            self._outstanding += 1
            self._unacked.append(seq)
            self._queue.append((seq, record, arrived_wall_s))
            self._lock.notify_all()
        return seq

    @property
    def written(self) -> int:
        """How many records were written so far: the number the next one gets."""
        return self._written

    def has_room(self) -> bool:
        return self._outstanding < self._cfg.max_outstanding_records

    async def room(self) -> None:
        """Wait (without blocking the loop) until fewer than the bound are outstanding."""
        while not self.has_room():
            await asyncio.sleep(0.05)

    def acked_through(self, count: int) -> bool:
        """Whether the first ``count`` records written are all acknowledged."""
        with self._lock:
            return not self._unacked or self._unacked[0] >= count

    async def wait_acked(self, count: int) -> None:
        while not self.acked_through(count):
            if self.fatal is not None:
                raise self.fatal
            await asyncio.sleep(0.05)

    def call_on_sender(self, fn: Callable[[], Any]) -> concurrent.futures.Future:
        """Run ``fn`` on the sender thread once every record written before is handed over."""
        future: concurrent.futures.Future = concurrent.futures.Future()
        with self._lock:
            self._queue.append((None, fn, future))
            self._lock.notify_all()
        return future

    def stalled_s(self) -> float:
        """How long records have waited without any acknowledgement (0 when none waits)."""
        with self._lock:
            return time.monotonic() - self._last_progress_s if self._outstanding else 0.0

    # -- the sender thread ------------------------------------------------------------------

    def _send_loop(self) -> None:
        while True:
            with self._lock:
                while True:
                    resend_in_s = self._resend_after - time.monotonic()
                    if self._failed and resend_in_s <= 0:
                        seq, record, arrived_wall_s = self._failed.popleft()
                        self._in_hand += 1
                        break
                    if self._queue:
                        seq, record, arrived_wall_s = self._queue.popleft()
                        self._in_hand += 1
                        break
                    if self._closing:
                        return
                    self._lock.wait(resend_in_s if self._failed else None)
            try:
                if seq is None:  # a call: record is the function, arrived_wall_s its future
                    self._run_call(record, arrived_wall_s)
                else:
                    self._send(seq, record, arrived_wall_s)
            finally:
                with self._lock:
                    self._in_hand -= 1
                    self._lock.notify_all()

    @staticmethod
    def _run_call(fn, future: concurrent.futures.Future) -> None:
        if not future.set_running_or_notify_cancel():
            return
        try:
            future.set_result(fn())
        except BaseException as exc:
            future.set_exception(exc)

    def _send(self, seq: int, record: Record, arrived_wall_s: float | None) -> None:
        handed_wall_s = time.time()
        try:
            future = self._producer.send(topic_for(record, self._cfg), key=record.stream_id.encode(),
                                         value=record.to_json().encode(), headers=headers_for(record))
        except Exception as exc:
            # Refused before it was handed over: no metadata within max_block_ms (the broker is
            # away), or a closed producer. It must not keep its slot for ever, or flush() would
            # wait for it for ever: a failure like one reported later.
            self._on_error(seq, record, arrived_wall_s, exc, retriable=_retriable(exc))
            return
        self.sent += 1
        future.add_callback(self._on_ack, seq, record, handed_wall_s, arrived_wall_s)
        future.add_errback(lambda exc: self._on_error(seq, record, arrived_wall_s, exc))

    # Callbacks run on the producer's I/O thread: count, and leave sending to the sender.
    def _on_ack(self, seq: int, record: Record, handed_wall_s: float, arrived_wall_s: float | None,
                _metadata) -> None:
        self._meter.acked(record, handed_wall_s, arrived_wall_s)
        with self._lock:
            self.acked += 1
            self._outstanding -= 1
            self._last_progress_s = time.monotonic()
            self._acked_early.add(seq)
            while self._unacked and self._unacked[0] in self._acked_early:
                self._acked_early.discard(self._unacked.popleft())
            self._lock.notify_all()

    def _on_error(self, seq: int, record: Record, arrived_wall_s: float | None, exc: BaseException,
                  retriable: bool = True) -> None:
        self._meter.failed(type(exc).__name__)
        resend = self._resend_failed and retriable
        log.warning("publishing a %s record failed (%s); %s", record.record_type, exc,
                    "sending it again" if resend else "it stays unacknowledged, its input is not committed",
                    extra={"stream_id": record.stream_id, "stage": "sink"})
        with self._lock:
            self.failures += 1
            if resend:
                self._failed.append((seq, record, arrived_wall_s))  # still outstanding
                self._resend_after = time.monotonic() + RESEND_PAUSE_S
            else:
                # Its number stays unacknowledged: no offset commit passes it. The slot is freed.
                self.fatal = exc
                self._outstanding -= 1
            self._lock.notify_all()

    # -- flushing -----------------------------------------------------------------------------

    def flush(self, timeout_s: float | None = None) -> bool:
        """Wait until every record written so far is acknowledged (failed ones are sent again);
        False when ``timeout_s`` passed first or a record failed for good."""
        target = self._written
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        with self._lock:
            while not (not self._unacked or self._unacked[0] >= target):
                if self.fatal is not None and not self._failed and not self._queue and not self._in_hand:
                    return False  # every record was tried: one failed for good
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._lock.wait(0.2 if remaining is None else min(0.2, remaining))
        return True

    @property
    def outstanding(self) -> int:
        with self._lock:
            return self._outstanding

    def close(self, timeout_s: float | None = None) -> bool:
        """Flush (within ``timeout_s``), then stop the sender thread."""
        flushed = self.flush(timeout_s)
        with self._lock:
            self._closing = True
            self._lock.notify_all()
        return flushed


def _retriable(exc: BaseException) -> bool:
    from kafka.errors import KafkaError

    return isinstance(exc, KafkaError) and getattr(exc, "retriable", True)
