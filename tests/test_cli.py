"""The avfuse command as a user runs it: exit codes, one-line errors, Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from pipeline.sample import ClipSpec, write_clip

AVFUSE = [sys.executable, "-m", "pipeline.cli"]


def run_cli(*args: str, env: dict | None = None, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([*AVFUSE, *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_usage_errors_exit_2_with_one_line():
    missing_command = run_cli()
    assert missing_command.returncode == 2
    bad_value = run_cli("replay", "x.mp4", "--set", "video.fps=fast", "--print-config")
    assert bad_value.returncode == 2
    assert bad_value.stderr.strip().count("\n") == 0 and "video.fps" in bad_value.stderr
    unknown_key = run_cli("replay", "x.mp4", "--set", "video.fsp=2", "--print-config")
    assert unknown_key.returncode == 2 and "video.fsp" in unknown_key.stderr


def test_environment_and_set_override_the_yaml_config(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("video:\n  fps: 8\nalign:\n  window_s: 3.0\n")
    out = run_cli("replay", "x.mp4", "-c", str(config), "--set", "align.hop_s=0.5", "--print-config",
                  env={"AVFUSE__ALIGN__WINDOW_S": "4"})
    assert out.returncode == 0, out.stderr
    assert "fps: 8.0" in out.stdout and "window_s: 4.0" in out.stdout and "hop_s: 0.5" in out.stdout


def test_replay_with_a_missing_file_exits_1_and_the_other_stream_completes(tmp_path):
    clip = write_clip(tmp_path / "clip.mp4", ClipSpec(duration_s=6.0))
    out = tmp_path / "records.jsonl"
    result = run_cli("replay", str(clip), str(tmp_path / "nope.mp4"), "--out", str(out), "--no-progress")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    error_lines = [line for line in result.stderr.splitlines() if "nope.mp4" in line]
    assert len(error_lines) == 1 and "cannot open" in error_lines[0]
    records = read_jsonl(out)
    ends = {r["stream_id"]: r["status"] for r in records if r["type"] == "stream_end"}
    assert ends == {"clip.mp4": "ok", "nope.mp4": "failed"}
    assert any(r["type"] == "event" and r["label"] == "scene_cut" for r in records)
    assert "[clip.mp4] event    scene_cut" in result.stdout


def test_ctrl_c_flushes_records_and_ends_streams_as_interrupted(tmp_path):
    clip = write_clip(tmp_path / "long.mp4", ClipSpec(duration_s=60.0, width=160, height=120))
    out = tmp_path / "records.jsonl"
    proc = subprocess.Popen([*AVFUSE, "replay", str(clip), "--realtime", "--out", str(out), "--no-progress"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and '"type":"event"' not in _peek(out):
        time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr
    records = read_jsonl(out)
    end = [r for r in records if r["type"] == "stream_end"]
    assert len(end) == 1 and end[0]["status"] == "interrupted"
    assert 1.0 < end[0]["processed_s"] < 59.0
    assert [r for r in records if r["type"] == "summary"][-1]["final"] is True


def _peek(path: Path) -> str:
    return path.read_text() if path.exists() else ""


def test_checkpoint_that_disagrees_with_the_config_exits_2_with_one_line(tmp_path):
    from operators import VisionEncoder
    from pipeline.config import VisionEncoderConfig

    checkpoint = tmp_path / "vision96.pt"
    VisionEncoder(VisionEncoderConfig(), 96).save(checkpoint)  # made for 96 px; the config says 128
    clip = write_clip(tmp_path / "clip.mp4", ClipSpec(duration_s=3.0))
    result = run_cli("replay", str(clip), "--set", f"vision.checkpoint={checkpoint}", "--no-progress")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if "checkpoint" in line]
    assert len(lines) == 1 and "image_size: checkpoint=96 config=128" in lines[0]
