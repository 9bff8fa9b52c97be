"""Metrics are counts of what really happened: scraped from the node's one target
(every Ray actor's samples merged), they must equal the records written and the
frames the configured rate keeps, and promtool must accept the exposition."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from pipeline.app.sample import DURATION_S
from pipeline.observe import metrics
from pipeline.observe.exporter import Exporter, Readiness
from pipeline.output.sinks import JsonlSink


def parse(text: str) -> dict[tuple[str, tuple], float]:
    """Every sample as {(name, sorted labels): value}."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def total(samples: dict, name: str, **labels) -> float:
    return sum(v for (n, lbls), v in samples.items()
               if n == name and all(dict(lbls).get(k) == want for k, want in labels.items()))


def delta(after: dict, before: dict) -> dict:
    return {key: value - before.get(key, 0.0) for key, value in after.items()}


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def promtool_check(text: str) -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool missing: `make test` installs Debian's prometheus package"
    check = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr


@pytest.fixture
def exporter():
    readiness = Readiness("ray", "operators")
    served = Exporter(0, readiness, host="127.0.0.1").start()
    yield served
    served.stop()


def test_scraped_counters_equal_the_records_and_the_kept_frame_rate(pipeline, clips, tmp_path, exporter):
    url = f"http://127.0.0.1:{exporter.port}/metrics"
    before = parse(get(url)[1])
    paths = [clips["av.mp4"], clips["vfr.mkv"], clips["audio_late.mp4"]]
    stream_ids = ["m-av", "m-vfr", "m-late"]
    out = tmp_path / "records.jsonl"
    sink = JsonlSink(out)
    mid_run_frames: list[float] = []
    done = threading.Event()

    def scrape_while_running() -> None:
        while not done.is_set():
            mid_run_frames.append(total(parse(get(url)[1]), "avfuse_frames_decoded_total", stream="m-av"))
            time.sleep(0.02)

    scraper = threading.Thread(target=scrape_while_running)
    scraper.start()
    try:
        results = asyncio.run(pipeline.replay([str(p) for p in paths], sink, stream_ids=stream_ids))
    finally:
        done.set()
        scraper.join()
        sink.close()
    assert [r.status for r in results] == ["ok", "ok", "ok"]
    after_text = get(url)[1]
    promtool_check(after_text)
    counts = delta(parse(after_text), before)
    records = [json.loads(line) for line in out.read_text().splitlines()]

    # published events per label (and every record type) equal what the JSONL holds
    events_by_label = Counter(r["label"] for r in records if r["type"] == "event")
    assert events_by_label, "the clips have known events"
    for label, n in events_by_label.items():
        assert total(counts, "avfuse_records_published_total", sink="jsonl", type="event", label=label) == n
    for record_type, n in Counter(r["type"] for r in records).items():
        assert total(counts, "avfuse_records_published_total", sink="jsonl", type=record_type) == n
    assert total(counts, "avfuse_end_to_end_latency_seconds_count", sink="jsonl") >= len(
        [r for r in records if r["type"] in ("event", "window", "summary")])

    for stream_id in stream_ids:
        end = next(r for r in records if r["type"] == "stream_end" and r["stream_id"] == stream_id)
        kept = total(counts, "avfuse_frames_kept_total", stream=stream_id)
        assert abs(kept - pipeline.cfg.video.fps * DURATION_S) <= 1.0, (stream_id, kept)
        assert kept == end["frames_kept"]
        assert total(counts, "avfuse_frames_decoded_total", stream=stream_id) == end["frames_decoded"]
        assert total(counts, "avfuse_audio_decoded_seconds_total", stream=stream_id) == pytest.approx(
            DURATION_S - (0.5 if "late" in stream_id else 0.0), abs=0.11)
        windows = [r for r in records if r["type"] == "window" and r["stream_id"] == stream_id]
        assert total(counts, "avfuse_windows_total", stream=stream_id) == len(windows)
        assert total(counts, "avfuse_windows_total", stream=stream_id, state="partial") == len(
            [w for w in windows if w["missing"]])

    # every operator batch counted, in the operator's unit
    kept_all = sum(total(counts, "avfuse_frames_kept_total", stream=s) for s in stream_ids)
    assert total(counts, "avfuse_operator_items_total", operator="vision") == kept_all
    assert total(counts, "avfuse_operator_batch_size_sum", operator="vision") == kept_all
    windows_all = len([r for r in records if r["type"] == "window"])
    assert total(counts, "avfuse_operator_items_total", operator="fusion") == windows_all
    assert total(counts, "avfuse_operator_batch_seconds_count", operator="audio") >= 1
    assert total(counts, "avfuse_fusion_seconds_count") >= 1
    # nothing left in flight once the replay returned
    assert total(parse(after_text), "avfuse_stage_inflight") == 0
    assert total(parse(after_text), "avfuse_streams_active") == 0
    # the scrapes during the run saw the count grow
    final = total(parse(after_text), "avfuse_frames_decoded_total", stream="m-av")
    assert any(0 < frames < final for frames in mid_run_frames), sorted(set(mid_run_frames))


def test_decode_errors_are_counted_per_stream(pipeline, clips, tmp_path, exporter):
    from tests.media_faults import with_garbled_packets

    url = f"http://127.0.0.1:{exporter.port}/metrics"
    broken = with_garbled_packets(clips["av.mp4"], tmp_path / "garbled.mkv", 4.0, 5.0)
    before = parse(get(url)[1])
    sink = JsonlSink(tmp_path / "r.jsonl")
    try:
        [result] = asyncio.run(pipeline.replay([str(broken)], sink, stream_ids=["m-garbled"]))
    finally:
        sink.close()
    counts = delta(parse(get(url)[1]), before)
    end = [json.loads(x) for x in (tmp_path / "r.jsonl").read_text().splitlines()][-1]
    assert end["type"] == "stream_end" and end["decode_errors"] > 0
    assert total(counts, "avfuse_decode_errors_total", stream="m-garbled") == end["decode_errors"]


def test_health_answers_at_once_and_readiness_waits_for_every_check(exporter):
    base = f"http://127.0.0.1:{exporter.port}"
    assert get(base + "/healthz") == (200, "ok\n")
    status, body = get(base + "/readyz")
    assert status == 503 and "ray" in body and "operators" in body
    exporter.readiness.set("ray", True)
    status, body = get(base + "/readyz")
    assert status == 503 and "ray" not in body and "operators" in body
    exporter.readiness.set("operators", True)
    assert get(base + "/readyz") == (200, "ready\n")
    exporter.readiness.set("operators", False, "kafka unreachable")
    assert get(base + "/readyz")[0] == 503
    assert get(base + "/nope")[0] == 404


def test_only_avfuse_families_are_exported_from_the_shared_folder(pipeline):
    text = metrics.collect().decode()
    names = {family.name for family in text_string_to_metric_families(text)}
    assert names and all(name.startswith("avfuse_") for name in names), names


def test_a_process_file_not_yet_sized_does_not_fail_the_scrape(pipeline):
    """A process killed between creating and sizing its file leaves it empty for good
    (prometheus/client_python#1199); every scrape after must still answer in full."""
    before = metrics.collect().decode()
    empty = Path(metrics.multiprocess_dir()) / "counter_4194303.db"  # a pid no process here has
    empty.touch()
    try:
        after = metrics.collect().decode()
    finally:
        empty.unlink(missing_ok=True)  # a starting process's sweep may have compacted it away
    assert "avfuse_frames_decoded_total" in after
    assert parse(after).keys() == parse(before).keys()  # every series, as before


def test_textfile_is_written_atomically_in_the_exposition_format(pipeline, tmp_path):
    path = metrics.write_textfile(tmp_path / "nested" / "avfuse.prom")
    text = path.read_text()
    promtool_check(text)
    assert "avfuse_frames_decoded_total" in text
    assert [p.name for p in path.parent.iterdir()] == ["avfuse.prom"]  # no temp file left behind


def test_a_node_exporter_actor_serves_the_same_node_totals_as_the_driver(pipeline, replay, clips):
    from pipeline.compute.ray_init import start_node_exporters

    replay(clips["av.mp4"], stream_ids=["m-node"])
    import ray

    [actor] = start_node_exporters(0, include_driver_node=True)  # a single-node cluster: on this node
    try:
        port = ray.get(actor.port.remote())
        served = parse(get(f"http://127.0.0.1:{port}/metrics")[1])
        here = parse(metrics.collect().decode())
        for name in ("avfuse_frames_kept_total", "avfuse_operator_items_total", "avfuse_records_published_total"):
            assert total(served, name) == total(here, name) > 0, name
        assert total(served, "avfuse_frames_kept_total", stream="m-node") == 48
    finally:
        ray.kill(actor)
