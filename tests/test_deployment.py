"""The consumer as k8s/ deploys it, on real parts: `avfuse run` with the rendered `avfuse-env`
(overlays/cpu), joined through Ray Client to a real `ray start` cluster whose head offers no
CPUs, an `avfuse exporter` serving the worker's metrics folder, the real Kafka broker. Then the
cluster is lost mid-stream (what a head restart does): the consumer exits 1 with one line and
leaves the cut-off stream's job uncommitted, for its restart to run again."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

from pipeline.app.sample import ClipSpec, write_clip
from tests.kafka_support import Reader, Service, free_port, job, produce, stream_ends
from tests.test_k8s import env_config, render
from tests.test_metrics import get, parse
from tests.test_node_exporter import start_exporter

RAY = str(Path(sys.executable).with_name("ray"))


class RayCluster:
    """A head with num-cpus 0 (as raycluster.yaml's) and one 2-CPU worker, each `ray start --block`
    in its own process group, so that losing the cluster is one SIGKILL of both groups."""

    def __init__(self, env: dict):
        self.port, self.client_port = free_port(), free_port()
        common = ["--block", "--disable-usage-stats"]
        self.head = subprocess.Popen(
            [RAY, "start", "--head", f"--port={self.port}", f"--ray-client-server-port={self.client_port}",
             "--num-cpus=0", "--include-dashboard=false", *common],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        time.sleep(3)  # the worker's `ray start` waits for the GCS, but not for ever
        self.worker = subprocess.Popen([RAY, "start", f"--address=127.0.0.1:{self.port}", "--num-cpus=2", *common],
                                       env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                       start_new_session=True)

    def wait_up(self, env: dict, timeout_s: float = 120) -> "RayCluster":
        """Until the worker's CPUs are the cluster's: a consumer joining sooner may find no
        worker yet, or a head whose Ray Client server is still starting."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            status = subprocess.run([RAY, "status", f"--address=127.0.0.1:{self.port}"], env=env,
                                    capture_output=True, text=True, timeout=60)
            if status.returncode == 0 and "/2.0 CPU" in status.stdout:
                return self
            time.sleep(1)
        raise AssertionError(f"the Ray cluster on {self.port} did not come up")

    @property
    def address(self) -> str:
        return f"ray://127.0.0.1:{self.client_port}"

    def kill(self) -> None:
        for proc in (self.worker, self.head):
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(timeout=30)


def start_consumer(broker, prefix: str, tmp_path: Path, sets: list[str], env: dict) -> Service:
    """`avfuse run` as the StatefulSet runs it: a consumer that could not join Ray exits 1 and
    Kubernetes starts it again, up to three tries here."""
    for attempt in range(1, 4):
        service = Service(broker, prefix, tmp_path, *sets, env=env)
        try:
            service.wait_ready(timeout_s=240)
            return service
        except AssertionError:
            restarted_by_kubernetes = service.proc.poll() is not None and "is not reachable" in service.log()
            if not restarted_by_kubernetes or attempt == 3:
                raise


def committed(broker, group: str, topic: str) -> dict[int, int | None]:
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=broker.bootstrap, group_id=group, enable_auto_commit=False)
    try:
        partitions = consumer.partitions_for_topic(topic) or set()
        return {p: consumer.committed(TopicPartition(topic, p)) for p in partitions}
    finally:
        consumer.close()


def test_deployed_consumer_runs_through_ray_client_and_leaves_cut_off_streams_undone_when_the_cluster_is_lost(kafka_broker, tmp_path):
    rendered_env = env_config(render("cpu"))[1]
    token = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16)}
    # The consumer's environment as the StatefulSet gives it; a grace period of 5 s instead of
    # Ray Client's 30 keeps the test short.
    env = {**os.environ, **rendered_env, **token, "RAY_CLIENT_RECONNECT_GRACE_PERIOD": "5"}
    metrics_dir = tmp_path / "metrics"
    # What differs on this machine: addresses, no TLS/SASL, and CPUs for a 2-CPU worker.
    local = ["kafka.security.protocol=PLAINTEXT", "kafka.security.sasl_mechanism=null",
             "kafka.security.sasl_username=null", "kafka.security.ssl_cafile=null", f"metrics.dir={metrics_dir}",
             "runtime.encoder_cpus=0.25", "decode.realtime=true"]
    short = write_clip(tmp_path / "short.mp4", ClipSpec(duration_s=5.0))
    long = write_clip(tmp_path / "long.mp4", ClipSpec(duration_s=8.0))
    prefix = f"deploy{uuid.uuid4().hex[:6]}"

    cluster_env = {**os.environ, **token}
    cluster = RayCluster(cluster_env)
    service = exporter = None
    reader = None
    try:
        cluster.wait_up(cluster_env)
        service = start_consumer(kafka_broker, prefix, tmp_path, [*local, f"runtime.ray_address={cluster.address}"], env)
        # The worker pod's sidecar: the decode actors on the worker count into this folder.
        exporter_port = free_port()
        exporter = start_exporter(metrics_dir, exporter_port, "--reap-dead-processes")
        reader = Reader(kafka_broker, [service.topics["summaries"], service.topics["events"]])
        produce(kafka_broker, service.topics["jobs"], [job("cam1", str(short))])
        records = reader.read_until(lambda rs: "cam1" in stream_ends(rs), timeout_s=180, what="cam1's end")
        assert stream_ends(records)["cam1"]["status"] == "ok", service.log()
        assert any(r["type"] == "event" and r["stream_id"] == "cam1" for r in records)
        scraped = parse(get(f"http://127.0.0.1:{exporter_port}/metrics")[1])
        assert scraped[("avfuse_frames_decoded_total", (("stream", "cam1"),))] > 0

        # The cluster goes away while cam2 is being processed.
        produce(kafka_broker, service.topics["jobs"], [job("cam2", str(long))])
        reader.read_until(lambda rs: any(r["type"] == "stream_start" and r["stream_id"] == "cam2" for r in rs),
                          timeout_s=120, what="cam2's start")
        cluster.kill()
        assert service.proc.wait(timeout=150) == 1, service.log()
        own = [line for line in service.log().splitlines() if line.startswith("avfuse:")]
        assert len(own) == 1 and "lost the Ray cluster or its operator actors" in own[0], service.log()
        assert "cam2" not in stream_ends(reader.read_until(lambda rs: True, timeout_s=3))
        # cam1's job is done; cam2's is not, so the restarted consumer gets it again and runs it
        # from the start (restart after a kill mid-stream: tests/test_kafka_resilience.py).
        offsets = committed(kafka_broker, prefix, service.topics["jobs"])
        assert sum(offset or 0 for offset in offsets.values()) == 1, offsets

    finally:
        for proc in (service.proc if service else None, exporter):
            if proc is not None and proc.poll() is None:
                proc.kill()
        if reader is not None:
            reader.close()
        cluster.kill()

