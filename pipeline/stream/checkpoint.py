"""Checkpoints of an endless stream: where it can start again, and what it must not write twice.

A media stream fed in segments (Kafka) checkpoints every ``kafka.checkpoint_interval_s`` of
media, so that its input can be committed as it goes and a restart resumes near where it was,
not from its first segment. Named times (stream clock seconds):

resume_s   -- R, where a fed segment begins with a video keyframe: decoding starts there again.
settled_s  -- S, every event starting before it was written (no condition open before it, but
              those the checkpoint carries), at least ``warm_up_s`` after R: the resumed run's
              detectors, fed from R, see again what they need to decide events from S on as
              the first run did.
processed_s -- how far the stream had got when the checkpoint was taken (its records so far
              were written before it).

The resumed run re-runs [R, processed_s) and writes nothing of it (``ResumeRule``): no event
starting before S, nor one of the events starting after S that were already written (their ids
are in the checkpoint), no window below ``next_window``, and no other record until it passes
processed_s. Its summary counters carry on from the checkpoint's. Event ids are
(stream, label, start): an event after the checkpoint keeps its id.

Conditions kept as running statistics (black, frozen, silence: ``DetectorBank.open_spans``;
the taggers' spans and totals, the open scene and A/V concepts: ``Understanding.state``) do not
hold S back: the checkpoint carries them as they were at processed_s, and the resumed run takes
them over when its media reaches processed_s (replacing what its replay from R built), so an
event that began hours before R ends with its first start and with statistics over all of it.
A frozen camera, or music that never stops, does not stop its stream's commits.

A live URI job (RTSP, a live HLS playlist) checkpoints too (``live``): its input is one job
message that stays uncommitted while it runs, and its media cannot be read again. A restart runs
the job again from its checkpoint: the stream clock goes on from processed_s plus the wall time
since the checkpoint (a gap, said with a discontinuity record, reason "restart"), the summary
counters and window index carry on, no stream_start is written again and nothing is skipped
(exactly-once counts on from what its progress had committed).

Pure Python: the session takes checkpoints, the stream actor resumes from one, the Kafka service
stores them (``pipeline/kafka/delivery.py``). Schema: ``pipeline/output/schemas/checkpoint.schema.json``.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any

SCHEMA = "avfuse.checkpoint/1"


class CheckpointMismatch(ValueError):
    """A checkpoint taken under other preprocessing constants than the stream's config now."""


def grid_constants(cfg) -> dict[str, float]:
    """The constants a checkpoint's times and indices depend on: a resume under others fails."""
    return {"window_s": cfg.align.window_s, "hop_s": cfg.align.hop_s, "chunk_s": cfg.decode.chunk_s,
            "token_s": cfg.audio.token_s, "sample_rate_hz": cfg.audio.sample_rate_hz, "fps": cfg.video.fps}


def warm_up_s(cfg) -> float:
    """Media a resumed run needs before its detectors decide as the first run's did: a full window,
    the loud-onset baseline, the scene-cut lookahead, the motion-burst merge gap; and a second for the
    first frame (no predecessor) and the speech activity's recurrent state."""
    d = cfg.detectors
    return max(cfg.align.window_s, d.loud_onset.baseline_s, d.scene_cut.min_scene_s, d.motion_burst.merge_gap_s) + 1.0


def checkpoints_supported(cfg) -> str | None:
    """None when the stream's open state is all in a checkpoint; else why it takes none (faces'
    and learned heads' spans are not in it yet)."""
    if cfg.kafka.checkpoint_interval_s <= 0:
        return "kafka.checkpoint_interval_s is 0"
    running = [name for name, on in (("faces", cfg.faces.enabled), ("event_head", cfg.event_head.checkpoint)) if on]
    return f"{', '.join(running)} keep state a checkpoint does not hold" if running else None


@dataclass
class StreamCheckpoint:
    """One stream's resume point and state; small (no media, no tokens), JSON by ``to_json``.

    ``resume_segment`` is the segment's index in the stream actor's feed order (the service maps
    it to ``input``, the Kafka message it was, and only that is stored). ``records_before`` and
    ``transcripts_before``: records of the stream written before the checkpoint (exactly-once counts
    from there after a resume)."""

    stream_id: str
    resume_s: float
    settled_s: float
    processed_s: float
    next_window: int
    clock: dict[str, Any]  # StreamClock.state()
    audio_grid: dict[str, float] | None  # {"origin_s", "step_s"}: where the audio rows fall
    summary: dict[str, Any]  # SummaryTracker.state()
    events: int  # events written so far
    frames_decoded: int = 0  # so far (stream_end counts on from these)
    frames_kept: int = 0
    # [start_s, id] of the events and transcripts written that start at or after S
    emitted_after_settled: list[list] = field(default_factory=list)
    signals_from_s: float | None = None  # signal curves written up to here
    # detector name -> its open span's state (Span.state()) at processed_s; None: carries none (an
    # older checkpoint, whose settled_s counts every open condition)
    open_spans: dict[str, dict] | None = None
    # the taggers' open spans and totals, the open scene, the open A/V concepts (Understanding.state())
    understanding: dict[str, dict] | None = None
    open_event_ids: list[str] = field(default_factory=list)  # of the events the carried state will end
    # A live source's (a job's live URI): nothing to re-read, a restart joins the source where it
    # is then, after a gap; only the counters, the clock's position and the window index carry on.
    live: bool = False
    grid: dict[str, float] = field(default_factory=dict)  # grid_constants() it was taken under
    input: dict[str, Any] | None = None  # the resume segment's message: {"topic", "partition", "offset"}
    records_before: int = 0
    transcripts_before: int = 0
    at: float = 0.0  # wall clock, unix s
    resume_segment: int = -1  # in the actor's feed order; not stored

    def to_dict(self) -> dict[str, Any]:
        body = asdict(self)
        body.pop("resume_segment")
        return {"schema": SCHEMA, "type": "checkpoint", **body}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), allow_nan=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "StreamCheckpoint":
        if data.get("schema") != SCHEMA:
            raise ValueError(f"not a {SCHEMA} checkpoint: {data.get('schema')!r}")
        body = {k: v for k, v in data.items() if k not in ("schema", "type")}
        return cls(**body)

    @classmethod
    def from_json(cls, text: str | bytes) -> "StreamCheckpoint":
        return cls.from_dict(json.loads(text))

    def check_grid(self, cfg) -> None:
        """Raise CheckpointMismatch (one line, with the stream id) when the config's constants differ."""
        now = grid_constants(cfg)
        changed = [f"{k} {self.grid[k]} -> {now[k]}" for k in now if k in self.grid and self.grid[k] != now[k]]
        if changed:
            raise CheckpointMismatch(f"stream {self.stream_id}: its checkpoint was taken under other constants "
                                     f"({', '.join(changed)})")


class ResumeRule:
    """What a run resumed at ``checkpoint`` writes: nothing that the first run wrote before it."""

    def __init__(self, checkpoint: StreamCheckpoint):
        self.checkpoint = checkpoint
        self._written = {event_id for _, event_id in checkpoint.emitted_after_settled}
        # The carried conditions end after processed_s with the first run's start (before S).
        self._carried = set(checkpoint.open_event_ids)
        self.replaying = True  # until the media passes the checkpoint's processed_s

    def begin_chunk(self, chunk_end_s: float) -> bool:
        """Before each chunk: ``chunk_end_s`` is how far it reaches (its higher watermark). True for
        the first chunk past processed_s: the carried open spans are taken over before it."""
        if self.replaying and chunk_end_s > self.checkpoint.processed_s:
            self.replaying = False
            return True
        return False

    def keeps_event(self, start_s: float, event_id: str) -> bool:
        if event_id in self._written:
            return False
        return start_s >= self.checkpoint.settled_s or (not self.replaying and event_id in self._carried)

    def keeps_window(self, index: int) -> bool:
        return index >= self.checkpoint.next_window

    def keeps_transcript(self, start_s: float, transcript_id: str) -> bool:
        return start_s >= self.checkpoint.settled_s and transcript_id not in self._written


def audio_grid_step_s(token_s: float, sample_rate_hz: int, vad_window_s: float,
                      patch_hop_s: float | None = None) -> float:
    """The audio rows' grid a resumed decoder keeps: a whole number of rows, of speech windows and
    (``patch_hop_s``: the sound tagger's patches start every hop from a run's first sample) of
    patch hops, so that rows, VAD windows and patches fall where the first run's fell."""
    steps = [round(token_s * sample_rate_hz), round(vad_window_s * sample_rate_hz)]
    if patch_hop_s is not None:
        steps.append(round(patch_hop_s * sample_rate_hz))
    return math.lcm(*steps) / sample_rate_hz
