"""Per-stream state that a 24/7 stream keeps: flat memory, the same answers as keeping everything.

The summary's top moments and an open av_desync used to keep every event (every window) of the
stream; they keep running statistics now. Each test holds the bounded form against the rule it
replaces, computed here over the full list.
"""

from __future__ import annotations

import random
import tracemalloc

import numpy as np

from pipeline.core.config import AVSyncConfig
from pipeline.output.records import Event
from pipeline.stream.summary import SummaryTracker
from pipeline.stream.sync_tracker import SyncEstimate, SyncTracker, _OpenDesync

LABELS = ("scene_cut", "silence", "Music", "loud_onset", "frozen_video")


def random_event(rng: random.Random, i: int) -> Event:
    """Few confidences and starts, so that ties in both are common; labels and ends tell tied events apart."""
    start_s = float(rng.randrange(40))
    return Event("s", rng.choice(LABELS), start_s, start_s + rng.randrange(3) + i * 1e-6,
                 confidence=rng.choice((0.25, 0.5, 0.75, 1.0)), detector="d", detector_version="1")


def moments_by_full_sort(events: list[Event], top_moments: int) -> list[dict]:
    """What the summary listed when it kept every event."""
    top = sorted(events, key=lambda e: (-e.confidence, e.start_s))[:top_moments]
    return [{"label": e.label, "start_s": e.start_s, "end_s": e.end_s, "confidence": e.confidence,
             "event_id": e.event_id} for e in sorted(top, key=lambda e: e.start_s)]


def test_top_moments_are_the_ones_a_full_sort_picks_ties_included():
    for seed in range(30):
        rng = random.Random(seed)
        top_moments = rng.choice((0, 1, 2, 5, 9))
        tracker = SummaryTracker("s", 30.0, top_moments, has_video=True)
        events = []
        for i in range(rng.randrange(1, 400)):
            event = random_event(rng, i)
            events.append(event)
            tracker.add_event(event)
            if i % 37 == 0:  # periodic summaries on the way change nothing
                assert tracker.build(final=False).top_moments == moments_by_full_sort(events, top_moments)
        assert tracker.build(final=True).top_moments == moments_by_full_sort(events, top_moments), seed


def test_top_moments_are_listed_by_start_and_equal_starts_by_rank():
    tracker = SummaryTracker("s", 30.0, 4, has_video=True)
    added = [("a", 9.0, 0.5), ("b", 2.0, 0.75), ("c", 2.0, 1.0), ("d", 5.0, 0.75), ("e", 2.0, 0.75), ("f", 1.0, 0.25)]
    for label, start_s, confidence in added:
        tracker.add_event(Event("s", label, start_s, start_s + 1.0, confidence, "d", "1"))
    listed = [(m["label"], m["start_s"]) for m in tracker.build(final=True).top_moments]
    # At 2.0 s: c (1.0) before b and e (0.75, b added first); "a" (0.5) and "f" (0.25) are not among the 4 best.
    assert listed == [("c", 2.0), ("b", 2.0), ("e", 2.0), ("d", 5.0)]


def test_top_moments_keep_constant_memory_over_100k_events():
    rng = random.Random(7)
    tracker = SummaryTracker("s", 30.0, 5, has_video=True)
    tracemalloc.start()
    try:
        for i in range(100_000):
            start_s = i * 0.5
            tracker.add_event(Event("s", rng.choice(LABELS), start_s, start_s + 0.25, round(rng.random(), 3),
                                    "d", "1"))
            assert len(tracker.top) <= 5
            if i == 10_000:
                early_bytes, _ = tracemalloc.get_traced_memory()
        late_bytes, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # Kept every event, 90k more would be tens of MiB; flat memory is a few entries' worth.
    assert late_bytes - early_bytes < 64 * 1024, (early_bytes, late_bytes)
    summary = tracker.build(final=True)
    assert len(summary.top_moments) == 5 and sum(summary.counts_by_label.values()) == 100_000
    assert [m["start_s"] for m in summary.top_moments] == sorted(m["start_s"] for m in summary.top_moments)


def test_an_open_av_desync_takes_the_median_and_mean_of_every_window_without_keeping_them():
    rng = np.random.default_rng(3)
    for windows in (1, 2, 3, 10, 11, 1000, 1001):
        offsets = np.round(rng.choice(np.linspace(0.1, 0.4, 13), size=windows), 3)
        confidences = np.round(rng.uniform(0.8, 1.0, size=windows), 3)
        span = _OpenDesync(0.0, 2.0, 1.0)
        for i, (offset, confidence) in enumerate(zip(offsets.tolist(), confidences.tolist())):
            span.add(i + 2.0, SyncEstimate(offset, confidence, 10))
        assert span.median_offset_s == float(np.median(offsets)), windows
        assert abs(span.mean_confidence - float(np.mean(confidences))) < 1e-12
        assert span.distinct_offsets <= 13 and span.end_s == windows + 1.0


LAGS_S = np.round(np.linspace(-0.8, 0.8, 17), 6)


def window_probs(offset_s: float, sharpness: float = 2.0, no_match: float = 0.05) -> np.ndarray:
    lags = np.exp(-sharpness * np.abs(LAGS_S - offset_s) / 0.1)
    return np.append((1 - no_match) * lags / lags.sum(), no_match)


def test_an_av_desync_over_a_long_stream_keeps_flat_memory_and_reports_what_every_window_said():
    rng = np.random.default_rng(11)
    tracker = SyncTracker("s", AVSyncConfig(horizon_s=4.0, min_windows=2), LAGS_S)
    said: list = []  # what the estimate was at each window the open av_desync took in
    events, expected = [], []
    most_distinct = 0
    for i in range(20_000):
        # Late audio all along, wandering between 0.2 and 0.4 s; a stretch in sync every 5000 windows.
        offset_s = 0.0 if i % 5000 >= 4990 else float(rng.uniform(0.2, 0.4))
        ended = tracker.add(float(i), i + 2.0, window_probs(offset_s))
        if ended:
            expected.append((round(float(np.median([e.offset_s for e in said])), 3),
                             round(float(np.mean([e.confidence for e in said])), 3)))
            said = []
        events += ended
        if tracker._open is not None:
            said.append(tracker.estimate())
            most_distinct = max(most_distinct, tracker._open.distinct_offsets)
    if said:
        expected.append((round(float(np.median([e.offset_s for e in said])), 3),
                         round(float(np.mean([e.confidence for e in said])), 3)))
    events += tracker.finish()
    assert [e.label for e in events] == ["av_desync"] * 4
    assert [(e.attributes["offset_s"], e.confidence) for e in events] == expected
    assert all(0.2 <= e.attributes["offset_s"] <= 0.4 for e in events)
    # One counter per distinct millisecond in the lags' range at most, however many windows.
    assert 1 < most_distinct <= round((LAGS_S.max() - LAGS_S.min()) * 1000) + 1
    assert events[0].end_s - events[0].start_s > 4000
