"""The egress guard in the running pipeline: an allowed redirect gives the same events as the
direct URL, and through `avfuse run` with a real broker a refused hop is one error record that
names the hop and the job message, the job's offset is committed and the service goes on."""

from __future__ import annotations

import asyncio
import json
import uuid

import pytest

from pipeline.ingest.egress import guard as egress
from pipeline.ingest.egress.uri_policy import DEFAULT_DENY_NETWORKS
from pipeline.output.sinks import JsonlSink
from tests.kafka_support import Reader, Service, job, produce, stream_ends
from tests.test_egress import ALLOWED, DENIED, OTHER_ALLOWED, MediaServer
from tests.test_kafka_service import _committed


@pytest.fixture
def clip_folder(clips, tmp_path):
    folder = tmp_path / "served"
    folder.mkdir()
    (folder / "clip.mp4").write_bytes(clips["av.mp4"].read_bytes())
    return folder


def test_allowed_redirects_play_with_the_same_event_ids_as_the_direct_url(pipeline, clip_folder, tmp_path):
    here, other = MediaServer(ALLOWED, clip_folder), MediaServer(OTHER_ALLOWED, clip_folder)
    try:
        uris = {
            "direct": here.url("/clip.mp4"),
            "same host": here.redirect("/moved.mp4", "/clip.mp4", 301),
            "other host": here.redirect("/elsewhere.mp4", other.url("/clip.mp4"), 307),
        }
        events = {}
        for name, uri in uris.items():  # one at a time: the same stream id each time
            out = tmp_path / f"{name}.jsonl"
            sink = JsonlSink(out)
            try:
                result = asyncio.run(pipeline.run_stream("cam-1", uri, sink, open_options=egress.for_job({})))
            finally:
                sink.close()
            assert result.status == "ok", (name, result.reason)
            records = [json.loads(line) for line in out.read_text().splitlines()]
            events[name] = {(e["event_id"], e["label"], e["start_s"]) for e in records if e["type"] == "event"}
        assert events["direct"]
        assert events["same host"] == events["direct"] == events["other host"]
        assert set(other.paths) == {"/clip.mp4"}
    finally:
        here.close()
        other.close()


def test_a_refused_hop_is_one_error_record_naming_the_job_message_and_the_service_goes_on(
        kafka_broker, clip_folder, tmp_path):
    allowed, denied = MediaServer(ALLOWED, clip_folder), MediaServer(DENIED, clip_folder)
    prefix = f"t{uuid.uuid4().hex[:8]}"
    deny = json.dumps([*DEFAULT_DENY_NETWORKS, f"{DENIED}/32"])
    service = Service(kafka_broker, prefix, tmp_path, "kafka.new_topic_partitions=1",
                      f"kafka.uri_policy.deny_networks={deny}")
    topics = service.topics
    reader = Reader(kafka_broker, [topics["events"], topics["summaries"], topics["errors"]])
    metadata = denied.url("/latest/meta-data/")
    try:
        service.wait_ready()
        start = allowed.redirect("/start.mp4", metadata).replace("http://", "http://admin:s3cret@")
        produce(kafka_broker, topics["jobs"], [job("evil", start), job("good", allowed.url("/clip.mp4"))])
        records = reader.read_until(lambda rs: {"evil", "good"} <= set(stream_ends(rs)), what="two stream ends")
        assert service.proc.poll() is None, "a refused hop must not stop the service"
        exit_code = service.terminate()
        service_log = service.log()
    finally:
        reader.close()
        allowed.close()
        denied.close()
        if service.proc.poll() is None:
            service.kill()
    assert exit_code == 0, service_log

    errors = [r for r in records if r["type"] == "error" and r["stream_id"] == "evil"]
    assert len(errors) == 1, errors
    assert errors[0]["stage"] == "open"
    assert errors[0]["reason"] == f"refused {metadata}: address {DENIED} is in denied network {DENIED}/32"
    assert errors[0]["input"] == {"topic": topics["jobs"], "partition": 0, "offset": 0}
    assert errors[0]["uri"] == start.replace("s3cret", "***")
    assert "s3cret" not in json.dumps(records) and "s3cret" not in service_log
    assert denied.connections == 0
    ends = stream_ends(records)
    assert (ends["evil"]["status"], ends["good"]["status"]) == ("failed", "ok")
    assert _committed(kafka_broker, prefix, topics["jobs"]) == 2
