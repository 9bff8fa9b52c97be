"""A/V sync: the head, its training, its checkpoint, the per-stream tracker and the pipeline's reports."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from operators.av_sync import AVSyncHead, SyncSpec, load_sync_head
from operators.checkpoint import CheckpointMismatchError
from operators.fusion import collate_windows
from operators.weights import sync_checkpoint_path
from pipeline.app.cli import main
from pipeline.compute.provenance import trained_behind
from pipeline.core.config import AVSyncConfig, load_config
from pipeline.stream.sync_tracker import SyncTracker
from pipeline.training.clip_tokens import ClipEncoder
from pipeline.training.sync import lag_target, shifted_window
from pipeline.training.sync_eval import pipeline_windows
from pipeline.training.synthetic import write_sync_clip

CFG = load_config(None, [], environ={})
LAGS_S = SyncSpec(256, 256, 0.1).lags_s.numpy()


def peaked(offset_s: float, sharpness: float = 8.0, no_match: float = 0.05) -> np.ndarray:
    """Window probabilities peaked at ``offset_s`` (lags) plus a "no match" share."""
    lags = np.exp(-sharpness * np.abs(LAGS_S - offset_s) / 0.1)
    lags = (1 - no_match) * lags / lags.sum()
    return np.append(lags, no_match)


def test_tracker_reads_sub_step_offsets_from_agreeing_windows():
    tracker = SyncTracker("s", AVSyncConfig(), LAGS_S)
    for i in range(6):
        tracker.add(float(i), i + 2.0, peaked(0.15, sharpness=1.0))
    estimate = tracker.estimate()
    assert abs(estimate.offset_s - 0.15) < 0.02 and estimate.windows == 6
    assert 0.5 < estimate.confidence <= 1.0


def test_tracker_opens_av_desync_while_offset_exceeds_threshold_and_closes_with_hysteresis():
    cfg = AVSyncConfig(horizon_s=3.0, min_windows=2)
    tracker = SyncTracker("s", cfg, LAGS_S)
    events = []
    offsets = [0.0] * 5 + [0.3] * 8 + [0.0] * 6  # window i covers [i, i + 2)
    for i, offset in enumerate(offsets):
        events += tracker.add(float(i), i + 2.0, peaked(offset))
    events += tracker.finish()
    assert [e.label for e in events] == ["av_desync"]
    desync = events[0]
    # The estimate combines ~3 s of windows: it crosses 80 ms one or two windows after the change.
    assert 5.0 <= desync.start_s <= 7.0 and 13.0 <= desync.end_s <= 16.0
    assert abs(desync.attributes["offset_s"] - 0.3) < 0.05 and desync.detector == "av_sync"


def test_tracker_in_sync_raises_nothing_and_whole_stream_estimate_is_near_zero():
    tracker = SyncTracker("s", AVSyncConfig(), LAGS_S)
    events = [e for i in range(20) for e in tracker.add(float(i), i + 2.0, peaked(0.0 if i % 2 else 0.05))]
    assert events == [] and tracker.finish() == []
    assert abs(tracker.estimate(whole_stream=True).offset_s) < 0.05


def test_unconfident_windows_raise_no_av_desync():
    tracker = SyncTracker("s", AVSyncConfig(), LAGS_S)
    flat_but_off = [tracker.add(float(i), i + 2.0, peaked(0.4, sharpness=0.05, no_match=0.9)) for i in range(10)]
    assert sum(flat_but_off, []) == [] and tracker.finish() == []


def test_lag_target_splits_an_offset_between_its_two_nearest_lags():
    target = lag_target(0.08, LAGS_S)
    assert target.sum() == pytest.approx(1.0)
    i0 = int(np.argmin(np.abs(LAGS_S - 0.0)))
    assert target[i0] == pytest.approx(0.2, abs=1e-5) and target[i0 + 1] == pytest.approx(0.8, abs=1e-5)
    assert lag_target(None, LAGS_S)[-1] == 1.0


@pytest.fixture(scope="module")
def synced_tokens(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sync")
    encoder = ClipEncoder(CFG, folder / "cache")
    return encoder.tokens(write_sync_clip(folder / "c.mp4", 7, 8.0), phases=10)


def test_shifted_window_moves_audio_by_exactly_the_requested_offset(synced_tokens):
    clip = synced_tokens
    plain = shifted_window(clip, 3.0, 2.0, 0)
    late = shifted_window(clip, 3.0, 2.0, 30)  # audio 0.3 s late: row at t holds what was heard at t - 0.3
    assert np.array_equal(plain.audio_t_s, clip.audio_t_s(0)[(clip.audio_t_s(0) >= 3.0) & (clip.audio_t_s(0) < 5.0)])
    np.testing.assert_array_equal(late.audio_t_s, plain.audio_t_s)
    np.testing.assert_array_equal(late.audio_tokens, clip.audio_tokens[0][27:27 + len(late.audio_tokens)])
    odd = shifted_window(clip, 3.0, 2.0, 14)  # 0.14 s: phase 6 of the 10 ms grid, one row back
    first_row = int(round(3.0 / 0.1))
    np.testing.assert_array_equal(odd.audio_tokens[0], clip.audio_tokens[6][first_row - 2])


def test_sync_head_output_per_window_is_independent_of_its_batch(synced_tokens):
    head = AVSyncHead(SyncSpec(256, 256, 0.1))
    windows = pipeline_windows(synced_tokens, 2.0, 1.0)
    alone = head(collate_windows(windows[2:3], "cpu", 256, 256)).logits
    together = head(collate_windows(windows, "cpu", 256, 256)).logits[2:3]
    torch.testing.assert_close(alone, together, atol=1e-5, rtol=1e-5)
    empty = windows[0].__class__(0.0, None, None, None, None)
    out = head(collate_windows([empty], "cpu", 256, 256))
    assert not out.valid[0] and out.logits[0, -1] == 0 and torch.isinf(out.logits[0, :-1]).all()


def test_train_command_separates_synced_from_half_second_shifted_held_out_clips(tmp_path, capsys):
    """>= 90 % held out after training on a tiny generated set. (Its speed is a figure the
    command prints, train_seconds, not a bar for a test on a shared machine.)"""
    out = tmp_path / "sync.pt"
    code = main(["train", "sync", "--synthetic", "10", "--synthetic-seconds", "8", "--held-out", "4",
                 "--steps", "400", "--seed", "3", "--cache-dir", str(tmp_path), "--out", str(out)])
    printed = capsys.readouterr().out
    assert code == 0, printed
    accuracy = float(re.search(r"held_out_accuracy: ([0-9.]+)", printed).group(1))
    assert accuracy >= 0.9, printed
    head, extra = load_sync_head(out, 256, 256, 0.1, trained_behind(CFG))
    assert extra["report"]["held_out_accuracy"] == accuracy and "--seed 3" in extra["command"]


def test_saved_sync_head_reloads_to_identical_outputs(tmp_path, synced_tokens):
    head = AVSyncHead(SyncSpec(256, 256, 0.1, max_lag_s=0.6))
    with torch.no_grad():
        for p in head.parameters():
            p.add_(torch.randn_like(p) * 0.1)  # not the seeded init: the load must carry weights
    head.save(tmp_path / "h.pt", extra={"trained_behind": trained_behind(CFG)})
    loaded, _ = load_sync_head(tmp_path / "h.pt", 256, 256, 0.1, trained_behind(CFG))
    batch = collate_windows(pipeline_windows(synced_tokens, 2.0, 1.0), "cpu", 256, 256)
    with torch.inference_mode():
        assert torch.equal(head(batch).logits, loaded(batch).logits)
    assert len(loaded.lags_s) == 13  # the checkpoint's grid, not the default


def test_sync_checkpoint_trained_behind_other_encoders_fails_loudly(tmp_path):
    other = load_config(None, ["video.fps=8", "vision.backbone=resnet18"], environ={})
    with pytest.raises(CheckpointMismatchError, match="video_fps: checkpoint=4.0 config=8.0") as err:
        load_sync_head(sync_checkpoint_path("default"), 256, 256, 0.1, trained_behind(other))
    assert "resnet18" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(CheckpointMismatchError, match="token_s"):
        load_sync_head(sync_checkpoint_path("default"), 256, 256, 0.05)


def test_shipped_checkpoint_is_small_loads_offline_with_the_default_config_and_says_how_it_was_made():
    path = sync_checkpoint_path(CFG.av_sync.checkpoint)
    assert __import__("os").path.getsize(path) < 5 * 1024 * 1024
    head, extra = load_sync_head(path, 256, 256, 0.1, trained_behind(CFG))
    assert extra["report"]["held_out_accuracy"] >= 0.9
    assert extra["command"].startswith("avfuse train sync") and "--seed" in extra["command"]


def test_replay_reports_offset_per_stream_and_av_desync_only_for_the_late_audio(replay, tmp_path):
    late = write_sync_clip(tmp_path / "late.mp4", 4242, 12.0, audio_delay_s=0.3)
    in_sync = write_sync_clip(tmp_path / "in_sync.mp4", 4243, 12.0)
    run = replay(late, in_sync)
    final = {s["stream_id"]: s for s in run.of("summary") if s["final"]}
    assert abs(final["late.mp4"]["av_offset_s"] - 0.3) < 0.1, final["late.mp4"]
    assert abs(final["in_sync.mp4"]["av_offset_s"]) < 0.08, final["in_sync.mp4"]
    assert run.events("late.mp4", "av_desync") and not run.events("in_sync.mp4", "av_desync")
    # The first windows of this clip are ambiguous (an event's end looks like another's start);
    # by the end the running estimate has settled on the true offset and says so until the end.
    last = max(run.events("late.mp4", "av_desync"), key=lambda e: e["end_s"])
    assert 0.2 < last["attributes"]["offset_s"] < 0.4 and last["end_s"] >= 12.0, last


def test_streams_without_both_modalities_report_no_offset(replay, clips):
    run = replay(clips["video_only.mp4"], clips["audio_only.m4a"], clips["av.mp4"])
    final = {s["stream_id"]: s for s in run.of("summary") if s["final"]}
    assert final["video_only.mp4"]["av_offset_s"] is None and final["audio_only.m4a"]["av_offset_s"] is None
    assert final["video_only.mp4"]["av_sync_confidence"] is None and final["audio_only.m4a"]["av_sync_confidence"] is None
    both = final["av.mp4"]
    assert both["av_sync_confidence"] is not None
    # An estimate is given as a number only when confident enough; otherwise it is "unknown".
    report = load_config(None, ["profile=signal"], environ={}).av_sync.report_confidence
    assert (both["av_offset_s"] is not None) == (both["av_sync_confidence"] >= report), both


class FixedSync:
    """A SyncTracker's answer, fixed: the summary's reporting rules on their own."""

    def __init__(self, estimate):
        self._estimate = estimate

    def estimate(self, whole_stream=False):
        return self._estimate


def test_a_low_confidence_offset_is_unknown_not_a_number():
    from pipeline.output.records import Summary
    from pipeline.output.sinks import describe
    from pipeline.stream.summary import SummaryTracker
    from pipeline.stream.sync_tracker import SyncEstimate

    tracker = SummaryTracker("s", 30.0, 5, has_video=True, report_confidence=0.5)
    tracker.sync = FixedSync(SyncEstimate(-0.68, 0.27, 12))
    low = tracker.build(final=True)
    assert low.av_offset_s is None and low.av_sync_confidence == 0.27
    assert "A/V offset unknown (confidence 0.27)" in describe(low)
    tracker.sync = FixedSync(SyncEstimate(0.31, 0.8, 12))
    high = tracker.build(final=True)
    assert high.av_offset_s == 0.31 and "A/V offset +0.31s (confidence 0.80)" in describe(high)
    assert isinstance(high, Summary)


def test_an_offset_on_fewer_windows_than_an_av_desync_needs_is_unknown():
    from pipeline.stream.summary import SummaryTracker
    from pipeline.stream.sync_tracker import SyncEstimate

    tracker = SummaryTracker("s", 30.0, 5, has_video=True, report_confidence=0.5, report_min_windows=3)
    tracker.sync = FixedSync(SyncEstimate(0.19, 0.9, 2))  # a short clip: two windows, however sure
    assert tracker.build(final=True).av_offset_s is None
    tracker.sync = FixedSync(SyncEstimate(0.19, 0.9, 3))
    assert tracker.build(final=True).av_offset_s == 0.19


def test_other_encoders_turn_the_shipped_sync_head_off_but_a_named_one_must_fit(tmp_path, caplog):
    from operators import VisionEncoder
    from operators.vision import VisionSpec
    from pipeline.compute.stages import FusionStage

    weights = tmp_path / "vision.pt"
    VisionEncoder(VisionSpec(), 128).save(weights)  # fits the config, but is not the default init
    cfg = load_config(None, [f"vision.checkpoint={weights}"], environ={})
    with caplog.at_level("WARNING"):
        assert FusionStage(cfg).sync is None
    assert "A/V sync disabled" in caplog.text and "vision.checkpoint_sha256" in caplog.text
    named = load_config(None, [f"vision.checkpoint={weights}",
                               f"av_sync.checkpoint={sync_checkpoint_path('default')}"], environ={})
    with pytest.raises(CheckpointMismatchError, match="vision.checkpoint_sha256"):
        FusionStage(named)
    assert FusionStage(CFG).sync is not None


def test_real_in_sync_clips_raise_no_false_alarm_and_a_shifted_copy_is_found(replay, tmp_path):
    from benchmarks.shift_media import write_shifted_set
    from tests.conftest import SHARED_MEDIA

    copies = write_shifted_set(SHARED_MEDIA / "chaplin.mp4", tmp_path, [0.0, 0.5])
    in_sync = [SHARED_MEDIA / name for name in ("big_buck_bunny_0_30.webm", "fire2.mp4", "nasa_13013.mp4")]
    run = replay(*in_sync, copies[0.0], copies[0.5])
    final = {s["stream_id"]: s for s in run.of("summary") if s["final"]}
    for path in (*in_sync, copies[0.0]):
        assert not run.events(path.name, "av_desync"), path.name
        offset = final[path.name]["av_offset_s"]
        assert offset is None or abs(offset) <= 0.08, final[path.name]
    shifted = final[copies[0.5].name]
    assert abs(shifted["av_offset_s"] - 0.5) <= 0.08, shifted
    assert run.events(copies[0.5].name, "av_desync")
