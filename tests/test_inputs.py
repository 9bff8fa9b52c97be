"""Inputs beyond a plain local file: network URLs and files with several audio streams."""

from __future__ import annotations

import functools
import http.server
import threading
from fractions import Fraction

import av
import numpy as np
import pytest

from pipeline.app.sample import ClipSpec, write_clip
from pipeline.core.config import Config
from pipeline.ingest.decode import MediaDecoder


@pytest.fixture
def http_root(tmp_path):
    """A real HTTP server on loopback serving tmp_path; yields its base URL."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield tmp_path, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_a_clip_over_http_gives_the_same_events_as_the_file(replay, http_root):
    # MPEG-TS streams without seeking (http.server does not serve byte ranges, so an mp4
    # with its index at the end could not be read over it).
    folder, base_url = http_root
    clip = write_clip(folder / "clip.ts", ClipSpec())
    from_url = replay(f"{base_url}/clip.ts", stream_ids=["clip"])
    from_file = replay(clip, stream_ids=["clip"])
    assert from_url.results[0].status == "ok", from_url.results[0].reason
    ids_from_url = sorted(e["event_id"] for e in from_url.events())
    assert len(ids_from_url) >= 8
    assert ids_from_url == sorted(e["event_id"] for e in from_file.events())


def test_a_url_that_answers_404_is_a_one_line_open_error(replay, http_root):
    _, base_url = http_root
    run = replay(f"{base_url}/missing.mp4")
    assert run.results[0].status == "failed"
    (error,) = run.of("error")
    assert error["stage"] == "open" and "cannot open" in error["reason"] and "\n" not in error["reason"]


def _two_audio_streams(path, default_index: int) -> None:
    with av.open(str(path), "w") as container:
        streams = [container.add_stream("aac", rate=rate, layout="mono") for rate in (16000, 8000)]
        for index, stream in enumerate(streams):
            stream.disposition = av.stream.Disposition.default if index == default_index else av.stream.Disposition(0)
        for stream in streams:
            rate = stream.codec_context.sample_rate
            for i in range(20):
                frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
                frame.sample_rate, frame.pts, frame.time_base = rate, i * 1024, Fraction(1, rate)
                container.mux(stream.encode(frame))
            container.mux(stream.encode(None))


@pytest.mark.parametrize("default_index, expected_rate", [(0, 16000), (1, 8000)])
def test_the_default_audio_stream_is_decoded(tmp_path, default_index, expected_rate):
    path = tmp_path / "two_audio.mkv"
    _two_audio_streams(path, default_index)
    decoder = MediaDecoder("s", str(path), Config())
    info = decoder.open()
    assert info.video is None
    assert info.audio["sample_rate_hz"] == expected_rate
    decoder.close()
