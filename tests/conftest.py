"""Shared fixtures: one real local Ray and one Pipeline for the whole session
(starting operator actors costs seconds), and clips generated with PyAV."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import ray

from pipeline.app.sample import ClipSpec, write_clip
from pipeline.compute.ray_init import init_ray
from pipeline.compute.runtime import Pipeline, StreamResult
from pipeline.core.config import load_config
from pipeline.output.sinks import JsonlSink

REPO = Path(__file__).resolve().parents[1]
SHARED_MEDIA = REPO.parent / "shared" / "media"


@pytest.fixture(scope="session")
def clips(tmp_path_factory):
    """Generated clips with the known timeline of pipeline.app.sample, by variant name."""
    folder = tmp_path_factory.mktemp("clips")
    variants = {
        "av.mp4": ClipSpec(),
        "audio_late.mp4": ClipSpec(audio_offset_s=0.5),
        "vfr.mkv": ClipSpec(variable_frame_rate=True),
        "video_only.mp4": ClipSpec(audio=False),
        "audio_only.m4a": ClipSpec(video=False),
        "stereo48k.mp4": ClipSpec(audio_rate_hz=48000, audio_channels=2),
    }
    return {name: write_clip(folder / name, spec) for name, spec in variants.items()}


@pytest.fixture(scope="session")
def ray_session():
    # The same start-up as the CLI's: workers count into this process's metrics folder.
    init_ray(load_config(None, ["runtime.num_cpus=2"], environ={}))
    yield
    ray.shutdown()


@dataclass
class Replay:
    results: list[StreamResult]
    records: list[dict]

    def of(self, record_type: str, stream_id: str | None = None) -> list[dict]:
        return [r for r in self.records
                if r["type"] == record_type and (stream_id is None or r["stream_id"] == stream_id)]

    def events(self, stream_id: str | None = None, label: str | None = None) -> list[dict]:
        return [e for e in self.of("event", stream_id) if label is None or e["label"] == label]


@pytest.fixture(scope="session")
def pipeline(ray_session):
    """The signal profile: the light configuration whose detectors the older tests specify."""
    cfg = load_config(None, ["profile=signal", "records.windows=true", "records.stdout=false"], environ={})
    pipe = Pipeline(cfg)
    asyncio.run(pipe.warm_up())
    yield pipe
    pipe.shutdown()


@pytest.fixture(scope="session")
def pretrained_pipeline(ray_session):
    """The default configuration (YAMNet, EfficientNet-Lite0 and av_events on), with window records."""
    cfg = load_config(None, ["records.windows=true", "records.stdout=false"], environ={})
    pipe = Pipeline(cfg)
    asyncio.run(pipe.warm_up())
    yield pipe
    pipe.shutdown()


def _replayer(pipeline, tmp_path):
    counter = iter(range(1000))

    def run(*paths, stream_ids=None) -> Replay:
        out = tmp_path / f"records-{next(counter)}.jsonl"
        sink = JsonlSink(out)
        try:
            results = asyncio.run(pipeline.replay([str(p) for p in paths], sink, stream_ids=stream_ids))
        finally:
            sink.close()
        records = [json.loads(line) for line in out.read_text().splitlines()]
        return Replay(results, records)

    return run


@pytest.fixture
def replay(pipeline, tmp_path):
    """Replay paths through the shared signal-profile pipeline into a real JSONL sink."""
    return _replayer(pipeline, tmp_path)


@pytest.fixture
def replay_pretrained(pretrained_pipeline, tmp_path):
    """Replay paths through the shared default (pretrained) pipeline into a real JSONL sink."""
    return _replayer(pretrained_pipeline, tmp_path)


@pytest.fixture(scope="session")
def kafka_broker():
    """A real Apache Kafka broker: CI's (AVFUSE_TEST_KAFKA) or one started with scripts/kafka.sh."""
    from tests.kafka_support import Broker

    broker = Broker.get()
    yield broker
    if broker.owned:
        broker.stop(clean=True)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A failing test's report ends with the logs of the `avfuse run` processes it started:
    what the service said is what explains a timeout seen from its topics."""
    from tests.kafka_support import STARTED

    outcome = yield
    report = outcome.get_result()
    if report.when == "call" and report.failed:
        for service in STARTED:
            report.sections.append((f"avfuse run log ({service.log_path.name})", service.log()))
    if report.when == "teardown":
        STARTED.clear()
