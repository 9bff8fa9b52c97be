"""What flows between stages: decoded media chunks and encoded token sequences.

Every time here is in seconds on the stream clock: PTS x time_base minus the
start of the media (the earliest start among the selected streams), so video
and audio of one stream share one clock. Arrays are numpy so that Ray moves
them through its object store without copying (zero-copy reads on a node).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np

# Arrays mapped from Ray's object store are read-only. Stages only read them, so
# sharing them with torch instead of copying is safe; torch's warning says nothing new.
warnings.filterwarnings("ignore", message="The given NumPy array is not writable")


@dataclass
class VideoFrames:
    """Kept video frames of one chunk.

    frames_rgb_u8: [N, H, W, 3] uint8, RGB, already at the size of the operator they are for
                   (the encoders' and the image tagger's squares; faces.width wide for faces).
    pts_s:         [N] float64, presentation time of each frame.
    """

    frames_rgb_u8: np.ndarray
    pts_s: np.ndarray

    def __len__(self) -> int:
        return int(self.pts_s.shape[0])


@dataclass
class AudioRows:
    """Audio of one chunk cut into fixed rows, one row per audio token.

    samples_f32:    [K, R] float32 mono in [-1, 1], R = sample_rate_hz * token_s.
    start_s:        [K] float64, time of each row's first sample. Rows are
                    contiguous except across a gap in the source PTS.
    sample_rate_hz: samples per second of every row.
    stream_id, last: whose rows these are, and whether no more follow (stateful
                    operators on the audio path, such as speech activity, key on them).
    """

    samples_f32: np.ndarray
    start_s: np.ndarray
    sample_rate_hz: int
    stream_id: str = ""
    last: bool = False

    def __len__(self) -> int:
        return int(self.start_s.shape[0])

    @property
    def row_s(self) -> float:
        return self.samples_f32.shape[1] / self.sample_rate_hz


@dataclass
class AudioPatches:
    """Audio of one chunk cut into the sound tagger's patches (pipeline.ingest.audio_patches).

    samples_f32:    [P, S] float32 mono in [-1, 1]; S = 15 600 samples at 16 kHz (0.975 s).
    start_s:        [P] float64, time of each patch's first sample; patches of a run start
                    0.48 s apart (they overlap by half).
    sample_rate_hz: 16000.
    """

    samples_f32: np.ndarray
    start_s: np.ndarray
    sample_rate_hz: int

    def __len__(self) -> int:
        return int(self.start_s.shape[0])


@dataclass
class SpeechProbs:
    """Speech activity of one chunk's audio rows (operators.speech.SpeechActivity).

    prob:     [M] float32, silero-vad's speech probability (0..1) of each window.
    t_s:      [M] float64, time of each window's first sample; windows follow each other
              without overlap, except across a gap in the audio rows (where they restart).
    window_s: duration of every window (512 samples at 16 kHz, 256 at 8 kHz).
    """

    prob: np.ndarray
    t_s: np.ndarray
    window_s: float = 0.032

    def __len__(self) -> int:
        return int(self.t_s.shape[0])


@dataclass
class SourceChange:
    """A change in a stream's source, carried by the chunk that follows it.

    kind:    "down" (the source stopped sending at ``at_s``), "retrying" (a reconnect attempt is due),
             "resumed" (media goes on at ``resume_s``, the gap in between had none), "pts_jump" (the
             source's timestamps jumped by ``jump_s``; the stream clock was re-based, so media goes on
             at ``resume_s`` = ``at_s``) or "failed" (given up: the stream ends).
    reason:  "eof", "timeout" or "error" for an outage, "pts_jump", or what ended the stream; ``detail``
             says more in one line.
    at_s:    stream time of the end of the media before the change.
    resume_s: stream time the media after it starts at (None while it has not resumed).
    attempt: connection attempts made since the source went down.
    down_s:  wall seconds the source has been down.
    wall_s:  time.time() of the change.
    """

    kind: str
    reason: str
    at_s: float
    detail: str = ""
    resume_s: float | None = None
    attempt: int = 0
    down_s: float = 0.0
    jump_s: float = 0.0
    wall_s: float = 0.0


@dataclass
class MediaChunk:
    """One step of one stream's decoding, as the decoder yields it to its stream actor.

    The watermarks say that no later chunk will carry media of that modality
    earlier than the given time; ``*_done`` says the modality has ended (or is
    absent: a video-only file has ``audio_done=True`` from its first chunk).
    """

    stream_id: str
    seq: int
    video: VideoFrames | None
    audio: AudioRows | None
    video_watermark_s: float
    audio_watermark_s: float
    video_done: bool
    audio_done: bool
    frames_decoded: int = 0
    audio_decoded_s: float = 0.0
    received_wall_s: float = 0.0  # time.time() when the chunk's first packet was read
    errors: list[str] = field(default_factory=list)  # one-line reasons of recoverable decode errors
    tag_frames: VideoFrames | None = None  # frames for the image tagger (visual_tags.fps and size)
    audio_patches: AudioPatches | None = None  # patches for the sound tagger
    face_frames: VideoFrames | None = None  # frames for the face detector (faces.fps and width), when it runs
    # What happened to the source before this chunk's media (a live source's outage, a PTS jump), in order.
    source_changes: list[SourceChange] = field(default_factory=list)
    # Fed segments (Kafka media) that begin with a video keyframe, seen in this chunk: (segment index
    # in feed order, the keyframe's stream time). Decoding can start again at such a segment.
    keyframe_segments: list[tuple[int, float]] = field(default_factory=list)

    @property
    def finished(self) -> bool:
        return self.video_done and self.audio_done


@dataclass
class TokenSeq:
    """Encoder output for one stream and one modality.

    tokens_f32: [N, D] float32 embeddings.
    t_s:        [N] float64, the time each token stands for (frame PTS; audio row start).
    """

    tokens_f32: np.ndarray
    t_s: np.ndarray

    def __len__(self) -> int:
        return int(self.t_s.shape[0])


@dataclass
class EncodedVideo:
    """Vision-stage output for one chunk's kept frames (all arrays [N, ...], row i = frame i).

    tokens_f32 [N, D]; luma_mean [N] in 0..1; color_hist [N, 48]; luma_thumb [N, 256].
    """

    t_s: np.ndarray
    tokens_f32: np.ndarray
    luma_mean: np.ndarray
    color_hist: np.ndarray
    luma_thumb: np.ndarray


@dataclass
class EncodedAudio:
    """Audio-stage output for one chunk's rows (row k = token k).

    tokens_f32 [K, D]; rms_dbfs [K, S] and band_log_energy [K, S, B] per 10 ms sub-frame.
    """

    t_s: np.ndarray
    tokens_f32: np.ndarray
    rms_dbfs: np.ndarray
    band_log_energy: np.ndarray
    subframe_s: float
    speech: SpeechProbs | None = None  # None: speech activity off or unavailable


@dataclass
class ClassScores:
    """A tagger's output for each of its inputs (a frame, an audio patch): best classes first.

    t_s:         [N] float64, the time each row stands for (frame PTS; patch centre).
    class_index: [N, k] int16, indices into the tagger's class list.
    score:       [N, k] float32, their probabilities (softmax for images, sigmoid for sounds).
    tokens_f32:  [N, D] float32, the tagger's embedding of each input (EfficientNet-Lite0's
                 1280-d pooled features, YAMNet's 1024-d patch embedding): the fusion's tokens.
    Only the top k classes travel: the full score vectors would be most of the bytes, and
    nothing downstream reads a class that is not near the top.
    """

    t_s: np.ndarray
    class_index: np.ndarray
    score: np.ndarray
    tokens_f32: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.t_s.shape[0])


@dataclass
class FaceCounts:
    """Faces-stage output for one chunk's face frames (row i = frame i; operators.faces).

    t_s:             [N] float64, the frame's PTS.
    count:           [N] int32, faces at or above faces.min_probability.
    max_probability: [N] float32, the most probable box's MTCNN probability (0 without a box;
                     MTCNN keeps boxes from 0.7).
    """

    t_s: np.ndarray
    count: np.ndarray
    max_probability: np.ndarray

    def __len__(self) -> int:
        return int(self.t_s.shape[0])


@dataclass
class StreamInfo:
    duration_s: float | None
    video: dict[str, Any] | None
    audio: dict[str, Any] | None
