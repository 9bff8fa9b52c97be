"""Stream actors: each stream runs in one pooled actor that owns its state, and the driver
receives records only."""

from __future__ import annotations

import asyncio
import json

import pytest
import ray
from prometheus_client.parser import text_string_to_metric_families

from pipeline.app.sample import ClipSpec, write_clip
from pipeline.compute.record_relay import RecordRelay, StreamResult
from pipeline.compute.runtime import Pipeline
from pipeline.core.config import load_config
from pipeline.observe import metrics
from pipeline.output.records import Event
from pipeline.output.sinks import JsonlSink


def _driver_bytes() -> dict[str, float]:
    found = {}
    for family in text_string_to_metric_families(metrics.collect().decode()):
        if family.name == "avfuse_driver_received_bytes":
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    found[sample.labels["stream"]] = sample.value
    return found


@pytest.fixture(scope="module")
def default_pipeline(ray_session):
    """The default configuration as a user gets it (pretrained taggers, no window records)."""
    pipe = Pipeline(load_config(None, ["records.stdout=false"], environ={}))
    asyncio.run(pipe.warm_up())
    yield pipe
    pipe.shutdown()


def test_the_driver_receives_records_only_under_2_kb_per_media_second(default_pipeline, tmp_path):
    clip = write_clip(tmp_path / "clip.mp4", ClipSpec(duration_s=12.0, width=640, height=360))
    sink = JsonlSink(tmp_path / "r.jsonl")
    ids = ["bytes-a", "bytes-b"]
    try:
        results = asyncio.run(default_pipeline.replay([str(clip)] * 2, sink, stream_ids=ids))
    finally:
        sink.close()
    assert [r.status for r in results] == ["ok", "ok"]
    received = _driver_bytes()
    for result in results:
        per_media_s = received[result.stream_id] / result.processed_s
        # A 640x360 frame alone is 690 kB; 4 kept frames a second would be 2.8 MB/s.
        assert 0 < per_media_s < 2048, (result.stream_id, per_media_s)
    # Tokens come from the shared operators: the stream actors that ran both streams never load
    # torch (0.4 GiB of RSS and 2.4 s of import per process) or torchvision.
    actors = list(default_pipeline.streams._idle)
    assert actors
    for actor in actors:
        assert ray.get([actor.imported.remote(m) for m in ("torch", "torchvision", "torchaudio")]) == [False] * 3


def test_twenty_streams_in_sequence_reuse_the_pooled_actors(pipeline, tmp_path):
    clip = write_clip(tmp_path / "short.mp4", ClipSpec(duration_s=1.0, width=64, height=48))
    sink = JsonlSink(tmp_path / "r.jsonl")
    started_before = pipeline.streams.started
    try:
        results = [asyncio.run(pipeline.replay([str(clip)], sink, stream_ids=[f"seq-{n}"]))[0] for n in range(20)]
    finally:
        sink.close()
    assert len(results) == 20 and {r.status for r in results} == {"ok"}
    # One stream at a time: the first may need an actor of its own, the other 19 reuse it.
    assert pipeline.streams.started - started_before <= 1


def test_a_take_whose_answer_was_lost_loses_no_record():
    async def scenario():
        relay = RecordRelay()
        relay.write(Event("s", "silence", 0.0, 1.0, 1.0, "silence", "1"))
        lost = await relay.take(0, -1)  # the driver never saw this answer
        relay.write(Event("s", "silence", 2.0, 3.0, 1.0, "silence", "1"))
        relay.finish(StreamResult("s", "u", "ok", None, 3.0, 1.0, 2))
        again = await relay.take(0, -1)  # so it asks again from record 0
        assert [r.start_s for r, _ in again.records] == [0.0, 2.0] and again.result is not None
        after = await asyncio.wait_for(relay.take(again.next_seq, lost.version), 1.0)
        assert after.records == [] and after.next_seq == 2

    asyncio.run(scenario())


def test_a_relay_that_the_driver_does_not_drain_holds_the_stream_back():
    async def scenario():
        relay = RecordRelay(max_records=3)
        for start_s in range(3):
            relay.write(Event("s", "silence", float(start_s), start_s + 0.5, 1.0, "silence", "1"))
        waiting = asyncio.ensure_future(relay.wait_for_room())
        await asyncio.sleep(0.05)
        assert not waiting.done()  # the pump would decode no further
        batch = await relay.take(0, -1)
        await relay.take(batch.next_seq, batch.version - 1)  # written: the relay forgets them
        await asyncio.wait_for(waiting, 1.0)

    asyncio.run(scenario())


def test_shared_operators_in_one_process_or_one_each_give_the_same_records(ray_session, tmp_path):
    clip = write_clip(tmp_path / "clip.mp4", ClipSpec(duration_s=10.0, width=160, height=120))

    def run(mode: str) -> tuple[int, list[tuple]]:
        pipe = Pipeline(load_config(None, ["records.stdout=false", "profile=signal",
                                           f"runtime.operator_processes={mode}"], environ={}))
        out = tmp_path / f"{mode}.jsonl"
        try:
            asyncio.run(pipe.warm_up())
            processes = len(set(ray.get([handle.pid.remote() for handle in pipe.operators.values()])))
            sink = JsonlSink(out)
            try:
                results = asyncio.run(pipe.replay([str(clip)], sink))
            finally:
                sink.close()
        finally:
            pipe.shutdown()
        assert [r.status for r in results] == ["ok"]
        records = [json.loads(line) for line in out.read_text().splitlines()]
        return processes, sorted((r["label"], r["start_s"], r["end_s"]) for r in records if r["type"] == "event")

    one, per_operator = run("one"), run("per_operator")
    assert (one[0], per_operator[0]) == (1, 3)  # vision, audio and fusion
    assert one[1] == per_operator[1] and {"scene_cut", "loud_onset", "silence", "black_video"} <= {e[0] for e in one[1]}


def test_operators_share_a_process_only_on_a_local_cpu_ray():
    from pipeline.compute.actors import shares_one_process

    assert shares_one_process(load_config(None, [], environ={}))
    assert not shares_one_process(load_config(None, ["runtime.ray_address=ray://head:10001"], environ={}))
    assert not shares_one_process(load_config(None, ["runtime.encoder_gpus=0.5"], environ={}))
    assert not shares_one_process(load_config(None, ["runtime.operator_processes=per_operator"], environ={}))
