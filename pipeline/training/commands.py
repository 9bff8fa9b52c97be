"""``avfuse train sync`` and ``avfuse train events``: arguments in, a checkpoint and a report out."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np

from pipeline.compute.provenance import trained_behind
from pipeline.core.config import Config

log = logging.getLogger("avfuse.train")

SHIFT_CHECKS_S = (0.0, 0.5, -0.5)  # held-out clips are written with these audio delays
DESYNC_DECISION_S = 0.25  # half the checked shift: nearer zero counts as "in sync"


def add_train_parser(sub) -> None:
    train = sub.add_parser("train", help="train the A/V-sync head or event heads on frozen encoder tokens")
    kinds = train.add_subparsers(dest="objective", required=True)
    sync = kinds.add_parser("sync", help="self-supervised A/V sync (audio shifted by the trainer)")
    sync.add_argument("--synthetic", type=int, default=40, metavar="N",
                      help="generated clips with random audio-visual events (default 40)")
    sync.add_argument("--synthetic-seconds", type=float, default=10.0, metavar="S")
    sync.add_argument("--clip", action="append", default=[], metavar="PATH",
                      help="also train on this clip (its audio and video must be in sync); repeatable")
    sync.add_argument("--held-out", type=int, default=6, metavar="N",
                      help="generated clips kept out of training, checked at offsets 0 and +-0.5 s")
    sync.add_argument("--steps", type=int, default=1500)
    sync.add_argument("--seed", type=int, default=0)
    sync.add_argument("--out", required=True, metavar="CHECKPOINT.pt")
    sync.add_argument("--cache-dir", help="token cache and generated clips (default ~/.cache/avfuse)")
    events = kinds.add_parser("events", help="supervised event heads from JSONL annotations")
    events.add_argument("annotations", metavar="ANNOTATIONS.jsonl",
                        help='one {"path", "start_s", "end_s", "label"} per line; paths relative to the file')
    events.add_argument("--epochs", type=int, default=60)
    events.add_argument("--val-fraction", type=float, default=0.25)
    events.add_argument("--seed", type=int, default=0)
    events.add_argument("--out", required=True, metavar="CHECKPOINT.pt")
    events.add_argument("--cache-dir", help="token cache under CACHE_DIR/tokens (default ~/.cache/avfuse)")
    for parser in (sync, events):
        parser.add_argument("-c", "--config", help="YAML config file (the encoders to train behind)")
        parser.add_argument("--set", dest="sets", action="append", default=[], metavar="SECTION.KEY=VALUE")
        parser.add_argument("--print-config", action="store_true", help=argparse.SUPPRESS)
        parser.add_argument("--debug", action="store_true")
        parser.add_argument("--log-format", choices=("text", "json"), default="text")


def run_train(cfg: Config, args: argparse.Namespace) -> int:
    if args.objective == "sync":
        return _train_sync(cfg, args)
    from pipeline.training.events import train_events_command

    return train_events_command(cfg, args)


def _train_sync(cfg: Config, args: argparse.Namespace) -> int:
    from pipeline.training.sync import SyncTrainSettings, train_sync
    from pipeline.training.sync_eval import estimate_clip
    from pipeline.training.synthetic import write_sync_clip

    root = Path(args.cache_dir) if args.cache_dir else None
    from pipeline.training.clip_tokens import ClipEncoder  # torch: only when training

    encoder = ClipEncoder(cfg, root / "tokens" if root else None)
    clip_dir = (root or encoder.cache_dir.parent) / "synthetic"
    per_row = int(round(cfg.audio.token_s / 0.01))
    seeds = [args.seed * 10000 + i for i in range(args.synthetic)]
    paths = [write_if_missing(clip_dir / f"sync-{seed}-{args.synthetic_seconds:g}s.mp4", seed,
                              args.synthetic_seconds, 0.0, write_sync_clip) for seed in seeds]
    paths += [Path(p) for p in args.clip]
    train_clips = [encoder.tokens(p, phases=per_row) for p in paths]
    settings = SyncTrainSettings(steps=args.steps, seed=args.seed)
    result = train_sync(train_clips, cfg, settings)
    report = {"train_clips": len(train_clips), "steps": args.steps, "seed": args.seed,
              "final_loss": round(float(np.mean(result.losses[-50:])), 4), "train_seconds": round(result.seconds, 1)}
    correct, errors = 0, {delay: [] for delay in SHIFT_CHECKS_S}
    held_seeds = [args.seed * 10000 + 5000 + i for i in range(args.held_out)]
    for seed in held_seeds:
        for delay in SHIFT_CHECKS_S:
            path = write_if_missing(clip_dir / f"held-{seed}-{delay:+g}.mp4", seed, args.synthetic_seconds,
                                    delay, write_sync_clip)
            estimate = estimate_clip(result.head, encoder.tokens(path), cfg)
            offset = estimate.offset_s if estimate is not None else 0.0
            correct += (abs(offset) > DESYNC_DECISION_S) == (delay != 0.0)
            errors[delay].append(abs(offset - delay))
    if held_seeds:
        report["held_out_accuracy"] = round(correct / (len(held_seeds) * len(SHIFT_CHECKS_S)), 3)
        report["held_out_mean_abs_error_s"] = {f"{d:+g}": round(float(np.mean(e)), 3) for d, e in errors.items()}
    command = " ".join(["avfuse", *getattr(args, "argv", ["train", "sync"])])
    result.head.save(args.out, extra={"trained_behind": trained_behind(cfg), "report": report, "command": command,
                                      "version": f"sync-seed{args.seed}"})
    for key, value in report.items():
        print(f"{key}: {value}")
    print(f"wrote {args.out}")
    return 0


def write_if_missing(path: Path, seed: int, seconds: float, delay_s: float, writer) -> Path:
    """Generated clips are deterministic in their name's parameters: write each once."""
    if not path.is_file():
        partial = path.with_name(path.stem + ".partial" + path.suffix)
        writer(partial, seed, seconds, audio_delay_s=delay_s)
        partial.replace(path)
    return path
