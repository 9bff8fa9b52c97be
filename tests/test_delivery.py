"""Exactly-once resumption without a broker: a restarted stream skips the records an
earlier run committed, and its reported progress never falls below them."""

from __future__ import annotations

import json

from pipeline.kafka.delivery import StreamProgress, _CountingSink
from pipeline.output.records import Event, Transcript, transcript_id
from pipeline.output.sinks import JsonlSink


def _events(n: int) -> list[Event]:
    return [Event("cam", "scene_cut", float(i), float(i), 1.0, "scene_cut", "1") for i in range(n)]


def test_a_resumed_stream_skips_what_was_committed_and_never_reports_less(tmp_path):
    out = JsonlSink(tmp_path / "r.jsonl")
    progress = StreamProgress(resumed_from=3)
    sink = _CountingSink(out, progress, skip=3)
    events = _events(5)
    for event in events[:2]:
        sink.write(event)
    assert (tmp_path / "r.jsonl").read_text() == ""
    assert progress.committed_records == 3  # a commit now must not lower the earlier run's count
    for event in events[2:]:
        sink.write(event)
    out.close()
    written = [json.loads(line)["start_s"] for line in (tmp_path / "r.jsonl").read_text().splitlines()]
    assert written == [3.0, 4.0] and progress.committed_records == 5


def test_a_new_stream_writes_everything():
    progress = StreamProgress()
    assert progress.committed_records == 0
    progress.records = 4
    assert progress.committed_records == 4


def _transcript(start_s: float) -> Transcript:
    return Transcript("cam", transcript_id("cam", start_s), start_s, start_s + 1.0, f"said at {start_s}", "en", 1.0,
                      [], -0.2, 0.01, "tiny.en")


def test_transcripts_are_counted_apart_so_their_timing_cannot_shift_what_is_skipped(tmp_path):
    # The ASR stage answers whenever it is done: an earlier run may have written its transcripts
    # between other records than this one does. Each kind comes in a fixed order of its own.
    out = JsonlSink(tmp_path / "r.jsonl")
    progress = StreamProgress(resumed_from=2, resumed_transcripts=1)
    sink = _CountingSink(out, progress, skip=2, skip_transcripts=1)
    events, said = _events(4), [_transcript(float(i)) for i in range(3)]
    for record in (said[0], events[0], said[1], events[1], events[2], said[2], events[3]):
        sink.write(record)
    out.close()
    written = [(r["type"], r["start_s"]) for r in map(json.loads, (tmp_path / "r.jsonl").read_text().splitlines())]
    assert written == [("transcript", 1.0), ("event", 2.0), ("transcript", 2.0), ("event", 3.0)]
    assert (progress.committed_records, progress.committed_transcripts) == (4, 3)
