"""avfuse report on long and many streams: file size, render time, and the page's load time in
headless Chromium, for synthetic records shaped like a replay's.

``synthetic_records`` writes the records of N streams of D seconds each, at a busy stream's rates:
a scene every ~6 s, 20 AudioSet and 15 ImageNet labels, speech with transcripts (words timed),
thousands of loud onsets (more than a lane draws one by one), periodic summaries with A/V offsets,
``signals`` records at 1 s bins, a few outages and error records. The tests use it too.

    python -m benchmarks.bench_report [--streams 1] [--duration-s 3600] [--streams 50 ...]
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import uuid
from pathlib import Path
from typing import Any, Iterator

SOUNDS = ["Speech", "Music", "Vehicle", "Car", "Engine", "Wind", "Rain", "Applause", "Crowd", "Dog", "Bird",
          "Laughter", "Siren", "Drum", "Guitar", "Piano", "Water", "Footsteps", "Door", "Telephone"]
SIGHTS = ["stage", "vacuum", "spotlight", "car", "street sign", "dog", "bird", "ocean", "mountain", "desk",
          "monitor", "crowd", "bicycle", "boat", "tree"]
WORDS = "the launch window opens at noon and the crew is ready for the countdown on the pad".split()


def _event(sid: str, label: str, start_s: float, end_s: float, detector: str, rng: random.Random,
           attributes: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"schema": "avfuse.event/1", "type": "event", "stream_id": sid, "label": label,
            "start_s": round(start_s, 3), "end_s": round(max(start_s, end_s), 3),
            "confidence": round(rng.uniform(0.3, 1.0), 3), "detector": detector, "detector_version": "1",
            "event_id": str(uuid.UUID(int=rng.getrandbits(128), version=5)), "attributes": attributes or {}}


def _spans(rng: random.Random, duration_s: float, every_s: float, length_s: float) -> Iterator[tuple[float, float]]:
    t = rng.uniform(0, every_s)
    while t < duration_s:
        yield t, min(duration_s, t + rng.uniform(0.2, 1.8) * length_s)
        t += rng.expovariate(1 / every_s)


def stream_records(sid: str, duration_s: float, seed: int = 0) -> Iterator[dict[str, Any]]:
    rng = random.Random(seed)
    yield {"schema": "avfuse.stream_start/1", "type": "stream_start", "stream_id": sid, "uri": f"/media/{sid}.mp4",
           "started_at": 1.7e9, "duration_s": duration_s,
           "video": {"codec": "h264", "width": 1280, "height": 720, "avg_fps": 25.0},
           "audio": {"codec": "aac", "sample_rate_hz": 48000, "channels": 2}}
    cuts = sorted(t for t, _ in _spans(rng, duration_s, 6.0, 0))
    for t in cuts:
        yield _event(sid, "scene_cut", t, t, "scene_cut", rng)
    for i, (a, b) in enumerate(zip([0.0, *cuts], [*cuts, duration_s])):
        yield _event(sid, "scene", a, b, "scene_tags", rng, {"index": i, "visual_tags": [
            {"label": rng.choice(SIGHTS), "seconds": round(b - a, 1), "max_confidence": 0.5}]})
    # (label, detector, mean seconds between, mean length in seconds)
    for label, detector, every_s, length_s in (
            ("loud_onset", "loud_onset", 1.2, 0.3), ("silence", "silence", 20, 3),
            ("motion_burst", "motion_burst", 12, 1), ("black_video", "black_video", 400, 2),
            ("frozen_video", "frozen_video", 200, 3), ("face_present", "faces", 18, 6),
            ("av_event", "av_concepts", 70, 8), ("stream_outage", "ingest", 1500, 5)):
        for a, b in _spans(rng, duration_s, every_s, length_s):
            yield _event(sid, label, a, b if length_s else a, detector, rng)
    for labels, detector, modality in ((SOUNDS, "sound_tags", "audio"), (SIGHTS, "visual_tags", "video")):
        for rank, label in enumerate(labels):
            for a, b in _spans(rng, duration_s, 20 + 8 * rank, 5):
                yield _event(sid, label, a, b, detector, rng, {"modality": modality, "alternatives": [
                    {"label": rng.choice(labels), "mean_score": 0.1}]})
    for a, b in _spans(rng, duration_s, 4.0, 3.0):
        yield _event(sid, "speech", a, b, "speech", rng)
        words = [rng.choice(WORDS) for _ in range(rng.randint(5, 14))]
        step_s = (b - a) / len(words)
        yield {"schema": "avfuse.transcript/1", "type": "transcript", "stream_id": sid,
               "transcript_id": str(uuid.UUID(int=rng.getrandbits(128), version=5)), "start_s": round(a, 3),
               "end_s": round(b, 3), "text": " ".join(words) + ".", "language": "en", "language_probability": 1.0,
               "words": [{"word": w, "start_s": round(a + i * step_s, 3), "end_s": round(a + (i + 1) * step_s, 3),
                          "probability": 0.9} for i, w in enumerate(words)],
               "avg_logprob": -0.3, "no_speech_prob": 0.05, "model": "tiny.en"}
    period_s = 30.0
    for i in range(int(duration_s // period_s) + 1):
        start_s, n = i * period_s, int(min(period_s, duration_s - i * period_s))
        if n <= 0:
            break
        yield {"schema": "avfuse.signals/1", "type": "signals", "stream_id": sid, "start_s": start_s, "step_s": 1.0,
               **{key: {"mean": [None if rng.random() < 0.02 else round(rng.uniform(lo, hi), 3) for _ in range(n)],
                        "peak": [round(rng.uniform(lo, hi) + (hi - lo) * 0.1, 3) for _ in range(n)]}
                  for key, lo, hi in (("loudness_dbfs", -60, -10), ("luma", 0.1, 0.8), ("motion", 0.0, 0.4))}}
        confidence = round(rng.uniform(0.4, 1.0), 3)
        yield _summary(sid, False, start_s + n, confidence)
    yield {"schema": "avfuse.error/1", "type": "error", "stream_id": sid, "stage": "decode",
           "reason": "corrupt packet skipped", "uri": f"/media/{sid}.mp4", "fatal": False, "at": 1.7e9 + 10,
           "input": None}
    yield _summary(sid, True, duration_s, 0.9)
    yield {"schema": "avfuse.stream_end/1", "type": "stream_end", "stream_id": sid, "status": "ok", "reason": None,
           "processed_s": duration_s, "wall_s": duration_s / 20, "events": 0, "frames_decoded": 0,
           "frames_kept": 0, "decode_errors": 1}


def _summary(sid: str, final: bool, processed_s: float, confidence: float) -> dict[str, Any]:
    return {"schema": "avfuse.summary/4", "type": "summary", "stream_id": sid, "final": final,
            "processed_s": processed_s, "wall_s": processed_s / 20, "speed_x_realtime": 20.0, "counts_by_label": {},
            "silence_s": 0.0, "black_s": 0.0, "frozen_s": 0.0, "speech_s": 0.0, "scenes": 0, "windows": 0,
            "partial_windows": 0, "top_moments": [],
            "av_offset_s": round(0.04 * confidence - 0.02, 3) if confidence >= 0.75 else None,
            "av_sync_confidence": confidence,
            "audio_tags": [{"label": "Speech", "seconds": 100.0, "max_confidence": 0.9}],
            "visual_tags": [{"label": "stage", "seconds": 80.0, "max_confidence": 0.7}], "words": 0,
            "languages": {"en": 100.0}, "source_state": "file", "outages": 0, "outage_s": 0.0}


def synthetic_records(path: Path, streams: int, duration_s: float) -> Path:
    with path.open("w") as f:
        for i in range(streams):
            for record in stream_records(f"cam-{i:02d}", duration_s, seed=i):
                f.write(json.dumps(record, separators=(",", ":")) + "\n")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, action="append", help="streams per file (repeatable; default 1 and 50)")
    parser.add_argument("--duration-s", type=float, default=3600.0)
    args = parser.parse_args()
    from pipeline.report.render import render_report
    from tests.browser import dump_dom

    for streams in args.streams or [1, 50]:
        with tempfile.TemporaryDirectory() as tmp:
            records = synthetic_records(Path(tmp) / "records.jsonl", streams, args.duration_s)
            result = render_report(records, out_path=Path(tmp) / "report.html")
            run = dump_dom(result.out_path, timeout_s=120)
            render_ms = run.dom.split('data-render-ms="', 1)[1].split('"', 1)[0]
            print(f"{streams} stream(s) x {args.duration_s:.0f} s: records {records.stat().st_size / 2**20:.1f} MiB, "
                  f"render {result.elapsed_s:.1f} s, page {result.size_bytes / 2**20:.2f} MiB, chromium load+dump "
                  f"{run.wall_s:.1f} s (scripts {render_ms} ms), DOM {len(run.dom) / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
