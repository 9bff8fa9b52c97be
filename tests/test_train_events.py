"""Supervised event heads: annotations in, a checkpoint with labels out, learned events in the pipeline."""

from __future__ import annotations

import asyncio
import json
import re

import numpy as np
import pytest
import torch

from operators.checkpoint import CheckpointMismatchError
from operators.event_head import load_event_head
from operators.fusion import collate_windows
from pipeline.app.cli import main
from pipeline.compute.provenance import trained_behind
from pipeline.compute.runtime import Pipeline
from pipeline.core.config import EventHeadConfig, load_config
from pipeline.output.records import event_id
from pipeline.output.sinks import JsonlSink
from pipeline.stream.learned_events import LearnedEvents
from pipeline.training.clip_tokens import ClipEncoder
from pipeline.training.events import Annotation, average_precision, window_targets
from pipeline.training.sync_eval import pipeline_windows
from pipeline.training.synthetic import write_sync_clip

CFG = load_config(None, [], environ={})


def bursts(seed: int) -> list[tuple[float, float, int]]:
    """1-1.5 s audio-visual bursts separated by 3-4.5 s of still, quiet picture."""
    rng = np.random.default_rng(seed)
    t, events = float(rng.uniform(0.5, 2.0)), []
    while t < 10.5:
        length = float(rng.uniform(1.0, 1.5))
        events.append((round(t, 2), round(t + length, 2), int(rng.integers(1 << 30))))
        t += length + float(rng.uniform(3.0, 4.5))
    return events


@pytest.fixture(scope="module")
def annotated(tmp_path_factory):
    """Six clips and their annotations: `burst` over each burst, `quiet` inside long gaps."""
    folder = tmp_path_factory.mktemp("annotated")
    lines = []
    for i in range(6):
        events = bursts(i)
        write_sync_clip(folder / f"c{i}.mp4", i, 12.0, events=events)
        lines += [{"path": f"c{i}.mp4", "start_s": s, "end_s": e, "label": "burst"} for s, e, _ in events]
        edges = [0.0] + [x for s, e, _ in events for x in (s, e)] + [12.0]
        lines += [{"path": f"c{i}.mp4", "start_s": a + 0.5, "end_s": b - 0.5, "label": "quiet"}
                  for a, b in zip(edges[::2], edges[1::2]) if b - a >= 3.0]
    (folder / "annotations.jsonl").write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    return folder


@pytest.fixture(scope="module")
def trained(annotated):
    out = annotated / "head.pt"
    code = main(["train", "events", str(annotated / "annotations.jsonl"), "--out", str(out),
                 "--cache-dir", str(annotated / "cache"), "--epochs", "60"])
    assert code == 0
    return out


def test_window_targets_need_half_the_shorter_of_window_and_span():
    windows = [type("W", (), {"start_s": float(i)})() for i in range(4)]  # [i, i + 2)
    spans = [Annotation("p", 1.5, 2.5, "x")]
    targets = window_targets(windows, 2.0, spans, ["x"])
    # overlap with the 1 s span: [0,2) 0.5 s, [1,3) 1 s, [2,4) 0.5 s, [3,5) none; half of 1 s needed.
    assert targets[:, 0].tolist() == [1.0, 1.0, 1.0, 0.0]


def test_average_precision_matches_hand_computed_values():
    assert average_precision(np.array([0.9, 0.8, 0.1]), np.array([1.0, 0.0, 1.0])) == pytest.approx((1 + 2 / 3) / 2)
    assert average_precision(np.array([0.3, 0.2]), np.array([0.0, 0.0])) is None


def test_train_events_reports_ap_and_f1_per_label_on_held_out_clips(annotated, trained):
    head, extra = load_event_head(trained, 256, 256, trained_behind(CFG))
    assert head.labels == ["burst", "quiet"]
    report = extra["report"]
    assert report["split"] == "2 of 6 clips" and report["val_windows"] > 0
    for label in ("burst", "quiet"):
        assert report["per_label"][label]["ap"] >= 0.7, report
    assert extra["config"]["align"]["window_s"] == 2.0  # the checkpoint carries the config


def test_saved_event_head_reloads_to_identical_outputs(annotated, trained):
    head, _ = load_event_head(trained, 256, 256, trained_behind(CFG))
    again, _ = load_event_head(trained, 256, 256, trained_behind(CFG))
    clip = ClipEncoder(CFG, annotated / "cache").tokens(annotated / "c0.mp4")
    batch = collate_windows(pipeline_windows(clip, 2.0, 1.0), "cpu", 256, 256)
    with torch.inference_mode():
        first, second = head(batch), again(batch)
    assert torch.equal(first, second) and first.shape == (len(batch.video), 2)


def test_event_head_for_other_windows_or_encoders_fails_loudly(trained):
    other = trained_behind(load_config(None, ["align.window_s=4", "align.hop_s=2"], environ={}))
    with pytest.raises(CheckpointMismatchError, match="window_s: checkpoint=2.0 config=4.0"):
        load_event_head(trained, 256, 256, other)
    with pytest.raises(CheckpointMismatchError, match="image_size"):
        load_event_head(trained, 256, 256, trained_behind(load_config(None, ["video.image_size=96"], environ={})))


@pytest.mark.parametrize("line, reason", [
    ("not json", "expected"),
    ('{"path": "c0.mp4", "start_s": 1}', "expected"),
    ('{"path": "c0.mp4", "start_s": 3, "end_s": 2, "label": "x"}', "start_s < end_s"),
    ('{"path": "missing.mp4", "start_s": 0, "end_s": 1, "label": "x"}', "clip not found"),
])
def test_bad_annotation_line_exits_2_with_its_line_number(annotated, tmp_path, capsys, line, reason):
    bad = tmp_path / "bad.jsonl"
    (tmp_path / "c0.mp4").symlink_to(annotated / "c0.mp4")
    bad.write_text('{"path": "c0.mp4", "start_s": 0, "end_s": 1, "label": "x"}\n' + line + "\n")
    assert main(["train", "events", str(bad), "--out", str(tmp_path / "h.pt")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and re.search(r"bad\.jsonl:2", err) and reason in err, err


def test_learned_events_use_hysteresis_over_windows_and_deterministic_ids():
    learned = LearnedEvents("s", EventHeadConfig(enter=0.6, exit=0.4), ["burst"], "v1")
    probs = [0.1, 0.7, 0.5, 0.45, 0.3, 0.65, 0.2]  # window i covers [i, i + 2)
    events = [e for i, p in enumerate(probs) for e in learned.update(float(i), i + 2.0, [p])] + learned.finish()
    assert [(e.start_s, e.end_s, e.confidence) for e in events] == [(1.0, 5.0, 0.7), (5.0, 7.0, 0.65)]
    assert events[0].event_id == event_id("s", "burst", 1.0)  # the same id a replay would give
    assert events[0].detector == "event_head" and events[0].detector_version == "v1"


def test_pipeline_emits_learned_events_where_the_bursts_are(ray_session, annotated, trained, tmp_path):
    cfg = load_config(None, [f"event_head.checkpoint={trained}", "records.stdout=false"], environ={})
    events = bursts(99)
    clip = write_sync_clip(tmp_path / "unseen.mp4", 99, 12.0, events=events)
    pipe = Pipeline(cfg)
    try:
        asyncio.run(pipe.warm_up())
        sink = JsonlSink(tmp_path / "out.jsonl")
        try:
            asyncio.run(pipe.replay([str(clip)], sink))
        finally:
            sink.close()
    finally:
        pipe.shutdown()
    records = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    learned = [r for r in records if r["type"] == "event" and r["detector"] == "event_head"]
    found = [e for e in learned if e["label"] == "burst"]
    assert found, learned
    for start_s, end_s, _ in events:  # every burst lies inside a learned burst event
        assert any(e["start_s"] <= start_s + 0.5 and e["end_s"] >= end_s - 0.5 for e in found), (events, found)
    final = [r for r in records if r["type"] == "summary" and r["final"]][0]
    assert final["counts_by_label"]["burst"] == len(found)
