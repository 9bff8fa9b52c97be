"""A real Kafka broker and a real `avfuse run` process, for the service tests."""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import av

REPO = Path(__file__).resolve().parents[1]
KAFKA_SH = REPO / "scripts" / "kafka.sh"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Broker:
    """scripts/kafka.sh on one port: CI's broker (AVFUSE_TEST_KAFKA) or one started here."""

    def __init__(self, port: int, owned: bool):
        self.port, self.owned = port, owned
        self.bootstrap = f"127.0.0.1:{port}"

    @classmethod
    def get(cls) -> "Broker":
        address = os.environ.get("AVFUSE_TEST_KAFKA")
        if address:
            broker = cls(int(address.rsplit(":", 1)[1]), owned=False)
            broker.start()  # a no-op when it runs; restarts it if a test left it stopped
            return broker
        broker = cls(free_port(), owned=True)
        broker.start()
        return broker

    def _script(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(KAFKA_SH), *args, "--port", str(self.port)], capture_output=True, text=True,
                              timeout=300, env={**os.environ, "KAFKA_CONTROLLER_PORT": str(self.port + 1)})

    def start(self) -> None:
        result = self._script("start")
        assert result.returncode == 0, result.stderr[-2000:]

    def stop(self, clean: bool = False) -> None:
        result = self._script("stop", *(["--clean"] if clean else []))
        assert result.returncode == 0, result.stderr[-2000:]

    def freeze(self, frozen: bool = True) -> None:
        """SIGSTOP (or SIGCONT): connections stay open and nothing is answered, a hung broker."""
        result = self._script("pid")
        assert result.returncode == 0, result.stderr[-2000:]
        os.kill(int(result.stdout.strip()), signal.SIGSTOP if frozen else signal.SIGCONT)


def topics_for(prefix: str) -> dict[str, str]:
    return {name: f"{prefix}.{name}" for name in ("jobs", "media", "events", "summaries", "errors", "windows",
                                                   "transcripts", "progress", "dead")}


# The services the running test started: a failing test's report shows their logs (tests/conftest.py).
STARTED: list["Service"] = []


class Service:
    """`avfuse run` as a user starts it, on its own topics and consumer group."""

    def __init__(self, broker: Broker, prefix: str, tmp_path: Path, *sets: str, env: dict | None = None):
        self.broker, self.prefix, self.topics = broker, prefix, topics_for(prefix)
        self.log_path = tmp_path / f"service-{uuid.uuid4().hex[:6]}.log"
        STARTED.append(self)
        self.metrics_port = free_port()
        args = ["run", "-c", str(REPO / "configs" / "kafka.yaml"), "--metrics-port", str(self.metrics_port),
                "--set", f"kafka.bootstrap_servers={broker.bootstrap}", "--set", f"kafka.group_id={prefix}",
                "--set", f"kafka.transactional_id={prefix}-tx", "--set", "kafka.commit_interval_s=0.5",
                # A killed service's partitions go to its successor after 10 s, not Kafka's 45.
                "--set", "kafka.session_timeout_s=10",
                "--set", f"kafka.uri_policy.file_roots=[{tmp_path}]",
                # Delivery is what these tests specify: the light profile, as the replay fixture runs.
                "--set", "profile=signal"]
        for name, topic in self.topics.items():
            args += ["--set", f"kafka.topics.{name}={topic}"]
        for item in sets:
            args += ["--set", item]
        self._log = self.log_path.open("w")
        self.proc = subprocess.Popen([sys.executable, "-m", "pipeline.app.cli", *args], stdout=self._log,
                                     stderr=subprocess.STDOUT, text=True, env=env)

    def wait_ready(self, timeout_s: float = 180) -> None:
        import urllib.error
        import urllib.request

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/readyz", timeout=2) as reply:
                    if reply.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, OSError):
                pass
            time.sleep(0.3)
        raise AssertionError("service not ready in time:\n" + self.log())

    def terminate(self, timeout_s: float = 120) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout_s)

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(30)

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text()[-4000:]


def produce(broker: Broker, topic: str, messages: list[tuple[bytes | None, bytes | None, list | None]]) -> None:
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, acks="all")
    for key, value, headers in messages:
        producer.send(topic, key=key, value=value, headers=headers or [])
    producer.flush()
    producer.close()


def job(stream_id: str, uri: str, **extra) -> tuple[bytes, bytes, None]:
    return stream_id.encode(), json.dumps({"stream_id": stream_id, "uri": uri, **extra}).encode(), None


class Reader:
    """A separate consumer of the output topics, as a downstream user runs one."""

    def __init__(self, broker: Broker, topics: list[str], read_committed: bool = True):
        self.broker, self.topics, self.read_committed = broker, topics, read_committed
        self._consumer = None
        self.messages: list = []

    @property
    def consumer(self):
        """Subscribed at the first read, once the service has made its topics: a consumer that
        subscribed to topics not yet made could miss them (once, in CI: 0 records in 180 s).
        Nothing is lost by waiting: it reads every partition from the earliest offset."""
        from kafka import KafkaConsumer

        if self._consumer is None:
            self._consumer = KafkaConsumer(
                *self.topics, bootstrap_servers=self.broker.bootstrap, auto_offset_reset="earliest",
                group_id=None, enable_auto_commit=False, reconnect_backoff_max_ms=1000,
                # Topics made later still are seen within a second, not at the next refresh 5 min later.
                metadata_max_age_ms=1000,
                isolation_level="read_committed" if self.read_committed else "read_uncommitted")
        return self._consumer

    def records(self) -> list[dict]:
        return [json.loads(m.value) for m in self.messages]

    def read_until(self, done, timeout_s: float = 180, what: str = "records") -> list[dict]:
        """Poll until ``done(records)`` holds; returns every record read so far."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for batch in self.consumer.poll(timeout_ms=500).values():
                self.messages.extend(batch)
            if done(self.records()):
                return self.records()
        raise AssertionError(f"timed out waiting for {what}; got {len(self.messages)} records")

    def close(self) -> None:
        if self._consumer is not None:
            self._consumer.close()


def stream_ends(records: list[dict]) -> dict[str, dict]:
    return {r["stream_id"]: r for r in records if r["type"] == "stream_end"}


def ts_segments(clip: Path, segment_s: float = 1.0) -> list[bytes]:
    """The clip remuxed to one MPEG-TS byte stream, cut where each ``segment_s`` of media starts.

    The AAC priming packet (negative PTS) is left out: the MPEG-TS muxer would shift every
    timestamp to make it non-negative, and the stream clock would no longer match the file's.
    """
    out = io.BytesIO()
    cuts = []
    next_cut_s = segment_s
    with av.open(str(clip)) as src, av.open(out, "w", format="mpegts") as dst:
        streams = {s.index: dst.add_stream_from_template(s) for s in src.streams}
        for packet in src.demux():
            if packet.dts is None or packet.pts < 0:
                continue
            if packet.stream.type == "video" and float(packet.pts * packet.time_base) >= next_cut_s:
                cuts.append(out.tell() - out.tell() % 188)
                next_cut_s += segment_s
            packet.stream = streams[packet.stream.index]
            dst.mux(packet)
    data = out.getvalue()
    bounds = [0, *cuts, len(data)]
    return [data[a:b] for a, b in zip(bounds, bounds[1:]) if b > a]


def segment_messages(stream_id: str, segments: list[bytes], skip_seq: int | None = None):
    """Media messages for one stream: key, bytes, seq header (one number skipped if asked), eos on the last."""
    messages = []
    for i, data in enumerate(segments):
        seq = i + (1 if skip_seq is not None and i >= skip_seq else 0)
        headers = [("seq", str(seq).encode())] + ([("eos", b"1")] if i == len(segments) - 1 else [])
        messages.append((stream_id.encode(), data, headers))
    return messages


def latest_values(broker, topic: str) -> dict[str, bytes | None]:
    """Each key's last value on a (compacted) topic, read committed, to its end."""
    return dict(committed_history(broker, topic))


def committed_history(broker, topic: str) -> list[tuple[str, bytes | None]]:
    """Every (key, value) a read_committed consumer sees on the topic, in each partition's order."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=broker.bootstrap, group_id=None, enable_auto_commit=False,
                             isolation_level="read_committed")
    try:
        partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or [])]
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        end = consumer.end_offsets(partitions)
        history: list[tuple[str, bytes | None]] = []
        deadline = time.monotonic() + 30
        while any(consumer.position(tp) < end[tp] for tp in partitions) and time.monotonic() < deadline:
            for messages in consumer.poll(timeout_ms=500).values():
                history += [(message.key.decode(), message.value) for message in messages]
        return history
    finally:
        consumer.close()
