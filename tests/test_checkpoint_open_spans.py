"""A checkpoint carries the open conditions kept as running statistics (frozen, black, silence;
the taggers' spans and totals, the open scene): a picture frozen for minutes, or music that never
stops, does not hold its stream's checkpoints back, and the resumed run ends those events with
their first start and their statistics over all of it.

Real Ray (the shared signal-profile pipeline), real PyAV: a stream fed in segments as the Kafka
service feeds it, without the broker (the broker's part is in test_checkpoints.py)."""

from __future__ import annotations

import asyncio
import json

import jsonschema
import numpy as np
import pytest

from benchmarks.bench_soak import music
from pipeline.app.sample import DURATION_S as PERIOD_S
from pipeline.app.sample import audio_signal, video_frame_at
from pipeline.output.sinks import JsonlSink
from pipeline.stream.checkpoint import StreamCheckpoint
from tests.test_asr import ESPEAK
from tests.test_checkpoints import CHECKPOINT_SCHEMA, keyframe_ts_segments, write_live_clip
from tests.test_speech import RATE_HZ, spoken_sentence

CLIP_S = 84.0
FROZEN_S = (26.0, 70.0)  # one still picture: a frozen_video open across two checkpoints
SILENT_S = (30.0, 66.0)  # no sound: a silence open across them too
STILL_FRAME_AT_S = 1.0  # of the sample timeline: an ordinary picture, not black


def frame_at(t_s: float, width: int, height: int) -> np.ndarray:
    held = FROZEN_S[0] <= t_s < FROZEN_S[1]
    return video_frame_at(STILL_FRAME_AT_S if held else t_s % PERIOD_S, width, height)


def samples_at(t_s: np.ndarray) -> np.ndarray:
    signal = audio_signal(t_s % PERIOD_S)
    signal[(t_s >= SILENT_S[0]) & (t_s < SILENT_S[1])] = 0.0
    return signal


def run_segmented(pipeline, path, stream_id: str, segments: list[bytes], resume: StreamCheckpoint | None = None):
    """Feed ``segments`` to a segmented stream actor (from ``resume``, as the service does after a
    restart); returns its records and the checkpoints it took."""
    checkpoints: list[StreamCheckpoint] = []
    uri = f"kafka://media/{stream_id}"

    async def main():
        actor = pipeline.segmented_stream(stream_id, uri, resume)

        async def feed():
            for segment in segments:
                await actor.feed.remote(segment)
            actor.end.remote()

        feeding = asyncio.ensure_future(feed())
        sink = JsonlSink(path)
        try:
            result = await pipeline.run_stream(stream_id, uri, sink, actor=actor, live=True,
                                               on_checkpoint=checkpoints.append)
        finally:
            sink.close()
        await feeding
        return result

    result = asyncio.run(main())
    assert result.status == "ok", result
    return [json.loads(line) for line in path.read_text().splitlines()], checkpoints


def _close(got, want) -> bool:
    if isinstance(want, dict):
        return isinstance(got, dict) and got.keys() == want.keys() and all(_close(got[k], want[k]) for k in want)
    if isinstance(want, list):
        return isinstance(got, list) and len(got) == len(want) and all(_close(g, w) for g, w in zip(got, want))
    if isinstance(want, float):
        return got == pytest.approx(want, rel=1e-6, abs=1e-3)
    return got == want


def _differences(got: dict | None, want: dict) -> dict:
    """What differs, by field: (got, want)."""
    if got is None:
        return {"event": (None, want)}
    return {k: (got.get(k), want[k]) for k in want if not _close(got.get(k), want[k])}


def _events(records) -> dict[str, dict]:
    return {r["event_id"]: r for r in records if r["type"] == "event"}


def test_a_frozen_picture_and_a_silence_open_across_checkpoints_are_carried_and_end_as_in_one_run(
        pipeline, tmp_path):
    clip = write_live_clip(tmp_path / "frozen.mp4", CLIP_S, frame_at=frame_at, samples_at=samples_at)
    segments = keyframe_ts_segments(clip)
    sid = "frozen-cam"
    first_records, checkpoints = run_segmented(pipeline, tmp_path / "first.jsonl", sid, segments)
    first = _events(first_records)
    frozen = [e for e in first.values() if e["label"] == "frozen_video" and e["end_s"] - e["start_s"] > 30]
    silence = [e for e in first.values() if e["label"] == "silence" and e["end_s"] - e["start_s"] > 30]
    assert len(frozen) == 1 and len(silence) == 1, sorted((e["label"], e["start_s"], e["end_s"]) for e in first.values())
    frozen, silence = frozen[0], silence[0]

    # Without carrying them, the open frozen picture would hold every checkpoint's settled time
    # (and so its resume point) before 26 s: the checkpoint inside both conditions resumes after.
    inside = [c for c in checkpoints if c.resume_s > frozen["start_s"] and c.processed_s < silence["end_s"]]
    assert inside, [(c.resume_s, c.settled_s, c.processed_s) for c in checkpoints]
    checkpoint = StreamCheckpoint.from_json(inside[-1].to_json())  # as stored and read back
    checkpoint.resume_segment = inside[-1].resume_segment  # the service stores its message instead
    jsonschema.validate(checkpoint.to_dict(), CHECKPOINT_SCHEMA)
    assert set(checkpoint.open_spans) == {"frozen_video", "silence"}, checkpoint.open_spans
    assert checkpoint.open_spans["frozen_video"]["start_s"] == frozen["start_s"]
    assert checkpoint.settled_s > silence["start_s"]

    resumed_records, _ = run_segmented(pipeline, tmp_path / "resumed.jsonl", sid,
                                       segments[checkpoint.resume_segment:], resume=checkpoint)
    resumed = _events(resumed_records)
    # The carried conditions end as in the one run: same id, start, end and statistics (to the
    # last float bits of a batched encoder's levels: batches of other streams' sizes differ there).
    for event in (frozen, silence):
        assert not _differences(resumed.get(event["event_id"]), event), _differences(resumed.get(event["event_id"]),
                                                                                     event)
    # Everything else: what the one run wrote after the checkpoint, nothing it wrote before.
    carried = {frozen["event_id"], silence["event_id"]}
    written_before = {event_id for _, event_id in checkpoint.emitted_after_settled}
    expected = {event_id for event_id, e in first.items()
                if (e["start_s"] >= checkpoint.settled_s or event_id in carried) and event_id not in written_before}
    assert set(resumed) == expected, sorted(
        (e["label"], e["start_s"]) for e in {**first, **resumed}.values() if e["event_id"] in set(resumed) ^ expected)
    final = [[r for r in records if r["type"] == "summary" and r["final"]][0] for records in (first_records,
                                                                                              resumed_records)]
    for key in ("counts_by_label", "frozen_s", "silence_s"):
        assert final[1][key] == final[0][key], key


def test_with_the_taggers_on_music_that_never_stops_and_the_open_scene_are_carried_too(
        pretrained_pipeline, tmp_path):
    """The default profile (YAMNet, EfficientNet-Lite0, scene tags, A/V concepts): continuous music
    keeps a sound tag open for the whole stream; before, the taggers made a stream take no checkpoint."""
    clip = write_live_clip(tmp_path / "music.mp4", CLIP_S, frame_at=frame_at, samples_at=music)
    segments = keyframe_ts_segments(clip)
    sid = "music-cam"
    first_records, checkpoints = run_segmented(pretrained_pipeline, tmp_path / "first.jsonl", sid, segments)
    first = _events(first_records)
    inside = [c for c in checkpoints if FROZEN_S[0] < c.resume_s and c.processed_s < FROZEN_S[1]]
    assert inside, [(c.resume_s, c.settled_s, c.processed_s) for c in checkpoints]
    checkpoint = StreamCheckpoint.from_json(inside[-1].to_json())
    checkpoint.resume_segment = inside[-1].resume_segment
    jsonschema.validate(checkpoint.to_dict(), CHECKPOINT_SCHEMA)
    carried = set(checkpoint.open_event_ids)
    carried_sounds = [e for i, e in first.items() if i in carried and e["detector"] == "sound_tags"]
    # Heard across the checkpoint: a sound tag open since before the settled time, carried, ended after it.
    assert any(e["start_s"] < checkpoint.settled_s for e in carried_sounds), (checkpoint.settled_s, sorted(
        (e["label"], e["start_s"], e["end_s"]) for e in first.values() if e["detector"] == "sound_tags"))
    assert any(first[i]["label"] == "scene" for i in carried if i in first)

    resumed_records, _ = run_segmented(pretrained_pipeline, tmp_path / "resumed.jsonl", sid,
                                       segments[checkpoint.resume_segment:], resume=checkpoint)
    resumed = _events(resumed_records)
    for event_id in carried & set(first):
        assert not _differences(resumed.get(event_id), first[event_id]), (first[event_id]["label"], _differences(
            resumed.get(event_id), first[event_id]))
    written_before = {event_id for _, event_id in checkpoint.emitted_after_settled}
    expected = {event_id for event_id, e in first.items()
                if (e["start_s"] >= checkpoint.settled_s or event_id in carried) and event_id not in written_before}
    assert set(resumed) == expected, sorted(
        (e["label"], e["start_s"]) for e in {**first, **resumed}.values() if e["event_id"] in set(resumed) ^ expected)
    final = [[r for r in records if r["type"] == "summary" and r["final"]][0] for records in (first_records,
                                                                                              resumed_records)]
    for key in ("counts_by_label", "audio_tags", "visual_tags", "frozen_s"):
        assert _close(final[1][key], final[0][key]), key


TALK_CLIP_S = 48.0
TALK = ("The library opens early on weekdays.", "The weather today is sunny and warm.",
        "The train to the city leaves at noon.")


def test_speech_is_transcribed_once_across_a_resume(pretrained_pipeline, tmp_path):
    """ASR on (the default): a checkpoint waits for the transcripts in flight and lists those
    written after its settled time, so the resumed run writes each transcript once, as one run would."""
    sentences = [spoken_sentence(text, *ESPEAK) for text in TALK]
    audio = np.zeros(int(TALK_CLIP_S * RATE_HZ), np.float32)
    for n, at_s in enumerate(np.arange(1.0, TALK_CLIP_S - 5.0, 5.5)):  # a sentence every 5.5 s
        speech = sentences[n % len(sentences)]
        audio[int(at_s * RATE_HZ):int(at_s * RATE_HZ) + len(speech)] = speech

    clip = write_live_clip(tmp_path / "talk.mp4", TALK_CLIP_S, samples_at=lambda t_s: audio[
        np.minimum((t_s * RATE_HZ).astype(np.int64), len(audio) - 1)])
    segments = keyframe_ts_segments(clip)
    sid = "talk-cam"
    first_records, checkpoints = run_segmented(pretrained_pipeline, tmp_path / "first.jsonl", sid, segments)
    first = {r["transcript_id"]: r for r in first_records if r["type"] == "transcript"}
    assert len(first) >= 6, [r["text"] for r in first.values()]
    assert checkpoints, "no checkpoint with ASR on"
    checkpoint = StreamCheckpoint.from_json(checkpoints[0].to_json())
    checkpoint.resume_segment = checkpoints[0].resume_segment
    written_before = {record_id for _, record_id in checkpoint.emitted_after_settled}
    # Transcripts both sides of the checkpoint, so the resume has some to skip and some to write.
    assert any(r["start_s"] < checkpoint.settled_s for r in first.values())
    expected = {i for i, r in first.items() if r["start_s"] >= checkpoint.settled_s and i not in written_before}
    assert expected

    resumed_records, _ = run_segmented(pretrained_pipeline, tmp_path / "resumed.jsonl", sid,
                                       segments[checkpoint.resume_segment:], resume=checkpoint)
    resumed = {r["transcript_id"]: r for r in resumed_records if r["type"] == "transcript"}
    assert set(resumed) == expected, (sorted((r["start_s"], r["text"]) for r in first.values()),
                                      checkpoint.settled_s, sorted((r["start_s"], r["text"]) for r in resumed.values()))
    for record_id in expected:
        assert resumed[record_id]["text"] == first[record_id]["text"]
        assert resumed[record_id]["end_s"] == first[record_id]["end_s"]
    final = [[r for r in records if r["type"] == "summary" and r["final"]][0] for records in (first_records,
                                                                                              resumed_records)]
    assert final[1]["words"] == final[0]["words"]
