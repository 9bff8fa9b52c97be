"""End-to-end replays on real Ray with real PyAV-encoded clips of known content."""

from __future__ import annotations

import jsonschema
import pytest

from pipeline.app import sample
from pipeline.output.records import schema_for
from tests.conftest import SHARED_MEDIA

FRAME_TOL_S = 1 / 4 + 1e-3  # one sampled frame at video.fps = 4
AUDIO_TOL_S = 0.02


def only(events: list[dict], label: str) -> dict:
    matching = [e for e in events if e["label"] == label]
    assert len(matching) == 1, f"expected one {label}, got {matching}"
    return matching[0]


def assert_video_events_of_timeline(events: list[dict]) -> None:
    cuts = sorted(e["start_s"] for e in events if e["label"] == "scene_cut")
    assert len(cuts) == 3
    for got, want in zip(cuts, [sample.CUT_S, sample.BLACK_S[0], sample.BLACK_S[1]]):
        assert abs(got - want) <= FRAME_TOL_S
    burst = only(events, "motion_burst")
    assert abs(burst["start_s"] - sample.FLASH_S[0]) <= FRAME_TOL_S
    black = only(events, "black_video")
    assert abs(black["start_s"] - sample.BLACK_S[0]) <= FRAME_TOL_S
    assert abs(black["end_s"] - sample.BLACK_S[1]) <= FRAME_TOL_S
    frozen = only(events, "frozen_video")
    assert abs(frozen["start_s"] - sample.FROZEN_S[0]) <= FRAME_TOL_S


def assert_audio_events_of_timeline(events: list[dict]) -> None:
    silence = only(events, "silence")
    assert abs(silence["start_s"] - sample.SILENCE_S[0]) <= AUDIO_TOL_S
    assert abs(silence["end_s"] - sample.SILENCE_S[1]) <= AUDIO_TOL_S
    onsets = [e for e in events if e["label"] == "loud_onset"]
    beep = min(onsets, key=lambda e: abs(e["start_s"] - sample.BEEP_S[0]))
    assert abs(beep["start_s"] - sample.BEEP_S[0]) <= AUDIO_TOL_S
    assert abs(beep["end_s"] - sample.BEEP_S[1]) <= 0.05


def test_sample_clip_events_match_the_known_timeline(replay, clips):
    run = replay(clips["av.mp4"])
    assert run.results[0].status == "ok"
    events = run.events()
    assert_video_events_of_timeline(events)
    assert_audio_events_of_timeline(events)
    assert all(e["detector"] == e["label"] and e["detector_version"] for e in events)


def test_flash_and_beep_fall_in_the_same_windows_at_the_same_time(replay, clips):
    run = replay(clips["av.mp4"])
    flash_windows = [w for w in run.of("window") if w["start_s"] <= sample.FLASH_S[0] < w["end_s"]]
    assert [w["index"] for w in flash_windows] == [4, 5]
    for window in flash_windows:
        signals = window["signals"]
        assert signals["peak_luma"] > 0.9
        assert abs(signals["peak_luma_t_s"] - sample.FLASH_S[0]) <= FRAME_TOL_S
        assert abs(signals["peak_dbfs_t_s"] - sample.BEEP_S[0]) <= 0.1 + AUDIO_TOL_S
        assert window["missing"] == []
        assert window["video_tokens"] == 8 and window["audio_tokens"] == 20


def test_every_record_is_valid_against_its_schema(replay, clips):
    run = replay(clips["av.mp4"], clips["video_only.mp4"])
    types = {r["type"] for r in run.records}
    assert {"stream_start", "event", "summary", "stream_end", "window"} <= types
    for record in run.records:
        jsonschema.validate(record, schema_for(record["type"]))


def test_two_runs_give_identical_event_ids(replay, clips):
    first = replay(clips["av.mp4"]).events()
    second = replay(clips["av.mp4"]).events()
    assert len(first) >= 8
    assert sorted(e["event_id"] for e in first) == sorted(e["event_id"] for e in second)


def test_audio_starting_half_a_second_late_keeps_event_times(replay, clips):
    run = replay(clips["audio_late.mp4"])
    events = run.events()
    assert_video_events_of_timeline(events)
    assert_audio_events_of_timeline(events)
    first_window = run.of("window")[0]
    assert first_window["index"] == 0 and first_window["audio_tokens"] > 0
    assert first_window["audio_tokens"] < 20  # audio covers only part of [0, 2)


def test_variable_frame_rate_events_use_pts(replay, clips):
    run = replay(clips["vfr.mkv"])
    assert_video_events_of_timeline(run.events())


def test_video_only_file_masks_audio_in_every_window(replay, clips):
    run = replay(clips["video_only.mp4"])
    assert_video_events_of_timeline(run.events())
    assert not [e for e in run.events() if e["label"] in ("silence", "loud_onset")]
    windows = run.of("window")
    assert len(windows) >= 11 and all(w["missing"] == ["audio"] for w in windows)
    assert run.of("summary")[-1]["partial_windows"] == len(windows)


def test_audio_only_file_gives_audio_events_and_no_scenes(replay, clips):
    run = replay(clips["audio_only.m4a"])
    assert_audio_events_of_timeline(run.events())
    assert not [e for e in run.events() if e["label"] in ("scene_cut", "black_video")]
    final = run.of("summary")[-1]
    assert final["final"] and final["scenes"] == 0


def test_48khz_stereo_is_resampled_to_16khz_mono(replay, clips):
    run = replay(clips["stereo48k.mp4"])
    assert_audio_events_of_timeline(run.events())
    assert run.of("stream_start")[0]["audio"]["sample_rate_hz"] == 48000
    assert all(w["audio_tokens"] == 20 for w in run.of("window")[:10])


def test_final_summary_counts_match_the_events(replay, clips):
    run = replay(clips["av.mp4"])
    final = run.of("summary")[-1]
    events = run.events()
    assert final["final"] is True
    assert sum(final["counts_by_label"].values()) == len(events)
    assert final["scenes"] == final["counts_by_label"]["scene_cut"] + 1
    assert final["silence_s"] == pytest.approx(1.0, abs=0.05)
    assert final["black_s"] == pytest.approx(1.5, abs=FRAME_TOL_S)
    assert abs(final["processed_s"] - sample.DURATION_S) < 0.1
    end = run.of("stream_end")[0]
    assert end["status"] == "ok" and end["events"] == len(events)
    assert end["frames_kept"] == pytest.approx(sample.DURATION_S * 4, abs=1)


def test_periodic_summaries_every_n_stream_seconds(pipeline, replay, clips, monkeypatch):
    # A stream runs under the pipeline's config as it is when the stream starts.
    monkeypatch.setattr(pipeline.cfg.records, "summary_every_s", 5.0)
    summaries = replay(clips["av.mp4"]).of("summary")
    assert [s["final"] for s in summaries] == [False, False, True]
    assert [s["processed_s"] >= due for s, due in zip(summaries, (5.0, 10.0))] == [True, True]
    assert summaries[0]["counts_by_label"]["scene_cut"] == 1  # only the cut at 3 s by then


# A missing ../shared/media must fail, not silently parametrize to nothing.
SHARED_CLIPS = sorted(p.name for p in SHARED_MEDIA.glob("*") if p.suffix in (".mp4", ".webm", ".mkv")) or [
    "no clips found in ../shared/media"]


@pytest.mark.parametrize("name", SHARED_CLIPS)
def test_real_clip_replays_without_error(replay, name):
    run = replay(SHARED_MEDIA / name)
    result = run.results[0]
    assert result.status == "ok", result.reason
    assert result.processed_s > 0.5
    assert not run.of("error")
    assert run.of("summary")[-1]["final"] is True
