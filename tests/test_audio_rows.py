"""Audio rows keep their PTS across gaps in the source (unit test, no Ray)."""

from fractions import Fraction

import av
import numpy as np
import pytest

from pipeline.ingest.audio_rows import AudioRowCutter


def frame_at(start_s: float, samples: int = 1024, rate: int = 16000) -> av.AudioFrame:
    frame = av.AudioFrame.from_ndarray(np.full((1, samples), 0.25, np.float32), format="fltp", layout="mono")
    frame.sample_rate = rate
    frame.pts = int(round(start_s * rate))
    frame.time_base = Fraction(1, rate)
    return frame


def test_rows_after_a_pts_gap_start_at_the_new_pts():
    cutter = AudioRowCutter(16000, 0.1)
    t = 0.0
    for _ in range(10):  # 0.64 s
        cutter.push(frame_at(t), t)
        t += 1024 / 16000
    gap_start = t
    t += 0.155  # the source skips 155 ms, as fire2.mp4 does
    resume = t
    for _ in range(10):
        cutter.push(frame_at(t), t)
        t += 1024 / 16000
    cutter.flush()
    rows = cutter.take_rows()
    starts = rows.start_s
    assert starts[0] == 0.0
    before = starts[starts < gap_start]
    after = starts[starts >= gap_start]
    assert np.allclose(np.diff(before), 0.1)
    assert after[0] == pytest.approx(resume, abs=1e-6)
    assert np.allclose(np.diff(after), 0.1)
    assert rows.samples_f32.shape[1] == 1600


def test_resampling_48k_stereo_gives_16k_mono_rows():
    cutter = AudioRowCutter(16000, 0.1)
    stereo = av.AudioFrame.from_ndarray(np.full((2, 4800), 0.5, np.float32), format="fltp", layout="stereo")
    stereo.sample_rate, stereo.pts, stereo.time_base = 48000, 0, Fraction(1, 48000)
    cutter.push(stereo, 0.0)
    cutter.flush()
    rows = cutter.take_rows()
    assert rows.samples_f32.shape == (1, 1600)
    assert rows.samples_f32.dtype == np.float32
    assert cutter.watermark_s == pytest.approx(0.1)
