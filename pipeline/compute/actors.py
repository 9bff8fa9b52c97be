"""Ray actors of the shared operators: the thin layer that places the operator stages on resources.

A StageActor hosts one or more shared operators (vision, audio, fusion, the taggers, faces,
ASR), each with a micro-batcher that batches requests from every stream and runs its batches
in a thread of its own (torch releases the GIL), so operators hosted together still run side by
side. ``OperatorHandle`` is one operator of a host: the same ``.method.remote(...)`` calls as an
actor handle, with the operator's kind added. Per-stream state is not here: it lives in the
stream actors (``stream_actor.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import ray

from pipeline.compute.batching import MicroBatcher
from pipeline.compute.heap import HeapTrimmer
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
    """Shared operator stages, each with a micro-batcher in front of it; methods name the stage's kind."""

    def __init__(self, kinds: list[str], cfg: Config, torch_threads: int):
        import torch

        torch.set_num_threads(torch_threads)
        self._heap = HeapTrimmer(cfg.runtime.heap_trim_s)
        self.stages: dict[str, Any] = {}
        self.batchers: dict[str, MicroBatcher] = {}
        self.load_errors: dict[str, str] = {}
        for kind in kinds:
            try:
                stage = self.stages[kind] = _make_stage(kind, cfg)
            except Exception as exc:  # kept for ready(): a dead actor would only say that it died
                self.load_errors[kind] = f"{kind} operator: {one_line(exc)}"
                continue
            self.batchers[kind] = MicroBatcher(
                stage.run_batch, len, _MAX_BATCH[kind](cfg), cfg.batching.max_wait_ms / 1000.0,
                on_batch=lambda size, latency_s, kind=kind: self._count_batch(kind, size, latency_s),
            )
        # Again: importing silero_vad (the audio stage) sets the whole process to one thread.
        torch.set_num_threads(torch_threads)

    def _count_batch(self, kind: str, size: int, latency_s: float) -> None:
        m = metrics.get()
        m.operator_items.labels(kind).inc(size)
        m.operator_batch_size.labels(kind).observe(size)
        m.operator_batch_seconds.labels(kind).observe(latency_s)
        device = self.stages[kind].device
        if device.type == "cuda":
            import torch

            m.gpu_memory.labels(kind, str(device)).set(torch.cuda.memory_allocated(device))

    def pid(self, kind: str | None = None) -> int:
        import os

        return os.getpid()

    def ready(self, kind: str) -> str:
        """The operator's device, or OperatorLoadError with the one-line reason it could not load."""
        if kind in self.load_errors:
            raise OperatorLoadError(None, self.load_errors[kind])
        return str(self.stages[kind].device)

    def weights(self, kind: str) -> str | None:
        """Where the stage's pretrained weights came from (taggers), for --print-config and logs."""
        source = getattr(self.stages.get(kind), "weights", None)
        return None if source is None else str(source)

    async def submit(self, kind: str, payload: Any, part: str | None = None) -> Any:
        """Run one request: ``payload`` itself, or its attribute ``part`` (e.g. a chunk's ``video``)."""
        self._heap.maybe_trim()  # every stream's requests come here
        item = getattr(payload, part) if part is not None else payload
        if item is None or len(item) == 0:
            return None
        return await self.batchers[kind].submit(item)

    def forget(self, kind: str, stream_id: str) -> None:
        """A stream ended: stages that keep per-stream state (the audio stage's speech activity) drop it."""
        forget = getattr(self.stages.get(kind), "forget", None)
        if forget is not None:
            forget(stream_id)

    def stats(self, kind: str) -> dict[str, float]:
        s = self.batchers[kind].stats
        return {"batches": s.batches, "items": s.items, "size_total": s.size_total, "cpu_s": s.cpu_s}


@dataclass(frozen=True)
class _KindMethod:
    actor: Any
    kind: str
    name: str

    def remote(self, *args, **kwargs):
        return getattr(self.actor, self.name).remote(self.kind, *args, **kwargs)


@dataclass(frozen=True)
class OperatorHandle:
    """One operator of a StageActor: ``handle.submit.remote(chunk_ref, "video")`` calls the host's
    ``submit("vision", chunk_ref, "video")``. Picklable, so stream actors get it like an actor handle."""

    actor: Any
    kind: str

    def __getattr__(self, name: str) -> _KindMethod:
        if name.startswith("_"):  # pickle's and copy's probes: not actor methods
            raise AttributeError(name)
        return _KindMethod(self.actor, self.kind, name)


def place_operators(kinds: list[str], cfg: Config) -> dict[str, OperatorHandle]:
    """The StageActors for ``kinds`` (one, or one per operator; see runtime.operator_processes)."""
    placement = {"num_cpus": cfg.runtime.encoder_cpus, "num_gpus": cfg.runtime.encoder_gpus}
    threads = cfg.runtime.torch_threads
    if shares_one_process(cfg):
        host = StageActor.options(**placement).remote(kinds, cfg, threads)
        return {kind: OperatorHandle(host, kind) for kind in kinds}
    return {kind: OperatorHandle(StageActor.options(**placement).remote([kind], cfg, threads), kind)
            for kind in kinds}


def shares_one_process(cfg: Config) -> bool:
    mode = cfg.runtime.operator_processes
    if mode == "auto":
        # Locally one process holds torch once; on a cluster, or with GPUs reserved, each is placed apart.
        return cfg.runtime.ray_address is None and cfg.runtime.encoder_gpus == 0
    return mode == "one"


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
