"""Kafka: the sink's publish rate against a bare producer, and live end-to-end latency.

Prints, against a broker it starts (scripts/kafka.sh, stopped with --clean at the end)
or the one given with --bootstrap:
  - sink publish rate: records/s of KafkaSink (make_producer: idempotent, acks=all)
    writing --records Event records for a few streams, then flush(); the baseline,
    measured in the same run, is a bare KafkaProducer with the same settings sending
    the same key, value bytes (serialized beforehand) and headers, then flush(). Best
    of 2 each, and the ratio sink / bare;
  - end-to-end latency, live-paced: `avfuse run -c configs/kafka.yaml` as a subprocess
    on topics of its own; --streams streams of the demo clip (pipeline/app/sample.py) cut
    into 1 s MPEG-TS segments, segment k of every stream produced at t0 + k s. A
    separate read_committed consumer of the events topic measures, per event,
    (received) - (produce time of the segment holding the media time at which the event
    became knowable: end_s when end_s > start_s, else start_s). Alongside, the
    service's own avfuse_end_to_end_latency_seconds{sink="kafka"} from /metrics;
  - that SIGTERM drains the service and it exits 0.

The clip's known events all lie in its first 12 s (after that the picture is frozen and
the tone steady), so a longer live run loops the 12 s clip (--loops) on one stream
clock instead of writing ClipSpec(duration_s=30): every loop has a scene cut, a flash,
a beep, a silence, black and frozen video.

Usage: python -m benchmarks.bench_kafka [--bootstrap HOST:PORT] [--records 20000] [--streams 2] [--loops 3]
                                       [--set decode.chunk_s=1 ...]
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import av
import numpy as np

from pipeline.app.sample import write_clip
from pipeline.core.config import load_config
from pipeline.kafka.sink import KafkaSink, headers_for, make_producer, topic_for
from pipeline.output.records import Event

REPO = Path(__file__).resolve().parents[1]
KAFKA_SH = REPO / "scripts" / "kafka.sh"
SEGMENT_S = 1.0
LABELS = ("scene_cut", "loud_onset", "silence", "black_video", "frozen_video", "motion_burst")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Broker:
    """scripts/kafka.sh on free ports; ``stop`` removes its data."""

    def __init__(self):
        self.port, self.controller_port = free_port(), free_port()
        self.bootstrap = f"127.0.0.1:{self.port}"

    def _script(self, *args: str) -> None:
        result = subprocess.run([str(KAFKA_SH), *args, "--port", str(self.port)], capture_output=True, text=True,
                                timeout=300, env={**os.environ, "KAFKA_CONTROLLER_PORT": str(self.controller_port)})
        if result.returncode != 0:
            raise RuntimeError(f"kafka.sh {args[0]} failed:\n{result.stderr[-2000:]}")

    def start(self) -> "Broker":
        self._script("start")
        return self

    def stop(self) -> None:
        self._script("stop", "--clean")


def create_topics(bootstrap: str, names: list[str]) -> None:
    """Up front, so that no client waits on auto-creation while it is being timed."""
    from kafka.admin import KafkaAdminClient, NewTopic

    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    admin.create_topics([NewTopic(name, num_partitions=1, replication_factor=1) for name in names])
    admin.close()


# -- 1. sink publish rate ------------------------------------------------------------


def bench_events(n: int, streams: int = 4) -> list[Event]:
    """Events as the detectors write them: a label, a span, a confidence, a few attributes."""
    events = []
    for i in range(n):
        label = LABELS[i % len(LABELS)]
        start_s = round(0.04 * i, 3)
        end_s = start_s if label in ("scene_cut", "loud_onset") else round(start_s + 1.2, 3)
        attributes = ({"hist_distance": 0.61, "motion": 0.12, "luma_mean": 0.43, "lookahead_s": 0.4}
                      if end_s == start_s else
                      {"duration_s": end_s - start_s, "frames": 30, "mean": 0.02, "max": 0.05})
        events.append(Event(f"camera-{i % streams:02d}", label, start_s, end_s, 0.87, label, "1",
                            attributes=attributes))
    return events


def sink_rate(cfg, events: list[Event]) -> tuple[float, float]:
    """Records/s and this process's CPU µs per record (both threads: caller and producer I/O)."""
    producer = make_producer(cfg.kafka)
    sink = KafkaSink(producer, cfg.kafka)
    sink.write(events[0])  # metadata and the idempotent producer id, outside the timing
    sink.flush()
    started, cpu_started = time.perf_counter(), time.process_time()
    for event in events:
        sink.write(event)
    sink.flush()
    rate = len(events) / (time.perf_counter() - started)
    cpu_us = (time.process_time() - cpu_started) / len(events) * 1e6
    assert sink.acked == len(events) + 1 and sink.failures == 0, (sink.acked, sink.failures)
    producer.close()
    return rate, cpu_us


def bare_rate(cfg, messages: list[tuple[str, bytes, bytes, list]]) -> tuple[float, float]:
    from kafka import KafkaProducer

    # The producer settings make_producer uses for throughput (acks, idempotence, linger),
    # so that the ratio is what the sink adds per record: JSON, callbacks, its bound.
    producer = KafkaProducer(bootstrap_servers=cfg.kafka.bootstrap_servers.split(","), acks="all",
                             enable_idempotence=True, linger_ms=cfg.kafka.linger_ms)
    topic, key, value, headers = messages[0]
    producer.send(topic, key=key, value=value, headers=headers)
    producer.flush()
    started, cpu_started = time.perf_counter(), time.process_time()
    for topic, key, value, headers in messages:
        producer.send(topic, key=key, value=value, headers=headers)
    producer.flush()
    rate = len(messages) / (time.perf_counter() - started)
    cpu_us = (time.process_time() - cpu_started) / len(messages) * 1e6
    producer.close()
    return rate, cpu_us


def bench_sink(bootstrap: str, n: int) -> None:
    prefix = f"bench-kafka-{uuid.uuid4().hex[:8]}"
    cfg = load_config(None, [f"kafka.bootstrap_servers={bootstrap}", f"kafka.topics.events={prefix}.events"])
    create_topics(bootstrap, [cfg.kafka.topics.events])
    events = bench_events(n)
    messages = [(topic_for(e, cfg.kafka), e.stream_id.encode(), e.to_json().encode(), headers_for(e)) for e in events]
    mean_bytes = sum(len(m[2]) for m in messages) / n
    bare, sink = [], []
    for _ in range(2):  # interleaved, so a slow moment of the machine hits both
        bare.append(bare_rate(cfg, messages))
        sink.append(sink_rate(cfg, events))
    print(f"sink publish rate ({n} events, {mean_bytes:.0f} B JSON each, acks=all, idempotent, "
          f"linger_ms={cfg.kafka.linger_ms}, best of 2):")
    for name, runs in (("bare KafkaProducer, pre-serialized", bare), ("KafkaSink (to_json + send + ack)  ", sink)):
        print(f"  {name}: {max(r for r, _ in runs):6.0f} records/s, {min(c for _, c in runs):4.0f} µs CPU/record "
              f"(runs: {', '.join(f'{r:.0f}' for r, _ in runs)} records/s)")
    best_sink, best_bare = max(r for r, _ in sink), max(r for r, _ in bare)
    cpu_sink, cpu_bare = min(c for _, c in sink), min(c for _, c in bare)
    # Both clients are CPU-bound in Python: the CPU ratio is the steadier figure on a busy machine.
    print(f"  ratio sink / bare: {best_sink / best_bare:.2f} in records/s; {cpu_bare / cpu_sink:.2f} in CPU per record")


# -- 2. live end-to-end latency ------------------------------------------------------


def looped_ts_segments(clip: Path, loops: int) -> list[bytes]:
    """The clip played ``loops`` times on one clock, remuxed to MPEG-TS, cut every SEGMENT_S of video.

    Like tests/kafka_support.ts_segments: the AAC priming packet (negative PTS) is left
    out so that the stream clock stays the file's.
    """
    with av.open(str(clip)) as probe:
        duration_s = float(probe.duration) / av.time_base
    out = io.BytesIO()
    cuts, next_cut_s = [], SEGMENT_S
    with av.open(out, "w", format="mpegts") as dst:
        streams = None
        for loop in range(loops):
            with av.open(str(clip)) as src:
                if streams is None:
                    streams = {s.index: dst.add_stream_from_template(s) for s in src.streams}
                for packet in src.demux():
                    if packet.dts is None or packet.pts < 0:
                        continue
                    shift = int(round(loop * duration_s / packet.time_base))
                    packet.pts, packet.dts = packet.pts + shift, packet.dts + shift
                    if packet.stream.type == "video" and float(packet.pts * packet.time_base) >= next_cut_s:
                        cuts.append(out.tell() - out.tell() % 188)
                        next_cut_s += SEGMENT_S
                    packet.stream = streams[packet.stream.index]
                    dst.mux(packet)
    data = out.getvalue()
    bounds = [0, *cuts, len(data)]
    return [data[a:b] for a, b in zip(bounds, bounds[1:]) if b > a]


class ServiceProcess:
    """`avfuse run` as a user starts it, on its own topics and consumer group."""

    def __init__(self, bootstrap: str, prefix: str, file_root: Path, sets: list[str]):
        self.topics = {name: f"{prefix}.{name}" for name in ("jobs", "media", "events", "summaries", "errors",
                                                              "windows", "progress")}
        self.metrics_port = free_port()
        self.log_path = file_root / "service.log"
        args = ["run", "-c", str(REPO / "configs" / "kafka.yaml"), "--metrics-port", str(self.metrics_port),
                "--set", f"kafka.bootstrap_servers={bootstrap}", "--set", f"kafka.group_id={prefix}",
                "--set", f"kafka.uri_policy.file_roots=[{file_root}]"]
        for name, topic in self.topics.items():
            args += ["--set", f"kafka.topics.{name}={topic}"]
        for item in sets:
            args += ["--set", item]
        self._log = self.log_path.open("w")
        self.proc = subprocess.Popen([sys.executable, "-m", "pipeline.app.cli", *args], stdout=self._log,
                                     stderr=subprocess.STDOUT, text=True)

    def _get(self, path: str) -> tuple[int, str]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}{path}", timeout=5) as reply:
            return reply.status, reply.read().decode()

    def wait_ready(self, timeout_s: float = 180) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"avfuse run exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if self._get("/readyz")[0] == 200:
                    return
            except (urllib.error.URLError, ConnectionError, OSError):
                pass
            time.sleep(0.3)
        raise RuntimeError(f"avfuse run not ready in {timeout_s:.0f}s:\n{self.log()}")

    def metrics(self) -> str:
        return self._get("/metrics")[1]

    def terminate(self, timeout_s: float = 120) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout_s)

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text()[-4000:]


class EventReader(threading.Thread):
    """A downstream consumer (read_committed) stamping each record with the wall time it arrived."""

    def __init__(self, bootstrap: str, topics: list[str]):
        super().__init__(daemon=True)
        from kafka import KafkaConsumer

        self.consumer = KafkaConsumer(*topics, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                                      group_id=None, enable_auto_commit=False, isolation_level="read_committed")
        self.received: list[tuple[float, dict]] = []  # (wall s, record)
        self.assigned = threading.Event()
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            batches = self.consumer.poll(timeout_ms=100)
            now = time.time()
            if self.consumer.assignment():
                self.assigned.set()
            for batch in batches.values():
                self.received.extend((now, json.loads(m.value)) for m in batch)
        self.consumer.close()

    def stream_ends(self) -> set[str]:
        return {r["stream_id"] for _, r in list(self.received) if r["type"] == "stream_end"}

    def stop(self) -> None:
        self._halt.set()
        self.join(30)


def live_produce(bootstrap: str, topic: str, stream_ids: list[str], segments: list[bytes]) -> list[float]:
    """Segment k of every stream at t0 + k s; returns each segment's produce wall time (all streams)."""
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=0)
    t0 = time.time() + 0.5
    produced_wall_s = []
    for k, data in enumerate(segments):
        time.sleep(max(0.0, t0 + k * SEGMENT_S - time.time()))
        produced_wall_s.append(time.time())
        headers = [("seq", str(k).encode())] + ([("eos", b"1")] if k == len(segments) - 1 else [])
        for stream_id in stream_ids:
            producer.send(topic, key=stream_id.encode(), value=data, headers=headers)
        producer.flush()
    producer.close()
    return produced_wall_s


def histogram_from_metrics(text: str, name: str, sink: str) -> tuple[float, float]:
    from prometheus_client.parser import text_string_to_metric_families

    count = total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.labels.get("sink") != sink:
                continue
            if sample.name == f"{name}_count":
                count += sample.value
            elif sample.name == f"{name}_sum":
                total += sample.value
    return count, total


def percentile(values: np.ndarray, q: float) -> float:
    return float(np.percentile(values, q)) if len(values) else math.nan


def bench_latency(bootstrap: str, streams: int, loops: int, work: Path, sets: list[str]) -> None:
    prefix = f"bench-kafka-{uuid.uuid4().hex[:8]}"
    started = time.perf_counter()
    service = ServiceProcess(bootstrap, prefix, work, sets)
    try:
        create_topics(bootstrap, [service.topics[n] for n in ("jobs", "media", "events", "summaries", "errors")])
        # The clip is made while the service starts (neither is timed).
        segments = looped_ts_segments(write_clip(work / "demo.mp4"), loops)
        reader = EventReader(bootstrap, [service.topics["events"], service.topics["summaries"]])
        reader.start()
        service.wait_ready()
        if not reader.assigned.wait(30):
            raise RuntimeError("the event reader got no partitions")
        print(f"\nlive end-to-end ({streams} streams x {len(segments)} segments of {SEGMENT_S:.0f} s, "
              f"the 12 s demo clip looped {loops}x; service ready in {time.perf_counter() - started:.0f}s):")
        stream_ids = [f"live-{i}" for i in range(streams)]
        produced_wall_s = live_produce(bootstrap, service.topics["media"], stream_ids, segments)
        deadline = time.monotonic() + 60
        while not set(stream_ids) <= reader.stream_ends() and time.monotonic() < deadline:
            time.sleep(0.2)
        ends = reader.stream_ends()
        last_end_wait_s = time.time() - produced_wall_s[-1]
        reader.stop()
        latency_s, late_labels = [], {}
        for received_wall_s, record in reader.received:
            if record["type"] != "event":
                continue
            knowable_s = record["end_s"] if record["end_s"] > record["start_s"] else record["start_s"]
            k = min(int(knowable_s // SEGMENT_S), len(segments) - 1)
            latency = received_wall_s - produced_wall_s[k]
            latency_s.append(latency)
            late_labels.setdefault(record["label"], []).append(latency)
        lat = np.asarray(latency_s)
        print("  consumer view: event received - produce time of the segment holding the media time the event "
              "became knowable (end_s for spans, start_s for instants)")
        print(f"    events {len(lat)}; p50 {percentile(lat, 50):.2f}s  p95 {percentile(lat, 95):.2f}s  "
              f"max {lat.max() if len(lat) else math.nan:.2f}s")
        print("    by label (median s): " + ", ".join(
            f"{label} {np.median(v):.2f} (n={len(v)})" for label, v in sorted(late_labels.items())))
        exposition = service.metrics()
        count, total = histogram_from_metrics(exposition, "avfuse_end_to_end_latency_seconds", "kafka")
        publish_count, publish_total = histogram_from_metrics(exposition, "avfuse_sink_publish_seconds", "kafka")
        print('  service view: avfuse_end_to_end_latency_seconds{sink="kafka"} (chunk received by the decoder '
              "-> broker ack; every record type)")
        print(f"    count {count:.0f}; mean {total / count if count else math.nan:.2f}s; of which Kafka publish "
              f"(avfuse_sink_publish_seconds, handed to the sink -> ack) mean "
              f"{publish_total / publish_count if publish_count else math.nan:.3f}s over {publish_count:.0f} records")
        if not set(stream_ids) <= ends:
            print(f"  WARNING: stream_end missing for {sorted(set(stream_ids) - ends)} "
                  f"{last_end_wait_s:.0f}s after the last segment")
        code = service.terminate()
        print(f"  SIGTERM: avfuse run exited {code} ({'ok' if code == 0 else 'FAILED; log: ' + str(service.log_path)})")
        if code != 0:
            print(service.log())
    finally:
        if service.proc.poll() is None:
            service.proc.kill()
            service.proc.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bootstrap", metavar="HOST:PORT", help="use this broker (default: start one)")
    parser.add_argument("--records", type=int, default=20000)
    parser.add_argument("--streams", type=int, default=2)
    parser.add_argument("--loops", type=int, default=3, help="plays of the 12 s demo clip per live stream")
    parser.add_argument("--set", dest="sets", action="append", default=[],
                        help="config override for `avfuse run`, e.g. decode.chunk_s=1")
    args = parser.parse_args()

    broker = None
    if args.bootstrap is None:
        started = time.perf_counter()
        broker = Broker().start()
        print(f"broker: {broker.bootstrap} (started in {time.perf_counter() - started:.0f}s)")
    bootstrap = args.bootstrap or broker.bootstrap
    try:
        bench_sink(bootstrap, args.records)
        with tempfile.TemporaryDirectory() as work:
            bench_latency(bootstrap, args.streams, args.loops, Path(work), args.sets)
    finally:
        if broker is not None:
            broker.stop()


if __name__ == "__main__":
    main()
