"""Ray actors of the shared operators: the thin layer that places each operator stage on resources.

One StageActor per shared operator (vision, audio, fusion, the taggers, faces, ASR)
batches requests from every stream. Per-stream state is not here: it lives in the
stream actors (``stream_actor.py``).
"""

from __future__ import annotations

from typing import Any

import ray

from pipeline.compute.batching import MicroBatcher
from pipeline.core.config import Config
from pipeline.core.errors import OperatorLoadError, one_line
from pipeline.observe import metrics


def _make_stage(kind: str, cfg: Config):
    # Imported here so that only operator actors load torch models.
    from pipeline.compute import asr_stage, face_stage, stages, tag_stages

    return {"vision": stages.VisionStage, "audio": stages.AudioStage, "fusion": stages.FusionStage,
            "image_tags": tag_stages.ImageTagStage, "sound_tags": tag_stages.SoundTagStage,
            "faces": face_stage.FaceStage, "asr": asr_stage.AsrStage}[kind](cfg)


_MAX_BATCH = {
    "vision": lambda cfg: cfg.batching.max_batch_frames,
    "audio": lambda cfg: cfg.batching.max_batch_audio_rows,
    "fusion": lambda cfg: cfg.batching.max_batch_windows,
    "image_tags": lambda cfg: cfg.batching.max_batch_frames,
    "sound_tags": lambda cfg: cfg.batching.max_batch_patches,
    "faces": lambda cfg: cfg.batching.max_batch_frames,
    # Speech segments, transcribed one after another (operators/asr.py: batching gained nothing
    # on the CPU); a batch only groups the requests that arrived together.
    "asr": lambda cfg: 4,
}


@ray.remote
class StageActor:
    """A shared operator stage with a micro-batcher in front of it."""

    def __init__(self, kind: str, cfg: Config, torch_threads: int):
        import torch

        torch.set_num_threads(torch_threads)
        self.kind = kind
        self.load_error: str | None = None
        try:
            self.stage = _make_stage(kind, cfg)
        except Exception as exc:  # kept for ready(): a dead actor would only say that it died
            self.load_error = f"{kind} operator: {one_line(exc)}"
            return
        self.batcher = MicroBatcher(
            self.stage.run_batch, len, _MAX_BATCH[kind](cfg), cfg.batching.max_wait_ms / 1000.0,
            on_batch=self._count_batch,
        )

    def _count_batch(self, size: int, latency_s: float) -> None:
        m = metrics.get()
        m.operator_items.labels(self.kind).inc(size)
        m.operator_batch_size.labels(self.kind).observe(size)
        m.operator_batch_seconds.labels(self.kind).observe(latency_s)
        device = self.stage.device
        if device.type == "cuda":
            import torch

            m.gpu_memory.labels(self.kind, str(device)).set(torch.cuda.memory_allocated(device))

    def pid(self) -> int:
        import os

        return os.getpid()

    def ready(self) -> str:
        """The operator's device, or OperatorLoadError with the one-line reason it could not load."""
        if self.load_error is not None:
            raise OperatorLoadError(None, self.load_error)
        return str(self.stage.device)

    def weights(self) -> str | None:
        """Where the stage's pretrained weights came from (taggers), for --print-config and logs."""
        source = getattr(getattr(self, "stage", None), "weights", None)
        return None if source is None else str(source)

    async def submit(self, payload: Any, part: str | None = None) -> Any:
        """Run one request: ``payload`` itself, or its attribute ``part`` (e.g. a chunk's ``video``)."""
        item = getattr(payload, part) if part is not None else payload
        if item is None or len(item) == 0:
            return None
        return await self.batcher.submit(item)

    def forget(self, stream_id: str) -> None:
        """A stream ended: stages that keep per-stream state (the audio stage's speech activity) drop it."""
        forget = getattr(getattr(self, "stage", None), "forget", None)
        if forget is not None:
            forget(stream_id)

    def stats(self) -> dict[str, float]:
        s = self.batcher.stats
        return {"batches": s.batches, "items": s.items, "size_total": s.size_total}


@ray.remote(num_cpus=0)
class NodeExporter:
    """The scrape target of a node without a driver: serves the node's metrics folder.

    Placed on its node by ``ray_init.start_node_exporters``; the driver's node is
    served by the driver's own exporter.
    """

    def __init__(self, port: int):
        from pipeline.observe.exporter import Exporter, Readiness

        self._exporter = Exporter(port, Readiness()).start()

    def port(self) -> int:
        return self._exporter.port
