"""Signal curves: per-second loudness, luma and motion, emitted where both modalities were seen."""

from __future__ import annotations

import numpy as np

from pipeline.stream.signal_curves import SignalCurves


def test_bins_hold_the_mean_and_peak_of_their_samples_and_wait_for_both_modalities():
    curves = SignalCurves("s")
    t_video = np.arange(0, 3, 0.25)
    curves.add_video(t_video, np.where(t_video < 1, 0.2, 0.6), np.full(len(t_video), np.nan), end_s=3.0)
    assert curves.take() is None  # no audio seen yet: nothing is complete
    t_audio = np.arange(0, 2, 0.01)
    curves.add_audio(t_audio, np.where(t_audio >= 1.5, -10.0, -60.0), end_s=2.0)
    first = curves.take()
    assert (first.start_s, first.step_s) == (0.0, 1.0)
    assert first.luma == {"mean": [0.2, 0.6], "peak": [0.2, 0.6]}
    assert first.loudness_dbfs["mean"] == [-60.0, -35.0] and first.loudness_dbfs["peak"] == [-60.0, -10.0]
    assert first.motion == {"mean": [None, None], "peak": [None, None]}  # NaN (no previous frame) is no sample
    rest = curves.take(final=True)
    assert rest.start_s == 2.0 and rest.luma["mean"] == [0.6] and rest.loudness_dbfs["mean"] == [None]
    assert curves.take(final=True) is None


def test_a_stream_without_audio_is_not_held_back_by_it():
    curves = SignalCurves("s", has_audio=False)
    curves.add_video(np.array([0.0, 1.0, 2.0]), np.array([0.1, 0.2, 0.3]), np.array([0.0, 0.5, 0.1]), end_s=2.25)
    record = curves.take()
    assert record.luma["mean"] == [0.1, 0.2] and record.motion["peak"] == [0.0, 0.5]


def test_signals_records_tile_the_sample_clip_and_show_its_silence(replay, clips):
    run = replay(clips["av.mp4"])
    signals = run.of("signals")
    starts = [r["start_s"] for r in signals]
    assert starts == sorted(starts) and starts[0] == 0.0
    loudness = [v for r in signals for v in r["loudness_dbfs"]["mean"]]
    assert len(loudness) == 12  # 12 s of media, one bin a second
    assert loudness[6] < -90 and loudness[3] > -40  # silence from 6 to 7 s; a tone before
    luma = [v for r in signals for v in r["luma"]["mean"]]
    assert luma[8] < 0.05 < luma[3]  # black from 8 s
