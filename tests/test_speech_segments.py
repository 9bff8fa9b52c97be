"""Where speech is cut for the recogniser (pipeline/stream/speech_segments.py), on synthetic timestamps:
the speech detector's spans in, segments with their audio out, however the stream is chunked."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.core.config import DetectorsConfig, SpeechConfig
from pipeline.core.media import SpeechProbs
from pipeline.stream.detectors.bank import DetectorBank
from pipeline.stream.speech_segments import PAD_BEFORE_S, QUIET_SEARCH_S, SpeechSegmenter

RATE_HZ = 16000
ROW = 1600  # 100 ms audio rows, as the decoders cut them
WINDOW = 512  # silero-vad's 32 ms window
WINDOW_S = WINDOW / RATE_HZ
SETTLE_S = SpeechConfig().min_silence_s + WINDOW_S
STREAM = "talk"


def segmenter(max_segment_s: float = 15.0, min_segment_s: float = 0.3) -> SpeechSegmenter:
    return SpeechSegmenter(STREAM, RATE_HZ, max_segment_s, min_segment_s, settle_s=SETTLE_S)


def tone(seconds: float) -> np.ndarray:
    """A 300 Hz tone whose every sample says when it was (its index), so cuts can be checked exactly."""
    return (0.3 * np.sin(2 * np.pi * 300 * np.arange(int(round(seconds * RATE_HZ))) / RATE_HZ)).astype(np.float32)


def run(audio: np.ndarray, spans: list[tuple[float, float]], rows_per_chunk, segmenter_=None,
        start_s: float = 0.0, gap_after_s: float | None = None, gap_s: float = 0.0):
    """Feed ``audio`` (from ``start_s``) and VAD probabilities that are 0.9 inside ``spans`` through
    the real speech detector and a segmenter, in chunks of ``rows_per_chunk`` rows (an int, or one
    size per chunk), as the session does. A gap of ``gap_s`` in the PTS may follow ``gap_after_s``."""
    cut = segmenter_ or segmenter()
    bank = DetectorBank(STREAM, DetectorsConfig(), SpeechConfig())
    n_rows = len(audio) // ROW
    rows = audio[: n_rows * ROW].reshape(n_rows, ROW)
    row_start_s = start_s + np.arange(n_rows) * ROW / RATE_HZ
    if gap_after_s is not None:
        row_start_s[row_start_s >= gap_after_s - 1e-9] += gap_s
    sizes = [rows_per_chunk] * n_rows if isinstance(rows_per_chunk, int) else list(rows_per_chunk)
    segments, buffered, heard_until_s, at, chunk, vad_run = [], [], 0.0, 0, 0, {}
    while at < n_rows:
        size = max(1, sizes[chunk % len(sizes)])
        chunk += 1
        chunk_rows, chunk_starts = rows[at:at + size], row_start_s[at:at + size]
        at += size
        cut.add_audio(chunk_rows, chunk_starts)
        # Whole VAD windows inside each contiguous run of this chunk's rows (runs restart at gaps).
        t_s = _window_times(chunk_starts, vad_run)
        prob = np.full(len(t_s), 0.05, np.float32)
        for a, b in spans:
            prob[(t_s >= a - 1e-9) & (t_s < b - 1e-9)] = 0.9
        events = bank.on_speech(SpeechProbs(prob, t_s, WINDOW_S)) if len(t_s) else []
        if len(t_s):
            heard_until_s = float(t_s[-1]) + WINDOW_S
        segments += cut.on_speech([(e.start_s, e.end_s) for e in events], bank.speech_open_from_s(), heard_until_s)
        buffered.append(cut.buffered_s)
    events = bank.finish(None, float(row_start_s[-1]) + ROW / RATE_HZ)
    segments += cut.on_speech([(e.start_s, e.end_s) for e in events], None, heard_until_s)
    return segments, buffered


def _window_times(chunk_starts: np.ndarray, run: dict) -> np.ndarray:
    """Windows of 512 samples that follow each other from the start of each run of rows; a window
    belongs to the chunk in which its last sample arrives (as SpeechActivity scores them).
    ``run`` holds the current run across chunks."""
    times = []
    for row_start_s in chunk_starts.tolist():
        if not run or abs(row_start_s - run["end_s"]) > 1e-6:
            run.update(start_s=row_start_s, samples=0, windows=0)
        run["samples"] += ROW
        run["end_s"] = row_start_s + ROW / RATE_HZ
        while (run["windows"] + 1) * WINDOW <= run["samples"]:
            times.append(run["start_s"] + run["windows"] * WINDOW_S)
            run["windows"] += 1
    return np.array(times, np.float64)


def spans_of(segments) -> list[tuple[float, float, str]]:
    return [(round(s.start_s, 3), round(s.end_s, 3), s.closed_by) for s in segments]


def sample_at(audio: np.ndarray, t_s: float, start_s: float = 0.0) -> int:
    return int(round((t_s - start_s) * RATE_HZ))


def test_closed_speech_is_one_segment_with_its_audio_padded_before_and_after():
    audio = tone(6.0)
    (segment,), _ = run(audio, [(1.024, 3.2)], rows_per_chunk=40)
    assert (segment.start_s, segment.end_s, segment.closed_by) == pytest.approx((1.024, 3.2, "speech_end"))
    assert segment.stream_id == STREAM and segment.sample_rate_hz == RATE_HZ and len(segment) == 1
    assert segment.audio_start_s == pytest.approx(1.024 - PAD_BEFORE_S, abs=1 / RATE_HZ)
    first = sample_at(audio, segment.audio_start_s)
    np.testing.assert_array_equal(segment.samples_f32, audio[first:first + segment.samples_f32.size])
    audio_end_s = segment.audio_start_s + segment.samples_f32.size / RATE_HZ
    assert audio_end_s == pytest.approx(3.2 + SETTLE_S, abs=1 / RATE_HZ)  # what is surely heard past its end


def test_speech_at_the_start_of_the_stream_is_padded_only_with_audio_that_exists():
    (segment,), _ = run(tone(3.0), [(0.0, 1.6)], rows_per_chunk=10, start_s=0.0)
    assert segment.audio_start_s == 0.0 and segment.start_s == 0.0


def test_speech_shorter_than_min_segment_is_not_transcribed():
    segments, _ = run(tone(4.0), [(1.024, 1.312), (2.048, 2.56)], rows_per_chunk=40,
                      segmenter_=segmenter(min_segment_s=0.4))
    assert spans_of(segments) == [(2.048, 2.56, "speech_end")]


def test_long_speech_is_cut_at_its_quietest_point_before_the_limit():
    audio = tone(14.0)
    quiet_s = 4.5  # a pause between words inside the last 1.5 s before 0.512 + 5 s
    audio[sample_at(audio, quiet_s):sample_at(audio, quiet_s + 0.02)] = 0.0
    segments, _ = run(audio, [(0.512, 12.0)], rows_per_chunk=40, segmenter_=segmenter(max_segment_s=5.0))
    assert [s.closed_by for s in segments] == ["max_segment", "max_segment", "speech_end"]
    first, second, last = segments
    assert first.end_s == pytest.approx(quiet_s + 0.01, abs=0.011)
    assert second.start_s == first.end_s and last.start_s == second.end_s  # contiguous, nothing lost
    assert second.end_s - second.start_s <= 5.0 and second.end_s - second.start_s >= 5.0 - QUIET_SEARCH_S
    assert last.end_s == pytest.approx(12.0)
    # No padding at a cut: the word before it is not heard again after it.
    assert second.audio_start_s == pytest.approx(second.start_s, abs=1 / RATE_HZ)
    assert first.audio_start_s + first.samples_f32.size / RATE_HZ == pytest.approx(first.end_s, abs=1 / RATE_HZ)


def test_open_speech_is_cut_once_it_is_sure_to_pass_the_limit_not_before():
    cut = segmenter(max_segment_s=5.0)
    audio = tone(8.0)
    cut.add_audio(audio[None, :sample_at(audio, 5.0)], np.array([0.0]))
    assert cut.on_speech([], open_from_s=0.0, heard_until_s=5.0) == []  # it may still close before 5 s
    assert cut.on_speech([], open_from_s=0.0, heard_until_s=5.0 + SETTLE_S - 0.01) == []
    cut.add_audio(audio[None, sample_at(audio, 5.0):], np.array([5.0]))
    (segment,) = cut.on_speech([], open_from_s=0.0, heard_until_s=5.0 + SETTLE_S)
    assert segment.closed_by == "max_segment" and 5.0 - QUIET_SEARCH_S <= segment.end_s <= 5.0


def test_chunk_boundaries_never_change_the_segments():
    audio = tone(40.0)
    rng = np.random.default_rng(0)
    for at_s in rng.uniform(1.0, 39.0, size=12):  # quiet moments for the cuts to find
        audio[sample_at(audio, at_s):sample_at(audio, at_s + 0.03)] *= 0.01
    spans = [(0.512, 3.008), (3.52, 22.016), (22.592, 23.104), (24.0, 39.04)]
    reference, _ = run(audio, spans, rows_per_chunk=40)
    assert [s.closed_by for s in reference].count("max_segment") == 2
    for sizes in ([1], [7], [40, 3, 17], list(rng.integers(1, 60, size=30))):
        segments, _ = run(audio, spans, rows_per_chunk=sizes)
        assert spans_of(segments) == spans_of(reference), sizes
        for got, want in zip(segments, reference):
            assert got.audio_start_s == want.audio_start_s
            np.testing.assert_array_equal(got.samples_f32, want.samples_f32)


def test_memory_is_flat_outside_speech_and_bounded_inside():
    audio = tone(120.0)
    _, buffered = run(audio, [(50.0, 90.0)], rows_per_chunk=40, segmenter_=segmenter(max_segment_s=15.0))
    chunk_s = 40 * ROW / RATE_HZ
    assert max(buffered[:10]) <= PAD_BEFORE_S + chunk_s  # before the speech: a padding's worth, at most a chunk
    assert max(buffered) <= 15.0 + SETTLE_S + PAD_BEFORE_S + chunk_s
    assert buffered[-1] <= PAD_BEFORE_S + chunk_s


def test_a_gap_in_the_audio_ends_speech_and_no_padding_crosses_it():
    audio = tone(6.0)
    # Rows from 3.0 s on are stamped 2 s later: the PTS jumps (a lost packet run).
    segments, _ = run(audio, [(1.024, 9.0)], rows_per_chunk=10, gap_after_s=3.0, gap_s=2.0)
    first, second = segments
    assert first.end_s == pytest.approx(3.0, abs=WINDOW_S) and second.start_s == pytest.approx(5.0)
    assert second.audio_start_s == pytest.approx(5.0)  # its run begins there: no audio from before the gap
    assert first.audio_start_s + first.samples_f32.size / RATE_HZ <= 3.0 + 1e-9
