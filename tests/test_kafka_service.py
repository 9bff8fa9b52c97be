"""`avfuse run` against a real Apache Kafka broker: jobs and media segments in,
records out, bad messages to the error topic, a clean drain on SIGTERM."""

from __future__ import annotations

import json
import uuid

import jsonschema
from kafka import KafkaAdminClient

from pipeline.output.records import schema_for
from tests.kafka_support import Reader, Service, job, produce, segment_messages, stream_ends, ts_segments


def _committed(broker, group: str, topic: str) -> int:
    admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
    try:
        offsets = admin.list_group_offsets(group)[group]
    finally:
        admin.close()
    return sum(meta.offset for tp, meta in offsets.items() if tp.topic == topic)


def test_jobs_and_segments_in_records_out_and_bad_messages_become_error_records(
        kafka_broker, clips, replay, tmp_path):
    prefix = f"t{uuid.uuid4().hex[:8]}"
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(clips["av.mp4"].read_bytes())
    # One partition per topic: the two media streams are interleaved on it.
    service = Service(kafka_broker, prefix, tmp_path, "kafka.new_topic_partitions=1")
    topics = service.topics
    reader = Reader(kafka_broker, [topics["events"], topics["summaries"], topics["errors"]])
    try:
        service.wait_ready()
        produce(kafka_broker, topics["jobs"], [
            (None, b"{not json", None),
            (None, json.dumps({"uri": str(clip)}).encode(), None),                   # no stream_id
            (None, json.dumps({"stream_id": "x", "action": "pause"}).encode(), None),  # unknown action
            job("outside", "/etc/hostname"),                                       # refused by policy
            job("meta", "http://169.254.169.254/latest/meta-data/"),               # cloud metadata
            job("opts", str(clip), options={"protocol_whitelist": "file,http,tcp"}),  # widens the policy
            job("from-job", str(clip)),
        ])
        segments = ts_segments(clip)
        assert len(segments) >= 10  # 12 s of media in about 1 s pieces
        produce(kafka_broker, topics["media"], [
            *segment_messages("from-segments", segments),
            (None, segments[0], [("seq", b"0")]),                                  # no key
            *segment_messages("gappy", segments, skip_seq=4),
        ])
        records = reader.read_until(lambda rs: {"from-job", "from-segments", "gappy"} <= set(stream_ends(rs)),
                                    what="three stream ends")
        assert service.proc.poll() is None, "bad messages must not stop the service"
        exit_code = service.terminate()
        service_log = service.log()
    finally:
        reader.close()
        if service.proc.poll() is None:
            service.kill()
    assert exit_code == 0, service_log
    assert "Traceback" not in service_log, service_log

    for record in records:
        jsonschema.validate(record, schema_for(record["type"]))
    ends = stream_ends(records)
    assert {s: ends[s]["status"] for s in ("from-job", "from-segments", "gappy")} == dict.fromkeys(
        ("from-job", "from-segments", "gappy"), "ok"), [(e["stream_id"], e["reason"]) for e in ends.values()]

    # the same clip gives the same events by job, by segments, and by replaying the file
    clean = replay(clip, stream_ids=["from-job"])
    expected = {(e["event_id"], e["label"], e["start_s"], e["end_s"]) for e in clean.events()}

    def events_of(stream_id):
        return {(e["event_id"], e["label"], e["start_s"], e["end_s"])
                for e in records if e["type"] == "event" and e["stream_id"] == stream_id}

    assert events_of("from-job") == expected
    clean_segments = replay(clip, stream_ids=["from-segments"])
    assert events_of("from-segments") == {(e["event_id"], e["label"], e["start_s"], e["end_s"])
                                          for e in clean_segments.events()}

    # every bad message: an error record naming the message, with a one-line reason
    errors = [r for r in records if r["type"] == "error"]
    by_offset = {(e["input"]["topic"], e["input"]["offset"]): e for e in errors if e.get("input")}
    for offset, words in ((0, "JSON"), (1, "stream_id"), (2, "pause"), (3, "outside"), (4, "169.254.169.254"),
                          (5, "protocol_whitelist")):
        error = by_offset[(topics["jobs"], offset)]
        assert words in error["reason"] and "\n" not in error["reason"], error
    assert any("key" in e["reason"] for e in errors if e["input"] and e["input"]["topic"] == topics["media"])
    gap = [e for e in errors if e["stream_id"] == "gappy" and "gap" in e["reason"]]
    assert len(gap) == 1 and "expected seq 4, got 5" in gap[0]["reason"]

    # the drain committed every job and every segment
    assert _committed(kafka_broker, prefix, topics["jobs"]) == 7
    assert _committed(kafka_broker, prefix, topics["media"]) == 2 * len(segments) + 1
