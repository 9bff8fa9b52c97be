"""Learned event labels of a window: the fusion model plus a multi-label linear head.

Trained by ``avfuse train events`` on frozen encoder tokens (``pipeline.training.events``);
the checkpoint (kind 'event_head') carries the label names, the fusion config it was built
with, and the encoders and windows it was trained behind, so a pipeline configured otherwise
refuses it instead of emitting confident nonsense.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from operators.checkpoint import (
    CheckpointError,
    check_checkpoint,
    check_trained_behind,
    load_state_strict,
    read_torch_file,
    save_checkpoint,
    seeded_init,
)
from operators.fusion import FusionBatch, FusionModel, FusionSpec

KIND = "event_head"


class EventHead(nn.Module):
    """FusionBatch -> logits [B, L] float32, one per label (sigmoid: independent labels).

    A window lacking both modalities gets logits of -inf (probability 0).
    """

    def __init__(self, fusion_cfg: FusionSpec, video_dim: int, audio_dim: int, labels: Sequence[str]):
        super().__init__()
        if not labels or len(set(labels)) != len(labels):
            raise ValueError("an event head needs distinct label names")
        self.labels = list(labels)
        self.fusion = FusionModel(dataclasses.replace(fusion_cfg, checkpoint=None), video_dim, audio_dim)
        with seeded_init(1):
            self.classifier = nn.Linear(fusion_cfg.dim, len(self.labels))
        self.eval()

    @property
    def preprocessing(self) -> dict[str, Any]:
        return {**self.fusion.preprocessing, "labels": list(self.labels)}

    def forward(self, batch: FusionBatch) -> torch.Tensor:
        out = self.fusion(batch)
        logits = self.classifier(out.embedding).float()
        empty = ~out.present.any(dim=1, keepdim=True)
        return logits.masked_fill(empty, float("-inf"))

    def save(self, path: str | Path, extra: Mapping[str, Any] | None = None) -> None:
        save_checkpoint(path, KIND, self.state_dict(), self.preprocessing, extra=extra)


def load_event_head(path: str | Path, video_dim: int, audio_dim: int,
                    expected: Mapping[str, Any]) -> tuple[EventHead, dict]:
    """Build and load the head a checkpoint describes; returns (head, checkpoint extra).

    ``expected`` is what the running pipeline would feed it (encoders, windows); any
    difference from what the head was trained behind raises CheckpointMismatchError.
    """
    obj = read_torch_file(path)
    recorded = obj.get("preprocessing") if isinstance(obj, dict) else None
    if not isinstance(recorded, dict) or "labels" not in recorded:
        raise CheckpointError(f"checkpoint {path} is not an event_head checkpoint")
    fusion_cfg = FusionSpec(strategy=recorded["strategy"], dim=recorded["dim"], heads=recorded["heads"])
    head = EventHead(fusion_cfg, video_dim, audio_dim, recorded["labels"])
    check_checkpoint(obj, path, KIND, head.preprocessing)
    check_trained_behind(obj, path, KIND, expected)
    load_state_strict(head, obj["state_dict"], path)
    head.eval()
    return head, dict(obj.get("extra", {}))
