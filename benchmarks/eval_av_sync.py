"""A/V-sync accuracy on real clips with known offsets injected, through the real pipeline.

Each clip is remuxed (stream copy, ``benchmarks.shift_media``) once per shift in SHIFTS_S, and
every copy goes through one replay of the pipeline with the default config (plus --set). Prints:
  - per shift and clip: the final summary's av_offset_s (whole stream), its confidence, the
    error against the shift, and the number of av_desync events;
  - per shift: mean and median |estimate - shift|, the share of streams with an av_desync
    (at shift 0 the false-alarm rate) and the streams with no estimate, separately for the
    clips the av_sync checkpoint was trained on and for the held-out clips;
  - wall times of the remux and of the replay.

Usage: python -m benchmarks.eval_av_sync [--clips A.mp4 ...] [--work DIR] [--set av_sync.KEY=VALUE]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shlex
import tempfile
import time
from pathlib import Path

from benchmarks.shift_media import audio_lead_s, write_shifted_set
from benchmarks.sync_report import Outcome, print_rates, print_streams
from operators.checkpoint import read_torch_file
from operators.weights import sync_checkpoint_path
from pipeline.compute.ray_init import init_ray
from pipeline.compute.runtime import Pipeline
from pipeline.core.config import Config, load_config
from pipeline.output.sinks import JsonlSink

MEDIA = Path(__file__).resolve().parents[2] / "shared" / "media"
CLIPS = ("big_buck_bunny_0_30.webm", "chaplin.mp4", "fire2.mp4", "nasa_13013.mp4", "no_duration.webm",
         "smpte-2997.mp4")
SKIPPED = {"video_with_failing_audio.mp4": "its audio fails to decode part-way, so no whole-stream truth"}
SHIFTS_S = (0.0, 0.08, -0.08, 0.2, -0.2, 0.5, -0.5)


def training_clips(cfg: Config) -> set[str] | None:
    """File names the checkpoint's recorded training command passed with --clip (None: unrecorded)."""
    extra = read_torch_file(sync_checkpoint_path(cfg.av_sync.checkpoint)).get("extra", {})
    if "command" not in extra:
        return None
    words = shlex.split(extra["command"])
    return {Path(words[i + 1]).name for i, word in enumerate(words[:-1]) if word == "--clip"}


def write_copies(clips: list[Path], work: Path) -> dict[str, tuple[str, float, Path]]:
    """Every clip at every shift, keyed by the stream id the replay will give it."""
    copies = {}
    for clip in clips:
        shifted = write_shifted_set(clip, work / "copies", list(SHIFTS_S))
        copies.update({path.name: (clip.name, shift, path) for shift, path in shifted.items()})
        # Not an error: priming samples an MP4 edit list trimmed come back in Matroska, before the content.
        moved_s = audio_lead_s(shifted[0.0]) - audio_lead_s(clip)
        if abs(moved_s) > 0.002:
            print(f"note: {clip.name}: the remux starts audio {moved_s * 1000:+.0f} ms vs the source's first "
                  f"frames (trimmed priming samples kept); shifts are verified against its unshifted copy")
    return copies


def replay(cfg: Config, copies: dict[str, tuple[str, float, Path]], records_path: Path) -> list[Outcome]:
    """All copies in one replay; each stream's final estimate and its av_desync count."""
    init_ray(cfg)
    pipeline = Pipeline(cfg)
    asyncio.run(pipeline.warm_up())
    sink = JsonlSink(records_path)
    try:
        results = asyncio.run(pipeline.replay([str(p) for _, _, p in copies.values()], sink,
                                              stream_ids=list(copies)))
    finally:
        sink.close()
        pipeline.shutdown()
    records = [json.loads(line) for line in records_path.read_text().splitlines()]
    finals = {r["stream_id"]: r for r in records if r["type"] == "summary" and r["final"]}
    outcomes = []
    for result in results:
        clip, shift, _ = copies[result.stream_id]
        final = finals.get(result.stream_id, {})
        desyncs = sum(1 for r in records if r["type"] == "event" and r["label"] == "av_desync"
                      and r["stream_id"] == result.stream_id)
        outcomes.append(Outcome(clip, shift, result.status, final.get("av_offset_s"),
                                final.get("av_sync_confidence"), desyncs))
    return outcomes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", nargs="+", type=Path, default=[MEDIA / name for name in CLIPS])
    parser.add_argument("--work", type=Path, help="folder for the shifted copies and records (default: a temp one)")
    parser.add_argument("--set", dest="sets", action="append", default=[], help="config override")
    args = parser.parse_args()
    for name, why in SKIPPED.items():
        if all(clip.name != name for clip in args.clips):
            print(f"skipped: {name} ({why})")
    cfg = load_config(None, ["records.stdout=false", *args.sets])
    trained = training_clips(cfg)
    work = args.work or Path(tempfile.mkdtemp(prefix="avfuse-sync-eval-"))

    started = time.perf_counter()
    copies = write_copies(args.clips, work)
    remux_s = time.perf_counter() - started
    started = time.perf_counter()
    outcomes = replay(cfg, copies, work / "records.jsonl")
    replay_s = time.perf_counter() - started

    names = {clip.name for clip in args.clips}
    held_out = names - trained if trained is not None else set()
    print(f"\ncheckpoint: {sync_checkpoint_path(cfg.av_sync.checkpoint)}")
    print("trained with --clip: " + (", ".join(sorted(trained)) if trained is not None else "not recorded")
          + "; held-out real clips here: " + (", ".join(sorted(held_out)) or "none"))
    print_streams(outcomes, held_out, SHIFTS_S)
    groups = {"trained-on clips": names - held_out, "held-out clips": held_out}
    print_rates(outcomes, groups, SHIFTS_S, cfg.av_sync.desync_threshold_s)
    print(f"\n{len(outcomes)} streams; wall: remux {remux_s:.1f}s, replay {replay_s:.1f}s (incl. Ray start and "
          f"warm-up); copies and records in {work}")


if __name__ == "__main__":
    main()
