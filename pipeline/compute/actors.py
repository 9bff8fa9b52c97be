"""Ray actors: the thin layer that places decoders and operator stages on resources.

A DecodeActor owns the PyAV container of the stream it decodes (one stream at a
time; runtime's DecoderPool reuses it for the next). One StageActor
per shared operator (vision, audio, fusion) batches requests from every stream.
Per-stream state (alignment, detectors, summaries) is not here: it lives in
the driver's StreamSession, keyed by stream id.
"""

from __future__ import annotations

import logging
from typing import Any, Iterator

import ray

from pipeline.compute.batching import MicroBatcher
from pipeline.core.config import Config
from pipeline.core.errors import OperatorLoadError
from pipeline.core.media import MediaChunk, StreamInfo
from pipeline.ingest.decode import MediaDecoder
from pipeline.ingest.segments import SegmentPipe
from pipeline.observe import metrics


@ray.remote(concurrency_groups={"feed": 1})
class DecodeActor:
    """Decodes one stream at a time: a URI, or (``segmented``) the bytes ``feed`` hands it from Kafka.

    A URI decoder is reused stream after stream (runtime's DecoderPool): ``start`` begins
    the next stream, so a stream's start skips a worker process's spawn and imports. A
    segmented decoder is made for its stream (``stream_id`` given here), since its bytes
    may arrive before any other call.

    ``feed`` runs on its own thread (concurrency group): it must get through while
    ``open`` or ``next_chunk`` wait inside PyAV for more bytes. ``start``, ``open`` and
    ``next_chunk`` stay on the default group, one at a time and in the order they were called.
    """

    def __init__(self, cfg: Config, stream_id: str | None = None, uri: str = "",
                 open_options: dict[str, str] | None = None, segmented: bool = False):
        logging.getLogger("libav").setLevel(logging.ERROR)
        self._cfg = cfg
        self._pipe = SegmentPipe() if segmented else None
        self._decoder: MediaDecoder | None = None
        self._chunks: Iterator[MediaChunk] | None = None
        if stream_id is not None:
            self.start(stream_id, uri, open_options)

    def start(self, stream_id: str, uri: str, open_options: dict[str, str] | None = None) -> None:
        """Begin a new stream; whatever the previous one left open is closed first."""
        self.reset()
        self._decoder = MediaDecoder(stream_id, uri, self._cfg, open_options, source=self._pipe)
        self._label = metrics.stream_label(stream_id)
        self._errors_counted = 0

    def reset(self) -> None:
        """Close the current stream's input (an interrupted stream leaves it open)."""
        self._chunks = None
        if self._decoder is not None:
            self._decoder.close()

    def open(self) -> StreamInfo:
        info = self._decoder.open()
        self._chunks = self._decoder.chunks()
        return info

    def next_chunk(self) -> MediaChunk | None:
        """The next chunk, or None once the last one (with both modalities done) was returned."""
        if self._chunks is None:
            return None
        chunk = next(self._chunks, None)
        if chunk is None or chunk.finished:
            self._chunks = None
            self._decoder.close()
        if chunk is not None:
            self._count(chunk)
        return chunk

    def _count(self, chunk: MediaChunk) -> None:
        m, label = metrics.get(), self._label
        m.frames_decoded.labels(label).inc(chunk.frames_decoded)
        m.frames_kept.labels(label).inc(len(chunk.video) if chunk.video is not None else 0)
        m.audio_decoded.labels(label).inc(chunk.audio_decoded_s)
        new_errors = self._decoder.decode_errors - self._errors_counted
        self._errors_counted += new_errors
        m.decode_errors.labels(label).inc(new_errors)

    @ray.method(concurrency_group="feed")
    def feed(self, data: bytes) -> None:
        """The next bytes of a segmented stream (blocks while the decoder is far behind)."""
        self._pipe.feed(data)

    @ray.method(concurrency_group="feed")
    def end(self) -> None:
        """No more bytes: the decoder finishes what it has and ends the stream."""
        self._pipe.end()

    def counters(self) -> dict[str, int]:
        return {"frames_kept": self._decoder.frames_kept, "decode_errors": self._decoder.decode_errors}


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
            self.load_error = f"{kind} operator: {str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}"
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
