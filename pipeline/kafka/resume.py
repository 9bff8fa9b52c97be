"""Where a stream read again after a restart or a rebalance resumes: from its checkpoint, or afresh.

A media stream's checkpoint names the message (topic, partition, offset) its resumed run starts
at; a live job's names the job message itself. The checkpoint is the one stored with the stream's
committed progress (``delivery.py``); the service asks here when a stream's first message arrives.
"""

from __future__ import annotations

import logging
import time

from pipeline.core.config import Config
from pipeline.kafka.service_streams import Where
from pipeline.stream.checkpoint import CheckpointMismatch, StreamCheckpoint

log = logging.getLogger("avfuse.service")

BEFORE_CHECKPOINT = object()  # a media message before its stream's checkpoint: done with it


def media_resume_point(checkpoint: StreamCheckpoint | None, stream_id: str, where: Where, cfg: Config):
    """The checkpoint a media stream's first message here resumes from; BEFORE_CHECKPOINT for a
    message before it; None to run from this message (no checkpoint, or one that is not its)."""
    if checkpoint is None or checkpoint.input is None:
        return None
    at = checkpoint.input
    if (at["topic"], at["partition"]) != where[:2]:
        return None
    if where[2] < at["offset"]:
        return BEFORE_CHECKPOINT
    if where[2] > at["offset"]:
        log.warning("a checkpoint at offset %d, but the stream's first message is at %d: run from there",
                    at["offset"], where[2], extra={"stream_id": stream_id, "stage": "checkpoint"})
        return None
    try:
        checkpoint.check_grid(cfg)
    except CheckpointMismatch as exc:  # its times would not be ours: run from here, as a new stream
        log.error("%s; running it from offset %d as a new stream", exc, where[2],
                  extra={"stream_id": stream_id, "stage": "checkpoint"})
        return None
    log.info("resuming from the checkpoint at offset %d (media %.2f s, settled %.2f s)", where[2],
             checkpoint.resume_s, checkpoint.settled_s, extra={"stream_id": stream_id, "stage": "checkpoint"})
    return checkpoint


def live_resume_point(checkpoint: StreamCheckpoint | None, stream_id: str, where: Where) -> StreamCheckpoint | None:
    """The live checkpoint a job message runs again from: one taken by a run of this very
    message (a new job with the stream's id starts afresh)."""
    if checkpoint is None or not checkpoint.live or checkpoint.input is None:
        return None
    if (checkpoint.input["topic"], checkpoint.input["partition"], checkpoint.input["offset"]) != where:
        return None
    log.info("running the live job again from its checkpoint (media %.2f s, %.0f s ago)", checkpoint.processed_s,
             time.time() - checkpoint.at, extra={"stream_id": stream_id, "stage": "checkpoint"})
    return checkpoint
