"""Damage a decoder survives: a lost or corrupt packet leaves a gap, never a failed stream.

Real clips (../shared/media) with one packet lost or bit-flipped, a title that is not UTF-8, and a
clip whose audio switches layout and rate mid-stream, through the real decoder and pipeline.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction

import av
import numpy as np
import pytest

from pipeline.core.config import load_config
from pipeline.ingest.audio_rows import AudioRowCutter
from pipeline.ingest.decode import MediaDecoder
from tests.conftest import SHARED_MEDIA
from tests.media_faults import with_audio_layout_change, with_bit_flips, with_non_utf8_metadata, without_packet

ROW_S = 0.1  # audio.token_s by default
# fire2.mp4 is AAC 48 kHz mono: its packet at 0.731 s ends 2.7 ms into a padded partial row, which
# used to make the next run of rows start under it ("audio t_s not increasing").
AAC_CLIP, AAC_DAMAGE_S = SHARED_MEDIA / "fire2.mp4", 0.72
MP3_CLIP, MP3_DAMAGE_S = SHARED_MEDIA / "chaplin.mp4", 0.84  # MP3 44.1 kHz, 1152-sample frames


@dataclass
class Decoded:
    audio_start_s: np.ndarray
    video_pts_s: np.ndarray
    errors: list[str] = field(default_factory=list)


def decode(path) -> Decoded:
    decoder = MediaDecoder("damaged", str(path), load_config(None, ["profile=signal"], environ={}))
    decoder.open()
    starts, pts, errors = [], [], []
    try:
        for chunk in decoder.chunks():
            starts += [] if chunk.audio is None else list(chunk.audio.start_s)
            pts += [] if chunk.video is None else list(chunk.video.pts_s)
            errors += chunk.errors
    finally:
        decoder.close()
    return Decoded(np.asarray(starts), np.asarray(pts), errors)


def assert_rows_never_overlap(start_s: np.ndarray) -> None:
    steps = np.diff(start_s)
    assert (steps >= ROW_S - 1e-9).all(), f"rows overlap after {start_s[:-1][steps < ROW_S - 1e-9]}"


def assert_played_to_the_end(run, min_processed_s: float) -> None:
    end = run.of("stream_end")[0]
    assert end["status"] == "ok", end["reason"]
    assert not [e for e in run.of("error") if e["fatal"]]
    assert end["processed_s"] >= min_processed_s


@pytest.mark.parametrize("clip, at_s", [(AAC_CLIP, AAC_DAMAGE_S), (MP3_CLIP, MP3_DAMAGE_S)],
                         ids=["aac", "mp3"])
def test_a_lost_audio_packet_leaves_a_gap_of_that_packet_in_the_rows(replay, tmp_path, clip, at_s):
    damaged = tmp_path / f"lost_audio{clip.suffix}"
    lost_s, lost_duration_s = without_packet(clip, damaged, "audio", at_s)
    starts = decode(damaged).audio_start_s
    assert_rows_never_overlap(starts)
    before, after = starts[starts < lost_s], starts[starts >= lost_s]
    # No row covers the lost packet; the rows after it start where the next packet does.
    assert before[-1] + ROW_S <= lost_s + 1e-6
    assert after[0] == pytest.approx(lost_s + lost_duration_s, abs=1e-3)
    assert np.allclose(np.diff(after), ROW_S)
    # What is missing is the packet and at most the partial row before it, nothing more.
    assert after[0] - (before[-1] + ROW_S) < lost_duration_s + ROW_S
    assert_played_to_the_end(replay(damaged), min_processed_s=starts[-1])


def test_a_bit_flip_in_an_audio_packet_is_reported_and_the_stream_plays(replay, tmp_path):
    damaged = tmp_path / "flipped_audio.mp4"
    flipped_s, _ = with_bit_flips(AAC_CLIP, damaged, "audio", AAC_DAMAGE_S, n_bits=64)
    decoded = decode(damaged)
    assert_rows_never_overlap(decoded.audio_start_s)
    assert decoded.audio_start_s[-1] > 2.0  # rows go on after the damage
    run = replay(damaged)
    assert_played_to_the_end(run, min_processed_s=2.0)
    reasons = [e["reason"] for e in run.of("error")]
    assert any(r.startswith("audio packets undecodable: 1 in a row") for r in reasons), reasons


@pytest.mark.parametrize("damage", ["lost", "bit_flips"])
def test_a_lost_or_corrupt_video_packet_leaves_the_stream_playing(replay, tmp_path, damage):
    damaged = tmp_path / f"{damage}_video.mp4"
    if damage == "lost":
        without_packet(MP3_CLIP, damaged, "video", 2.0)
    else:
        with_bit_flips(MP3_CLIP, damaged, "video", 2.0, n_bits=64)
    decoded = decode(damaged)
    assert (np.diff(decoded.video_pts_s) > 0).all()
    assert decoded.video_pts_s[-1] > 9.0  # chaplin.mp4 is 9.6 s: video goes on to the end
    assert_rows_never_overlap(decoded.audio_start_s)
    assert_played_to_the_end(replay(damaged), min_processed_s=9.0)


@pytest.mark.parametrize("suffix", [".mp4", ".mkv"])
def test_metadata_that_is_not_utf8_reads_with_replacement_characters_and_the_file_plays(replay, tmp_path, suffix):
    damaged = with_non_utf8_metadata(MP3_CLIP, tmp_path / f"latin1_title{suffix}")
    with pytest.raises(UnicodeDecodeError):  # the fault is real: strict decoding refuses the file
        av.open(str(damaged)).close()
    decoder = MediaDecoder("tagged", str(damaged), load_config(None, ["profile=signal"], environ={}))
    decoder.open()
    try:
        assert "\ufffd" in decoder.container.metadata["title"]
    finally:
        decoder.close()
    assert_played_to_the_end(replay(damaged), min_processed_s=9.0)


def test_an_audio_layout_and_rate_change_mid_stream_rebuilds_the_resampler(replay, tmp_path):
    clip = tmp_path / "mono44k_then_stereo48k.ts"
    change_s = with_audio_layout_change(clip, change_s=2.0, duration_s=4.0)
    with av.open(str(clip)) as container:  # the decoder really sees the change
        layouts = {(f.layout.name, f.sample_rate) for f in container.decode(audio=0)}
    assert layouts == {("mono", 44100), ("stereo", 48000)}
    decoded = decode(clip)
    starts = decoded.audio_start_s
    assert starts[0] == pytest.approx(0.0, abs=1e-3)
    assert np.allclose(np.diff(starts), ROW_S)  # no gap and no overlap at the change
    assert starts[-1] > change_s + 1.5
    assert not decoded.errors
    assert_played_to_the_end(replay(clip), min_processed_s=3.9)


# The cutter's contract on its own, with synthetic frames (no files, no Ray).

def _frame_at(start_s: float, samples: int = 1024, rate: int = 16000) -> av.AudioFrame:
    frame = av.AudioFrame.from_ndarray(np.full((1, samples), 0.25, np.float32), format="fltp", layout="mono")
    frame.sample_rate, frame.time_base = rate, Fraction(1, rate)
    frame.pts = int(round(start_s * rate))
    return frame


def test_a_partial_row_that_would_reach_past_a_short_gap_is_dropped_not_overlapped():
    cutter = AudioRowCutter(16000, ROW_S)
    frame_s = 256 / 16000  # 16 ms
    for i in range(4):  # 64 ms: no full row, a tail that padded would end at 0.1 s
        cutter.push(_frame_at(i * frame_s, 256), i * frame_s)
    resume_s = 6 * frame_s  # two frames lost: the next run starts at 96 ms, under that padded row
    for i in range(10):
        cutter.push(_frame_at(resume_s + i * frame_s, 256), resume_s + i * frame_s)
    cutter.flush()
    starts = cutter.take_rows().start_s
    assert starts[0] == pytest.approx(resume_s)
    assert_rows_never_overlap(starts)


def test_frames_that_step_back_under_cut_rows_are_trimmed_to_where_the_rows_end():
    cutter = AudioRowCutter(16000, ROW_S)
    frame_s = 1024 / 16000
    for i in range(5):  # 0.32 s: rows at 0.0, 0.1, 0.2 and a 20 ms tail
        cutter.push(_frame_at(i * frame_s), i * frame_s)
    for i in range(10):  # PTS step back 30 ms, to under the row at 0.2 s
        cutter.push(_frame_at(0.29 + i * frame_s), 0.29 + i * frame_s)
    cutter.flush()
    starts = cutter.take_rows().start_s
    assert_rows_never_overlap(starts)
    assert starts[3] == pytest.approx(0.3)  # the stepped-back frame's first 10 ms are dropped
