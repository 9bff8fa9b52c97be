"""Scene tags: one `scene` event per scene with what the image tagger saw in it.

Synthetic timestamps for the bookkeeping (no models); the default pipeline on a real clip
with cuts for the records.
"""

from __future__ import annotations

import numpy as np

from pipeline.core.media import ClassScores
from pipeline.stream.scene_tags import SceneTags
from pipeline.stream.tag_events import Vocabulary
from tests.conftest import SHARED_MEDIA

SIGHTS = Vocabulary(("valley", "maze", "dhole", "goldfish"))
ALL = np.ones(4, bool)


def scores(t_s: list[float], rows: list[dict[int, float]]) -> ClassScores:
    """Top-k rows as a tagger sends them: distinct classes, best first (padding: goldfish at 0)."""
    k = max(len(r) for r in rows)
    padded = [sorted(r.items(), key=lambda kv: -kv[1]) + [(3, 0.0)] * (k - len(r)) for r in rows]
    return ClassScores(np.asarray(t_s, np.float64), np.array([[i for i, _ in r] for r in padded], np.int16),
                       np.array([[v for _, v in r] for r in padded], np.float32))


def scene_tags(eligible=ALL, lookahead_s: float = 1.1, top_n: int = 3) -> SceneTags:
    return SceneTags("s", SIGHTS, eligible, step_s=1.0, tag_min=0.15, lookahead_s=lookahead_s, top_n=top_n)


def tags_of(event) -> list[tuple[str, float]]:
    return [(t["label"], t["seconds"]) for t in event.attributes["visual_tags"]]


def test_frames_count_for_the_scene_their_time_falls_in_even_when_the_cut_is_decided_later():
    tags = scene_tags()
    # Frames at 0..5 s: valley until the cut at 3.2 s, maze after it. The cut is only decided
    # once frames past it arrived (the detector's lookahead), after all six were added.
    tags.add(scores([0, 1, 2, 3, 4, 5], [{0: 0.9}] * 4 + [{1: 0.8}] * 2))
    tags.advance(3.0)  # counts frames before 1.9 s only: the cut may still come before the rest
    (first,) = tags.cut(3.2)
    assert (first.label, first.start_s, first.end_s) == ("scene", 0.0, 3.2)
    assert tags_of(first) == [("valley", 4.0)] and first.confidence == 0.9
    assert first.attributes["index"] == 0
    (last,) = tags.finish(6.0)
    assert (last.start_s, last.end_s, last.attributes["index"]) == (3.2, 6.0, 1)
    assert tags_of(last) == [("maze", 2.0)]
    assert first.event_id != last.event_id


def test_a_scene_lists_its_top_tags_by_seconds_and_leaves_out_denied_and_weak_ones():
    tags = scene_tags(eligible=np.array([True, True, True, False]), top_n=2)
    rows = [{0: 0.5, 1: 0.3, 3: 0.9}, {0: 0.6, 2: 0.2}, {1: 0.7, 2: 0.1}, {0: 0.4, 2: 0.16}]
    tags.add(scores([0, 1, 2, 3], rows))
    (scene,) = tags.finish(4.0)
    # valley 3 s (max 0.6), maze 2 s (max 0.7), dhole 2 s at 0.2 / 0.16 (0.1 is under tag_min);
    # goldfish is denied; ties on seconds go to the higher score.
    assert tags_of(scene) == [("valley", 3.0), ("maze", 2.0)]
    assert scene.confidence == 0.6


def test_a_stream_without_cuts_keeps_only_the_lookahead_of_frames_waiting():
    tags = scene_tags(lookahead_s=1.1)
    for second in range(600):
        tags.add(scores([float(second)], [{0: 0.9}]))
        tags.advance(float(second) + 0.5)
        assert len(tags._waiting) <= 2
    (scene,) = tags.finish(600.0)
    assert tags_of(scene) == [("valley", 600.0)]


def test_a_cut_at_the_start_makes_no_empty_scene_and_a_scene_without_tags_says_so():
    tags = scene_tags()
    assert tags.cut(0.0) == []
    tags.add(scores([0.0, 1.0], [{0: 0.05}, {0: 0.1}]))
    (scene,) = tags.cut(1.5)
    assert scene.attributes["visual_tags"] == [] and scene.confidence == 0.0


def test_scene_events_tile_a_real_clip_between_its_cuts_with_each_scenes_own_tags(replay_pretrained):
    run = replay_pretrained(SHARED_MEDIA / "big_buck_bunny_0_30.webm")
    events = run.of("event")
    cuts = sorted(e["start_s"] for e in events if e["label"] == "scene_cut")
    scenes = sorted((e for e in events if e["label"] == "scene"), key=lambda e: e["start_s"])
    (summary,) = [s for s in run.of("summary") if s["final"]]
    assert len(cuts) >= 2 and len(scenes) == len(cuts) + 1 == summary["scenes"]
    assert [s["start_s"] for s in scenes] == [0.0, *cuts]
    assert [s["end_s"] for s in scenes[:-1]] == cuts
    assert abs(scenes[-1]["end_s"] - summary["processed_s"]) < 0.5
    assert [s["attributes"]["index"] for s in scenes] == list(range(len(scenes)))
    for scene in scenes:
        listed = scene["attributes"]["visual_tags"]
        assert len(listed) <= 3
        # A scene sampled at 1 fps has at most one frame per second, plus the one at its start.
        assert all(t["seconds"] <= scene["end_s"] - scene["start_s"] + 1.0 for t in listed)
    # Big Buck Bunny's scenes are not one picture: their first tags are not all the same.
    firsts = {s["attributes"]["visual_tags"][0]["label"] for s in scenes if s["attributes"]["visual_tags"]}
    assert len(firsts) >= 2
