"""Media segments from Kafka: the bounded pipe a decoder reads across messages, the ``seq``
bookkeeping that reports loss, and the headers that number and end a stream."""

from __future__ import annotations

import io
import threading

import av
import numpy as np
import pytest

from pipeline.app.sample import ClipSpec, write_clip
from pipeline.core.config import load_config
from pipeline.ingest.decode import MediaDecoder
from pipeline.ingest.segments import SegmentPipe, SequenceCheck, parse_headers

# Long enough for a thread that is not blocked to have finished; short enough to keep tests fast.
SETTLE_S = 0.2
JOIN_S = 10.0


def _in_thread(target, *args) -> tuple[threading.Thread, dict]:
    """Run target(*args) in a daemon thread; its return value (or exception) lands in the dict."""
    outcome: dict = {}

    def run():
        try:
            outcome["value"] = target(*args)
        except BaseException as exc:  # surfaced by the test that joins
            outcome["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, outcome


# -- SegmentPipe ------------------------------------------------------------------------


def test_read_returns_the_bytes_fed_from_another_thread():
    pipe = SegmentPipe()
    thread, _ = _in_thread(pipe.feed, b"abcdef")
    thread.join(JOIN_S)

    assert pipe.read(4) == b"abcd"
    assert pipe.read() == b"ef"
    assert pipe.bytes_fed == 6


def test_read_blocks_until_data_arrives():
    pipe = SegmentPipe()
    reader, outcome = _in_thread(pipe.read, 100)
    reader.join(SETTLE_S)
    assert reader.is_alive(), "read returned with nothing fed and the pipe not ended"

    pipe.feed(b"segment-1")
    reader.join(JOIN_S)
    assert not reader.is_alive()
    assert outcome["value"] == b"segment-1"


def test_read_blocks_until_end_then_returns_empty_bytes():
    pipe = SegmentPipe()
    reader, outcome = _in_thread(pipe.read, 100)
    reader.join(SETTLE_S)
    assert reader.is_alive()

    pipe.end()
    reader.join(JOIN_S)
    assert not reader.is_alive()
    assert outcome["value"] == b""
    assert pipe.ended


def test_bytes_fed_before_end_are_still_read_then_end_of_file():
    pipe = SegmentPipe()
    pipe.feed(b"last bytes")
    pipe.end()

    assert pipe.read(4) == b"last"
    assert pipe.read() == b" bytes"
    assert pipe.read() == b""
    assert pipe.read(10) == b""


def test_feed_blocks_while_more_than_max_buffered_bytes_wait_and_resumes_when_read_drains():
    pipe = SegmentPipe(max_buffered_bytes=10)
    pipe.feed(b"0123456789")  # fills the buffer to its bound

    feeder, outcome = _in_thread(pipe.feed, b"ABC")
    feeder.join(SETTLE_S)
    assert feeder.is_alive(), "feed did not wait for the reader with the buffer full"
    assert pipe.bytes_fed == 10

    assert pipe.read(4) == b"0123"
    feeder.join(JOIN_S)
    assert not feeder.is_alive()
    assert "error" not in outcome
    assert pipe.bytes_fed == 13
    assert pipe.read() == b"456789ABC"


def test_end_releases_a_blocked_feed():
    # A stream stopped while the decoder is behind must not hang the consumer thread.
    pipe = SegmentPipe(max_buffered_bytes=4)
    pipe.feed(b"full")
    feeder, _ = _in_thread(pipe.feed, b"more")
    feeder.join(SETTLE_S)
    assert feeder.is_alive()

    pipe.end()
    feeder.join(JOIN_S)
    assert not feeder.is_alive()


def test_bytes_come_out_complete_and_in_order_across_threads_under_backpressure():
    rng = np.random.default_rng(7)
    payload = rng.integers(0, 256, size=300_000, dtype=np.uint8).tobytes()
    sizes = [1, 7_000, 100_000, 3, 65_536, 1]
    pieces, at = [], 0
    while at < len(payload):
        size = sizes[len(pieces) % len(sizes)]
        pieces.append(payload[at:at + size])
        at += size
    pipe = SegmentPipe(max_buffered_bytes=16_384)

    def produce():
        for piece in pieces:
            pipe.feed(piece)
        pipe.end()

    producer, outcome = _in_thread(produce)
    received = bytearray()
    while chunk := pipe.read(4_096):
        received += chunk
    producer.join(JOIN_S)

    assert "error" not in outcome
    assert bytes(received) == payload
    assert pipe.bytes_fed == len(payload)


# -- a real PyAV decode through the pipe -------------------------------------------------


def _mpegts_bytes(clip) -> bytes:
    """The clip remuxed to MPEG-TS, without the AAC priming packet (negative PTS), which
    would make the muxer shift every timestamp (as tests/kafka_support.ts_segments does)."""
    out = io.BytesIO()
    with av.open(str(clip)) as src, av.open(out, "w", format="mpegts") as dst:
        streams = {s.index: dst.add_stream_from_template(s) for s in src.streams}
        for packet in src.demux():
            if packet.dts is None or packet.pts < 0:
                continue
            packet.stream = streams[packet.stream.index]
            dst.mux(packet)
    return out.getvalue()


def _kept_video_pts_s(decoder: MediaDecoder) -> np.ndarray:
    decoder.open()
    try:
        parts = [chunk.video.pts_s for chunk in decoder.chunks() if chunk.video is not None]
    finally:
        decoder.close()
    return np.concatenate(parts)


def test_a_stream_fed_in_uneven_pieces_decodes_the_same_frames_as_the_file(tmp_path):
    cfg = load_config(None, [], environ={})
    clip = write_clip(tmp_path / "c.mp4", ClipSpec())
    data = _mpegts_bytes(clip)
    pipe = SegmentPipe(max_buffered_bytes=32 * 1024)  # far below the ~200 KB stream: the feeder waits on the decoder

    def feed_unevenly():
        sizes, at, i = [7 * 1024, 100 * 1024, 1, 188, 33_333], 0, 0
        while at < len(data):
            pipe.feed(data[at:at + sizes[i % len(sizes)]])
            at += sizes[i % len(sizes)]
            i += 1
        pipe.end()

    feeder, outcome = _in_thread(feed_unevenly)
    from_pipe = _kept_video_pts_s(MediaDecoder("cam-01", "kafka://x", cfg, source=pipe))
    feeder.join(JOIN_S)
    from_file = _kept_video_pts_s(MediaDecoder("cam-01", str(clip), cfg))

    assert len(from_file) >= int(ClipSpec().duration_s * cfg.video.fps) - 1
    assert len(from_pipe) == len(from_file)
    np.testing.assert_allclose(from_pipe, from_file, atol=1e-3)
    assert not feeder.is_alive() and "error" not in outcome
    assert pipe.bytes_fed == len(data)


# -- SequenceCheck -----------------------------------------------------------------------


def test_segments_in_order_report_nothing():
    check = SequenceCheck()

    assert [check.check(seq) for seq in range(5)] == [None] * 5
    assert check.gaps == 0
    assert check.expected == 5


def test_first_segment_may_start_at_any_seq():
    # A consumer that joins a stream late sees it from wherever its partition starts.
    check = SequenceCheck()

    assert check.check(17) is None
    assert check.check(18) is None
    assert check.gaps == 0


def test_a_gap_is_reported_once_with_expected_and_got_and_counted():
    check = SequenceCheck()
    check.check(0)
    check.check(1)

    reason = check.check(4)

    assert reason is not None and "\n" not in reason
    assert "gap" in reason
    assert "expected seq 2" in reason and "got 4" in reason
    assert "2 missing" in reason
    assert check.gaps == 1
    assert check.check(5) is None  # the stream goes on from the new seq
    assert check.gaps == 1


def test_each_separate_gap_is_counted():
    check = SequenceCheck()
    for seq in (0, 2, 3, 10):
        check.check(seq)

    assert check.gaps == 2


def test_a_repeated_segment_is_reported_out_of_order_and_does_not_move_the_sequence_back():
    check = SequenceCheck()
    for seq in (0, 1, 2):
        check.check(seq)

    reason = check.check(2)

    assert reason is not None and "out of order" in reason
    assert "expected seq 3" in reason and "got 2" in reason
    assert check.expected == 3
    assert check.check(3) is None
    assert check.gaps == 0


def test_an_older_segment_is_reported_out_of_order_and_not_counted_as_a_gap():
    check = SequenceCheck()
    for seq in range(6):
        check.check(seq)

    reason = check.check(1)

    assert reason is not None and "out of order" in reason and "got 1" in reason
    assert check.gaps == 0
    assert check.check(6) is None  # not reported as a gap from 2 to 6


def test_a_segment_without_seq_is_ignored():
    check = SequenceCheck()
    check.check(0)

    assert check.check(None) is None
    assert check.expected == 1
    assert check.check(1) is None
    assert check.gaps == 0


# -- parse_headers -----------------------------------------------------------------------


def test_headers_give_seq_and_eos():
    assert parse_headers([("seq", b"12")]) == (12, False)
    assert parse_headers([("seq", b"0"), ("eos", b"1")]) == (0, True)


def test_no_headers_means_no_seq_and_not_the_end():
    assert parse_headers(None) == (None, False)
    assert parse_headers([]) == (None, False)
    assert parse_headers([("trace-id", b"abc")]) == (None, False)


@pytest.mark.parametrize("value", [b"1", b"true", b"TRUE", b"yes", b"Yes", b" true\n"])
def test_eos_accepts_truthy_values(value):
    assert parse_headers([("eos", value)]) == (None, True)


@pytest.mark.parametrize("value", [b"0", b"false", b"no", b"", b"2"])
def test_eos_rejects_other_values(value):
    assert parse_headers([("eos", value)]) == (None, False)


@pytest.mark.parametrize("value, words", [
    (b"abc", "not an integer"),
    (b"1.5", "not an integer"),
    (b"", "not an integer"),
    (b"\xff\xfe", "not an integer"),
    (b"-1", "negative"),
])
def test_a_bad_or_negative_seq_raises_value_error_with_one_line(value, words):
    with pytest.raises(ValueError) as raised:
        parse_headers([("seq", value)])

    message = str(raised.value)
    assert "seq" in message and words in message
    assert "\n" not in message


def test_a_huge_bad_seq_is_quoted_short_in_the_error():
    with pytest.raises(ValueError) as raised:
        parse_headers([("seq", b"x" * 10_000)])

    assert len(str(raised.value)) < 100
