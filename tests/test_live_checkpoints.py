"""A live URI job (an RTSP camera) checkpoints as it goes; killed and restarted, the service runs
it again from its checkpoint: one stream, its clock going on after a gap said as a discontinuity
(reason "restart"), the summary's counts carrying on, and exactly-once writing the new media's
records instead of skipping them as if they were a replay.

Real broker, real Ray, GStreamer's RTSP server serving a PyAV-written clip."""

from __future__ import annotations

import json
import time
import uuid
from collections import Counter

import jsonschema

from pipeline.app.sample import ClipSpec, write_clip
from pipeline.stream.checkpoint import StreamCheckpoint
from tests.kafka_support import Reader, Service, job, latest_values, produce, stream_ends
from tests.live_sources import RtspServer
from tests.test_checkpoints import CHECKPOINT_SCHEMA


def _live_checkpoint(broker, topic: str, stream_id: str) -> dict | None:
    value = latest_values(broker, topic).get(stream_id)
    checkpoint = json.loads(value).get("checkpoint") if value else None
    return checkpoint if checkpoint and checkpoint.get("live") and checkpoint["events"] > 0 else None


def test_a_live_job_killed_runs_again_from_its_checkpoint_as_one_stream(kafka_broker, tmp_path):
    clip = write_clip(tmp_path / "camera.mp4", ClipSpec())  # a cut, a flash, black, frozen every 12 s
    sid = "door-cam"
    prefix = f"l{uuid.uuid4().hex[:8]}"
    sets = ("kafka.delivery=exactly_once", "kafka.new_topic_partitions=1", "kafka.checkpoint_interval_s=4",
            "records.summary_every_s=4", "live.backoff_max_s=0.5")
    with RtspServer(file=clip, loop=True) as camera:
        service = Service(kafka_broker, prefix, tmp_path, *sets)
        services = [service]
        topics = service.topics
        reader = Reader(kafka_broker, [topics["events"], topics["summaries"], topics["errors"]])
        try:
            service.wait_ready()
            produce(kafka_broker, topics["jobs"], [job(sid, camera.url)])
            deadline = time.monotonic() + 60
            while (checkpoint := _live_checkpoint(kafka_broker, topics["progress"], sid)) is None:
                assert time.monotonic() < deadline, "no live checkpoint:\n" + service.log()
                time.sleep(0.5)
            service.kill()
            before = reader.read_until(lambda rs: True, timeout_s=2)
            media_before_s = max([r["end_s"] for r in before if r["type"] == "event"], default=0.0)

            service = Service(kafka_broker, prefix, tmp_path, *sets)
            services.append(service)
            service.wait_ready()
            reader.read_until(lambda rs: any(r["type"] == "event" and r["start_s"] > checkpoint["processed_s"] + 1
                                             and r not in before for r in rs)
                              and any(r["type"] == "discontinuity" for r in rs), timeout_s=90,
                              what="events after the restart")
            time.sleep(3)  # a few more
            produce(kafka_broker, topics["jobs"], [(sid.encode(), json.dumps(
                {"stream_id": sid, "action": "stop"}).encode(), None)])
            records = reader.read_until(lambda rs: sid in stream_ends(rs), timeout_s=60, what="the stream's end")
            log = service.log_path.read_text()
            assert service.terminate() == 0, service.log()
        finally:
            reader.close()
            for s in services:
                if s.proc.poll() is None:
                    s.kill()

    jsonschema.validate(checkpoint, CHECKPOINT_SCHEMA)
    stored = StreamCheckpoint.from_dict(checkpoint)
    assert "running the live job again from its checkpoint" in log, log[-3000:]
    counts = Counter(r["type"] for r in records)
    assert counts["stream_start"] == 1 and counts["stream_end"] == 1, counts  # one stream across the kill
    gaps = [r for r in records if r["type"] == "discontinuity"]
    assert [g["reason"] for g in gaps] == ["restart"], gaps
    gap = gaps[0]
    assert gap["at_s"] == round(stored.processed_s, 3)
    # The clock goes on: the second run's media comes after everything the first run wrote.
    assert gap["resume_s"] > media_before_s, (gap, media_before_s)
    events = [r for r in records if r["type"] == "event"]
    assert len({e["event_id"] for e in events}) == len(events)  # no id twice
    after = [e for e in events if e["start_s"] >= gap["resume_s"]]
    assert after and all(e["end_s"] <= gap["at_s"] + 20 or e["start_s"] >= gap["resume_s"] for e in events)
    # Written, not skipped as a replay's records would be, and counted on from the checkpoint.
    assert len(after) >= 3 and "scene_cut" in {e["label"] for e in after}, Counter(e["label"] for e in after)
    final = next(r for r in records if r["type"] == "summary" and r["final"])
    assert sum(final["counts_by_label"].values()) == sum(stored.summary["counts"].values()) + len(after), (
        final["counts_by_label"], stored.summary["counts"], Counter(e["label"] for e in after))
    assert final["outages"] == stored.summary["outages"] + 1
    end = stream_ends(records)[sid]
    assert end["status"] == "interrupted" and end["events"] == stored.events + len(after), (end, stored.events)
