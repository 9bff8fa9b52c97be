"""Tag events, spans, sound patches and av_events on synthetic timestamps (no models, no Ray)."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.core.config import AlignConfig, AVEventsConfig
from pipeline.core.media import AudioRows, ClassScores
from pipeline.ingest.audio_patches import HOP_SAMPLES, PATCH_SAMPLES, SAMPLE_RATE_HZ, PatchCutter
from pipeline.stream.alignment import TimedRows, WindowAligner, WindowSpec
from pipeline.stream.av_events import AVEventDetector, Concept
from pipeline.stream.spans import HysteresisSpans
from pipeline.stream.tag_events import TagEventDetector, TagEventRules, Vocabulary

# A tiny ontology: 0 Vehicle > 1 Car > 2 Race car; 3 Music; 4 Silence.
VOCAB = Vocabulary(("Vehicle", "Car", "Race car", "Music", "Silence"), ("/m/v", "/m/c", "/m/r", "/m/m", "/m/s"),
                   ((), (0,), (1, 0), (), ()))
STEP_S = 0.48


def scores(t_s, rows: list[dict[int, float]]) -> ClassScores:
    k = max(1, max(len(r) for r in rows))
    index = np.zeros((len(rows), k), np.int16)
    value = np.zeros((len(rows), k), np.float32)
    for n, row in enumerate(rows):
        for j, (i, v) in enumerate(sorted(row.items(), key=lambda kv: -kv[1])):
            index[n, j], value[n, j] = i, v
    return ClassScores(np.asarray(t_s, np.float64), index, value)


def rules(**kw) -> TagEventRules:
    base = dict(detector="sound_tags", modality="audio", enter=0.5, exit=0.3, min_duration_s=0.9, step_s=STEP_S)
    return TagEventRules(**{**base, **kw})


def centres(n: int, first_s: float = 0.4875) -> list[float]:
    return [first_s + i * STEP_S for i in range(n)]


def test_hysteresis_opens_at_enter_extends_above_exit_and_closes_below():
    spans = HysteresisSpans(0.5, 0.3, 0.0, max_gap_s=1.0)
    closed = []
    for i, v in enumerate([0.4, 0.6, 0.35, 0.31, 0.2, 0.7]):
        closed += spans.step(i, i + 1, {"x": v})
    assert [(k, s.start_s, s.end_s) for k, s in closed] == [("x", 1, 4)]
    assert closed[0][1].peak == pytest.approx(0.6)
    assert spans.pending_from_s() == 5


def test_a_pause_in_the_steps_closes_spans_at_the_last_step_before_it():
    spans = HysteresisSpans(0.5, 0.3, 0.0, max_gap_s=1.0)
    spans.step(0, 1, {"x": 0.9})
    closed = spans.step(5, 6, {"x": 0.9})
    assert [(s.start_s, s.end_s) for _, s in closed] == [(0, 1)]
    assert spans.open["x"].start_s == 5


def test_sustained_class_becomes_one_event_with_its_real_start_and_end():
    detector = TagEventDetector("s", VOCAB, rules())
    t = centres(10)
    rows = [{3: 0.1}] * 2 + [{3: 0.9}] * 5 + [{3: 0.1}] * 3
    events = detector.update(scores(t, rows)) + detector.finish(None)
    assert [(e.label, e.start_s, e.end_s) for e in events] == [
        ("Music", round(t[2] - STEP_S / 2, 3), round(t[6] + STEP_S / 2, 3))]
    assert events[0].attributes["mid"] == "/m/m"
    assert events[0].detector == "sound_tags"


def test_chunking_does_not_change_the_events():
    t = centres(12)
    rows = [{3: 0.9, 1: 0.2}] * 4 + [{3: 0.4, 1: 0.6}] * 4 + [{3: 0.1, 1: 0.7}] * 4
    whole = TagEventDetector("s", VOCAB, rules())
    expected = whole.update(scores(t, rows)) + whole.finish(None)
    parts = TagEventDetector("s", VOCAB, rules())
    got = []
    for a, b in ((0, 3), (3, 4), (4, 11), (11, 12)):
        got += parts.update(scores(t[a:b], rows[a:b]))
    got += parts.finish(None)
    assert [e.to_dict() for e in got] == [e.to_dict() for e in expected]
    assert len(expected) == 2


def test_parent_and_child_are_one_event_unless_asked_for_both():
    t = centres(6)
    rows = [{0: 0.9, 1: 0.8, 2: 0.7}] * 6
    specific = TagEventDetector("s", VOCAB, rules())
    events = specific.update(scores(t, rows)) + specific.finish(None)
    assert [e.label for e in events] == ["Race car"]
    assert events[0].attributes["ancestors"] == ["Car", "Vehicle"]
    both = TagEventDetector("s", VOCAB, rules(keep_ancestors=True))
    events = both.update(scores(t, rows)) + both.finish(None)
    assert sorted(e.label for e in events) == ["Car", "Race car", "Vehicle"]


def test_a_weak_child_does_not_hide_its_parent():
    t = centres(6)
    rows = [{0: 0.9, 1: 0.35}] * 6  # Car above exit but never entering: Vehicle stays
    detector = TagEventDetector("s", VOCAB, rules())
    assert [e.label for e in detector.update(scores(t, rows)) + detector.finish(None)] == ["Vehicle"]


def test_allow_and_deny_take_names_or_mids_with_descendants():
    t = centres(6)
    rows = [{2: 0.9, 3: 0.9, 4: 0.9}] * 6
    only_vehicles = TagEventDetector("s", VOCAB, rules(allow=("vehicle",)))
    assert [e.label for e in only_vehicles.update(scores(t, rows)) + only_vehicles.finish(None)] == ["Race car"]
    no_silence = TagEventDetector("s", VOCAB, rules(deny=("/m/s", "Vehicle")))
    assert [e.label for e in no_silence.update(scores(t, rows)) + no_silence.finish(None)] == ["Music"]
    with pytest.raises(ValueError, match="sound_tags.allow: no class named 'Sirne'"):
        TagEventDetector("s", VOCAB, rules(allow=("Sirne",)))


def test_short_sounds_are_no_event_and_scores_on_a_threshold_do_not_flip():
    t = centres(6)
    short = TagEventDetector("s", VOCAB, rules())
    assert short.update(scores(t, [{3: 0.9}] + [{3: 0.0}] * 5)) + short.finish(None) == []
    # 0.49996 and 0.50004 both round to 0.5 and open: a batch's last bits cannot decide.
    for value in (0.49996, 0.50004):
        d = TagEventDetector("s", VOCAB, rules())
        assert len(d.update(scores(t, [{3: value}] * 6)) + d.finish(None)) == 1


def rows_of(start_s: float, n_rows: int, row_samples: int = 1600) -> AudioRows:
    t = start_s + np.arange(n_rows) * row_samples / SAMPLE_RATE_HZ
    samples = np.arange(n_rows * row_samples, dtype=np.float32).reshape(n_rows, row_samples)
    return AudioRows(samples, t, SAMPLE_RATE_HZ)


def test_patches_overlap_by_half_and_keep_the_rows_clock():
    cutter = PatchCutter()
    cutter.push(rows_of(1.0, 25))  # 2.5 s
    cutter.push(rows_of(3.5, 25))  # contiguous: 5 s in all
    patches = cutter.take()
    expected_starts = 1.0 + np.arange(9) * HOP_SAMPLES / SAMPLE_RATE_HZ
    np.testing.assert_allclose(patches.start_s, expected_starts[: len(patches)])
    assert patches.samples_f32.shape[1] == PATCH_SAMPLES
    assert len(patches) == (5 * SAMPLE_RATE_HZ - PATCH_SAMPLES) // HOP_SAMPLES + 1
    assert patches.samples_f32[1, 0] == HOP_SAMPLES  # the second patch starts 7680 samples in


def test_a_gap_in_the_rows_starts_a_new_run_of_patches():
    cutter = PatchCutter()
    cutter.push(rows_of(0.0, 20))
    cutter.push(rows_of(10.0, 20))
    cutter.flush()
    starts = cutter.take().start_s
    assert starts[0] == 0.0 and 10.0 in starts.tolist()
    assert not np.any((starts > 2.0) & (starts < 10.0))


def test_audio_shorter_than_a_patch_gives_one_padded_patch_at_its_end():
    cutter = PatchCutter()
    cutter.push(rows_of(0.0, 6))  # 0.6 s
    assert cutter.take() is None
    cutter.flush()
    patches = cutter.take()
    assert len(patches) == 1 and patches.samples_f32.shape == (1, PATCH_SAMPLES)


SIGHTS = Vocabulary(("sports car", "grand piano", "web site"))


def av_detector() -> AVEventDetector:
    concepts = [Concept("road vehicle", frozenset({0, 1, 2}), frozenset({0})),
                Concept("piano", frozenset({3}), frozenset({1}))]
    return AVEventDetector("s", AVEventsConfig(min_visual=0.25), AlignConfig().hop_s, concepts, "1", VOCAB, SIGHTS)


def feed(detector: AVEventDetector, sounds: ClassScores, sights: ClassScores, end_s: float):
    """The taggers' rows through a stream's aligner, as the session cuts them, then the detector."""
    align = AlignConfig()
    aligner = WindowAligner("s", WindowSpec(align.window_s, align.hop_s), align.max_skew_s, ("sounds", "sights"))
    for modality, scores in (("sounds", sounds), ("sights", sights)):
        aligner.add(modality, TimedRows(scores.t_s, {"class_index": scores.class_index, "score": scores.score}))
        aligner.advance(modality, end_s)
        aligner.finish(modality)
    return detector.on_windows(aligner.pop_ready()) + detector.close()


def test_a_sound_and_its_visible_source_in_one_window_are_an_av_event():
    t_sound = centres(12)  # ~6 s of patches
    sounds = scores(t_sound, [{2: 0.8}] * 12)
    sights = scores(np.arange(6) + 0.1, [{0: 0.6}] * 3 + [{2: 0.9}] * 3)  # the car is seen for 3 s
    events = feed(av_detector(), sounds, sights, 6.0)
    assert [e.label for e in events] == ["av_event"]
    event = events[0]
    assert event.attributes["concept"] == "road vehicle"
    assert event.attributes["audio_class"] == "Race car" and event.attributes["visual_class"] == "sports car"
    assert event.attributes["visual_confidence"] == pytest.approx(0.6)
    spec = WindowSpec(2.0, 1.0)
    assert event.start_s == spec.start_s(0) and event.end_s == spec.end_s(2)  # windows 0..2 see the car


def test_no_av_event_when_picture_and_sound_do_not_share_a_concept():
    sounds = scores(centres(12), [{3: 0.9}] * 12)  # music
    sights = scores(np.arange(6) + 0.1, [{0: 0.9}] * 6)  # a car
    assert feed(av_detector(), sounds, sights, 6.0) == []


def test_av_event_ids_name_the_concept():
    sounds = scores(centres(12), [{2: 0.8, 3: 0.8}] * 12)
    sights = scores(np.arange(6) + 0.1, [{0: 0.5, 1: 0.3}] * 6)
    events = feed(av_detector(), sounds, sights, 6.0)
    assert sorted(e.attributes["concept"] for e in events) == ["piano", "road vehicle"]
    assert len({e.event_id for e in events}) == 2 and len({e.start_s for e in events}) == 1
