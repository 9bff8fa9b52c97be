"""Batch functions of the two tagger stages (placed by Ray as the shared "image_tags" and
"sound_tags" operators, runnable without it), in the shape of ``pipeline.compute.stages``.

Each takes one item per request (one chunk's tag frames, or its audio patches), runs one
forward pass over all of them, and returns per item the tagger's best classes and its
embedding of every input (``ClassScores``).
"""

from __future__ import annotations

import numpy as np
import torch

from operators import autocast_for, resolve_device
from pipeline.compute.stages import run_concatenated
from pipeline.core.config import Config
from pipeline.core.media import AudioPatches, ClassScores, VideoFrames


def _top_k(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    values, indices = torch.topk(scores.float(), min(k, scores.shape[1]), dim=1)
    return indices.to(torch.int16), values


class _TagStage:
    """A tagger module (inputs -> (embedding, class scores)) behind one batch function.

    Subclasses set ``tagger``, ``weights`` (where they came from), ``top_k`` and say what an
    item's inputs are (``_inputs``) and which time each input stands for (``_times``).
    """

    device: torch.device
    tagger: torch.nn.Module
    top_k: int

    def _inputs(self, item) -> np.ndarray:
        raise NotImplementedError

    def _times(self, item) -> np.ndarray:
        raise NotImplementedError

    def _forward(self, inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        with autocast_for(self.device):
            embedding, scores = self.tagger(inputs)
        return (*_top_k(scores, self.top_k), embedding)

    @torch.inference_mode()
    def run_batch(self, items: list) -> list[ClassScores]:
        shares = run_concatenated([self._inputs(item) for item in items], self.device, self._forward)
        return [ClassScores(self._times(item), index.astype(np.int16), score, embedding)
                for item, (index, score, embedding) in zip(items, shares)]


class ImageTagStage(_TagStage):
    """EfficientNet-Lite0 on the frames sampled for tagging: their best ImageNet classes."""

    def __init__(self, cfg: Config):
        from operators.efficientnet_lite import load_image_tagger

        self.device = resolve_device(cfg.runtime.device)
        tagger, self.weights = load_image_tagger(cfg.visual_tags.checkpoint)
        # Batch norm folded into the convolutions: half the CPU time per frame, same outputs.
        self.tagger = tagger.prepare_for_inference().to(self.device)
        self.top_k = cfg.visual_tags.top_k

    def _inputs(self, item: VideoFrames) -> np.ndarray:
        return item.frames_rgb_u8

    def _times(self, item: VideoFrames) -> np.ndarray:
        return item.pts_s


class SoundTagStage(_TagStage):
    """YAMNet on the audio patches: their best AudioSet classes, timed at each patch's centre."""

    def __init__(self, cfg: Config):
        from operators.yamnet import PATCH_SAMPLES, SAMPLE_RATE_HZ
        from operators.yamnet_weights import load_yamnet
        from pipeline.ingest.audio_patches import PATCH_SAMPLES as CUT_SAMPLES

        if PATCH_SAMPLES != CUT_SAMPLES:  # the decoders cut what this model reads
            raise ValueError(f"sound patches of {CUT_SAMPLES} samples, YAMNet reads {PATCH_SAMPLES}")
        self.device = resolve_device(cfg.runtime.device)
        tagger, self.weights = load_yamnet(cfg.sound_tags.checkpoint)
        self.tagger = tagger.to(self.device).eval()
        self.top_k = cfg.sound_tags.top_k
        self.centre_s = PATCH_SAMPLES / 2 / SAMPLE_RATE_HZ

    def _inputs(self, item: AudioPatches) -> np.ndarray:
        return item.samples_f32

    def _times(self, item: AudioPatches) -> np.ndarray:
        return item.start_s + self.centre_s
