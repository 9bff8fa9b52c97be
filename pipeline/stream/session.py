"""All per-stream state in one place: feature continuity, alignment, detectors, taggers' and face
events, summaries.

The stream actor (``pipeline/compute/stream_runner.py``) feeds a StreamSession each decoded
chunk together with what the shared encoders made of it; the session returns the windows ready
for fusion and writes events, summaries and the stream's start and end to the sink. What the
detectors read is built in ``continuity.py``; what a window's records say, in ``window_facts.py``.
"""

from __future__ import annotations

import math
import time
from collections import deque

import numpy as np

from operators.speech import WINDOW_S as SPEECH_WINDOW_S
from operators.windows import WindowInput
from pipeline.core.config import Config
from pipeline.core.media import (
    ClassScores,
    EncodedAudio,
    EncodedVideo,
    FaceCounts,
    MediaChunk,
    SourceChange,
    StreamInfo,
)
from pipeline.ingest.audio_patches import HOP_SAMPLES as PATCH_HOP_SAMPLES
from pipeline.ingest.audio_patches import SAMPLE_RATE_HZ as PATCH_RATE_HZ
from pipeline.ingest.audio_patches import sound_patches_wanted
from pipeline.observe import metrics
from pipeline.output.records import Error, Event, StreamEnd, StreamStart, Transcript, Window, transcript_id
from pipeline.output.sinks import Sink
from pipeline.stream.alignment import AlignedWindow, TimedRows, WindowAligner, WindowSpec
from pipeline.stream.checkpoint import (
    ResumeRule,
    StreamCheckpoint,
    audio_grid_step_s,
    checkpoints_supported,
    grid_constants,
    warm_up_s,
)
from pipeline.stream.continuity import FeatureContinuity
from pipeline.stream.detectors.bank import DetectorBank
from pipeline.stream.face_events import FaceEvents
from pipeline.stream.fusion_io import FusedWindows, FusionRequest
from pipeline.stream.learned_events import LearnedEvents
from pipeline.stream.signal_curves import SignalCurves
from pipeline.stream.source_records import STATE_AFTER, source_record
from pipeline.stream.speech_segments import SpeechSegment, SpeechSegmenter, transcripts_wanted
from pipeline.stream.summary import SummaryTracker
from pipeline.stream.sync_tracker import SyncTracker
from pipeline.stream.understanding import Understanding, fuses_tagger_tokens, tagger_modalities
from pipeline.stream.window_facts import is_filled, is_visible, window_record


class _Replaying:
    """A resumed session's sink: while its media is still before the checkpoint, only events,
    windows and transcripts pass (the session judged them by the ResumeRule); everything else
    (periodic records, errors) was written by the run before the checkpoint."""

    def __init__(self, inner: Sink, rule: ResumeRule):
        self._inner, self._rule = inner, rule

    def write(self, record, arrived_wall_s: float | None = None) -> None:
        if self._rule.replaying and not isinstance(record, (Event, Window, Transcript)):
            return
        self._inner.write(record, arrived_wall_s)

    def flush(self) -> None:
        self._inner.flush()

    def close(self) -> None:
        self._inner.close()


class StreamSession:
    """``resume``: a checkpoint this run starts from (its media from the checkpoint's resume_s on):
    what the first run wrote is not written again (``checkpoint.ResumeRule``) and the summary
    carries on; a live one (``resume.live``) replays nothing, only the counters carry on.
    ``checkpoints``: take them (a stream fed in segments, which says where they begin with a
    keyframe); ``checkpoint()`` after each chunk returns one when due. ``live_checkpoints``: a live
    source's (``live_checkpoint()``)."""

    def __init__(self, stream_id: str, uri: str, cfg: Config, info: StreamInfo, sink: Sink,
                 source_state: str = "file", resume: StreamCheckpoint | None = None, checkpoints: bool = False,
                 live_checkpoints: bool = False):
        self.stream_id, self.uri, self.cfg, self.info = stream_id, uri, cfg, info
        self._rule = ResumeRule(resume) if resume is not None and not resume.live else None
        self.sink = sink = _Replaying(sink, self._rule) if self._rule is not None else sink
        # The face counts are one more modality, so that a window is cut once its face frames are in.
        face_modality = ("faces",) if cfg.faces.enabled else ()
        self.aligner = WindowAligner(stream_id, WindowSpec(cfg.align.window_s, cfg.align.hop_s),
                                     cfg.align.max_skew_s, ("video", "audio", *tagger_modalities(cfg), *face_modality))
        self.understanding = Understanding(stream_id, cfg, info)
        self.faces = FaceEvents(stream_id, cfg.faces) if face_modality and info.video is not None else None
        for modality, present in (("video", info.video), ("audio", info.audio),
                                  ("sights", self.understanding.sights_on), ("sounds", self.understanding.sounds_on),
                                  ("faces", self.faces is not None)):
            if not present and modality in self.aligner.states:
                self.aligner.finish(modality)  # absent: windows never wait for it
        self.detectors = DetectorBank(stream_id, cfg.detectors, cfg.speech)
        # Speech cut into segments for the ASR stage; the driver takes them (take_speech_segments).
        self.segmenter = SpeechSegmenter(
            stream_id, cfg.audio.sample_rate_hz, cfg.asr.max_segment_s, cfg.asr.min_segment_s,
            settle_s=cfg.speech.min_silence_s + SPEECH_WINDOW_S,
        ) if transcripts_wanted(cfg) and info.audio is not None else None
        self._speech_segments: list[SpeechSegment] = []
        self.curves = SignalCurves(stream_id, has_video=info.video is not None,
                                   has_audio=info.audio is not None) if cfg.records.signals else None
        self._heard_until_s = 0.0  # end of the last VAD window scored (of the audio, without VAD)
        self.summary = SummaryTracker(stream_id, cfg.records.summary_every_s, cfg.records.top_moments,
                                      has_video=info.video is not None,
                                      report_confidence=cfg.av_sync.report_confidence,
                                      report_min_windows=cfg.av_sync.min_windows)
        self.sync: SyncTracker | None = None  # made with the first fused windows (the lags come with them)
        self.learned: LearnedEvents | None = None
        self.summary.tags = self.understanding.top_tags
        self.summary.source_state = source_state
        self.fuses_tagger_tokens = fuses_tagger_tokens(cfg)
        self.started_wall_s = time.monotonic()
        self.continuity = FeatureContinuity()
        self.video_end_s = self.audio_end_s = None
        self.processed_s = 0.0
        self.frames_decoded = self.frames_kept = self.decode_errors = self.events = 0
        self.media_arrived_wall_s: float | None = None  # when the chunk being processed reached avfuse
        self._label = metrics.stream_label(stream_id)
        self._late_counted = dict.fromkeys(self.aligner.stats.late_rows, 0)
        self.closed = False
        self._checkpoints = checkpoints and checkpoints_supported(cfg) is None
        self._live_checkpoints = live_checkpoints and cfg.kafka.checkpoint_interval_s > 0
        self._keyframes: deque[tuple[int, float]] = deque()  # (segment, stream time) decoding can start at
        # (start_s, id) of the events and transcripts written that start at or after the last settled time
        self._written: list[tuple[float, str]] = []
        self._settled_s = -math.inf
        self._audio_origin_s: float | None = None  # start of the current contiguous run of audio rows
        self._audio_next_s: float | None = None
        interval_s = cfg.kafka.checkpoint_interval_s
        if resume is None:
            self._next_checkpoint_s, self._last_resume_s = interval_s, -math.inf
            sink.write(StreamStart(stream_id, uri, time.time(), info.duration_s, info.video, info.audio))
            return
        # Resumed: the first run wrote the stream's start, and everything up to the checkpoint.
        self._next_checkpoint_s, self._last_resume_s = resume.processed_s + interval_s, resume.resume_s
        self.summary.restore(resume.summary)
        self.events, self.frames_decoded, self.frames_kept = resume.events, resume.frames_decoded, resume.frames_kept
        self._written = [(float(start_s), event_id) for start_s, event_id in resume.emitted_after_settled]
        self._settled_s = resume.settled_s
        if resume.audio_grid is not None:
            self._audio_origin_s = resume.audio_grid["origin_s"]
        if self.curves is not None and resume.signals_from_s is not None:
            self.curves.resume_from(resume.signals_from_s)

    # -- per chunk -------------------------------------------------------------------

    def begin_chunk(self, chunk: MediaChunk) -> None:
        """Before anything else of a chunk (its tags, faces, encodings)."""
        if self._rule is not None and self._rule.begin_chunk(max(chunk.video_watermark_s, chunk.audio_watermark_s)):
            checkpoint = self._rule.checkpoint  # the first run's open state, as it was at processed_s
            if checkpoint.open_spans is not None:
                self.detectors.adopt_open_spans(checkpoint.open_spans)
            if checkpoint.understanding is not None:
                self.understanding.adopt(checkpoint.understanding)
        if self._checkpoints:
            self._keyframes.extend(chunk.keyframe_segments)

    def on_chunk(self, chunk: MediaChunk, video: EncodedVideo | None,
                 audio: EncodedAudio | None) -> list[AlignedWindow]:
        """Take one decoded chunk and its encodings; returns windows now ready for fusion."""
        self.media_arrived_wall_s = chunk.received_wall_s or None
        self.on_source_changes(chunk.source_changes)
        for reason in chunk.errors:
            self.sink.write(Error(self.stream_id, "decode", reason, uri=self.uri, at=time.time()))
        if self._rule is None or not self._rule.replaying:  # the first run counted those
            self.frames_decoded += chunk.frames_decoded
        if video is not None:
            self._on_video(video)
        if audio is not None:
            self._on_audio(audio)
        speech: list[Event] = []
        if audio is not None and audio.speech is not None:
            metrics.get().speech_scored.labels(self._label).inc(len(audio.speech) * audio.speech.window_s)
            speech = self.detectors.on_speech(audio.speech)
            self._emit(speech)
        if chunk.audio is not None and len(chunk.audio):
            self._note_audio_run(chunk.audio.start_s, chunk.audio.row_s)
            self._segment_speech(chunk, audio, speech)
        for modality, watermark_s, done in (("video", chunk.video_watermark_s, chunk.video_done),
                                            ("audio", chunk.audio_watermark_s, chunk.audio_done),
                                            ("faces", chunk.video_watermark_s, chunk.video_done)):
            if modality in self.aligner.states:  # face frames are video frames: their bound is the video's
                self.aligner.advance(modality, watermark_s)
                if done:
                    self.aligner.finish(modality)
        self.understanding.advance(self.aligner, chunk)
        self.processed_s = max(self.processed_s, chunk.video_watermark_s, chunk.audio_watermark_s)
        periodic = self.summary.advance(self.processed_s)
        if periodic is not None:
            self._write_curves(final=False)
            self.sink.write(periodic, self.media_arrived_wall_s)
        return self._pop_windows()

    def on_source_changes(self, changes: list[SourceChange]) -> None:
        """A live source went down, is retried, came back or gave up; or the timestamps jumped."""
        for change in changes:
            if change.kind == "down":  # nothing is assumed about the media that is not coming
                self._emit(self.detectors.close_at_gap(self.video_end_s, self.audio_end_s))
                self.continuity.forget_video()
            elif change.kind == "resumed":
                self.summary.outages += 1
                self.summary.outage_s += change.down_s
            self.summary.source_state = STATE_AFTER[change.kind] or self.summary.source_state
            record = source_record(self.stream_id, change)
            if record is not None:
                self.sink.write(record)

    def _segment_speech(self, chunk: MediaChunk, audio: EncodedAudio | None, speech: list[Event]) -> None:
        if self.segmenter is None:
            return
        rows = chunk.audio
        self.segmenter.add_audio(rows.samples_f32, rows.start_s)
        probs = audio.speech if audio is not None else None
        if probs is not None and len(probs):
            self._heard_until_s = float(probs.t_s[-1]) + probs.window_s
        elif probs is None:  # no speech activity at all: nothing opens, keep no audio
            self._heard_until_s = float(rows.start_s[-1]) + rows.row_s
        self._speech_segments += self.segmenter.on_speech(
            [(e.start_s, e.end_s) for e in speech], self.detectors.speech_open_from_s(), self._heard_until_s)

    def take_speech_segments(self) -> list[SpeechSegment]:
        """The speech segments cut since the last call, in time order, for the ASR stage."""
        segments, self._speech_segments = self._speech_segments, []
        return segments

    def close_speech(self) -> None:
        """The media ended: close the built-in detectors now (``close`` then finds them closed), so
        that the last speech segment is cut while its transcript can still reach the final summary."""
        finished = self.detectors.finish(self.video_end_s, self.audio_end_s)
        self._emit(finished)
        if self.segmenter is not None:
            self._speech_segments += self.segmenter.on_speech(
                [(e.start_s, e.end_s) for e in finished if e.detector == "speech"], None, self._heard_until_s)

    def on_transcript(self, segment: SpeechSegment, transcription, arrived_wall_s: float | None) -> None:
        """The ASR stage's answer for ``segment`` (``operators.asr.Transcription``; None: no speech heard)."""
        record_id = transcript_id(self.stream_id, segment.start_s)
        if self._checkpoints and transcription is not None and segment.start_s >= self._settled_s:
            self._written.append((segment.start_s, record_id))
        if transcription is None or (self._rule is not None
                                     and not self._rule.keeps_transcript(segment.start_s, record_id)):
            return
        words = [{"word": w.word, "start_s": round(max(0.0, w.start_s), 3), "end_s": round(max(0.0, w.end_s), 3),
                  "probability": round(min(1.0, max(0.0, w.probability)), 4)} for w in transcription.words]
        record = Transcript(
            self.stream_id, record_id, round(segment.start_s, 3),
            round(segment.end_s, 3), transcription.text, transcription.language,
            round(min(1.0, transcription.language_probability), 4), words,
            round(min(0.0, transcription.avg_logprob), 4), round(min(1.0, transcription.no_speech_prob), 4),
            self.cfg.asr.model)
        self.summary.add_transcript(len(words), record.language, segment.duration_s)
        self.sink.write(record, arrived_wall_s)

    def on_transcript_failed(self, segment: SpeechSegment, reason: str) -> None:
        self.sink.write(Error(self.stream_id, "encode", f"no transcript of the speech at "
                              f"{segment.start_s:.2f}-{segment.end_s:.2f} s: {reason}", uri=self.uri))

    def on_tags(self, chunk: MediaChunk, sights: ClassScores | None, sounds: ClassScores | None) -> None:
        """The taggers' outputs for one chunk (before ``on_chunk`` of the same chunk)."""
        self._emit(self.understanding.on_tags(self.aligner, sights, sounds))

    def on_faces(self, faces: FaceCounts | None) -> None:
        """The face counts of one chunk's face frames (before ``on_chunk`` of the same chunk)."""
        if self.faces is None or faces is None or len(faces) == 0:
            return
        self._emit(self.faces.update(faces))
        if not self.aligner.states["faces"].done:  # video gave up: what is flushed later is late
            self.aligner.add("faces", TimedRows(faces.t_s, {"count": faces.count}))

    def _on_video(self, video: EncodedVideo) -> None:
        if self._rule is None or not self._rule.replaying:
            self.frames_kept += len(video.t_s)
        series = self.continuity.video_series(video)
        self.video_end_s = float(video.t_s[-1]) + 1.0 / self.cfg.video.fps
        self._emit(self.detectors.on_video(series))
        if self.curves is not None:
            self.curves.add_video(video.t_s, video.luma_mean, series.motion, self.video_end_s)
        motion = np.nan_to_num(series.motion).astype(np.float32)
        self.aligner.add("video", TimedRows(video.t_s, {
            "tokens": video.tokens_f32, "luma_mean": video.luma_mean, "motion": motion}))

    def _on_audio(self, audio: EncodedAudio) -> None:
        series = self.continuity.audio_series(audio)
        self.audio_end_s = float(series.t_s[-1]) + audio.subframe_s
        self._emit(self.detectors.on_audio(series))
        if self.curves is not None:
            self.curves.add_audio(series.t_s, series.rms_dbfs, self.audio_end_s)
        self.aligner.add("audio", TimedRows(audio.t_s, {
            "tokens": audio.tokens_f32, "rms_dbfs": audio.rms_dbfs.max(axis=1)}))

    def _write_curves(self, final: bool) -> None:
        record = self.curves.take(final) if self.curves is not None else None
        if record is not None:
            self.sink.write(record, self.media_arrived_wall_s)

    def _pop_windows(self) -> list[AlignedWindow]:
        windows = self.aligner.pop_ready()
        self._emit(self.understanding.on_windows(windows))
        if self._rule is not None:  # the first run fused and wrote these
            windows = [w for w in windows if self._rule.keeps_window(w.index)]
        partial = sum(w.partial for w in windows)
        self.summary.add_windows(len(windows), partial)
        m = metrics.get()
        m.windows.labels(self._label, "complete").inc(len(windows) - partial)
        m.windows.labels(self._label, "partial").inc(partial)
        for modality, late in self.aligner.stats.late_rows.items():
            m.late_rows.labels(self._label, modality).inc(late - self._late_counted[modality])
            self._late_counted[modality] = late
        return windows

    def _emit(self, events: list[Event]) -> None:
        for event in events:
            if self._checkpoints and event.start_s >= self._settled_s:
                self._written.append((event.start_s, event.event_id))
            if self._rule is not None and not self._rule.keeps_event(event.start_s, event.event_id):
                if event.label == "scene_cut":
                    self._emit(self.understanding.on_scene_cut(event.start_s))
                continue  # written by the run before the checkpoint
            self.events += 1
            self.summary.add_event(event)
            self.sink.write(event, self.media_arrived_wall_s)
            if event.label == "scene_cut":  # the scene before it ends: its tags as a `scene` event
                self._emit(self.understanding.on_scene_cut(event.start_s))

    # -- fusion ----------------------------------------------------------------------

    def fusion_inputs(self, windows: list[AlignedWindow]) -> FusionRequest:
        """The fusion stage's request: the encoders' tokens, and the taggers' when the fusion reads them."""
        def part(window: AlignedWindow, modality: str):
            rows = window.rows.get(modality)
            return (None, None) if rows is None or len(rows) == 0 else (rows.columns["tokens"], rows.t_s)

        def inputs(video: str, audio: str) -> list[WindowInput]:
            return [WindowInput(w.start_s, *part(w, video), *part(w, audio)) for w in windows]

        return FusionRequest(inputs("video", "audio"),
                             inputs("sights", "sounds") if self.fuses_tagger_tokens else None)

    def on_fused(self, windows: list[AlignedWindow], fused: FusedWindows) -> None:
        """The fusion stage's results for ``windows``: A/V offset, learned events, window records."""
        if fused.sync_probs is not None:
            if self.sync is None:
                self.sync = SyncTracker(self.stream_id, self.cfg.av_sync, fused.sync_lags_s)
                self.summary.sync = self.sync
            for window, probs, valid in zip(windows, fused.sync_probs, fused.sync_valid):
                if valid:
                    evidence = is_visible(window, self.cfg.detectors) and is_filled(window, self.cfg)
                    self._emit(self.sync.add(window.start_s, window.end_s, probs, evidence))
        if fused.label_probs is not None:
            if self.learned is None:
                self.learned = LearnedEvents(self.stream_id, self.cfg.event_head, fused.labels, fused.head_version)
            for window, probs in zip(windows, fused.label_probs):
                self._emit(self.learned.update(window.start_s, window.end_s, probs))
        if not self.cfg.records.windows:
            return
        for window, embedding in zip(windows, fused.embedding):
            self.sink.write(window_record(self.stream_id, window, embedding, self.cfg, self.fuses_tagger_tokens,
                                          self.understanding.window_text(window)), self.media_arrived_wall_s)

    # -- checkpoints -----------------------------------------------------------------

    def _note_audio_run(self, starts_s: np.ndarray, row_s: float) -> None:
        """Follow where the current contiguous run of audio rows began: a resumed decoder cuts its
        rows (and the speech windows) on that run's grid."""
        gaps = np.flatnonzero(np.diff(starts_s) > row_s + 1e-6)
        if self._audio_origin_s is None or (self._audio_next_s is not None
                                            and abs(starts_s[0] - self._audio_next_s) > 1e-6):
            self._audio_origin_s = float(starts_s[0])
        if len(gaps):
            self._audio_origin_s = float(starts_s[gaps[-1] + 1])
        self._audio_next_s = float(starts_s[-1]) + row_s

    def live_checkpoint(self) -> StreamCheckpoint | None:
        """A live source's checkpoint, when one is due: nothing to resume from (a restart joins the
        source after a gap), only what a resumed run carries on: counters, the clock's position."""
        if not self._live_checkpoints or self.processed_s < self._next_checkpoint_s:
            return None
        self._next_checkpoint_s = self.processed_s + self.cfg.kafka.checkpoint_interval_s
        return StreamCheckpoint(
            self.stream_id, resume_s=self.processed_s, settled_s=self.processed_s, processed_s=self.processed_s,
            next_window=self.aligner.next_index, clock={"shared_shift_s": None, "shift_s": {}}, audio_grid=None,
            summary=self.summary.state(), events=self.events, frames_decoded=self.frames_decoded,
            frames_kept=self.frames_kept, signals_from_s=self.curves.emitted_s if self.curves is not None else None,
            grid=grid_constants(self.cfg), at=time.time(), live=True)

    def checkpoint(self, clock_state: dict, transcripts_from_s: float | None = None) -> StreamCheckpoint | None:
        """After a chunk is done (its windows fused, its records written): a checkpoint when one is
        due and a keyframe segment lies far enough back; else None. ``clock_state``: the decoder's
        StreamClock.state(); ``transcripts_from_s``: the earliest start of a speech segment whose
        transcript is not written yet (a resumed run transcribes it again)."""
        if not self._checkpoints or self.processed_s < self._next_checkpoint_s:
            return None
        # Conditions the checkpoint carries (open_spans) do not hold the settled time back.
        pending = [p for p in (self.detectors.pending_from_s(carried=False),
                               self.sync.pending_from_s() if self.sync is not None else None,
                               transcripts_from_s,
                               min((g.start_s for g in self._speech_segments), default=None)) if p is not None]
        settled_s = min([self.processed_s, *pending])
        self._settled_s = max(self._settled_s, settled_s)
        self._written = [(start_s, event_id) for start_s, event_id in self._written if start_s >= self._settled_s]
        warm_s = warm_up_s(self.cfg) + (self.cfg.av_sync.horizon_s if self.cfg.av_sync.enabled else 0.0)
        limit_s = min(self._settled_s, self.aligner.spec.start_s(self.aligner.next_index)) - warm_s
        if self.curves is not None:  # its bins from there on are whole in the resumed run
            limit_s = min(limit_s, self.curves.emitted_s - self.curves.step_s)
        resume = None
        while self._keyframes and self._keyframes[0][1] <= limit_s:
            resume = self._keyframes.popleft()
        if resume is None or resume[1] <= self._last_resume_s:
            return None
        self._next_checkpoint_s = self.processed_s + self.cfg.kafka.checkpoint_interval_s
        self._last_resume_s = resume[1]
        audio_grid = None
        if self._audio_origin_s is not None:
            patch_hop_s = PATCH_HOP_SAMPLES / PATCH_RATE_HZ if sound_patches_wanted(self.cfg) else None
            audio_grid = {"origin_s": self._audio_origin_s, "step_s": audio_grid_step_s(
                self.cfg.audio.token_s, self.cfg.audio.sample_rate_hz, SPEECH_WINDOW_S, patch_hop_s)}
        return StreamCheckpoint(
            self.stream_id, resume_s=resume[1], settled_s=self._settled_s, processed_s=self.processed_s,
            next_window=self.aligner.next_index, clock=clock_state, audio_grid=audio_grid,
            summary=self.summary.state(), events=self.events, frames_decoded=self.frames_decoded,
            frames_kept=self.frames_kept,
            emitted_after_settled=[[start_s, event_id] for start_s, event_id in self._written],
            signals_from_s=self.curves.emitted_s if self.curves is not None else None,
            open_spans=self.detectors.open_spans(), understanding=self.understanding.state(),
            open_event_ids=self.detectors.open_event_ids() + self.understanding.open_event_ids(),
            grid=grid_constants(self.cfg), at=time.time(), resume_segment=resume[0])

    # -- end -------------------------------------------------------------------------

    def close(self, status: str, reason: str | None = None) -> StreamEnd:
        """Close open conditions, write the final summary and stream_end. Idempotent."""
        if self.closed:
            raise RuntimeError(f"stream {self.stream_id} closed twice")
        self.closed = True
        self._emit(self.detectors.finish(self.video_end_s, self.audio_end_s))
        self._emit(self.understanding.finish(self.video_end_s, self.audio_end_s))
        if self.faces is not None:
            self._emit(self.faces.finish(self.video_end_s))
        for heads in (self.sync, self.learned):
            if heads is not None:
                self._emit(heads.finish())
        self._write_curves(final=True)
        self.sink.write(self.summary.build(final=True), self.media_arrived_wall_s)
        end = StreamEnd(self.stream_id, status, reason, round(self.processed_s, 3),
                        round(time.monotonic() - self.started_wall_s, 3), self.events,
                        self.frames_decoded, self.frames_kept, self.decode_errors)
        self.sink.write(end)
        return end
