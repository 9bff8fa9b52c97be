"""A checkpoint carries the open conditions kept as running statistics (frozen, black, silence):
a picture frozen for minutes does not hold its stream's checkpoints back, and the resumed run
ends that event with its first start and its statistics over all of it.

Real Ray (the shared signal-profile pipeline), real PyAV: a stream fed in segments as the Kafka
service feeds it, without the broker (the broker's part is in test_checkpoints.py)."""

from __future__ import annotations

import asyncio
import json

import jsonschema
import numpy as np
import pytest

from pipeline.app.sample import DURATION_S as PERIOD_S
from pipeline.app.sample import audio_signal, video_frame_at
from pipeline.output.sinks import JsonlSink
from pipeline.stream.checkpoint import StreamCheckpoint
from tests.test_checkpoints import CHECKPOINT_SCHEMA, keyframe_ts_segments, write_live_clip

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
    if isinstance(want, float):
        return got == pytest.approx(want, rel=1e-6, abs=1e-3)
    return got == want


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
        again = resumed.get(event["event_id"])
        assert again is not None and _close(again, event), (event, again)
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
