"""`--ray-address` joins a Ray cluster that is already running (a real `ray start --head`)."""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import sys
from pathlib import Path

from pipeline.sample import ClipSpec, write_clip

RAY = str(Path(sys.executable).with_name("ray"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


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
        out = tmp_path / "records.jsonl"
        result = subprocess.run(
            [sys.executable, "-m", "pipeline.cli", "replay", str(clip), "--ray-address", f"127.0.0.1:{port}",
             "--out", str(out), "--no-progress"],
            env=env, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-2000:]
        records = [json.loads(line) for line in out.read_text().splitlines()]
        assert any(r["type"] == "event" and r["label"] == "scene_cut" for r in records)
        assert [r["status"] for r in records if r["type"] == "stream_end"] == ["ok"]
    finally:
        head.terminate()  # `ray start --block` stops the processes it started on SIGTERM
        head.wait(timeout=60)
