"""The live-source helpers of tests/live_sources.py, against PyAV as the pipeline opens them.

These specify the servers the reconnect tests lean on: an RTSP camera that sends in real
time, dies, hangs and comes back on its port; an HLS writer whose playlist grows, goes
stale and continues. Each test takes a few seconds.
"""

from __future__ import annotations

import time

import av
import pytest

from pipeline.app.sample import ClipSpec, write_clip
from tests.live_sources import HlsServer, RtspServer, free_port, hls_writer_available, rtsp_server_available

RTSP_OPTIONS = {"rtsp_transport": "tcp"}


@pytest.fixture(scope="module")
def live_tools():
    assert rtsp_server_available(), "GstRtspServer missing: `make test-tools` installs gir1.2-gst-rtsp-server-1.0"
    assert hls_writer_available(), "/usr/bin/ffmpeg missing: `make test-tools` installs Debian's ffmpeg"


@pytest.fixture(scope="module")
def clip(live_tools, tmp_path_factory):
    """6 s of pipeline.app.sample's timeline: 320x240 25 fps H.264 and AAC in mp4."""
    return write_clip(tmp_path_factory.mktemp("live") / "clip.mp4", ClipSpec(duration_s=6.0))


def media_s(packet: av.Packet) -> float:
    return float(packet.pts * packet.time_base)


def read_until_media_s(container, until_s: float, limit_s: float = 10.0) -> dict[str, list[tuple[float, float]]]:
    """(arrival wall time, media time) of each packet by stream type, until a packet at ``until_s``."""
    arrivals: dict[str, list[tuple[float, float]]] = {"video": [], "audio": []}
    deadline = time.time() + limit_s
    for packet in container.demux():
        if packet.pts is None:
            continue
        arrivals[packet.stream.type].append((time.time(), media_s(packet)))
        if media_s(packet) >= until_s or time.time() > deadline:
            break
    return arrivals


def test_rtsp_file_arrives_in_real_time_with_video_and_audio(clip):
    with RtspServer(file=clip) as camera:
        assert camera.url == f"rtsp://127.0.0.1:{camera.port}/cam"
        opened_wall_s = time.time()
        with av.open(camera.url, options=RTSP_OPTIONS, timeout=(5, 5)) as container:
            assert {s.type for s in container.streams} == {"video", "audio"}
            arrivals = read_until_media_s(container, 2.0)
        started_wall_s = camera.wait_started()
    assert len(arrivals["video"]) >= 45 and len(arrivals["audio"]) >= 25
    arrived_wall_s, _ = arrivals["video"][-1]
    # 2 s of media take about 2 s to come, whichever clock measures it.
    assert 1.5 <= arrived_wall_s - opened_wall_s <= 4.0
    assert 1.8 <= arrived_wall_s - started_wall_s <= 2.6
    assert opened_wall_s <= started_wall_s <= opened_wall_s + 1.5


def _streaming(container, packets: int = 10):
    """The container's demux, once ``packets`` packets have come (the camera is sending)."""
    demux = container.demux()
    for _ in range(packets):
        next(demux)
    return demux


def test_rtsp_killed_camera_ends_the_demux_and_comes_back_on_its_port_from_time_zero(clip):
    with RtspServer(file=clip) as camera:
        port = camera.port
        with av.open(camera.url, options=RTSP_OPTIONS, timeout=(5, 2)) as container:
            packets = _streaming(container)
            camera.kill()
            killed_wall_s = time.time()
            # A dead camera over TCP looks like the end of the stream: the buffered packets, then EOF.
            with pytest.raises(StopIteration):
                while True:
                    next(packets)
            assert time.time() - killed_wall_s < 1.0

        camera.restart()
        assert camera.port == port
        with av.open(camera.url, options=RTSP_OPTIONS, timeout=(5, 5)) as container:
            first = next(p for p in container.demux() if p.pts is not None)
        assert media_s(first) < 0.2


def test_rtsp_frozen_camera_keeps_the_connection_and_the_read_timeout_interrupts(clip):
    with RtspServer(file=clip, loop=True) as camera:
        with av.open(camera.url, options=RTSP_OPTIONS, timeout=(5, 1.0)) as container:
            packets = _streaming(container)
            camera.freeze()
            frozen_wall_s = time.time()
            with pytest.raises(av.error.ExitError):
                while True:
                    next(packets)
            # PyAV's interrupt fires per av_read_frame; over RTSP it took twice the read timeout.
            assert time.time() - frozen_wall_s < 4.0
            camera.thaw()


def test_rtsp_test_pattern_is_a_live_camera(live_tools):
    with RtspServer(test=True, port=free_port()) as camera:
        with av.open(camera.url, options=RTSP_OPTIONS, timeout=(5, 5)) as container:
            arrivals = read_until_media_s(container, 1.0)
    assert arrivals["video"] and arrivals["audio"]
    assert camera.started_wall_s is not None


def test_hls_playlist_serves_live_segments_and_continues_after_a_writer_restart(clip):
    with HlsServer(clip, segment_s=1, list_size=5) as hls:
        assert hls.url == f"http://127.0.0.1:{hls.port}/live.m3u8" and hls.segment_count() >= 2
        with av.open(hls.url, timeout=(5, 2)) as container:
            assert {s.type for s in container.streams} == {"video", "audio"}
            arrivals = read_until_media_s(container, container.start_time / 1e6 + 1.0)
        assert arrivals["video"] and arrivals["audio"]

        sequence_before = hls.media_sequence()
        hls.restart_writer()
        text = hls.playlist_text()
        # The same live playlist goes on: numbering carries on, a discontinuity marks the new encoder.
        assert hls.media_sequence() >= sequence_before
        assert "#EXT-X-DISCONTINUITY" in text.split("#EXTINF", 1)[1]
        assert "#EXT-X-ENDLIST" not in text
        with av.open(hls.url, timeout=(5, 2)) as container:
            assert read_until_media_s(container, 0.0)["video"]
