"""Exactly-once resumption without a broker: a restarted stream skips the records an
earlier run committed, and its reported progress never falls below them."""

from __future__ import annotations

import json

from pipeline.delivery import StreamProgress, _CountingSink
from pipeline.records import Event
from pipeline.sinks import JsonlSink


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
