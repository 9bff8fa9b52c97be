"""Batch function of the "faces" stage: MTCNN face counts on the frames sampled for it.

Placed by Ray as the shared "faces" operator when ``faces.enabled`` (runnable without it), in
the shape of ``pipeline.compute.stages``: one item per request (one chunk's face frames), and per item
a ``FaceCounts`` (each frame's time, its faces at or above ``faces.min_probability``, and the
most probable box's probability).
"""

from __future__ import annotations

import numpy as np
import torch

from operators import resolve_device
from operators.device import tensor_from_numpy
from pipeline.core.config import Config
from pipeline.core.media import FaceCounts, VideoFrames


class FaceStage:
    def __init__(self, cfg: Config):
        from operators.faces import load_face_detector

        self.device = resolve_device(cfg.runtime.device)
        detector, self.weights = load_face_detector(cfg.faces.min_probability)
        self.detector = detector.to(self.device)

    @torch.inference_mode()
    def run_batch(self, items: list[VideoFrames]) -> list[FaceCounts]:
        # The detector takes one frame size per call: streams of other sizes batch apart.
        by_size: dict[tuple[int, ...], list[int]] = {}
        for i, item in enumerate(items):
            by_size.setdefault(item.frames_rgb_u8.shape[1:], []).append(i)
        results: list[FaceCounts | None] = [None] * len(items)
        for indices in by_size.values():
            parts = [items[i].frames_rgb_u8 for i in indices]
            frames = np.concatenate(parts) if len(parts) > 1 else parts[0]
            found = iter(self.detector(tensor_from_numpy(frames)))
            for i in indices:
                mine = [next(found) for _ in range(len(items[i]))]
                results[i] = FaceCounts(items[i].pts_s, np.array([f.count for f in mine], np.int32),
                                        np.array([f.max_probability for f in mine], np.float32))
        return results
