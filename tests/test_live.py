"""Live sources against real servers: GStreamer's RTSP server and ffmpeg's HLS writer
(tests/live_sources.py). A camera that drops, freezes, is down at the start or never comes back;
a timestamp jump in a file."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from pipeline.app.sample import BLACK_S, ClipSpec, write_clip
from pipeline.core.config import load_config
from pipeline.ingest.decode import MediaDecoder
from pipeline.output.sinks import JsonlSink
from tests.live_sources import HlsServer, RtspServer, free_port

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def camera_clip(tmp_path_factory) -> Path:
    """The sample timeline (black 8.0-9.5 s) as a camera would serve it, looped."""
    return write_clip(tmp_path_factory.mktemp("live") / "camera.mp4", ClipSpec())


def _records(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.endswith("}")]


def _wait_for(condition, timeout_s: float, what):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what() if callable(what) else what}")


@contextmanager
def live_settings(pipeline, **settings):
    """The shared pipeline's live.* for one test (stream actors take the driver's config per stream)."""
    before = pipeline.cfg.live.model_copy()
    for key, value in settings.items():
        setattr(pipeline.cfg.live, key, value)
    try:
        yield
    finally:
        pipeline.cfg.live = before


class LiveRun:
    """One live stream through the shared pipeline on a thread of its own, into a JSONL file."""

    def __init__(self, pipeline, uri: str, out: Path, stream_id: str = "cam"):
        self.out, self._stop = out, None
        self.result = None
        self._ready = threading.Event()

        def run():
            async def main():
                self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
                self._ready.set()
                sink = JsonlSink(out)
                try:
                    self.result = await pipeline.run_stream(stream_id, uri, sink, stop=self._stop)
                finally:
                    sink.close()
            asyncio.run(main())

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        self._ready.wait(10)

    def records(self, record_type: str | None = None) -> list[dict]:
        return [r for r in _records(self.out) if record_type is None or r["type"] == record_type]

    def stop(self, timeout_s: float = 30.0):
        if self._thread.is_alive():  # else it ended on its own
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout_s)
        assert not self._thread.is_alive(), "the live stream did not end after its stop"
        return self.result


def test_a_camera_killed_and_back_5s_later_leaves_one_gap_and_the_stream_goes_on(camera_clip, tmp_path):
    out = tmp_path / "live.jsonl"
    with RtspServer(file=camera_clip, loop=True) as camera:
        replay = subprocess.Popen(
            [sys.executable, "-m", "pipeline.app.cli", "replay", camera.url, "--out", str(out), "--no-progress",
             "--set", "profile=signal", "--set", "records.windows=true", "--set", "live.backoff_max_s=0.5"],
            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            _wait_for(lambda: any(r["type"] == "window" for r in _records(out)), 90, "the first windows")
            time.sleep(2.0)
            camera.kill()
            killed_wall_s = time.time()
            time.sleep(5.0)
            camera.restart()
            restarted_wall_s = time.time()
            # The looped file starts again at its beginning for the new connection: its black
            # frames (8.0-9.5 s) come 8 s after the media resumes.
            gap = _wait_for(lambda: [r for r in _records(out) if r["type"] == "discontinuity"], 30, "the gap")
            _wait_for(lambda: [e for e in _records(out) if e["type"] == "event" and e["label"] == "black_video"
                               and e["start_s"] > gap[0]["resume_s"]], 30, "black frames after the gap")
        finally:
            replay.send_signal(signal.SIGINT)
            printed, _ = replay.communicate(timeout=60)
    records = _records(out)
    gaps = [r for r in records if r["type"] == "discontinuity"]
    assert len(gaps) == 1, gaps
    assert gaps[0]["reason"] == "eof"
    assert abs(gaps[0]["gap_s"] - (restarted_wall_s - killed_wall_s)) < 1.0, (gaps, restarted_wall_s - killed_wall_s)
    assert [r["state"] for r in records if r["type"] == "source_state"][0] == "down"
    windows = [r["start_s"] for r in records if r["type"] == "window"]
    assert windows == sorted(windows) and len(set(windows)) == len(windows)
    inside_gap = [r for r in records if r["type"] == "window" and r["video_tokens"]
                  and gaps[0]["at_s"] + 0.5 < r["start_s"] and r["end_s"] < gaps[0]["resume_s"] - 0.5]
    assert inside_gap == []  # nothing is made up for the outage
    black_after = [e for e in records if e["type"] == "event" and e["label"] == "black_video"
                   and e["start_s"] > gaps[0]["resume_s"]]
    assert abs(black_after[0]["start_s"] - (gaps[0]["resume_s"] + BLACK_S[0])) < 0.6, (black_after, gaps)
    assert all(e["end_s"] <= gaps[0]["at_s"] + 0.3 or e["start_s"] >= gaps[0]["resume_s"] - 0.3
               for e in records if e["type"] == "event"), "an event spans the outage"
    end = [r for r in records if r["type"] == "stream_end"]
    assert end[0]["status"] == "interrupted"
    assert replay.returncode == 130
    assert "reconnected after" in printed and "Traceback" not in printed


def test_a_frozen_camera_is_down_within_stall_s_plus_1(pipeline, tmp_path):
    with RtspServer(test=True) as camera, live_settings(pipeline, stall_s=2.0, backoff_max_s=0.5):
        run = LiveRun(pipeline, camera.url, tmp_path / "frozen.jsonl")
        try:
            _wait_for(lambda: run.records("stream_start"), 30, "the stream to start")
            time.sleep(2.0)
            camera.freeze()
            frozen_wall_s = time.time()
            down = _wait_for(lambda: run.records("source_state"), 15, "the stall to be noticed")
            camera.thaw()
        finally:
            result = run.stop()
    assert down[0]["state"] == "down" and down[0]["reason"] == "timeout", down
    assert down[0]["at"] - frozen_wall_s <= 2.0 + 1.0, down
    assert result.status == "interrupted"


def test_a_camera_down_at_the_start_is_streamed_once_it_comes_up(pipeline, tmp_path):
    port = free_port()
    with live_settings(pipeline, backoff_max_s=0.5):
        run = LiveRun(pipeline, f"rtsp://127.0.0.1:{port}/cam", tmp_path / "late.jsonl")
        try:
            retrying = _wait_for(lambda: run.records("source_state"), 15, "a retry while the camera is down")
            assert retrying[0]["state"] == "retrying" and "refused" in retrying[0]["detail"].lower()
            with RtspServer(test=True, port=port):
                _wait_for(lambda: run.records("stream_start"), 20, "the stream to start")
                _wait_for(lambda: run.records("signals") or run.records("window"), 20, "media from the camera")
        finally:
            result = run.stop()
    assert result.status == "interrupted" and result.processed_s > 0


def test_a_camera_down_past_max_outage_s_fails_the_stream_with_that_reason(pipeline, tmp_path):
    with RtspServer(test=True) as camera, live_settings(pipeline, max_outage_s=2.0, backoff_max_s=0.5):
        run = LiveRun(pipeline, camera.url, tmp_path / "gone.jsonl")
        _wait_for(lambda: run.records("stream_start"), 30, "the stream to start")
        camera.kill()
        _wait_for(lambda: run.records("stream_end"), 20, "the stream to give up")
        result = run.stop()
    assert result.status == "failed" and "live.max_outage_s" in result.reason
    assert run.records("stream_end")[0]["status"] == "failed"
    assert [r["state"] for r in run.records("source_state")][-1] == "failed"


def test_ctrl_c_during_a_backoff_ends_the_replay_within_seconds(tmp_path):
    port = free_port()  # nothing listens: the replay keeps retrying
    out = tmp_path / "never.jsonl"
    replay = subprocess.Popen(
        [sys.executable, "-m", "pipeline.app.cli", "replay", f"rtsp://127.0.0.1:{port}/cam", "--out", str(out),
         "--no-progress", "--set", "profile=signal", "--set", "live.backoff_initial_s=5",
         "--set", "live.backoff_max_s=30"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        _wait_for(lambda: [r for r in _records(out) if r["type"] == "source_state"], 90, "a retry")
        interrupted_s = time.monotonic()
        replay.send_signal(signal.SIGINT)
        printed, _ = replay.communicate(timeout=30)
        took_s = time.monotonic() - interrupted_s
    finally:
        replay.kill()
    assert took_s < 5.0, took_s  # the backoff (2.5-5 s, then longer) does not hold it
    assert replay.returncode == 130
    assert [r["status"] for r in _records(out) if r["type"] == "stream_end"] == ["interrupted"]
    assert "reconnecting (attempt 2" in printed and "Traceback" not in printed


def test_an_hls_writer_that_restarts_is_one_stream_with_monotonic_times(pipeline, camera_clip, tmp_path):
    with HlsServer(camera_clip) as hls, live_settings(pipeline, stall_s=3.0, backoff_max_s=0.5):
        run = LiveRun(pipeline, hls.url, tmp_path / "hls.jsonl")
        try:
            _wait_for(lambda: run.records("window"), 40, "windows from the playlist")
            hls.kill_writer()
            time.sleep(4.0)  # the playlist goes stale
            hls.restart_writer()
            _wait_for(lambda: run.records("discontinuity"), 60, "the writer's restart")
            last = run.records("window")[-1]["start_s"]
            changes = lambda: [(r["type"], r.get("state") or r.get("reason"), r.get("detail")) for r in  # noqa: E731
                               run.records() if r["type"] in ("source_state", "discontinuity")]
            _wait_for(lambda: run.records("window")[-1]["start_s"] > last + 3, 60,
                      lambda: f"windows after the restart (the source's changes: {changes()})")
        finally:
            result = run.stop()
    windows = [r["start_s"] for r in run.records("window")]
    assert windows == sorted(windows) and len(set(windows)) == len(windows)
    assert result.status == "interrupted"
    assert all(r["gap_s"] >= 0 for r in run.records("discontinuity"))


def _ts_segment(path: Path, spec: ClipSpec) -> Path:
    """The sample clip as MPEG-TS (each starts its timestamps again at 1.4 s, as a rebooted camera does)."""
    mp4 = write_clip(path.with_suffix(".mp4"), spec)
    subprocess.run(["/usr/bin/ffmpeg", "-loglevel", "error", "-y", "-i", str(mp4), "-c", "copy", "-f", "mpegts",
                    str(path)], check=True)
    return path


def test_a_backward_timestamp_jump_in_a_file_is_rebased_and_said(tmp_path):
    first = _ts_segment(tmp_path / "a.ts", ClipSpec(duration_s=6.0))
    second = _ts_segment(tmp_path / "b.ts", ClipSpec(duration_s=6.0))
    spliced = tmp_path / "spliced.ts"
    spliced.write_bytes(first.read_bytes() + second.read_bytes())  # the second's clock restarts
    decoder = MediaDecoder("ts", str(spliced), load_config(None, ["profile=signal"], environ={}))
    decoder.open()
    frame_times, row_times, changes = [], [], []
    for chunk in decoder.chunks():
        if chunk.video is not None:
            frame_times += chunk.video.pts_s.tolist()
        if chunk.audio is not None:
            row_times += chunk.audio.start_s.tolist()
        changes += chunk.source_changes
    decoder.close()
    assert frame_times == sorted(frame_times) and row_times == sorted(row_times)
    assert 11.0 < frame_times[-1] < 12.5 and 11.0 < row_times[-1] < 12.5  # both halves, one after the other
    jumps = [c for c in changes if c.kind == "pts_jump"]
    assert len(jumps) == 1 and -7.0 < jumps[0].jump_s < -5.0, changes
    assert abs(jumps[0].at_s - 6.0) < 0.2
