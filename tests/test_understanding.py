"""The default (pretrained) pipeline on real clips: sound classes, visual tags, av_events.

Real Ray, real PyAV decoding, YAMNet and EfficientNet-Lite0 with the packaged weights.
"""

from __future__ import annotations

import asyncio
import json

import jsonschema
import numpy as np
import pytest

from pipeline.app import sample
from pipeline.app.sample import ClipSpec, write_clip
from pipeline.compute.runtime import Pipeline
from pipeline.core.config import load_config
from pipeline.output.records import schema_for
from pipeline.output.sinks import JsonlSink
from tests.conftest import SHARED_MEDIA

NASA, CHAPLIN = SHARED_MEDIA / "nasa_13013.mp4", SHARED_MEDIA / "chaplin.mp4"


@pytest.fixture(scope="module")
def real_clips(replay_pretrained_module):
    """nasa_13013 and chaplin replayed together (their patches and frames share batches)."""
    return replay_pretrained_module(NASA, CHAPLIN)


@pytest.fixture(scope="module")
def replay_pretrained_module(pretrained_pipeline, tmp_path_factory):
    from tests.conftest import _replayer

    return _replayer(pretrained_pipeline, tmp_path_factory.mktemp("pretrained"))


def final_summary(run, stream_id: str) -> dict:
    (summary,) = [s for s in run.of("summary", stream_id) if s["final"]]
    return summary


def tags(summary: dict, field: str) -> list[str]:
    return [t["label"] for t in summary[field]]


def test_the_narration_is_speech(real_clips):
    speech = [e for e in real_clips.events("nasa_13013.mp4") if e["detector"] == "sound_tags"
              and e["label"] == "Speech"]
    assert speech, "no Speech event on a narrated clip"
    assert sum(e["end_s"] - e["start_s"] for e in speech) >= 8.0  # the narration runs ~12 s
    event = max(speech, key=lambda e: e["end_s"] - e["start_s"])
    assert event["attributes"]["mid"] == "/m/09x0r" and event["attributes"]["modality"] == "audio"
    assert tags(final_summary(real_clips, "nasa_13013.mp4"), "audio_tags")[0] == "Speech"


def test_chaplin_is_music_with_a_piano_among_its_tags(real_clips):
    music = real_clips.events("chaplin.mp4", "Music")
    assert music and music[0]["end_s"] - music[0]["start_s"] >= 7.0
    audio_tags = tags(final_summary(real_clips, "chaplin.mp4"), "audio_tags")
    assert audio_tags[0] == "Music"
    assert {"Piano", "Keyboard (musical)"} & set(audio_tags[:5]), audio_tags


def test_records_with_tags_validate_against_their_schemas(real_clips):
    for record in real_clips.records:
        jsonschema.validate(record, schema_for(record["type"]))
    summary = final_summary(real_clips, "chaplin.mp4")
    assert summary["schema"] == "avfuse.summary/4" and summary["visual_tags"]


def test_window_embeddings_fuse_the_taggers_and_find_windows_of_the_same_content(real_clips):
    windows = real_clips.of("window")
    assert windows and all(w["tokens_from"] == "taggers" for w in windows)
    full = [w for w in windows if not w["missing"]]
    assert all(w["sight_tokens"] >= 1 and w["sound_tokens"] >= 1 for w in full)
    # 2 s windows: 2 frames at 1 fps and 4 patch centres every 0.48 s, except at the clips' ends.
    assert sum(w["sight_tokens"] == 2 and w["sound_tokens"] == 4 for w in full) >= 0.8 * len(full)
    clip = np.array([w["stream_id"] for w in full])
    embedding = np.array([w["embedding"] for w in full], np.float64)
    embedding /= np.linalg.norm(embedding, axis=1, keepdims=True)
    similarity = embedding @ embedding.T
    np.fill_diagonal(similarity, -np.inf)
    nearest_same = clip[similarity.argmax(axis=1)] == clip
    assert nearest_same.mean() >= 0.9, nearest_same.mean()
    same = clip[:, None] == clip[None, :]
    np.fill_diagonal(same, False)
    different = clip[:, None] != clip[None, :]
    assert similarity[same].mean() > similarity[different].mean() + 0.05


def test_window_text_names_what_was_heard_and_seen_there(real_clips):
    windows = [w for w in real_clips.of("window", "chaplin.mp4") if not w["missing"]]
    assert windows and all(w["text"] for w in windows)
    # chaplin's piano score is in every full window, and what is seen is among its visual tags.
    assert all(w["text"].startswith("heard: Music") for w in windows), [w["text"] for w in windows]
    seen_tags = {t["label"] for t in final_summary(real_clips, "chaplin.mp4")["visual_tags"]}
    assert len(seen_tags) < 10  # so the summary lists every class that reached tag_min
    for window in windows:
        seen = window["text"].split("; seen: ")[1].split(", ") if "; seen: " in window["text"] else []
        assert set(seen) <= seen_tags, window["text"]


def test_a_parent_class_is_not_a_second_event_for_the_same_sound(real_clips):
    for stream_id in ("nasa_13013.mp4", "chaplin.mp4"):
        sounds = [e for e in real_clips.events(stream_id) if e["detector"] == "sound_tags"]
        for event in sounds:
            for other in sounds:
                overlap = min(event["end_s"], other["end_s"]) - max(event["start_s"], other["start_s"])
                assert not (other["label"] in event["attributes"]["ancestors"] and overlap > 0.5), (event, other)


def test_a_beep_is_no_music(replay_pretrained_module, tmp_path):
    # The sample clip's only tone is a 1 kHz beep of known length (pipeline.app.sample).
    run = replay_pretrained_module(write_clip(tmp_path / "beep.mp4", ClipSpec()))
    beep_s = sample.BEEP_S[1] - sample.BEEP_S[0]
    music = run.events(label="Music")
    assert all(e["end_s"] - e["start_s"] <= beep_s + 0.5 for e in music), music


def test_tag_event_ids_are_the_same_alone_and_batched_with_other_streams(real_clips, replay_pretrained_module):
    alone = replay_pretrained_module(CHAPLIN)

    def tag_ids(run):
        return sorted((e["label"], e["event_id"]) for e in run.events("chaplin.mp4")
                      if e["detector"] in ("sound_tags", "visual_tags", "av_concepts"))

    assert tag_ids(alone) and tag_ids(alone) == tag_ids(real_clips)
    assert final_summary(alone, "chaplin.mp4")["visual_tags"] == final_summary(real_clips, "chaplin.mp4")["visual_tags"]


def test_a_stream_without_audio_has_no_audio_tags(replay_pretrained_module, clips):
    run = replay_pretrained_module(clips["video_only.mp4"], clips["audio_only.m4a"])
    assert [r.status for r in run.results] == ["ok", "ok"]
    video_only, audio_only = (final_summary(run, sid) for sid in ("video_only.mp4", "audio_only.m4a"))
    assert video_only["audio_tags"] == [] and audio_only["visual_tags"] == []
    assert not [e for e in run.events("video_only.mp4") if e["detector"] == "sound_tags"]
    assert not [e for e in run.events("audio_only.m4a") if e["detector"] == "visual_tags"]
    assert audio_only["audio_tags"], "the sample's tones and noise are heard"


def _run_with(cfg_sets: list[str], paths, tmp_path):
    cfg = load_config(None, ["records.stdout=false", *cfg_sets], environ={})
    pipe = Pipeline(cfg)
    try:
        asyncio.run(pipe.warm_up())
        out = tmp_path / "records.jsonl"
        sink = JsonlSink(out)
        asyncio.run(pipe.replay([str(p) for p in paths], sink))
        sink.close()
    finally:
        pipe.shutdown()
    return [json.loads(line) for line in out.read_text().splitlines()]


def test_av_event_when_picture_and_sound_share_a_concept_and_none_when_not(real_clips, ray_session, tmp_path):
    # Concepts are data: name chaplin's best sound and sight as one concept, and the same
    # sound with a sight chaplin never shows as another.
    summary = final_summary(real_clips, "chaplin.mp4")
    heard, seen = summary["audio_tags"][0]["label"], summary["visual_tags"][0]["label"]
    table = tmp_path / "concepts.json"
    table.write_text(json.dumps({"version": "test-1", "concepts": {
        "shared": {"audioset": [heard], "imagenet": [seen]},
        "unseen": {"audioset": [heard], "imagenet": ["goldfish"]}}}))
    records = _run_with([f"av_events.concepts={table}", "av_events.min_visual=0.1"], [CHAPLIN], tmp_path)
    av = [r for r in records if r["type"] == "event" and r["label"] == "av_event"]
    assert av and {e["attributes"]["concept"] for e in av} == {"shared"}
    event = av[0]
    assert event["attributes"]["audio_class"] == heard and event["attributes"]["visual_class"] == seen
    assert event["detector_version"] == "test-1"
    assert event["attributes"]["audio_confidence"] >= 0.3 and event["attributes"]["visual_confidence"] >= 0.1


def test_the_signal_profile_runs_no_tagger(pipeline):
    assert sorted(pipeline.operators) == ["audio", "fusion", "vision"]


def test_the_pretrained_profile_says_where_its_weights_came_from(pretrained_pipeline):
    sources = asyncio.run(pretrained_pipeline.weights())
    assert set(sources) == {"image_tags", "sound_tags", "asr"}
    assert "YamNet_w8a8.onnx.zip" in sources["sound_tags"]
    assert "efficientnet-lite0" in sources["image_tags"]
