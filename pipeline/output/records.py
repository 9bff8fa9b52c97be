"""Output records: dataclasses whose JSON form is checked by ``pipeline/output/schemas/*.schema.json``.

Every record carries ``schema`` ("avfuse.<type>/<version>") and ``stream_id``;
sinks key Kafka messages by ``stream_id``. Event ids are deterministic (a UUIDv5
of stream, label and start in milliseconds), and so are transcript ids (stream and
start), so that a replay after a crash produces the same ids and consumers can de-duplicate.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from importlib import resources
from typing import Any, ClassVar

SCHEMA_VERSION = 1  # of every record type whose meaning has not changed since the first
_EVENT_NAMESPACE = uuid.UUID("5b0f3c1e-6a1d-4f5e-9a59-6176667573e1")  # fixed forever: ids depend on it


_TRANSCRIPT_NAMESPACE = uuid.uuid5(_EVENT_NAMESPACE, "transcript")  # so no event id is ever a transcript's


def event_id(stream_id: str, label: str, start_s: float) -> str:
    start_ms = int(round(start_s * 1000.0))
    return str(uuid.uuid5(_EVENT_NAMESPACE, f"{stream_id}|{label}|{start_ms}"))


def transcript_id(stream_id: str, start_s: float) -> str:
    """A UUIDv5 of the stream and the segment's start in whole milliseconds, as event ids are."""
    start_ms = int(round(start_s * 1000.0))
    return str(uuid.uuid5(_TRANSCRIPT_NAMESPACE, f"{stream_id}|{start_ms}"))


@dataclass
class Record:
    record_type: ClassVar[str] = "record"
    version: ClassVar[int] = SCHEMA_VERSION  # bumped per type when its fields or their meaning change

    def to_dict(self) -> dict[str, Any]:
        body = asdict(self)
        return {"schema": f"avfuse.{self.record_type}/{self.version}", "type": self.record_type, **body}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"), allow_nan=False)


@dataclass
class StreamStart(Record):
    record_type: ClassVar[str] = "stream_start"
    stream_id: str
    uri: str
    started_at: float  # unix seconds
    duration_s: float | None
    video: dict[str, Any] | None  # codec, width, height, avg_fps
    audio: dict[str, Any] | None  # codec, sample_rate_hz, channels


@dataclass
class Event(Record):
    record_type: ClassVar[str] = "event"
    stream_id: str
    label: str
    start_s: float
    end_s: float
    confidence: float
    detector: str
    detector_version: str
    event_id: str = ""
    attributes: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.event_id:
            self.event_id = event_id(self.stream_id, self.label, self.start_s)


@dataclass
class Summary(Record):
    record_type: ClassVar[str] = "summary"
    # 2: audio_tags and visual_tags; av_offset_s is null ("unknown") below av_sync.report_confidence.
    # 3: words and languages (speech transcripts).
    # 4: source_state, outages and outage_s (live sources).
    version: ClassVar[int] = 4
    stream_id: str
    final: bool
    processed_s: float  # stream seconds covered so far
    wall_s: float
    speed_x_realtime: float
    counts_by_label: dict[str, int]
    silence_s: float
    black_s: float
    frozen_s: float
    speech_s: float  # total of `speech` events (0 when speech detection is off)
    scenes: int
    windows: int
    partial_windows: int
    top_moments: list[dict[str, Any]]
    # A/V sync (operators.av_sync): positive when audio is late; over the last av_sync.horizon_s
    # of windows, or the whole stream in the final summary. None without windows of both.
    av_offset_s: float | None = None
    av_sync_confidence: float | None = None
    # What was heard (AudioSet classes) and seen (ImageNet tags), most seconds first:
    # [{label, seconds, max_confidence}]: seconds of tagger inputs scoring >= tag_min so far.
    audio_tags: list[dict[str, Any]] = field(default_factory=list)
    visual_tags: list[dict[str, Any]] = field(default_factory=list)
    # Speech transcripts written so far: their words, and seconds of speech per language code.
    words: int = 0
    languages: dict[str, float] = field(default_factory=dict)
    # A live source's state when the summary was made (connecting, streaming, down, backoff,
    # closed, failed), its outages so far and their wall seconds; "file" for a recording.
    source_state: str = "file"
    outages: int = 0
    outage_s: float = 0.0


@dataclass
class Transcript(Record):
    """What was said in one speech segment (Whisper); times in seconds on the stream clock.

    start_s / end_s: the speech the segment covers (the speech detector's span, or a cut inside
    a long one); words: [{word, start_s, end_s, probability}], Whisper's word timings.
    """

    record_type: ClassVar[str] = "transcript"
    stream_id: str
    transcript_id: str
    start_s: float
    end_s: float
    text: str
    language: str
    language_probability: float
    words: list[dict[str, Any]]
    avg_logprob: float
    no_speech_prob: float
    model: str


@dataclass
class StreamEnd(Record):
    record_type: ClassVar[str] = "stream_end"
    stream_id: str
    status: str  # ok | failed | interrupted
    reason: str | None
    processed_s: float
    wall_s: float
    events: int
    frames_decoded: int
    frames_kept: int
    decode_errors: int


@dataclass
class Error(Record):
    record_type: ClassVar[str] = "error"
    stream_id: str
    stage: str  # open | decode | encode | fuse | sink | input | runtime
    reason: str  # one line
    uri: str | None = None
    fatal: bool = False
    at: float = field(default_factory=time.time)  # unix seconds
    input: dict[str, Any] | None = None  # service mode: {topic, partition, offset} of the message concerned


@dataclass
class SourceState(Record):
    """A live source went down, is being retried, or was given up on (its return is a Discontinuity)."""

    record_type: ClassVar[str] = "source_state"
    stream_id: str
    state: str  # down | retrying | failed
    reason: str  # eof | timeout | error: how the media stopped
    detail: str  # one line
    at_s: float  # stream time the media got to
    attempt: int  # connection attempts since the source went down
    down_s: float  # wall seconds down so far
    at: float = field(default_factory=time.time)  # unix seconds


@dataclass
class Discontinuity(Record):
    """A gap or a jump in a stream's timeline: the media stops at ``at_s`` and goes on at ``resume_s``.

    An outage (reason eof, timeout or error: a live source that went down and came back) leaves a
    gap of ``gap_s`` stream seconds, the wall time it was down; a timestamp jump (reason pts_jump)
    is re-based so that the media goes on where it was due (gap 0), ``jump_s`` saying how far the
    source's timestamps jumped."""

    record_type: ClassVar[str] = "discontinuity"
    stream_id: str
    reason: str  # eof | timeout | error | pts_jump | restart
    detail: str
    at_s: float
    resume_s: float
    gap_s: float
    attempts: int  # connection attempts it took (0 for a jump)
    down_s: float  # wall seconds the source was down (0 for a jump)
    jump_s: float = 0.0
    at: float = field(default_factory=time.time)  # unix seconds: when the media resumed


@dataclass
class Window(Record):
    record_type: ClassVar[str] = "window"
    # 2: the embedding fuses the taggers' tokens in the pretrained profile (tokens_from);
    # sight_tokens / sound_tokens; missing may name "sights" and "sounds".
    # 3: faces (the most faces in one of the window's face frames); missing may name "faces";
    # text (what was heard and seen, for a vector database to index).
    version: ClassVar[int] = 3
    stream_id: str
    index: int
    start_s: float
    end_s: float
    video_tokens: int
    audio_tokens: int
    missing: list[str]  # modalities masked in this window
    fusion: str
    embedding: list[float]
    signals: dict[str, Any] = field(default_factory=dict)  # e.g. peak luma / loudness and their times
    sight_tokens: int = 0  # EfficientNet-Lite0 frames in the window
    sound_tokens: int = 0  # YAMNet patches (centres) in the window
    tokens_from: str = "encoders"  # what the fusion read: "taggers" (sights + sounds) or "encoders"
    faces: int | None = None  # most faces in one face frame of the window; None: faces off, or no such frame
    text: str | None = None  # "heard: Music, Piano; seen: crutch"; None: no tag in the window (or no taggers)


@dataclass
class Signals(Record):
    """Loudness, luma and motion of consecutive bins of ``step_s`` from ``start_s``: for each,
    ``{"mean": [...], "peak": [...]}``, one value per bin, None where the bin had no sample.
    One record per summary period; a stream's records tile its media time."""

    record_type: ClassVar[str] = "signals"
    stream_id: str
    start_s: float
    step_s: float
    loudness_dbfs: dict[str, list[float | None]]  # RMS of 10 ms audio sub-frames, dBFS
    luma: dict[str, list[float | None]]  # mean BT.601 luma of kept frames, 0..1
    motion: dict[str, list[float | None]]  # thumbnail difference to the previous kept frame, 0..1


@dataclass
class DeadLetter(Record):
    """A job (or media stream) given up on after ``kafka.max_stream_retries`` transient failures:
    what it was, where its message lies, and why it failed the last time. Its input is committed."""

    record_type: ClassVar[str] = "dead_letter"
    stream_id: str
    reason: str  # one line: the last attempt's failure
    attempts: int
    input: dict[str, Any]  # {topic, partition, offset} of the stream's first message
    job: dict[str, Any] | None = None  # the job as it was sent (None for a media stream)
    at: float = field(default_factory=time.time)  # unix seconds


RECORD_TYPES: dict[str, type[Record]] = {
    cls.record_type: cls for cls in (StreamStart, Event, Summary, StreamEnd, Error, Window, Transcript, Signals,
                                     SourceState, Discontinuity, DeadLetter)
}


@lru_cache(maxsize=None)
def schema_for(record_type: str) -> dict[str, Any]:
    text = resources.files("pipeline.output").joinpath("schemas", f"{record_type}.schema.json").read_text()
    return json.loads(text)
