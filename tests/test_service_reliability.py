"""`avfuse run` under the conditions a 24/7 deployment meets, against the real broker:
more media streams than slots, a kill after a later job finished behind a long one, a broker
outage with a SIGTERM in it, stream actors killed by the OOM killer."""

from __future__ import annotations

import json
import signal
import threading
import time
import uuid
from collections import Counter

from pipeline.app.sample import ClipSpec, write_clip
from tests.kafka_support import (
    Reader,
    Service,
    committed_history,
    job,
    latest_values,
    produce,
    segment_messages,
    stream_ends,
    ts_segments,
)
from tests.service_probe import http_status, kill_stream_actors, metric_total


def _events(records: list[dict], stream_id: str) -> list[str]:
    return [r["event_id"] for r in records if r["type"] == "event" and r["stream_id"] == stream_id]


def _stop(services, reader) -> None:
    reader.close()
    for service in services:
        if service.proc.poll() is None:
            service.kill()


def test_more_media_streams_than_slots_all_complete_and_a_waiting_one_holds_no_one_up(
        kafka_broker, clips, replay, tmp_path):
    clip = clips["av.mp4"]
    segments = ts_segments(clip)
    assert sum(map(len, segments)) > 3 * (64 << 10)  # each stream's bytes overflow its buffer many times
    stream_ids = ["s1", "s2", "s3"]
    prefix = f"f{uuid.uuid4().hex[:8]}"
    # One slot, one partition: s2's and s3's messages lie between s1's while s1 runs and they wait.
    service = Service(kafka_broker, prefix, tmp_path, "runtime.max_concurrent_streams=1",
                      "kafka.segment_buffer_bytes=65536", "kafka.new_topic_partitions=1")
    reader = Reader(kafka_broker, [service.topics["events"], service.topics["summaries"], service.topics["errors"]])
    try:
        service.wait_ready()
        per_stream = [segment_messages(sid, segments) for sid in stream_ids]
        interleaved = [message for group in zip(*per_stream) for message in group]
        produce(kafka_broker, service.topics["media"], interleaved)
        records = reader.read_until(lambda rs: set(stream_ids) <= set(stream_ends(rs)), timeout_s=240,
                                    what="every stream to end")
        deferred = metric_total(service.metrics_port, "avfuse_kafka_deferred_messages_total")
        assert service.terminate() == 0, service.log()
    finally:
        _stop([service], reader)
    ends = stream_ends(records)
    assert {sid: ends[sid]["status"] for sid in stream_ids} == dict.fromkeys(stream_ids, "ok"), ends
    assert deferred > 0  # the waiting streams' messages were left in Kafka, not buffered
    assert not [r for r in records if r["type"] == "error"], [r["reason"] for r in records if r["type"] == "error"]
    clean = {(e["label"], e["start_s"]) for e in replay(clip, stream_ids=["s1"]).events()}
    for sid in stream_ids:  # every segment reached its stream, in order
        got = {(r["label"], r["start_s"]) for r in records if r["type"] == "event" and r["stream_id"] == sid}
        assert got == clean, sid


def test_exactly_once_a_job_finished_behind_a_long_one_is_not_run_again_after_a_kill(kafka_broker, clips, tmp_path):
    long_clip = write_clip(tmp_path / "long.mp4", ClipSpec(duration_s=30.0, width=160, height=120))
    short_clip = tmp_path / "short.mp4"
    short_clip.write_bytes(clips["av.mp4"].read_bytes())
    prefix = f"x{uuid.uuid4().hex[:8]}"
    sets = ("kafka.delivery=exactly_once", "decode.realtime=true", "kafka.new_topic_partitions=1")
    service = Service(kafka_broker, prefix, tmp_path, *sets)
    services = [service]
    reader = Reader(kafka_broker, [service.topics["events"], service.topics["summaries"], service.topics["errors"]])
    try:
        service.wait_ready()
        produce(kafka_broker, service.topics["jobs"], [job("long", str(long_clip)), job("short", str(short_clip))])
        reader.read_until(lambda rs: "short" in stream_ends(rs), timeout_s=120, what="the short job to end")
        time.sleep(1.5)  # its transaction (progress: finished) committed; its offset waits behind "long"
        service.kill()
        service = Service(kafka_broker, prefix, tmp_path, *sets)
        services.append(service)
        records = reader.read_until(lambda rs: "long" in stream_ends(rs), timeout_s=180, what="the long job to end")
        time.sleep(3)  # anything the restarted service would write again has time to arrive
        records = reader.read_until(lambda rs: True, timeout_s=5)
        log = service.log()
        assert service.terminate() == 0, service.log()
    finally:
        _stop(services, reader)
    starts = Counter(r["stream_id"] for r in records if r["type"] == "stream_start")
    ends = Counter(r["stream_id"] for r in records if r["type"] == "stream_end")
    assert starts["short"] == 1 and ends["short"] == 1, (starts, ends)  # not run twice
    assert ends["long"] == 1, ends
    for sid in ("long", "short"):
        repeated = [eid for eid, n in Counter(_events(records, sid)).items() if n > 1]
        assert not repeated, (sid, repeated)
    assert "already done before a restart" in log, log
    # Once their input is committed, finished streams leave the progress topic (tombstones).
    progress = latest_values(kafka_broker, f"{prefix}.progress")
    assert progress.get("short", b"?") is None and progress.get("long", b"?") is None, progress


def test_exactly_once_a_segment_gap_is_reported_once_across_a_kill(kafka_broker, clips, tmp_path):
    segments = ts_segments(clips["av.mp4"])
    messages = segment_messages("gappy", segments, skip_seq=3)
    prefix = f"g{uuid.uuid4().hex[:8]}"
    sets = ("kafka.delivery=exactly_once",)
    service = Service(kafka_broker, prefix, tmp_path, *sets)
    services = [service]
    topics = service.topics
    reader = Reader(kafka_broker, [topics["events"], topics["summaries"], topics["errors"]])
    try:
        service.wait_ready()
        # The first half (with the gap): the stream stays open, waiting for the rest of its bytes.
        produce(kafka_broker, topics["media"], messages[:6])
        reader.read_until(lambda rs: any(r["type"] == "error" for r in rs), what="the gap's error record")
        time.sleep(2)  # committed in a transaction, with the stream's progress
        service.kill()
        service = Service(kafka_broker, prefix, tmp_path, *sets)
        services.append(service)
        service.wait_ready()
        produce(kafka_broker, topics["media"], messages[6:])
        records = reader.read_until(lambda rs: "gappy" in stream_ends(rs), timeout_s=120, what="the stream's end")
        time.sleep(2)
        records = reader.read_until(lambda rs: True, timeout_s=3)
        assert service.terminate() == 0, service.log()
    finally:
        _stop(services, reader)
    gaps = [r for r in records if r["type"] == "error" and "gap" in r["reason"]]
    assert len(gaps) == 1, gaps  # the re-run's own report of it was counted, and skipped
    assert Counter(r["stream_id"] for r in records if r["type"] == "stream_start")["gappy"] == 1


def test_a_broker_outage_neither_freezes_the_service_nor_its_drain_and_loses_nothing(
        kafka_broker, replay, tmp_path):
    clip = write_clip(tmp_path / "clip.mp4", ClipSpec(duration_s=30.0, width=160, height=120))
    clean = replay(clip, clip, stream_ids=["o1", "o2"])
    assert clean.events()
    prefix = f"o{uuid.uuid4().hex[:8]}"
    drain_timeout_s = 8.0
    # Windows records flow every second, so a stalled broker shows at once.
    sets = ("decode.realtime=true", "records.windows=true", f"kafka.drain_timeout_s={drain_timeout_s}",
            "kafka.delivery_timeout_ms=120000")
    service = Service(kafka_broker, prefix, tmp_path, *sets)
    services = [service]
    reader = Reader(kafka_broker, [service.topics["events"], service.topics["summaries"], service.topics["errors"]])
    health: list[tuple[float, int | None, int | None]] = []
    watching = threading.Event()

    def watch() -> None:
        while not watching.is_set():
            health.append((time.monotonic(), http_status(service.metrics_port, "/healthz"),
                           http_status(service.metrics_port, "/readyz")))
            time.sleep(0.5)

    watcher = threading.Thread(target=watch)
    try:
        service.wait_ready()
        produce(kafka_broker, service.topics["jobs"], [job("o1", str(clip)), job("o2", str(clip))])
        reader.read_until(lambda rs: any(r["type"] == "stream_start" for r in rs), what="the streams to start")
        watcher.start()
        kafka_broker.stop()
        outage_at = time.monotonic()
        time.sleep(14)
        service.proc.send_signal(15)  # SIGTERM in the outage
        terminated_at = time.monotonic()
        exit_code = service.proc.wait(60)
        exit_s = time.monotonic() - terminated_at
        watching.set()
        watcher.join()
        log = service.log()
        time.sleep(max(0.0, 20 - (time.monotonic() - outage_at)))
        kafka_broker.start()
        service = Service(kafka_broker, prefix, tmp_path, *sets)
        services.append(service)
        records = reader.read_until(lambda rs: {"o1", "o2"} <= set(stream_ends(rs)), timeout_s=240,
                                    what="both streams to end after the restart")
        assert service.terminate() == 0, service.log()
    finally:
        watching.set()
        kafka_broker.start()
        _stop(services, reader)
    assert exit_code == 0, log
    assert exit_s <= drain_timeout_s + 10, (exit_s, log)  # the drain's bound, and Ray's shutdown
    during = [(h, r) for t, h, r in health if t < terminated_at]
    assert during and all(h == 200 for h, _ in during), during  # alive throughout
    assert any(r == 503 for _, r in during), during  # not ready while the broker is away
    assert "Traceback" not in log, log
    for sid in ("o1", "o2"):  # nothing lost (at-least-once: repeats carry the same ids)
        assert set(_events(records, sid)) == {e["event_id"] for e in clean.events(sid)}, sid


def test_a_killed_stream_actor_is_retried_and_a_job_failing_every_time_goes_to_the_dead_letter_topic(
        kafka_broker, clips, replay, tmp_path):
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(clips["av.mp4"].read_bytes())
    expected = {e["event_id"] for e in replay(clip, stream_ids=["oom"]).events()}
    prefix = f"d{uuid.uuid4().hex[:8]}"
    service = Service(kafka_broker, prefix, tmp_path, "decode.realtime=true", "kafka.max_stream_retries=1",
                      "kafka.retry_backoff_s=0.5")
    topics = service.topics
    reader = Reader(kafka_broker, [topics["events"], topics["summaries"], topics["errors"], topics["dead"]])
    try:
        service.wait_ready()
        # 1. killed once mid-stream: run again, and it completes with every event
        produce(kafka_broker, topics["jobs"], [job("oom", str(clip))])
        reader.read_until(lambda rs: len(_events(rs, "oom")) >= 1, what="a first event")
        assert kill_stream_actors(service.proc.pid) >= 1
        records = reader.read_until(lambda rs: "oom" in stream_ends(rs), timeout_s=120, what="the retried stream")
        assert stream_ends(records)["oom"]["status"] == "ok", stream_ends(records)["oom"]
        assert set(_events(records, "oom")) == expected
        assert metric_total(service.metrics_port, "avfuse_stream_retries_total") == 1

        # 2. killed every time: after 1 retry, the job goes to the dead-letter topic
        produce(kafka_broker, topics["jobs"], [job("doomed", str(clip))])
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not any(
                r["type"] == "dead_letter" for r in reader.read_until(lambda rs: True, timeout_s=1)):
            kill_stream_actors(service.proc.pid)
        records = reader.read_until(lambda rs: any(r["type"] == "dead_letter" for r in rs), timeout_s=5,
                                    what="the dead letter")
        time.sleep(2)  # its offset commit
        log = service.log()
        assert service.terminate() == 0, service.log()
    finally:
        _stop([service], reader)
    dead = [r for r in records if r["type"] == "dead_letter"]
    assert len(dead) == 1 and dead[0]["stream_id"] == "doomed" and dead[0]["attempts"] == 2, dead
    assert dead[0]["job"] == {"stream_id": "doomed", "uri": str(clip)} and "stream actor died" in dead[0]["reason"]
    assert stream_ends(records)["doomed"]["status"] == "failed"
    assert "giving up after 2 attempts" in log


def test_a_send_that_raises_frees_its_slot_so_flush_returns(kafka_broker):
    from pipeline.core.config import load_config
    from pipeline.kafka.sink import KafkaSink, make_producer
    from pipeline.output.records import Event
    from tests.kafka_support import topics_for

    cfg = load_config(None, [f"kafka.bootstrap_servers={kafka_broker.bootstrap}", "kafka.max_outstanding_records=2",
                             *[f"kafka.topics.{k}={v}" for k, v in topics_for(f"l{uuid.uuid4().hex[:8]}").items()]],
                      environ={}).kafka
    producer = make_producer(cfg)
    sink = KafkaSink(producer, cfg)
    producer.close()  # send() now raises (not a KafkaError)
    for i in range(3):  # more than the bound: a leaked slot would block the third write for ever
        sink.write(Event("cam", "scene_cut", float(i), float(i), 1.0, "scene_cut", "1"))
    started = time.monotonic()
    assert sink.flush(timeout_s=30) is False  # not acknowledged: nothing may be committed for it
    assert time.monotonic() - started < 5 and sink.outstanding == 0 and sink.acked == 0
    assert not sink.acked_through(1)


def _keys_on_every_partition(partitions: int, prefix: str) -> list[str]:
    """Stream ids that kafka-python's default partitioner spreads over every partition."""
    from kafka.partitioner.default import murmur2

    chosen: dict[int, str] = {}
    for i in range(1000):
        key = f"{prefix}{i}"
        chosen.setdefault((murmur2(key.encode()) & 0x7FFFFFFF) % partitions, key)
        if len(chosen) == partitions:
            return [chosen[p] for p in range(partitions)]
    raise AssertionError("no spread of keys found")


def test_exactly_once_holds_when_a_second_replica_takes_partitions_mid_stream(kafka_broker, replay, tmp_path):
    clip = write_clip(tmp_path / "clip.mp4", ClipSpec(duration_s=40.0, width=160, height=120))
    stream_ids = _keys_on_every_partition(4, "rb")
    clean = replay(*[clip] * len(stream_ids), stream_ids=stream_ids)
    prefix = f"b{uuid.uuid4().hex[:8]}"
    sets = ("kafka.delivery=exactly_once", "decode.realtime=true", "kafka.new_topic_partitions=4")
    first = Service(kafka_broker, prefix, tmp_path, *sets)
    services = [first]
    reader = Reader(kafka_broker, [first.topics["events"], first.topics["summaries"], first.topics["errors"]])
    try:
        first.wait_ready()
        # Its own transactional id: the second replica must not fence the first.
        second = Service(kafka_broker, prefix, tmp_path, *sets, f"kafka.transactional_id={prefix}-tx2")
        services.append(second)
        produce(kafka_broker, first.topics["jobs"], [job(sid, str(clip)) for sid in stream_ids])
        second.wait_ready()  # it joins the group: half the partitions move to it, mid-stream
        records = reader.read_until(lambda rs: set(stream_ids) <= set(stream_ends(rs)), timeout_s=240,
                                    what="every stream to end")
        time.sleep(2)
        records = reader.read_until(lambda rs: True, timeout_s=3)
        for service in services:
            assert service.terminate() == 0, service.log()
    finally:
        _stop(services, reader)
    logs = [service.log_path.read_text() for service in services]
    assert "[stream]" in logs[1] and " end " in logs[1], logs[1][-3000:]  # work moved to the second
    ends = Counter(r["stream_id"] for r in records if r["type"] == "stream_end")
    assert all(ends[sid] == 1 for sid in stream_ids), ends
    for sid in stream_ids:
        events = _events(records, sid)
        repeated = sorted((r["label"], r["start_s"]) for r in records if r["type"] == "event" and r["stream_id"] == sid
                          and events.count(r["event_id"]) > 1)
        assert not repeated, f"{sid}: a read_committed consumer saw duplicates: {repeated}"
        assert set(events) == {e["event_id"] for e in clean.events(sid)}, sid
    # A replica commits only the progress it changed: the joining one once wrote back what it had
    # read at start-up, under the running one's newer count, and then resumed from its own write.
    values: dict[str, list[bytes]] = {}
    for key, value in committed_history(kafka_broker, f"{prefix}.progress"):
        if value is not None and key in stream_ids:
            values.setdefault(key, []).append(value)
    counts = {key: [json.loads(v)["records"] for v in vs] for key, vs in values.items()}
    assert counts and all(c == sorted(c) for c in counts.values()), counts
    rewritten = {key: sum(a == b for a, b in zip(vs, vs[1:])) for key, vs in values.items()}
    assert not any(rewritten.values()), f"progress written again unchanged: {rewritten}"


def test_exactly_once_holds_when_a_frozen_replica_is_dropped_from_the_group_and_thaws(kafka_broker, replay,
                                                                                       tmp_path):
    """A replica frozen past its session (a stopped pod, a starved process) is dropped; its
    partitions go to the other, which runs their streams from the committed progress. Thawed, the
    first must commit nothing more of them: every transaction carries its offsets, so the broker
    checks its group generation (KIP-447), and a lost membership aborts its open transaction."""
    clip = write_clip(tmp_path / "clip.mp4", ClipSpec(duration_s=30.0, width=160, height=120))
    stream_ids = _keys_on_every_partition(2, "fz")
    clean = replay(*[clip] * len(stream_ids), stream_ids=stream_ids)
    prefix = f"z{uuid.uuid4().hex[:8]}"
    sets = ("kafka.delivery=exactly_once", "decode.realtime=true", "kafka.new_topic_partitions=2")
    frozen = Service(kafka_broker, prefix, tmp_path, *sets)
    services = [frozen]
    reader = Reader(kafka_broker, [frozen.topics["events"], frozen.topics["summaries"], frozen.topics["errors"]])
    try:
        frozen.wait_ready()
        other = Service(kafka_broker, prefix, tmp_path, *sets, f"kafka.transactional_id={prefix}-tx2")
        services.append(other)
        other.wait_ready()
        produce(kafka_broker, frozen.topics["jobs"], [job(sid, str(clip)) for sid in stream_ids])
        reader.read_until(lambda rs: sum(r["type"] == "event" for r in rs) >= 4, timeout_s=60, what="events")
        frozen.proc.send_signal(signal.SIGSTOP)
        time.sleep(16)  # past kafka.session_timeout_s (10 s in the tests): dropped, its streams move
        frozen.proc.send_signal(signal.SIGCONT)
        records = reader.read_until(lambda rs: set(stream_ids) <= set(stream_ends(rs)), timeout_s=180,
                                    what="every stream to end")
        time.sleep(2)
        records = reader.read_until(lambda rs: True, timeout_s=3)
        frozen_log = frozen.log_path.read_text()
        for service in services:
            if service.proc.poll() is None:
                service.terminate()
    finally:
        _stop(services, reader)
    ends = Counter(r["stream_id"] for r in records if r["type"] == "stream_end")
    assert all(ends[sid] == 1 for sid in stream_ids), ends
    for sid in stream_ids:
        events = _events(records, sid)
        repeated = sorted((r["label"], r["start_s"]) for r in records if r["type"] == "event" and r["stream_id"] == sid
                          and events.count(r["event_id"]) > 1)
        assert not repeated, f"{sid}: a read_committed consumer saw duplicates: {repeated}"
        assert set(events) == {e["event_id"] for e in clean.events(sid)}, sid
    # The thawed replica learnt it was dropped: a refused commit (exit 1), or the lost partitions.
    assert "partitions lost" in frozen_log or "exactly-once transaction failed" in frozen_log, frozen_log[-3000:]
