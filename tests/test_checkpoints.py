"""Endless media streams checkpoint as they go: their input is committed while they run, and
after a crash they resume from the checkpoint, not from their first segment, with the same ids."""

from __future__ import annotations

import io
import json
import threading
import time
import uuid
from collections import Counter
from fractions import Fraction
from importlib import resources

import av
import jsonschema
import numpy as np
import pytest
from kafka import KafkaAdminClient, KafkaProducer

from pipeline.app.sample import DURATION_S as PERIOD_S
from pipeline.app.sample import audio_signal, concatenate_pieces, video_frame_at
from pipeline.kafka.delivery import StreamProgress
from pipeline.output.records import Event, transcript_id
from pipeline.stream.checkpoint import CheckpointMismatch, ResumeRule, StreamCheckpoint, grid_constants
from pipeline.stream.summary import SummaryTracker
from tests.kafka_support import Reader, Service, latest_values, segment_messages, stream_ends

CHECKPOINT_SCHEMA = json.loads(resources.files("pipeline.output").joinpath(
    "schemas", "checkpoint.schema.json").read_text())


# -- media: a live camera's segments, cut at keyframes ------------------------------------------

def write_live_clip(path, duration_s: float, width: int = 160, height: int = 120, fps: int = 25,
                    rate_hz: int = 16000, frame_at=None, samples_at=None):
    """The sample timeline (pipeline.app.sample) over and over, every PERIOD_S: a cut, a flash and a
    beep, a silence, black frames and a still picture each period; one keyframe a second (GOP 1 s).
    ``frame_at(t_s, width, height)`` (rgb24) and ``samples_at(t_s array)`` (float) replace it."""
    frame_at = frame_at or (lambda t_s, w, h: video_frame_at(t_s % PERIOD_S, w, h))
    samples_at = samples_at or (lambda t_s: audio_signal(t_s % PERIOD_S))
    with av.open(str(path), "w") as out:
        video = out.add_stream("libx264", rate=fps)
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        video.time_base = video.codec_context.time_base = Fraction(1, 1000)
        video.options = {"preset": "ultrafast", "g": str(fps), "keyint_min": str(fps), "sc_threshold": "0"}
        audio = out.add_stream("aac", rate=rate_hz, layout="mono")
        items = [(i / fps, "video", i / fps) for i in range(int(duration_s * fps))]
        items += [(n / rate_hz, "audio", n) for n in range(0, int(duration_s * rate_hz), 1024)]
        for _, kind, value in sorted(items):
            if kind == "video":
                frame = av.VideoFrame.from_ndarray(frame_at(value, width, height), format="rgb24")
                frame.pts, frame.time_base = int(round(value * 1000)), Fraction(1, 1000)
                out.mux(video.encode(frame))
            else:
                n = min(1024, int(duration_s * rate_hz) - value)
                samples = samples_at(np.arange(value, value + n) / rate_hz).astype(np.float32)[None, :]
                frame = av.AudioFrame.from_ndarray(samples, format="fltp", layout="mono")
                frame.sample_rate, frame.pts, frame.time_base = rate_hz, value, Fraction(1, rate_hz)
                out.mux(audio.encode(frame))
        out.mux(video.encode(None))
        out.mux(audio.encode(None))
    return path


def write_long_live_clip(path, duration_s: float):
    """write_live_clip's timeline for ``duration_s``: two periods encoded once (24 s: a whole number
    of 1 s GOPs and of 1024-sample AAC frames at 16 kHz), copied on to the length."""
    piece_s = 2 * PERIOD_S
    piece = write_live_clip(path.with_name(f"{path.stem}-piece.mp4"), piece_s)
    return concatenate_pieces(path, [piece] * int(round(duration_s / piece_s)), piece_s)


def keyframe_ts_segments(clip) -> list[bytes]:
    """The clip remuxed to one MPEG-TS byte stream, cut where each video keyframe's packet starts (as
    HLS cuts a live stream), so that decoding can start at any segment."""
    out = io.BytesIO()
    with av.open(str(clip)) as src, av.open(out, "w", format="mpegts") as dst:
        streams = {s.index: dst.add_stream_from_template(s) for s in src.streams}
        for packet in src.demux():
            if packet.dts is None or packet.pts < 0:  # the AAC priming packet: see ts_segments
                continue
            packet.stream = streams[packet.stream.index]
            dst.mux(packet)
    data = out.getvalue()
    with av.open(io.BytesIO(data), format="mpegts") as ts:
        cuts = [p.pos - p.pos % 188 for p in ts.demux(ts.streams.video[0]) if p.is_keyframe and p.pos and p.pos > 0]
    bounds = [0, *cuts, len(data)]
    return [data[a:b] for a, b in zip(bounds, bounds[1:]) if b > a]


# -- unit: the state and the suppression rule ---------------------------------------------------

def _event(label: str, start_s: float, end_s: float, confidence: float = 0.8) -> Event:
    return Event("cam", label, start_s, end_s, confidence, label, "1")


def _checkpoint(summary: SummaryTracker, **changes) -> StreamCheckpoint:
    from pipeline.core.config import load_config

    fields = dict(stream_id="cam", resume_s=40.0, settled_s=52.5, processed_s=60.0, next_window=56,
                  clock={"shared_shift_s": -1.4, "shift_s": {"video": -1.4, "audio": -1.4}},
                  audio_grid={"origin_s": 0.0, "step_s": 0.8}, summary=summary.state(), events=12,
                  emitted_after_settled=[[53.0, _event("scene_cut", 53.0, 53.0).event_id],
                                         [54.0, transcript_id("cam", 54.0)]], signals_from_s=50.0,
                  grid=grid_constants(load_config(None, ["profile=signal"], environ={})),
                  input={"topic": "t.media", "partition": 0, "offset": 41}, records_before=300, at=time.time())
    return StreamCheckpoint(**{**fields, **changes})


def _summary_with_events() -> SummaryTracker:
    summary = SummaryTracker("cam", 10.0, 3, has_video=True)
    for event in (_event("silence", 6.0, 7.0, 0.9), _event("scene_cut", 3.0, 3.0, 0.6),
                  _event("black_video", 8.0, 9.5, 0.95), _event("scene_cut", 15.0, 15.0, 0.6)):
        summary.add_event(event)
    summary.add_windows(20, 2)
    summary.advance(21.0)
    return summary


def test_a_checkpoint_round_trips_through_its_progress_value_and_validates_against_its_schema():
    checkpoint = _checkpoint(_summary_with_events())
    jsonschema.validate(json.loads(checkpoint.to_json()), CHECKPOINT_SCHEMA)
    assert StreamCheckpoint.from_json(checkpoint.to_json()) == checkpoint
    progress = StreamProgress.from_json(StreamProgress(records=310, checkpoint=checkpoint).to_json())
    assert progress.checkpoint == checkpoint and progress.records == 310
    assert progress.resumable() == checkpoint
    progress.finished = True
    assert progress.resumable() is None  # a finished stream's next run with that id is a new one
    with pytest.raises(ValueError):
        StreamCheckpoint.from_dict({**checkpoint.to_dict(), "schema": "avfuse.checkpoint/0"})


def test_a_checkpoint_taken_under_other_constants_refuses_to_resume():
    from pipeline.core.config import load_config

    checkpoint = _checkpoint(_summary_with_events())
    checkpoint.check_grid(load_config(None, ["profile=signal"], environ={}))
    with pytest.raises(CheckpointMismatch, match="hop_s 1.0 -> 0.5"):
        checkpoint.check_grid(load_config(None, ["profile=signal", "align.hop_s=0.5"], environ={}))


def test_restored_summary_counters_build_the_same_summary():
    first = _summary_with_events()
    resumed = SummaryTracker("cam", 10.0, 3, has_video=True)
    resumed.restore(json.loads(json.dumps(first.state())))
    for tracker in (first, resumed):  # what comes after the checkpoint, in both
        tracker.add_event(_event("scene_cut", 27.0, 27.0, 0.7))
        tracker.add_windows(3, 0)
    wall = {"wall_s", "speed_x_realtime"}
    built = [{k: v for k, v in t.build(final=True).to_dict().items() if k not in wall | {"at"}}
             for t in (first, resumed)]
    assert built[0] == built[1]
    assert resumed.advance(29.0) is None and resumed.advance(30.0) is not None  # periodic summaries on time


def test_a_resumed_run_writes_nothing_the_run_before_its_checkpoint_wrote():
    checkpoint = _checkpoint(_summary_with_events())
    rule = ResumeRule(checkpoint)
    before = _event("black_video", 44.0, 45.5)  # before settled_s: written before
    written_after = _event("scene_cut", 53.0, 53.0)  # after it, but its id is in the checkpoint
    open_at_checkpoint = _event("frozen_video", 57.0, 64.0)  # open then: never written
    assert not rule.keeps_event(before.start_s, before.event_id)
    assert not rule.keeps_event(written_after.start_s, written_after.event_id)
    assert rule.keeps_event(open_at_checkpoint.start_s, open_at_checkpoint.event_id)
    assert not rule.keeps_transcript(54.0, transcript_id("cam", 54.0))  # written before, after settled_s
    assert not rule.keeps_window(55) and rule.keeps_window(56)
    assert not rule.keeps_transcript(50.0, transcript_id("cam", 50.0)) and rule.keeps_transcript(
        53.0, transcript_id("cam", 53.0))
    rule.begin_chunk(60.0)
    assert rule.replaying  # other records (summaries, errors) only once the media passes processed_s
    rule.begin_chunk(64.0)
    assert not rule.replaying


# -- against the broker: a 10 minute live stream, killed and restarted ---------------------------

CLIP_S = 600.0  # the issue: a live stream of 10 minutes (a multiple of write_long_live_clip's piece)
SPEED_X = 40.0  # media seconds produced per second


def _committed(broker, group: str, topic: str) -> int:
    admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
    try:
        offsets = admin.list_group_offsets(group).get(group, {})
    finally:
        admin.close()
    return sum(meta.offset for tp, meta in offsets.items() if tp.topic == topic and meta.offset >= 0)


class _Camera(threading.Thread):
    """Produces a stream's segments at SPEED_X times media speed (one segment a second of media)."""

    def __init__(self, broker, topic: str, messages):
        super().__init__(daemon=True)
        self.broker, self.topic, self.messages = broker, topic, messages

    def run(self) -> None:
        producer = KafkaProducer(bootstrap_servers=self.broker.bootstrap, acks="all", linger_ms=0)
        try:
            for key, value, headers in self.messages:
                producer.send(self.topic, key=key, value=value, headers=headers)
                producer.flush()
                time.sleep(1.0 / SPEED_X)
        finally:
            producer.close()


def _settle(reader: Reader) -> list[dict]:
    """Everything on the output topics so far (read until nothing more comes for a second)."""
    while True:
        count = len(reader.messages)
        reader.read_until(lambda rs: True, timeout_s=1)
        time.sleep(1.0)
        reader.read_until(lambda rs: True, timeout_s=1)
        if len(reader.messages) == count:
            return reader.records()


# Exactly-once, the stricter of the two: at-least-once passes it as well (its repeats after the
# checkpoint carry the same ids; run with "at_least_once" here), but costs 80 s more of the suite.
@pytest.mark.parametrize("delivery", ["exactly_once"])
def test_a_live_stream_commits_as_it_goes_and_resumes_from_its_checkpoint_after_a_kill(
        kafka_broker, replay, tmp_path, delivery):
    clip = write_long_live_clip(tmp_path / "camera.mp4", CLIP_S)
    segments = keyframe_ts_segments(clip)
    assert len(segments) >= CLIP_S - 1  # a keyframe a second: a segment a second
    sid = "camera-1"
    messages = segment_messages(sid, segments)
    half = len(messages) // 2
    prefix = f"c{uuid.uuid4().hex[:8]}"
    sets = (f"kafka.delivery={delivery}", "kafka.new_topic_partitions=1", "kafka.checkpoint_interval_s=10",
            "records.summary_every_s=10", "records.windows=true")
    service = Service(kafka_broker, prefix, tmp_path, *sets)
    services = [service]
    topics = service.topics
    reader = Reader(kafka_broker, [topics["events"], topics["summaries"], topics["errors"], topics["windows"]])
    try:
        service.wait_ready()
        camera = _Camera(kafka_broker, topics["media"], messages[:half])
        camera.start()
        committed_while_running = 0
        deadline = time.monotonic() + 60
        while committed_while_running == 0 and time.monotonic() < deadline:
            time.sleep(0.5)
            committed_while_running = _committed(kafka_broker, prefix, topics["media"])
        assert committed_while_running > 0, service.log()  # no eos yet: only a checkpoint can commit
        camera.join()
        time.sleep(2)  # a later checkpoint or two, and the stream well past it
        service.kill()
        before_kill = _settle(reader)
        assert sid not in stream_ends(before_kill)
        checkpoint_value = json.loads(latest_values(kafka_broker, topics["progress"]).get(sid))["checkpoint"]
        jsonschema.validate(checkpoint_value, CHECKPOINT_SCHEMA)
        checkpoint = StreamCheckpoint.from_dict(checkpoint_value)
        assert checkpoint.input["offset"] >= committed_while_running > 0

        service = Service(kafka_broker, prefix, tmp_path, *sets)
        services.append(service)
        service.wait_ready()
        ready_at = time.monotonic()
        camera = _Camera(kafka_broker, topics["media"], messages[half:])
        camera.start()
        # The group gives the partition to the new consumer once the killed one's session expired
        # (tens of seconds, checkpoints or not): the clock starts when it has the partition.
        assigned_at = None
        while len(reader.records()) <= len(before_kill):
            assert time.monotonic() - ready_at < 90, "no record after the restart:\n" + service.log()
            if assigned_at is None and "partitions assigned" in service.log_path.read_text():
                assigned_at = time.monotonic()
            reader.read_until(lambda rs: True, timeout_s=0.2)
        first_record_s = time.monotonic() - (assigned_at or ready_at)
        since_ready_s = time.monotonic() - ready_at
        records = reader.read_until(lambda rs: sid in stream_ends(rs), timeout_s=120, what="the stream's end")
        records = _settle(reader)
        log = service.log_path.read_text()
        assert service.terminate() == 0, service.log()
    finally:
        reader.close()
        for s in services:
            if s.proc.poll() is None:
                s.kill()
    print(f"{delivery}: committed {committed_while_running} while running; checkpoint at offset "
          f"{checkpoint.input['offset']} (media {checkpoint.resume_s:.1f} s, settled {checkpoint.settled_s:.1f} s); "
          f"first record {first_record_s:.2f} s after the restarted service had the partition "
          f"({since_ready_s:.0f} s after it was ready, incl. the group's rebalance)")
    assert first_record_s < 10, first_record_s
    assert "resuming from the checkpoint" in log, log[-4000:]
    after_restart = records[len(before_kill):]
    windows = [r["index"] for r in after_restart if r["type"] == "window"]
    assert windows and min(windows) > 0  # not from segment 0
    assert Counter(r["type"] for r in records)["stream_start"] == 1  # the resumed run starts no stream again

    clean = replay(clip, stream_ids=[sid])
    clean_ids = {e["event_id"] for e in clean.events()}
    clean_after = {e["event_id"] for e in clean.events() if e["start_s"] >= checkpoint.settled_s}
    events = [r for r in records if r["type"] == "event"]
    got_after = {e["event_id"] for e in events if e["start_s"] >= checkpoint.settled_s}
    assert clean_after <= got_after, sorted((e["label"], e["start_s"]) for e in clean.events()
                                            if e["event_id"] in clean_after - got_after)
    assert got_after <= clean_ids, sorted((e["label"], e["start_s"]) for e in events if e["event_id"] in
                                          got_after - clean_ids)
    final = [r for r in records if r["type"] == "summary" and r["final"]]
    assert len(final) == 1
    clean_final = next(r for r in clean.of("summary") if r["final"])
    assert final[0]["counts_by_label"] == clean_final["counts_by_label"]
    if delivery == "exactly_once":
        repeated = [eid for eid, n in Counter(e["event_id"] for e in events).items() if n > 1]
        assert not repeated, repeated
        assert {e["event_id"] for e in events} == clean_ids
