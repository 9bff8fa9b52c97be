"""`--ray-address` joins a Ray cluster that is already running (a real `ray start --head`)."""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import sys
import time
from pathlib import Path

from pipeline.app.sample import ClipSpec, write_clip

RAY = str(Path(sys.executable).with_name("ray"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_for_head(port: int, env: dict, timeout_s: float = 120) -> None:
    """`ray start --block` returns nothing when the head is up: ask it, as an operator would."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = subprocess.run([RAY, "status", f"--address=127.0.0.1:{port}"], env=env, capture_output=True,
                                text=True, timeout=60)
        if status.returncode == 0:
            return
        time.sleep(1)
    raise AssertionError(f"the Ray head on port {port} did not come up: {status.stderr[-500:]}")


def test_replay_joins_an_existing_ray_cluster(tmp_path):
    clip = write_clip(tmp_path / "clip.mp4", ClipSpec(duration_s=6.0))
    port = free_port()
    # Ray 2.60 clusters authenticate with a shared token; head and client get the same one.
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16)}
    head = subprocess.Popen(
        [RAY, "start", "--head", f"--port={port}", "--num-cpus=2", "--include-dashboard=false", "--block",
         "--disable-usage-stats"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        _wait_for_head(port, env)
        out = tmp_path / "records.jsonl"
        result = subprocess.run(
            [sys.executable, "-m", "pipeline.app.cli", "replay", str(clip), "--ray-address", f"127.0.0.1:{port}",
             "--out", str(out), "--no-progress"],
            env=env, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-2000:]
        records = [json.loads(line) for line in out.read_text().splitlines()]
        assert any(r["type"] == "event" and r["label"] == "scene_cut" for r in records)
        assert [r["status"] for r in records if r["type"] == "stream_end"] == ["ok"]
    finally:
        head.terminate()  # `ray start --block` stops the processes it started on SIGTERM
        head.wait(timeout=60)
