"""`avfuse exporter`: the scrape target beside a Ray container (the Kubernetes worker pods'
sidecar), serving a folder that other, real processes count into. And `avfuse run` answers
/healthz while the Ray cluster it joins is not up yet."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.observe.node_exporter import dead_processes, reap_dead_processes
from tests.kafka_support import free_port
from tests.test_metrics import get, parse

AVFUSE = [sys.executable, "-m", "pipeline.app.cli"]
REPO = Path(__file__).resolve().parents[1]

# A Ray actor's view of the metrics: a separate process counting into the shared folder.
COUNTING_PROCESS = """
import sys, time
from pipeline.observe import metrics
m = metrics.get()
m.frames_decoded.labels("cam1").inc(7)
m.streams_active.inc()
print("counted", flush=True)
time.sleep(600)
"""


def wait_for(url: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            get(url)
            return
        except OSError:
            time.sleep(0.2)
    raise AssertionError(f"{url} never answered")


def start_counting_process(folder: Path) -> subprocess.Popen:
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(folder)}
    proc = subprocess.Popen([sys.executable, "-c", COUNTING_PROCESS], env=env, cwd=REPO,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "counted"
    return proc


def start_exporter(folder: Path, port: int, *flags: str) -> subprocess.Popen:
    env = {**os.environ, "AVFUSE__METRICS__DIR": str(folder), "AVFUSE__METRICS__PORT": str(port)}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    proc = subprocess.Popen([*AVFUSE, "exporter", *flags], env=env, cwd=REPO,
                            stderr=subprocess.PIPE, text=True)
    wait_for(f"http://127.0.0.1:{port}/healthz")
    return proc


@pytest.fixture
def folder(tmp_path) -> Path:
    path = tmp_path / "metrics"
    path.mkdir()
    return path


@pytest.mark.parametrize("reap", [True, False])
def test_exporter_serves_other_processes_and_drops_live_gauges_of_ended_ones_when_reaping(folder, reap):
    counter = start_counting_process(folder)
    port = free_port()
    exporter = start_exporter(folder, port, *(["--reap-dead-processes"] if reap else []))
    frames = ("avfuse_frames_decoded_total", (("stream", "cam1"),))
    active = ("avfuse_streams_active", ())
    try:
        assert get(f"http://127.0.0.1:{port}/readyz") == (200, "ready\n")
        status, text = get(f"http://127.0.0.1:{port}/metrics")
        assert status == 200
        before = parse(text)
        assert before[frames] == 7 and before[active] == 1  # a live process counts

        counter.send_signal(signal.SIGKILL)  # as a decode actor is killed: nobody marks it dead
        counter.wait(timeout=10)
        after = parse(get(f"http://127.0.0.1:{port}/metrics")[1])
        assert after[frames] == 7  # counters of ended processes stay in the totals
        assert after.get(active, 0) == (0 if reap else 1)
    finally:
        counter.kill()
        exporter.send_signal(signal.SIGTERM)
        assert exporter.wait(timeout=10) == 0


def test_reaping_keeps_live_processes_and_their_files(folder):
    counter = start_counting_process(folder)
    try:
        (folder / "gauge_livesum_999999999.db").write_bytes(b"")  # a pid that cannot exist
        assert dead_processes(folder) == {999999999}
        assert reap_dead_processes(folder) == {999999999}
        assert not (folder / "gauge_livesum_999999999.db").exists()
        assert (folder / f"gauge_livesum_{counter.pid}.db").exists()
        assert (folder / f"counter_{counter.pid}.db").exists()
    finally:
        counter.kill()
        counter.wait()


def test_exporter_without_a_folder_or_with_its_port_taken_exits_with_one_line(folder):
    env = {k: v for k, v in os.environ.items() if not k.startswith("AVFUSE__")}
    no_dir = subprocess.run([*AVFUSE, "exporter"], env=env, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert no_dir.returncode == 2 and no_dir.stderr.strip().count("\n") == 0
    assert "metrics.dir" in no_dir.stderr

    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        busy = subprocess.run([*AVFUSE, "exporter", "--set", f"metrics.dir={folder}", "--set", f"metrics.port={port}"],
                              env=env, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert busy.returncode == 1, busy.stderr
    assert busy.stderr.strip().count("\n") == 0 and "Traceback" not in busy.stderr
    assert f"port {port}" in busy.stderr


def test_run_answers_healthz_while_ray_is_unreachable_then_exits_1_with_one_line(tmp_path):
    """A Kubernetes consumer pod whose Ray head is not up yet: alive, not ready, then restarted."""
    with socket.socket() as closed:  # a port nobody listens on
        closed.bind(("127.0.0.1", 0))
        ray_port = closed.getsockname()[1]
    port = free_port()
    # Ray Client tries for 5 + 10 + 20 s by default; 1 + 2 + 2 s keeps the test short.
    env = {**os.environ, "RAY_CLIENT_INITIAL_CONNECTION_TIMEOUT_S": "1", "RAY_CLIENT_MAX_CONNECTION_TIMEOUT_S": "2"}
    proc = subprocess.Popen(
        [*AVFUSE, "run", "-c", str(REPO / "configs" / "kafka.yaml"), "--ray-address", f"ray://127.0.0.1:{ray_port}",
         "--metrics-port", str(port), "--set", f"metrics.dir={tmp_path / 'metrics'}"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(f"http://127.0.0.1:{port}/healthz")
        assert get(f"http://127.0.0.1:{port}/healthz") == (200, "ok\n")
        status, body = get(f"http://127.0.0.1:{port}/readyz")
        assert status == 503 and "ray: not yet" in body
        _, stderr = proc.communicate(timeout=240)
    finally:
        proc.kill()
    assert proc.returncode == 1
    own = [line for line in stderr.splitlines() if line.startswith("avfuse:")]
    assert len(own) == 1 and f"Ray at ray://127.0.0.1:{ray_port} is not reachable" in own[0], stderr[-2000:]
    assert "Traceback" not in stderr and "Warning" not in stderr
