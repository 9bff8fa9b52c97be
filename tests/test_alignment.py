"""Specification of pipeline.stream.alignment, with synthetic timestamps (no media, no Ray)."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.stream.alignment import AlignmentError, TimedRows, WindowAligner, WindowSpec

# A window that is never decided, or decided one by one across a huge gap, shows up as a hang.
pytestmark = pytest.mark.timeout(20)


def rows(t_s, dim: int = 3) -> TimedRows:
    """Rows whose columns encode their own time, so a test can tell which row went where."""
    t_s = np.asarray(t_s, dtype=np.float64)
    tokens = np.repeat(t_s[:, None], dim, axis=1).astype(np.float32) * np.arange(1, dim + 1, dtype=np.float32)
    return TimedRows(t_s, {"tokens": tokens, "signal": -t_s})


def ticks(start_s: float, stop_s: float, rate_hz: float = 10.0) -> np.ndarray:
    """Row times start_s, start_s + 1/rate, ... below stop_s, computed from an index (no drift)."""
    n = int(round((stop_s - start_s) * rate_hz))
    return start_s + np.arange(n) / rate_hz


def aligner(window_s=2.0, hop_s=1.0, max_skew_s=4.0, modalities=("video", "audio")) -> WindowAligner:
    return WindowAligner("cam-1", WindowSpec(window_s, hop_s), max_skew_s, modalities)


# --- window ---------------------------------------------------------------------------

def test_window_is_start_inclusive_end_exclusive_from_zero():
    spec = WindowSpec(window_s=2.0, hop_s=1.0)
    assert (spec.start_s(0), spec.end_s(0)) == (0.0, 2.0)
    assert (spec.start_s(3), spec.end_s(3)) == (3.0, 5.0)
    assert list(spec.indices_containing(0.0)) == [0]
    assert list(spec.indices_containing(2.0)) == [1, 2]
    assert list(spec.indices_containing(1.999)) == [0, 1]
    assert list(spec.indices_containing(-0.001)) == []


@pytest.mark.parametrize("window_s, hop_s", [(0.3, 0.1), (2.0, 1.0), (1.0, 1 / 3), (0.7, 0.7)])
def test_indices_containing_agrees_with_window_bounds_despite_float_rounding(window_s, hop_s):
    spec = WindowSpec(window_s, hop_s)
    bounds = np.concatenate([[spec.start_s(k), spec.end_s(k)] for k in range(2000)])
    # Times on and one ulp either side of every boundary, where t / hop_s rounds across it.
    times = np.concatenate([bounds, np.nextafter(bounds, -np.inf), np.nextafter(bounds, np.inf)])
    for t in times[times >= 0]:
        found = spec.indices_containing(float(t))
        assert len(found) >= 1
        assert all(spec.start_s(i) <= t < spec.end_s(i) for i in found)
        assert found.start == 0 or not spec.end_s(found.start - 1) > t
        assert not spec.start_s(found.stop) <= t


def test_tumbling_windows_meet_exactly_despite_float_rounding():
    spec = WindowSpec(window_s=0.7, hop_s=0.7)
    for k in range(1, 20000):
        assert spec.end_s(k - 1) == spec.start_s(k)  # no row can fall between two windows
    assert spec.start_s(13) == 9.1 == 91 / 10  # a bound equals the time a PTS gives for it


def test_hop_longer_than_window_is_rejected():
    with pytest.raises(ValueError):
        WindowSpec(window_s=1.0, hop_s=2.0)


# --- rows -----------------------------------------------------------------------------

def test_timed_rows_select_and_concat_keep_columns_aligned():
    a, b = rows([0.0, 0.5, 1.0]), rows([1.5, 2.0])
    both = TimedRows.concat([a, b])
    assert len(both) == 5
    picked = both[both.t_s >= 1.0]
    np.testing.assert_array_equal(picked.t_s, [1.0, 1.5, 2.0])
    np.testing.assert_array_equal(picked.columns["signal"], [-1.0, -1.5, -2.0])
    np.testing.assert_array_equal(both[np.array([4, 0])].columns["tokens"][:, 0], [2.0, 0.0])


def test_timed_rows_reject_a_column_of_the_wrong_length():
    with pytest.raises(ValueError):
        TimedRows(np.array([0.0, 1.0]), {"tokens": np.zeros((3, 4))})


# --- watermark ------------------------------------------------------------------------

def test_window_emitted_once_every_modality_passed_its_end():
    al = aligner()
    al.add("video", rows(ticks(0, 2)))
    al.advance("video", 2.0)
    al.add("audio", rows(ticks(0, 2)))  # last audio row 1.9: audio may still send 1.95
    assert al.pop_ready() == []
    al.advance("audio", 1.99)
    assert al.pop_ready() == []
    al.advance("audio", 2.0)
    [w] = al.pop_ready()
    assert (w.index, w.start_s, w.end_s, w.partial) == (0, 0.0, 2.0, False)
    assert len(w.rows["video"]) == 20 and len(w.rows["audio"]) == 20
    assert al.pop_ready() == []  # emitted once
    assert al.stats.windows_emitted == 1


def test_window_waits_for_late_audio():
    al = aligner(max_skew_s=4.0)
    al.add("video", rows(ticks(0, 5)))
    al.advance("video", 5.0)
    al.add("audio", rows(ticks(0, 1)))
    assert al.pop_ready() == []  # video is 3 s past window 0's end: within the skew, so wait
    al.add("audio", rows(ticks(1, 2.5)))
    [w] = al.pop_ready()
    assert w.index == 0 and not w.partial
    assert w.rows["audio"].t_s[-1] == pytest.approx(1.9)


def test_adding_rows_implies_the_watermark():
    al = aligner()
    al.add("video", rows([0.5, 2.0]))
    al.add("audio", rows([0.7, 2.1]))
    [w] = al.pop_ready()  # no advance(): a row at 2.0 says nothing earlier will follow
    assert w.index == 0


def test_watermark_never_moves_backwards():
    al = aligner()
    al.add("video", rows([0.5]))
    al.add("audio", rows([0.5]))
    al.advance("video", 5.0)
    al.advance("video", 1.0)
    assert al.states["video"].watermark_s == 5.0
    al.advance("audio", 2.0)
    assert [w.index for w in al.pop_ready()] == [0]


def test_rows_out_of_time_order_are_rejected():
    al = aligner()
    with pytest.raises(AlignmentError, match="cam-1"):
        al.add("video", rows([1.0, 0.5]))
    al.add("audio", rows([1.0]))
    with pytest.raises(AlignmentError):
        al.add("audio", rows([0.9]))


# --- which rows go where --------------------------------------------------------------

def test_token_at_window_end_belongs_to_next_window_only():
    al = aligner(window_s=2.0, hop_s=2.0)
    for m in ("video", "audio"):
        al.add(m, rows([0.0, 1.9, 2.0, 3.0]))
        al.advance(m, 4.0)
    w0, w1 = al.pop_ready()
    np.testing.assert_array_equal(w0.rows["video"].t_s, [0.0, 1.9])
    np.testing.assert_array_equal(w1.rows["video"].t_s, [2.0, 3.0])


def test_overlapping_windows_share_tokens():
    al = aligner(window_s=2.0, hop_s=1.0)
    for m in ("video", "audio"):
        al.add(m, rows([0.5, 1.5, 2.5]))
        al.advance(m, 3.0)
    w0, w1 = al.pop_ready()
    np.testing.assert_array_equal(w0.rows["audio"].t_s, [0.5, 1.5])
    np.testing.assert_array_equal(w1.rows["audio"].t_s, [1.5, 2.5])


def test_columns_travel_with_their_rows():
    al = aligner(window_s=2.0, hop_s=1.0)
    for m in ("video", "audio"):
        al.add(m, rows(ticks(0, 4), dim=4))
        al.advance(m, 4.0)
    for w in al.pop_ready():
        for m in ("video", "audio"):
            got = w.rows[m]
            assert np.all((got.t_s >= w.start_s) & (got.t_s < w.end_s))
            np.testing.assert_array_equal(got.columns["signal"], -got.t_s)
            np.testing.assert_allclose(got.columns["tokens"], got.t_s[:, None] * np.arange(1, 5), rtol=1e-6)
            assert got.columns["tokens"].shape == (len(got), 4)


def test_emitted_rows_are_copies_not_views_of_the_buffer():
    al = aligner()
    for m in ("video", "audio"):
        al.add(m, rows([0.5, 1.5, 2.5]))
    [w0] = al.pop_ready()
    w0.rows["video"].columns["signal"][:] = 99.0
    for m in ("video", "audio"):
        al.advance(m, 3.0)
    [w1] = al.pop_ready()
    np.testing.assert_array_equal(w1.rows["video"].columns["signal"], [-1.5, -2.5])


def test_audio_starting_half_a_second_late_still_fills_the_first_window():
    al = aligner(window_s=2.0, hop_s=1.0)
    al.add("video", rows(ticks(0, 4)))
    al.add("audio", rows(ticks(0.5, 4)))
    for m in ("video", "audio"):
        al.advance(m, 4.0)
    w0 = al.pop_ready()[0]
    assert w0.index == 0 and not w0.partial  # audio has rows 0.5..1.9 in [0, 2): not missing
    assert w0.rows["audio"].t_s[0] == pytest.approx(0.5)


def test_audio_starting_after_the_first_window_leaves_it_with_video_only():
    al = aligner(window_s=2.0, hop_s=1.0)
    al.add("video", rows(ticks(0, 4)))
    al.add("audio", rows(ticks(2.5, 4)))
    for m in ("video", "audio"):
        al.advance(m, 4.0)
    w0, w1, w2 = al.pop_ready()
    assert w0.missing == {"audio": "no_data"} and w0.rows["audio"] is None
    assert not w1.partial and w1.rows["audio"].t_s[0] == pytest.approx(2.5)
    assert not w2.partial and al.stats.partial_windows == 1


def test_windows_with_no_rows_are_skipped():
    al = aligner(window_s=2.0, hop_s=1.0)
    # Media starts at 10 s; both modalities have a gap over [20, 30).
    for m in ("video", "audio"):
        al.add(m, rows(np.concatenate([ticks(10, 20), ticks(30, 32)])))
        al.advance(m, 32.0)
    indices = [w.index for w in al.pop_ready()]
    assert indices == list(range(9, 20)) + list(range(29, 31))
    assert al.stats.windows_emitted == len(indices)
    assert al.stats.partial_windows == 0


# --- absent, finished, lagging, late --------------------------------------------------

def test_absent_modality_does_not_block_windows():
    al = aligner()
    al.finish("audio")  # a video-only file
    al.add("video", rows(ticks(0, 3)))
    al.advance("video", 3.0)
    ws = al.pop_ready()
    assert [w.index for w in ws] == [0, 1]
    assert all(w.missing == {"audio": "absent"} and w.rows["audio"] is None and w.partial for w in ws)
    assert al.stats.partial_windows == 2


def test_finished_modality_does_not_block_windows():
    al = aligner()
    al.add("audio", rows(ticks(0, 3)))
    al.finish("audio")
    al.add("video", rows(ticks(0, 6)))
    al.advance("video", 6.0)
    ws = {w.index: w for w in al.pop_ready()}
    assert sorted(ws) == [0, 1, 2, 3, 4]
    assert not ws[1].partial  # [1, 3) still holds audio rows up to 2.9
    assert ws[2].rows["audio"] is not None  # [2, 4) holds audio 2.0..2.9
    assert ws[3].missing == {"audio": "no_data"}  # after audio's last row: ended, not absent
    assert ws[4].missing == {"audio": "no_data"}


def test_finished_modality_does_not_make_the_other_lag():
    al = aligner(max_skew_s=1.0)
    al.add("video", rows(ticks(0, 20)))
    al.finish("video")
    al.add("audio", rows(ticks(0, 1)))
    assert al.pop_ready() == []  # audio is the only live modality: nothing to lag behind


def test_lagging_modality_is_masked_and_counted():
    al = aligner(window_s=2.0, hop_s=1.0, max_skew_s=1.0)
    al.add("audio", rows(ticks(0, 0.6)))  # audio stalls at 0.5 s
    al.add("video", rows(ticks(0, 4.1)))  # video reaches 4.0 s: 2 s past window 0's end
    ws = al.pop_ready()
    assert [w.index for w in ws] == [0]  # window 1 ends at 3.0: video only 1.0 s past, wait
    assert ws[0].missing == {"audio": "lagging"}
    assert ws[0].rows["audio"] is None  # masked even though audio has rows in [0, 2)
    assert len(ws[0].rows["video"]) == 20
    assert al.stats.masked_lagging == {"video": 0, "audio": 1}


def test_window_with_rows_only_from_a_masked_lagging_modality_is_skipped():
    al = aligner(window_s=2.0, hop_s=1.0, max_skew_s=1.0)
    al.add("audio", rows([0.2, 0.4]))  # audio stalls at 0.4 s
    al.add("video", rows(ticks(5, 6.1)))  # video has nothing before 5 s, reaches 6.0 s
    assert al.pop_ready() == []  # window 0: audio masked, video has no rows: nothing to fuse
    assert al.stats.windows_emitted == 0 and al.stats.masked_lagging["audio"] == 0
    al.add("audio", rows([0.6]))
    assert al.stats.late_rows["audio"] == 1  # window 0 was decided all the same


def test_a_long_gap_is_crossed_in_one_step():
    al = aligner(window_s=2.0, hop_s=0.5)
    for m in ("video", "audio"):
        al.add(m, rows([0.5, 1e9]))  # a billion seconds later: windows one by one would hang
        al.advance(m, 1e9 + 10)
    ws = al.pop_ready()
    assert [w.index for w in ws] == [0, 1] + list(al.spec.indices_containing(1e9))


def test_late_rows_are_counted_and_dropped():
    al = aligner(window_s=2.0, hop_s=1.0, max_skew_s=1.0)
    al.add("audio", rows([0.2]))
    al.add("video", rows(ticks(0, 4.1)))
    assert [w.index for w in al.pop_ready()] == [0]  # audio masked as lagging
    al.add("audio", rows([0.6, 0.8]))  # only in window 0, already emitted
    assert al.stats.late_rows["audio"] == 2
    assert al.buffered_rows("audio") == 0


def test_late_row_still_inside_an_open_window_is_kept_for_it_and_counted():
    al = aligner(window_s=2.0, hop_s=1.0, max_skew_s=1.0)
    al.add("audio", rows([0.2]))
    al.add("video", rows(ticks(0, 4.1)))
    al.pop_ready()
    al.add("audio", rows([0.9, 1.5, 2.5]))  # 0.9: window 0 only; 1.5: windows 0 and 1; 2.5: windows 1, 2
    assert al.stats.late_rows["audio"] == 2
    al.advance("audio", 3.0)
    [w1] = al.pop_ready()
    np.testing.assert_array_equal(w1.rows["audio"].t_s, [1.5, 2.5])


# --- end of stream and memory ---------------------------------------------------------

def test_all_done_emits_remaining_windows_with_rows_then_nothing_more():
    al = aligner(window_s=2.0, hop_s=1.0)
    for m in ("video", "audio"):
        al.add(m, rows([0.5, 1.5]))
    assert al.pop_ready() == []
    al.finish("video")
    al.finish("audio")
    assert [w.index for w in al.pop_ready()] == [0, 1]
    assert al.pop_ready() == []
    assert al.drained and al.buffered_rows() == 0
    with pytest.raises(AlignmentError):
        al.add("video", rows([3.0]))


def test_buffer_stays_bounded_on_a_long_stream():
    al = aligner(window_s=2.0, hop_s=1.0, max_skew_s=4.0)
    emitted = 0
    for second in range(3600):  # one hour of 10 Hz rows per modality, one add per second
        for m in ("video", "audio"):
            al.add(m, rows(ticks(second, second + 1), dim=8))
            al.advance(m, second + 1.0)
        emitted += len(al.pop_ready())
        # Per modality at most one window (2 s) plus one chunk (1 s) of rows stays buffered.
        assert al.buffered_rows() <= 2 * 10 * 3, f"buffer grew to {al.buffered_rows()} rows at {second} s"
    for m in ("video", "audio"):
        al.finish(m)
    emitted += len(al.pop_ready())
    assert emitted == al.stats.windows_emitted == 3600  # windows 0..3599 hold rows
    assert al.stats.partial_windows == 0 and al.buffered_rows() == 0
