"""Supervised event heads: the fusion and a multi-label head trained on annotated windows.

Annotations are JSONL, one ``{"path", "start_s", "end_s", "label"}`` per line (paths relative
to the annotation file). Windows are cut as the pipeline cuts them (``align.window_s`` /
``hop_s``); a window is positive for a label when it overlaps an annotated span by at least
half the shorter of the two. Encoders stay frozen: their tokens come from the disk cache.
Validation holds out whole clips (windows of one clip overlap, so splitting windows would
leak), or every fourth window when there is a single clip.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from operators.event_head import EventHead
from operators.fusion import WindowInput, collate_windows
from pipeline.compute.operator_specs import FusionSpec, spec_of
from pipeline.compute.provenance import trained_behind
from pipeline.core.config import Config
from pipeline.training.clip_tokens import ClipEncoder, ClipTokens
from pipeline.training.sync_eval import pipeline_windows

log = logging.getLogger("avfuse.train")
THRESHOLD = 0.5  # F1 is reported at this probability


@dataclass(frozen=True)
class Annotation:
    path: str
    start_s: float
    end_s: float
    label: str


def read_annotations(path: str | Path) -> list[Annotation]:
    """Parse and check the JSONL file; a bad line is a ValueError naming its line number."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"annotations not found: {path}")
    annotations = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            item = json.loads(line)
            clip = (path.parent / str(item["path"])).resolve()
            start_s, end_s, label = float(item["start_s"]), float(item["end_s"]), str(item["label"])
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{where}: expected {{\"path\", \"start_s\", \"end_s\", \"label\"}} ({exc})") from None
        if not end_s > start_s >= 0 or not label:
            raise ValueError(f"{where}: need 0 <= start_s < end_s and a label")
        if not clip.is_file():
            raise ValueError(f"{where}: clip not found: {clip}")
        annotations.append(Annotation(str(clip), start_s, end_s, label))
    if not annotations:
        raise ValueError(f"{path}: no annotations")
    return annotations


def window_targets(windows: list[WindowInput], window_s: float, spans: list[Annotation],
                   labels: list[str]) -> np.ndarray:
    """[W, L] 0/1: window w overlaps a span of label l by at least half the shorter of the two."""
    targets = np.zeros((len(windows), len(labels)), np.float32)
    for span in spans:
        column = labels.index(span.label)
        need_s = 0.5 * min(window_s, span.end_s - span.start_s)
        for row, window in enumerate(windows):
            overlap_s = min(window.start_s + window_s, span.end_s) - max(window.start_s, span.start_s)
            if overlap_s >= need_s - 1e-9:
                targets[row, column] = 1.0
    return targets


def average_precision(scores: np.ndarray, targets: np.ndarray) -> float | None:
    """Area under the precision-recall steps (as scikit-learn's average_precision_score); None
    without positives."""
    positives = int(targets.sum())
    if positives == 0:
        return None
    order = np.argsort(-scores, kind="stable")
    hits = targets[order]
    precision_at = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    return float((precision_at * hits).sum() / positives)


def f1_score(predicted: np.ndarray, targets: np.ndarray) -> float:
    tp = float((predicted * targets).sum())
    fp, fn = float((predicted * (1 - targets)).sum()), float(((1 - predicted) * targets).sum())
    return 0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn)


def _split(clips: list[ClipTokens], val_fraction: float, seed: int) -> tuple[set[str], str]:
    if len(clips) < 2:
        return set(), "every fourth window of the only clip"
    count = min(len(clips) - 1, max(1, int(round(val_fraction * len(clips)))))
    chosen = np.random.default_rng(seed).choice(len(clips), size=count, replace=False)
    return {clips[i].path for i in chosen}, f"{count} of {len(clips)} clips"


def train_events(annotations: list[Annotation], cfg: Config, encoder: ClipEncoder, epochs: int,
                 val_fraction: float, seed: int) -> tuple[EventHead, dict]:
    labels = sorted({a.label for a in annotations})
    clips = [encoder.tokens(p) for p in sorted({a.path for a in annotations})]
    val_paths, split = _split(clips, val_fraction, seed)
    sets = {"train": ([], []), "val": ([], [])}
    for clip in clips:
        windows = [w for w in pipeline_windows(clip, cfg.align.window_s, cfg.align.hop_s)
                   if len(w.video_t_s) or len(w.audio_t_s)]
        targets = window_targets(windows, cfg.align.window_s, [a for a in annotations if a.path == clip.path], labels)
        for row, (window, target) in enumerate(zip(windows, targets)):
            held = clip.path in val_paths if val_paths else row % 4 == 3
            sets["val" if held else "train"][0].append(window)
            sets["val" if held else "train"][1].append(target)
    train_windows, train_targets = sets["train"][0], np.stack(sets["train"][1])
    torch.manual_seed(seed)
    head = EventHead(spec_of(cfg.fusion, FusionSpec), cfg.vision.embed_dim, cfg.audio_encoder.embed_dim, labels)
    batch = collate_windows(train_windows, "cpu", cfg.vision.embed_dim, cfg.audio_encoder.embed_dim)
    target = torch.from_numpy(train_targets)
    positives = target.sum(0)
    pos_weight = ((len(target) - positives) / positives.clamp_min(1)).clamp(1, 20)  # rare labels count
    loss_fn = torch.nn.BCEWithLogitsLoss(pos_weight=pos_weight)
    optimizer = torch.optim.AdamW(head.parameters(), lr=1e-3, weight_decay=1e-2)
    started = time.monotonic()
    head.train()
    for epoch in range(epochs):
        loss = loss_fn(head(batch), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if epoch % 20 == 0 or epoch == epochs - 1:
            log.info("events epoch %d/%d loss %.4f", epoch + 1, epochs, float(loss.detach()))
    head.eval()
    report = {"labels": labels, "split": split, "train_windows": len(train_windows),
              "val_windows": len(sets["val"][0]), "train_seconds": round(time.monotonic() - started, 1),
              "per_label": {}}
    if sets["val"][0]:
        with torch.inference_mode():
            val_batch = collate_windows(sets["val"][0], "cpu", cfg.vision.embed_dim, cfg.audio_encoder.embed_dim)
            scores = torch.sigmoid(head(val_batch)).numpy()
        val_targets = np.stack(sets["val"][1])
        for column, label in enumerate(labels):
            ap = average_precision(scores[:, column], val_targets[:, column])
            f1 = f1_score((scores[:, column] >= THRESHOLD).astype(np.float32), val_targets[:, column])
            report["per_label"][label] = {"ap": None if ap is None else round(ap, 3), "f1": round(f1, 3),
                                          "val_positives": int(val_targets[:, column].sum())}
    return head, report


def train_events_command(cfg: Config, args: argparse.Namespace) -> int:
    annotations = read_annotations(args.annotations)
    encoder = ClipEncoder(cfg, Path(args.cache_dir) / "tokens" if args.cache_dir else None)
    head, report = train_events(annotations, cfg, encoder, args.epochs, args.val_fraction, args.seed)
    head.save(args.out, extra={"trained_behind": trained_behind(cfg), "report": report,
                               "config": cfg.model_dump(mode="json"), "version": Path(args.out).stem})
    print(f"labels: {', '.join(report['labels'])}; validation: {report['split']}, "
          f"{report['val_windows']} windows")
    for label, scores in report["per_label"].items():
        ap = "n/a (no positives)" if scores["ap"] is None else f"{scores['ap']:.3f}"
        print(f"  {label}: AP {ap}  F1@{THRESHOLD:g} {scores['f1']:.3f}  ({scores['val_positives']} positive windows)")
    print(f"wrote {args.out}")
    return 0
