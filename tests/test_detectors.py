"""Specifications of the built-in event detectors, on synthetic series with known events.

Video (12 s at 4 fps): scene A until 3.0, cut to scene B at 3.0, a white flash 5.0-5.4 in B,
black 8.0-9.5, then a frozen picture 9.5-12.0.
Audio (12 s of 10 ms sub-frames): a tone at -20 dBFS, a beep at -3 dBFS 5.0-5.4, digital
silence 6.0-7.0.
"""

from __future__ import annotations

import json

import jsonschema
import numpy as np
import pytest

from pipeline.core.config import DetectorsConfig, MotionBurstConfig, SceneCutConfig, SilenceConfig
from pipeline.output.records import event_id, schema_for
from pipeline.stream.detectors.bank import AudioSeries, DetectorBank, DetectorInputError, VideoSeries

STREAM = "cam-1"
MEDIA_END_S = 12.0
FRAME_S = 0.01

# Scene content: (luma_mean, live). Live content moves a little between frames; other content
# repeats itself exactly.
CONTENT = {"A": (0.45, True), "B": (0.35, True), "W": (0.98, False), "K": (0.02, False), "F": (0.50, False)}


def scene_at(t_s: float) -> str:
    if t_s < 3.0:
        return "A"
    if 5.0 <= t_s < 5.4:
        return "W"
    if t_s < 8.0:
        return "B"
    if t_s < 9.5:
        return "K"
    return "F"


def video_series(t_s: np.ndarray, scene_of=scene_at, seed: int = 0) -> VideoSeries:
    """Signals as the upstream stage would measure them for the scenes at ``t_s``."""
    rng = np.random.default_rng(seed)
    scenes = [scene_of(float(t)) for t in t_s]
    luma = np.array([CONTENT[s][0] for s in scenes])
    hist = np.full(len(t_s), np.nan)
    motion = np.full(len(t_s), np.nan)
    for i in range(1, len(t_s)):
        if scenes[i] != scenes[i - 1]:
            hist[i] = 0.8
            motion[i] = 0.2 + abs(luma[i] - luma[i - 1])
        elif CONTENT[scenes[i]][1]:
            hist[i] = rng.uniform(0.01, 0.05)
            motion[i] = rng.uniform(0.01, 0.05)
        else:
            hist[i] = 0.0
            motion[i] = 0.0
    return VideoSeries(t_s=t_s, luma_mean=luma, hist_distance=hist, motion=motion)


def audio_series(t_s: np.ndarray, seed: int = 1) -> AudioSeries:
    rng = np.random.default_rng(seed)
    rms = -20.0 + rng.uniform(-0.3, 0.3, len(t_s))
    rms[(t_s >= 5.0 - 1e-9) & (t_s < 5.4 - 1e-9)] = -3.0
    rms[(t_s >= 6.0 - 1e-9) & (t_s < 7.0 - 1e-9)] = -120.0
    flux = rng.uniform(0.0, 1.0, len(t_s))
    flux[0] = np.nan
    return AudioSeries(t_s=t_s, rms_dbfs=rms, flux=flux, frame_s=FRAME_S)


VIDEO = video_series(np.arange(48) * 0.25)
AUDIO = audio_series(np.arange(1200) * FRAME_S)


def split(series, sizes):
    """Cut a series into consecutive chunks of the given sizes (the last takes the rest)."""
    cls = type(series)
    names = ["t_s", "luma_mean", "hist_distance", "motion"] if cls is VideoSeries else ["t_s", "rms_dbfs", "flux"]
    extra = {} if cls is VideoSeries else {"frame_s": series.frame_s}
    bounds = np.cumsum([0, *sizes])
    bounds = [int(b) for b in bounds if b < len(series)] + [len(series)]
    return [cls(**{n: getattr(series, n)[a:b] for n in names}, **extra) for a, b in zip(bounds, bounds[1:])]


def run(cfg=None, video_chunks=(VIDEO,), audio_chunks=(AUDIO,), video_end_s=MEDIA_END_S,
        audio_end_s=MEDIA_END_S, stream_id=STREAM):
    """Feed the chunks interleaved, as the pipeline would, then finish; all events in order."""
    bank = DetectorBank(stream_id, cfg or DetectorsConfig())
    events = []
    for i in range(max(len(video_chunks), len(audio_chunks))):
        if i < len(video_chunks):
            events += bank.on_video(video_chunks[i])
        if i < len(audio_chunks):
            events += bank.on_audio(audio_chunks[i])
    events += bank.finish(video_end_s, audio_end_s)
    return events


def labelled(events, label):
    return [e for e in events if e.label == label]


def test_cut_at_3s_is_one_scene_cut_event():
    cuts = labelled(run(), "scene_cut")
    near = [e for e in cuts if 2.0 <= e.start_s <= 4.0]
    assert len(near) == 1
    assert near[0].start_s == near[0].end_s == 3.0
    assert 0.0 < near[0].confidence <= 1.0
    assert near[0].detector == "scene_cut" and near[0].detector_version == "1"
    assert near[0].attributes["hist_distance"] == pytest.approx(0.8)


def test_cuts_into_and_out_of_black_are_scene_cuts_too():
    assert [e.start_s for e in labelled(run(), "scene_cut")] == [3.0, 8.0, 9.5]


def test_flash_is_a_motion_burst_not_a_cut():
    events = run()
    assert not [e for e in labelled(events, "scene_cut") if 4.5 <= e.start_s <= 6.5]
    bursts = labelled(events, "motion_burst")
    assert len(bursts) == 1
    # In at 5.0, out at 5.5 (first frame after 5.4), calm again from the frame after that.
    assert (bursts[0].start_s, bursts[0].end_s) == (5.0, 5.75)


def test_confirmed_cut_frames_are_no_motion_burst_even_with_scene_cut_disabled():
    cfg = DetectorsConfig(scene_cut=SceneCutConfig(enabled=False))
    events = run(cfg)
    assert not labelled(events, "scene_cut")
    assert [(e.start_s, e.end_s) for e in labelled(events, "motion_burst")] == [(5.0, 5.75)]


def test_bursts_closer_than_merge_gap_merge_and_farther_ones_do_not():
    t_s = np.arange(40) * 0.25
    motion = np.full(40, 0.02)
    motion[[8, 10, 20]] = 0.5  # 2.0 and 2.5: 0.25 s apart from calm 2.25; 5.0: far away
    series = VideoSeries(t_s, np.full(40, 0.4), np.full(40, 0.02), motion)
    bursts = labelled(run(None, (series,), ()), "motion_burst")
    assert [(e.start_s, e.end_s) for e in bursts] == [(2.0, 2.75), (5.0, 5.25)]
    assert bursts[0].attributes["frames"] == 2


def test_silence_spans_chunks_as_one_event_with_real_start_and_end():
    events = run(audio_chunks=split(AUDIO, [30] * 40))  # 0.3 s chunks: the silence spans four
    silences = labelled(events, "silence")
    assert len(silences) == 1
    assert silences[0].start_s == pytest.approx(6.0, abs=0.02)
    assert silences[0].end_s == pytest.approx(7.0, abs=0.02)
    assert silences[0].attributes["closed_by"] == "sound"
    assert silences[0].confidence == 1.0


def test_loud_onset_starts_within_one_subframe_of_the_beep():
    onsets = [e for e in labelled(run(), "loud_onset") if 4.0 <= e.start_s <= 6.0]
    assert len(onsets) == 1
    assert abs(onsets[0].start_s - 5.0) <= FRAME_S
    assert abs(onsets[0].end_s - 5.4) <= FRAME_S
    assert onsets[0].attributes["rise_db"] == pytest.approx(17.0, abs=0.5)
    assert 0.5 < onsets[0].confidence < 0.6  # 17 dB of a 30 dB scale


def test_black_video_times_within_one_frame():
    blacks = labelled(run(), "black_video")
    assert len(blacks) == 1
    assert blacks[0].start_s == pytest.approx(8.0, abs=0.25)
    assert blacks[0].end_s == pytest.approx(9.5, abs=0.25)


def test_frozen_video_excludes_black():
    frozen = labelled(run(), "frozen_video")
    # The black frames repeat each other for 1.5 s but are not frozen video; the flash frames
    # repeat each other for 0.25 s only.
    assert [(e.start_s, e.end_s) for e in frozen] == [(9.5, 12.0)]


def test_chunked_and_whole_series_give_identical_events():
    def records(events):  # chunking changes which call returns an event, never the event
        return sorted((e.to_dict() for e in events), key=lambda d: (d["start_s"], d["end_s"], d["label"]))

    whole = records(run())
    assert len(whole) == 9
    rng = np.random.default_rng(7)
    for _ in range(5):
        video_chunks = split(VIDEO, rng.integers(1, 9, 48))
        audio_chunks = split(AUDIO, rng.integers(1, 250, 1200))
        assert records(run(video_chunks=video_chunks, audio_chunks=audio_chunks)) == whole
    one_by_one = run(video_chunks=split(VIDEO, [1] * 48), audio_chunks=split(AUDIO, [1] * 1200))
    assert records(one_by_one) == whole


def test_event_ids_are_deterministic():
    first, second = run(), run()
    assert [e.event_id for e in first] == [e.event_id for e in second]
    assert all(e.event_id == event_id(STREAM, e.label, e.start_s) for e in first)
    assert len({e.event_id for e in first}) == len(first)
    assert not {e.event_id for e in first} & {e.event_id for e in run(stream_id="cam-2")}


def test_events_match_the_event_schema():
    for event in run():
        jsonschema.validate(json.loads(event.to_json()), schema_for("event"))


def test_disabled_detector_emits_nothing():
    cfg = DetectorsConfig(silence=SilenceConfig(enabled=False), motion_burst=MotionBurstConfig(enabled=False))
    events = run(cfg)
    assert not labelled(events, "silence") and not labelled(events, "motion_burst")
    assert {e.label for e in events} == {"scene_cut", "black_video", "frozen_video", "loud_onset"}
    assert "silence" not in DetectorBank(STREAM, cfg).detector_names


def test_condition_open_at_end_is_closed_by_finish():
    bank = DetectorBank(STREAM, DetectorsConfig())
    events = bank.on_video(VIDEO)
    assert not labelled(events, "frozen_video")
    assert bank.pending_from_s() == 9.5
    closed = bank.finish(MEDIA_END_S, None)
    assert [(e.label, e.start_s, e.end_s) for e in closed] == [("frozen_video", 9.5, 12.0)]
    assert bank.pending_from_s() is None
    assert bank.finish(MEDIA_END_S, None) == []


def test_pending_from_s_holds_an_undecided_cut_and_its_frames_back():
    bank = DetectorBank(STREAM, DetectorsConfig())
    events = bank.on_video(split(VIDEO, [14])[0])  # up to 3.25: the cut at 3.0 needs 0.6 s
    assert not labelled(events, "scene_cut")
    assert bank.pending_from_s() == 3.0
    assert [e.start_s for e in labelled(bank.on_video(split(VIDEO, [14, 1])[1]), "scene_cut")] == []
    assert [e.start_s for e in labelled(bank.on_video(split(VIDEO, [15, 1])[1]), "scene_cut")] == [3.0]


def test_cut_with_too_little_lookahead_is_confirmed_when_the_media_ends():
    t_s = np.arange(14) * 0.25  # ends at 3.25: only 0.25 s after the cut
    events = run(video_chunks=(video_series(t_s),), audio_chunks=(), video_end_s=3.5, audio_end_s=None)
    cut = labelled(events, "scene_cut")
    assert [e.start_s for e in cut] == [3.0]
    assert cut[0].attributes["lookahead_s"] == pytest.approx(0.5)


def test_cut_on_variable_frame_rate_is_at_the_real_pts():
    rng = np.random.default_rng(3)
    t_s = np.cumsum(rng.uniform(0.12, 0.4, 60))
    cut_t_s = float(t_s[np.searchsorted(t_s, 4.0)])  # the first frame at or after 4.0
    series = video_series(t_s, scene_of=lambda t: "A" if t < cut_t_s else "B")
    cuts = labelled(run(video_chunks=split(series, [7] * 9), audio_chunks=(), video_end_s=float(t_s[-1]),
                        audio_end_s=None), "scene_cut")
    assert [(e.start_s, e.end_s) for e in cuts] == [(cut_t_s, cut_t_s)]


def test_audio_gap_closes_silence_at_the_last_subframe_end():
    # Silence from 2.0; audio stops after the sub-frame at 2.79 and resumes, silent, at 4.0.
    t_s = np.concatenate([np.arange(0, 280), np.arange(400, 600)]) * FRAME_S
    rms = np.where(t_s < 2.0 - 1e-9, -20.0, -120.0)
    rms[t_s >= 4.5 - 1e-9] = -20.0
    series = AudioSeries(t_s=t_s, rms_dbfs=rms, flux=np.zeros(len(t_s)), frame_s=FRAME_S)
    silences = labelled(run(video_chunks=(), audio_chunks=split(series, [100] * 5), video_end_s=None,
                            audio_end_s=6.0), "silence")
    assert [(e.start_s, e.attributes["closed_by"]) for e in silences] == [(2.0, "gap"), (4.0, "sound")]
    assert silences[0].end_s == pytest.approx(2.8, abs=1e-9)
    assert silences[1].end_s == pytest.approx(4.5, abs=1e-9)


def test_finish_never_extends_audio_past_the_last_subframe():
    t_s = np.arange(300) * FRAME_S
    series = AudioSeries(t_s=t_s, rms_dbfs=np.where(t_s < 2.0, -20.0, -120.0), flux=np.zeros(300))
    silences = labelled(run(video_chunks=(), audio_chunks=(series,), video_end_s=None, audio_end_s=60.0),
                        "silence")
    assert [(e.start_s, e.attributes["closed_by"]) for e in silences] == [(2.0, "end")]
    assert silences[0].end_s == pytest.approx(3.0, abs=1e-9)


def test_series_out_of_time_order_is_a_typed_error():
    bank = DetectorBank(STREAM, DetectorsConfig())
    bank.on_audio(split(AUDIO, [100])[0])
    with pytest.raises(DetectorInputError) as info:
        bank.on_audio(split(AUDIO, [50])[0])
    assert info.value.stream_id == STREAM


def test_sound_returning_after_silence_is_a_short_onset_that_settles():
    # The tone at -20 dBFS after 1 s of digital silence rises 100 dB over its baseline: an
    # onset at 7.0, closed once the running baseline has caught up (after baseline_s), not
    # stretched to the end of the media.
    onsets = [e for e in labelled(run(), "loud_onset") if e.start_s >= 6.0]
    assert len(onsets) == 1
    assert onsets[0].start_s == 7.0 and onsets[0].attributes["closed_by"] == "settled"
    assert 7.5 <= onsets[0].end_s <= 7.6


def test_a_condition_open_for_an_hour_holds_constant_memory():
    # A camera frozen black and silent for an hour: the open conditions keep running statistics,
    # not every sample, so the detectors' memory does not grow with the condition's length.
    import tracemalloc

    from pipeline.core.config import SpeechConfig
    from pipeline.core.media import SpeechProbs

    bank = DetectorBank("cam", DetectorsConfig(), SpeechConfig())
    minute_frames, minute_subframes, minute_windows = 4 * 60, 100 * 60, int(60 / 0.032)

    def one_minute(minute: int) -> None:
        t0 = 60.0 * minute
        frames_t = t0 + np.arange(minute_frames) / 4.0
        bank.on_video(VideoSeries(frames_t, np.zeros(minute_frames), np.zeros(minute_frames), np.zeros(minute_frames)))
        sub_t = t0 + np.arange(minute_subframes) / 100.0
        bank.on_audio(AudioSeries(sub_t, np.full(minute_subframes, -90.0), np.zeros(minute_subframes)))
        windows_t = t0 + np.arange(minute_windows) * 0.032
        bank.on_speech(SpeechProbs(np.full(minute_windows, 0.9, np.float32), windows_t, 0.032))

    one_minute(0)
    tracemalloc.start()
    one_minute(1)
    after_two, _ = tracemalloc.get_traced_memory()
    for minute in range(2, 60):
        one_minute(minute)
    after_sixty, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert after_sixty - after_two < 64 * 1024, after_sixty - after_two
    closed = {e.label: e for e in bank.finish(3600.0, 3600.0)}
    assert closed["black_video"].attributes["frames"] == 60 * minute_frames
    assert closed["silence"].attributes["mean_dbfs"] == pytest.approx(-90.0)
    assert closed["speech"].attributes["mean_prob"] == pytest.approx(0.9)
    assert all(e.start_s == 0.0 for e in closed.values()), closed
