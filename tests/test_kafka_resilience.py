"""Nothing is lost when the broker goes away or avfuse is killed, and exactly-once
shows a read_committed consumer every record once."""

from __future__ import annotations

import time
import uuid
from collections import Counter

import pytest

from pipeline.app.sample import ClipSpec, write_clip
from tests.conftest import SHARED_MEDIA
from tests.kafka_support import Reader, Service, job, produce, stream_ends


def _events(records: list[dict], stream_ids) -> list[str]:
    return [r["event_id"] for r in records if r["type"] == "event" and r["stream_id"] in stream_ids]


# Exactly-once only: it asserts everything at-least-once does (nothing lost) and no duplicate on
# top; at-least-once across an outage and a restart is tests/test_service_reliability.py's.
@pytest.mark.parametrize("delivery", ["exactly_once"])
def test_no_record_is_lost_across_a_broker_outage_and_a_sigkill(kafka_broker, clips, replay, tmp_path, delivery):
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(clips["av.mp4"].read_bytes())
    # Long enough that the stop job surely lands mid-stream, however loaded the machine.
    long_clip = write_clip(tmp_path / "long.mp4", ClipSpec(duration_s=60.0, width=160, height=120))
    outage_streams, crash_streams = ["o1", "o2"], ["k1", "k2"]
    clean = replay(*[clip] * 4, stream_ids=outage_streams + crash_streams)
    assert clean.events()

    prefix = f"r{uuid.uuid4().hex[:8]}"
    # Real-time decoding: each 12 s clip stays in flight long enough to be interrupted.
    sets = ("decode.realtime=true", f"kafka.delivery={delivery}")
    service = Service(kafka_broker, prefix, tmp_path, *sets)
    topics = service.topics
    reader = Reader(kafka_broker, [topics["events"], topics["summaries"], topics["errors"]])
    services = [service]
    try:
        service.wait_ready()
        # 1. the broker stops for 10 s while streams are running (and one is stopped by a job)
        produce(kafka_broker, topics["jobs"], [*(job(s, str(clip)) for s in outage_streams), job("stopped", str(long_clip))])
        reader.read_until(lambda rs: len(_events(rs, outage_streams)) >= 2, what="first events")
        produce(kafka_broker, topics["jobs"], [(b"stopped", b'{"stream_id": "stopped", "action": "stop"}', None)])
        reader.read_until(lambda rs: "stopped" in stream_ends(rs), what="the stop job to end its stream")
        kafka_broker.stop()
        time.sleep(10)
        kafka_broker.start()
        reader.read_until(lambda rs: set(outage_streams) <= set(stream_ends(rs)) or service.proc.poll() is not None,
                          timeout_s=240, what="the streams to end after the outage, or the service to exit")
        if service.proc.poll() is not None:
            # A commit the broker left unanswered (the outage also dropped this consumer from its
            # group) ends the process with one line, as documented; Kubernetes would restart it.
            assert service.proc.returncode == 1, service.log()
            assert "exactly-once transaction failed" in service.log(), service.log()
            service = Service(kafka_broker, prefix, tmp_path, *sets)
            services.append(service)
            reader.read_until(lambda rs: set(outage_streams) <= set(stream_ends(rs)), timeout_s=240,
                              what="the streams to end after the service's restart")

        # 2. avfuse is killed mid-stream and started again
        produce(kafka_broker, topics["jobs"], [job(s, str(clip)) for s in crash_streams])
        reader.read_until(lambda rs: len(_events(rs, crash_streams)) >= 2, what="events before the kill")
        service.kill()
        service = Service(kafka_broker, prefix, tmp_path, *sets)
        services.append(service)
        records = reader.read_until(lambda rs: set(crash_streams) <= set(stream_ends(rs)), timeout_s=240,
                                    what="the streams to end after the restart")
        assert service.terminate() == 0, service.log()
    finally:
        reader.close()
        kafka_broker.start()  # whatever happened, leave the broker running for the next test
        for s in services:
            if s.proc.poll() is None:
                s.kill()

    stopped = stream_ends(records)["stopped"]
    assert stopped["status"] == "interrupted" and stopped["processed_s"] < 50.0, stopped
    for stream_ids in (outage_streams, crash_streams):
        expected = {e["event_id"] for e in clean.events() if e["stream_id"] in stream_ids}
        assert set(_events(records, stream_ids)) == expected, stream_ids  # nothing lost, nothing invented
    if delivery == "exactly_once":
        repeated = {event_id: n for event_id, n in Counter(_events(records, outage_streams + crash_streams)).items()
                    if n > 1}
        assert not repeated, f"a read_committed consumer saw duplicates: {repeated}"
        ends = Counter(r["stream_id"] for r in records if r["type"] == "stream_end")
        assert all(ends[s] == 1 for s in [*outage_streams, *crash_streams, "stopped"]), ends


def test_exactly_once_exits_1_with_one_line_when_a_hung_broker_leaves_its_commit_unanswered(
        kafka_broker, tmp_path):
    clip = write_clip(tmp_path / "clip.mp4", ClipSpec(duration_s=30.0, width=160, height=120))
    prefix = f"h{uuid.uuid4().hex[:8]}"
    service = Service(kafka_broker, prefix, tmp_path, "decode.realtime=true", "kafka.delivery=exactly_once",
                      "kafka.transaction_timeout_s=5", "kafka.drain_timeout_s=3")
    reader = Reader(kafka_broker, [service.topics["events"], service.topics["summaries"]])
    try:
        service.wait_ready()
        produce(kafka_broker, service.topics["jobs"], [job("cam", str(clip))])
        reader.read_until(lambda rs: any(r["type"] == "event" for r in rs), what="a first committed event")
        kafka_broker.freeze()  # open connections, no answers: kafka-python would wait for ever
        frozen_at = time.monotonic()
        returncode = service.proc.wait(60)
        waited_s = time.monotonic() - frozen_at
    finally:
        kafka_broker.freeze(False)
        reader.close()
        if service.proc.poll() is None:
            service.kill()
    own_lines = [line for line in service.log().splitlines() if line.startswith("avfuse:")]
    assert returncode == 1, service.log()
    assert len(own_lines) == 1 and "exactly-once transaction failed" in own_lines[0], own_lines
    assert "no answer within 5 s" in own_lines[0], own_lines
    assert "Traceback" not in service.log()
    assert waited_s < 5 + 3 + 15, waited_s  # the transaction's bound, the drain's, and the shutdown


def test_transcripts_reach_kafka_once_with_their_ids_across_a_sigkill(kafka_broker, replay_pretrained, tmp_path):
    clip = tmp_path / "talk.mp4"  # a real narration: three sentences, three transcripts
    clip.write_bytes((SHARED_MEDIA / "nasa_13013.mp4").read_bytes())
    expected = {t["transcript_id"] for t in replay_pretrained(clip, stream_ids=["talk"]).of("transcript")}
    assert len(expected) >= 2

    prefix = f"t{uuid.uuid4().hex[:8]}"
    sets = ("profile=pretrained", "decode.realtime=true", "kafka.delivery=exactly_once")
    service = Service(kafka_broker, prefix, tmp_path, *sets)
    topics = service.topics
    reader = Reader(kafka_broker, [topics["transcripts"], topics["events"], topics["summaries"]])
    services = [service]
    try:
        service.wait_ready()
        produce(kafka_broker, topics["jobs"], [job("talk", str(clip))])
        reader.read_until(lambda rs: any(r["type"] == "transcript" for r in rs), what="a first transcript")
        service.kill()  # mid-narration: the stream starts again from its first segment
        service = Service(kafka_broker, prefix, tmp_path, *sets)
        services.append(service)
        records = reader.read_until(lambda rs: "talk" in stream_ends(rs), timeout_s=240,
                                    what="the stream to end after the restart")
        assert service.terminate() == 0, service.log()
    finally:
        reader.close()
        for s in services:
            if s.proc.poll() is None:
                s.kill()
    delivered = [r["transcript_id"] for r in records if r["type"] == "transcript"]
    assert set(delivered) == expected and len(delivered) == len(expected), delivered


def test_sink_blocks_at_its_bound_while_the_broker_is_away_and_delivers_everything_after(kafka_broker):
    import threading

    from pipeline.core.config import load_config
    from pipeline.kafka.sink import KafkaSink, make_producer
    from pipeline.output.records import Event
    from tests.kafka_support import topics_for

    prefix = f"s{uuid.uuid4().hex[:8]}"
    cfg = load_config(None, [f"kafka.bootstrap_servers={kafka_broker.bootstrap}", "kafka.max_outstanding_records=3",
                             *[f"kafka.topics.{k}={v}" for k, v in topics_for(prefix).items()]], environ={}).kafka
    producer = make_producer(cfg)
    sink = KafkaSink(producer, cfg)
    events = [Event("cam", "scene_cut", float(i), float(i), 1.0, "scene_cut", "1") for i in range(10)]
    sink.write(events[0])
    sink.flush()  # the topic exists and the producer is connected
    written = []

    def write_rest() -> None:
        for event in events[1:]:
            sink.write(event)
            written.append(event)

    kafka_broker.stop()
    writer = threading.Thread(target=write_rest)
    try:
        writer.start()
        time.sleep(3)
        assert writer.is_alive() and len(written) == 3 and sink.outstanding == 3  # blocked at the bound
    finally:
        kafka_broker.start()
    writer.join(120)
    assert not writer.is_alive() and len(written) == 9
    sink.flush()
    assert sink.outstanding == 0 and sink.acked == 10
    producer.close()
    reader = Reader(kafka_broker, [cfg.topics.events])
    try:
        records = reader.read_until(lambda rs: len(rs) >= 10, timeout_s=60, what="all ten events")
    finally:
        reader.close()
    assert sorted(r["start_s"] for r in records) == [float(i) for i in range(10)]  # each once, none lost
