"""The stream clock: re-basing of timestamp jumps, with audio and video kept together."""

from __future__ import annotations

from pipeline.ingest.stream_clock import StreamClock


def _feed(clock: StreamClock, items):
    return [round(clock.to_stream_s(kind, pts, duration), 3) for kind, pts, duration in items]


def test_a_backward_jump_in_both_modalities_goes_on_where_it_was_due_and_keeps_them_aligned():
    clock = StreamClock(10.0)
    before = [("video", 10.0, 0.04), ("audio", 10.0, 0.064), ("video", 10.04, 0.04), ("audio", 10.064, 0.064)]
    # the source restarts its clock at 0.5 s: video first, then audio
    after = [("video", 0.5, 0.04), ("audio", 0.5, 0.064), ("video", 0.54, 0.04), ("audio", 0.564, 0.064)]
    assert _feed(clock, before) == [0.0, 0.0, 0.04, 0.064]
    assert _feed(clock, after) == [0.08, 0.08, 0.12, 0.144]
    jumps = clock.take_jumps()
    assert len(jumps) == 1 and jumps[0].kind == "pts_jump" and round(jumps[0].jump_s, 2) == -9.58


def test_missing_audio_stays_a_gap_even_far_ahead_while_the_video_goes_on():
    clock = StreamClock(0.0)
    _feed(clock, [("video", 0.0, 0.04), ("audio", 0.0, 0.064)])
    assert _feed(clock, [("audio", 8.0, 0.064), ("video", 0.04, 0.04)]) == [8.0, 0.04]
    assert clock.take_jumps() == []


def test_a_reconnection_starts_at_its_offset_from_its_first_timestamp():
    clock = StreamClock(None, 42.0)
    assert _feed(clock, [("audio", 0.3, 0.064), ("video", 0.34, 0.04)]) == [42.0, 42.04]
