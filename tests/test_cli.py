"""The avfuse command as a user runs it: exit codes, one-line errors, Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from pipeline.app.sample import ClipSpec, write_clip

AVFUSE = [sys.executable, "-m", "pipeline.app.cli"]


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
    from operators.vision import VisionSpec

    checkpoint = tmp_path / "vision96.pt"
    VisionEncoder(VisionSpec(), 96).save(checkpoint)  # made for 96 px; the config says 128
    clip = write_clip(tmp_path / "clip.mp4", ClipSpec(duration_s=3.0))
    result = run_cli("replay", str(clip), "--set", f"vision.checkpoint={checkpoint}", "--no-progress")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if "checkpoint" in line]
    assert len(lines) == 1 and "image_size: checkpoint=96 config=128" in lines[0]


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_replay_serves_metrics_live_and_writes_the_final_textfile(tmp_path):
    import urllib.error
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    clip = write_clip(tmp_path / "live.mp4", ClipSpec(duration_s=8.0))
    port, textfile, out = _free_port(), tmp_path / "prom" / "avfuse.prom", tmp_path / "r.jsonl"
    proc = subprocess.Popen([*AVFUSE, "replay", str(clip), "--realtime", "--no-progress", "--out", str(out),
                             "--metrics-port", str(port), "--metrics-textfile", str(textfile),
                             "--log-format", "json", "--set", "records.stdout=false"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen_ready, live_lag_seen = False, False
    try:
        deadline = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as reply:
                    seen_ready = seen_ready or reply.status == 200
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as reply:
                    live_lag_seen = live_lag_seen or "avfuse_live_lag_seconds{" in reply.read().decode()
            except (urllib.error.URLError, ConnectionError):
                pass  # not serving yet (Ray starting), or not ready: 503
            time.sleep(0.2)
        _, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0, stderr
    assert seen_ready and live_lag_seen
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(textfile.read_text()) for s in family.samples}
    events = [r for r in read_jsonl(out) if r["type"] == "event"]
    published = sum(v for (name, labels), v in samples.items()
                    if name == "avfuse_records_published_total" and ("type", "event") in labels)
    assert published == len(events) > 0
    assert samples[("avfuse_frames_kept_total", (("stream", "live.mp4"),))] == 32.0  # 4 fps x 8 s
    check = subprocess.run(["promtool", "check", "metrics"], input=textfile.read_text(), capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr


def test_json_logs_carry_the_stream_and_stage(tmp_path):
    out = run_cli("replay", str(tmp_path / "missing.mp4"), "--no-progress", "--log-format", "json",
                  "--set", "records.stdout=false")
    assert out.returncode == 1
    logged = [json.loads(line) for line in out.stderr.splitlines() if line.startswith("{")]
    error = next(entry for entry in logged if entry["level"] == "warning")
    assert error["stream_id"] == "missing.mp4" and error["stage"] == "open" and "missing.mp4" in error["msg"]


def test_run_without_a_reachable_broker_exits_1_with_one_line():
    config = Path(__file__).resolve().parents[1] / "configs" / "kafka.yaml"
    result = run_cli("run", "-c", str(config), "--set", "kafka.bootstrap_servers=127.0.0.1:1",
                     "--set", "kafka.connect_timeout_s=3", "--metrics-port", "0", timeout=300)
    assert result.returncode == 1, result.stderr[-2000:]
    own_lines = [line for line in result.stderr.splitlines() if line.startswith("avfuse:")]
    assert len(own_lines) == 1 and own_lines[0].startswith("avfuse: Kafka at 127.0.0.1:1 is not usable: "), own_lines
    assert "Traceback" not in result.stderr


def test_bad_tagger_weights_or_unknown_classes_exit_2_with_one_line_naming_them(tmp_path):
    clip = write_clip(tmp_path / "clip.mp4", ClipSpec(duration_s=3.0))
    truncated = tmp_path / "yamnet.pt"
    truncated.write_bytes(b"PK\x03\x04 not a whole file")
    bad_weights = run_cli("replay", str(clip), "--no-progress", "--set", f"sound_tags.checkpoint={truncated}")
    assert bad_weights.returncode == 2, bad_weights.stderr
    assert bad_weights.stderr.strip().count("\n") == 0 and str(truncated) in bad_weights.stderr
    assert "Traceback" not in bad_weights.stderr
    unknown = run_cli("replay", str(clip), "--no-progress", "--set", "sound_tags.allow=[Siren, Sirne]")
    assert unknown.returncode == 2, unknown.stderr
    assert unknown.stderr.strip().count("\n") == 0 and "'Sirne'" in unknown.stderr


def test_print_config_says_where_each_model_is_read_from():
    out = run_cli("replay", "x.mp4", "--print-config")
    assert out.returncode == 0, out.stderr
    assert "profile: pretrained" in out.stdout
    lines = {line.split(":", 1)[0].strip("# "): line for line in out.stdout.splitlines() if line.startswith("#   ")}
    assert "YamNet_w8a8.onnx.zip" in lines["sound_tags"] and "sha256" in lines["sound_tags"]
    assert "efficientnet-lite0-57934424.pth" in lines["visual_tags"]
    assert lines["av_sync"].endswith("av_sync.pt")
    signal_only = run_cli("replay", "x.mp4", "--print-config", "--set", "profile=signal")
    assert "sound_tags:" not in signal_only.stdout.split("# weights")[1]
