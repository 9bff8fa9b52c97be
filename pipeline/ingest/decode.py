"""PyAV decoding of one stream into MediaChunks (no Ray here; the stream actor runs it on its decode thread).

Contract: ``MediaDecoder(stream_id, uri, cfg).open()`` returns the StreamInfo or
raises StreamOpenError; ``chunks()`` then yields MediaChunks of about
``decode.chunk_s`` media seconds each, the last one with both modalities done.
Video is sampled at ``video.fps`` by PTS and only kept frames are converted to
RGB, at the encoder's size; the image tagger's and the face detector's frames
are sampled apart, at their own rates and sizes, when they run. While every
sampler keeps under half the source's frame rate, the frames no other frame
references are not decoded unless a sampler keeps them (``decode.skip_nonref``);
``decode.fast`` skips deblocking. Audio is
resampled by PyAV to mono float32 at ``audio.sample_rate_hz`` and cut into rows
of ``audio.token_s``. Every time goes through the stream's ``StreamClock``
(``stream_clock.py``), which re-bases timestamps that jump; one connection of a
live source is one decoder (``live_source.py``), which then does not end the stream.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Iterator

import av
import numpy as np
from av.video.reformatter import VideoReformatter

from pipeline.core.config import Config
from pipeline.core.errors import StreamOpenError, one_line
from pipeline.core.media import MediaChunk, StreamInfo, VideoFrames
from pipeline.ingest.audio_patches import PatchCutter, sound_patches_wanted
from pipeline.ingest.audio_rows import AudioRowCutter
from pipeline.ingest.nonref_skip import NonrefSkipper, sampler_rates, skip_nonref_wanted
from pipeline.ingest.stream_clock import StreamClock

# After this many failed packets in a row a modality is given up (e.g. a corrupt
# audio track, ~15 s of AAC): its windows are then masked and the other modality goes on.
MAX_CONSECUTIVE_PACKET_ERRORS = 250



@dataclass
class _ModalityProgress:
    kind: str
    watermark_s: float = 0.0
    done: bool = False
    consecutive_errors: int = 0
    first_error_s: float | None = None
    first_error: str = ""

    def failed(self, packet_s: float | None, reason: str) -> str | None:
        """Count one undecodable packet; returns a one-line reason if this modality now gives up."""
        if self.consecutive_errors == 0:
            self.first_error_s, self.first_error = packet_s, reason
        self.consecutive_errors += 1
        if self.consecutive_errors < MAX_CONSECUTIVE_PACKET_ERRORS:
            return None
        self.done = True
        return f"{self.kind} decoding gave up: {self.run_description()}"

    def recovered(self) -> str | None:
        """A packet decoded again; returns a one-line description of the failed run, if any."""
        if self.consecutive_errors == 0:
            return None
        description = self.run_description()
        self.consecutive_errors = 0
        return f"{self.kind} packets undecodable: {description}"

    def run_description(self) -> str:
        where = f" from {self.first_error_s:.2f}s" if self.first_error_s is not None else ""
        return f"{self.consecutive_errors} in a row{where} ({self.first_error})"


@dataclass
class _PendingChunk:
    frames: list[np.ndarray] = field(default_factory=list)
    frame_pts_s: list[float] = field(default_factory=list)
    tag_frames: list[np.ndarray] = field(default_factory=list)
    tag_pts_s: list[float] = field(default_factory=list)
    face_frames: list[np.ndarray] = field(default_factory=list)
    face_pts_s: list[float] = field(default_factory=list)
    frames_decoded: int = 0
    errors: list[str] = field(default_factory=list)
    received_wall_s: float = 0.0
    keyframe_segments: list[tuple[int, float]] = field(default_factory=list)


def _pick_stream(streams, best):
    """The default-disposition stream, preferring FFmpeg's own best pick among those."""
    defaults = [s for s in streams if s.disposition & av.stream.Disposition.default]
    if best is not None and (best in defaults or not defaults):
        return best
    return defaults[0] if defaults else None


class MediaDecoder:
    """Decodes ``uri``, or with ``source`` a file-like object PyAV reads (a Kafka SegmentPipe;
    ``uri`` then only names it in messages).

    A live source's connection does not end the stream (``ends_stream`` False): its last chunk
    leaves both modalities open, and ``end_reason`` says why it ended: "eof" (demuxing just
    stopped: a camera that went away), "timeout" (nothing to read for ``timeouts_s[1]``) or
    "error". A reconnection (``resume_at_s`` given) starts at that stream time, with the first
    timestamp it decodes as its base.

    Fed from a SegmentPipe, each chunk names the fed segments that begin with a video keyframe
    (``keyframe_segments``): a checkpoint resumes at one. A decoder resumed there gets the
    first decoder's ``clock_state`` (so its PTS map to the same stream times) and ``audio_grid``
    (so its audio rows fall where the first decoder's did)."""

    def __init__(self, stream_id: str, uri: str, cfg: Config, open_options: dict[str, str] | None = None,
                 source: Any = None, resume_at_s: float | None = None, ends_stream: bool = True,
                 timeouts_s: tuple[float, float] = (10.0, 30.0), chunk_s: float | None = None,
                 clock_state: dict | None = None, audio_grid: tuple[float, float] | None = None):
        self.stream_id = stream_id
        self.uri = uri
        self.source = source
        self.cfg = cfg
        self.open_options = open_options or {}
        self.resume_at_s = resume_at_s
        self.ends_stream = ends_stream
        self.timeouts_s = timeouts_s
        self.chunk_s = chunk_s or cfg.decode.chunk_s
        self.clock_state, self.audio_grid = clock_state, audio_grid
        self.container = None
        self.video_stream = self.audio_stream = None
        self.clock = StreamClock()
        self.frames_kept = 0
        self.decode_errors = 0
        self.nonref_skipper: NonrefSkipper | None = None
        self.end_reason, self.end_detail = "eof", ""
        self.last_packet_monotonic_s = time.monotonic()  # read by the stream's watchdog and metrics

    def open(self) -> StreamInfo:
        import contextlib
        import weakref

        from pipeline.ingest.egress.guard import prepare_open
        from pipeline.ingest.egress.uri_policy import redact

        # A job's open is guarded (pipeline/ingest/egress/guard.py): every hop checked, protocols and demuxers
        # restricted. The guard's loopback helpers live as long as this decoder.
        self.egress, uri, options = prepare_open(self.stream_id, self.uri, self.open_options,
                                                 self.cfg.kafka.uri_policy, self.source is not None)
        if self.egress is not None:
            weakref.finalize(self, self.egress.close)
        try:
            with self.egress.watching() if self.egress is not None else contextlib.nullcontext():
                # Tags that are not UTF-8 (old taggers wrote Latin-1) read with U+FFFD: the media still plays.
                self.container = av.open(self.source if self.source is not None else uri,
                                         options=options, timeout=self.timeouts_s, metadata_errors="replace")
        except (OSError, av.error.FFmpegError, ValueError) as exc:
            refused = self.egress.refused(self.stream_id) if self.egress is not None else None
            reason = f"cannot open {redact(self.uri)}: {one_line(exc, with_type=True)}"
            raise refused or StreamOpenError(self.stream_id, reason) from exc
        refused = self.egress.refused(self.stream_id) if self.egress is not None else None
        if refused is not None:  # FFmpeg went on without the refused hop (HLS skips a segment): the job fails
            self.close()
            raise refused
        c = self.container
        self.video_stream = _pick_stream(c.streams.video, c.streams.best("video"))
        self.audio_stream = _pick_stream(c.streams.audio, c.streams.best("audio"))
        if self.video_stream is None and self.audio_stream is None:
            c.close()
            raise StreamOpenError(self.stream_id, f"{redact(self.uri)} has no video or audio stream")
        starts = [
            float(s.start_time * s.time_base)
            for s in (self.video_stream, self.audio_stream)
            if s is not None and s.start_time is not None
        ]
        # A file's times count from its start; a live connection's from where the stream had got to.
        if self.clock_state is not None:  # resumed at a checkpoint: the first decoder's times
            self.clock = StreamClock.restored(self.clock_state)
        else:
            self.clock = (StreamClock(min(starts) if starts else 0.0) if self.resume_at_s is None
                          else StreamClock(None, self.resume_at_s))
        for s in (self.video_stream, self.audio_stream):
            if s is not None:
                s.thread_type = "AUTO"
                s.codec_context.thread_count = self.cfg.decode.threads
        if self.video_stream is not None:
            self._set_video_decode_modes(self.video_stream)
        return StreamInfo(duration_s=self._duration_s(), video=self._video_info(), audio=self._audio_info())

    def _set_video_decode_modes(self, stream) -> None:
        """decode.fast and decode.skip_nonref, before the first decode."""
        if self.cfg.decode.fast:
            # No deblocking in any frame: an AVOption, which avcodec_open2 takes at the first decode.
            stream.codec_context.options = {**(stream.codec_context.options or {}), "skip_loop_filter": "all"}
        rate = stream.average_rate or stream.guessed_rate
        source_fps = float(rate) if rate else None
        if skip_nonref_wanted(self.cfg, source_fps):
            self.nonref_skipper = NonrefSkipper(stream.codec_context, sampler_rates(self.cfg), source_fps)

    def _duration_s(self) -> float | None:
        if self.container.duration is not None and self.container.duration > 0:
            return self.container.duration / 1e6
        durations = [
            float(s.duration * s.time_base)
            for s in (self.video_stream, self.audio_stream)
            if s is not None and s.duration
        ]
        return max(durations) if durations else None

    def _video_info(self) -> dict[str, Any] | None:
        s = self.video_stream
        if s is None:
            return None
        rate = s.average_rate or s.guessed_rate
        return {"codec": s.codec_context.name, "width": s.codec_context.width,
                "height": s.codec_context.height, "avg_fps": float(rate) if rate else None}

    def _audio_info(self) -> dict[str, Any] | None:
        s = self.audio_stream
        if s is None:
            return None
        return {"codec": s.codec_context.name, "sample_rate_hz": s.codec_context.sample_rate,
                "channels": s.codec_context.channels}

    def request_close(self) -> None:
        """Any thread: the stream is ending. A file's decoder has nothing to wake (a live source does)."""

    def close(self) -> None:
        if self.container is not None:
            self.container.close()
            self.container = None

    # -- decoding -------------------------------------------------------------------

    def chunks(self) -> Iterator[MediaChunk]:
        cfg = self.cfg
        size = cfg.video.image_size
        start_s = self.resume_at_s or 0.0
        video = _ModalityProgress("video", watermark_s=start_s, done=self.video_stream is None)
        audio = _ModalityProgress("audio", watermark_s=start_s, done=self.audio_stream is None)
        clock = self.clock
        source_fps = (self._video_info() or {}).get("avg_fps")
        video_frame_s = 1.0 / source_fps if source_fps else 0.04  # when a frame is due after the last
        cutter = (AudioRowCutter(cfg.audio.sample_rate_hz, cfg.audio.token_s, self.audio_grid)
                  if self.audio_stream else None)
        segment_at = getattr(self.source, "segment_at", None)  # a SegmentPipe: where its segments start
        last_video_segment = -1
        patcher = PatchCutter() if cutter is not None and sound_patches_wanted(cfg) else None
        tag_size = cfg.visual_tags.image_size
        tag_fps = cfg.visual_tags.fps if cfg.visual_tags.enabled else None
        face_fps = cfg.faces.fps if cfg.faces.enabled else None
        face_size: tuple[int, int] | None = None  # (width, height), from the stream's first frame
        last_kept_slot = last_tag_slot = last_face_slot = -1
        # One scaler per output size, kept for the stream: frame.to_ndarray(width=...) builds a new
        # SwsContext, with its slice threads, for every frame.
        kept_scaler, tag_scaler, face_scaler = VideoReformatter(), VideoReformatter(), VideoReformatter()
        skipper = self.nonref_skipper
        seq = 0
        first_media_s: float | None = None  # chunk boundaries and realtime pacing count from it
        next_boundary_s = math.inf
        pending = _PendingChunk(received_wall_s=time.time())
        wall_start = time.monotonic()
        selected = [s for s in (self.video_stream, self.audio_stream) if s is not None]

        def emit(final: bool) -> MediaChunk:
            nonlocal pending, seq
            if final:
                if self.ends_stream:
                    video.done = audio.done = True
                if cutter is not None:
                    cutter.flush()
            rows = cutter.take_rows(self.stream_id, final and self.ends_stream) if cutter is not None else None
            if cutter is not None:
                audio.watermark_s = max(audio.watermark_s, cutter.watermark_s)
            patches = None
            if patcher is not None:
                if rows is not None:
                    patcher.push(rows)
                if final:
                    patcher.flush()
                patches = patcher.take()
            frames = _stacked(pending.frames, pending.frame_pts_s)
            tag_frames = _stacked(pending.tag_frames, pending.tag_pts_s)
            face_frames = _stacked(pending.face_frames, pending.face_pts_s)
            chunk = MediaChunk(
                stream_id=self.stream_id, seq=seq, video=frames, audio=rows,
                video_watermark_s=video.watermark_s, audio_watermark_s=audio.watermark_s,
                video_done=video.done, audio_done=audio.done,
                frames_decoded=pending.frames_decoded,
                audio_decoded_s=(len(rows) * cfg.audio.token_s) if rows is not None else 0.0,
                received_wall_s=pending.received_wall_s, errors=pending.errors,
                tag_frames=tag_frames, audio_patches=patches, face_frames=face_frames,
                source_changes=clock.take_jumps(), keyframe_segments=pending.keyframe_segments,
            )
            seq += 1
            pending = _PendingChunk(received_wall_s=time.time())
            return chunk

        try:
            for packet in self.container.demux(*selected):
                self.last_packet_monotonic_s = time.monotonic()
                is_video = packet.stream is self.video_stream
                progress = video if is_video else audio
                if progress.done:
                    continue
                modality = "video" if is_video else "audio"
                packet_s = (clock.peek_s(modality, float(packet.pts * packet.time_base))
                            if packet.pts is not None else None)
                if is_video and segment_at is not None and packet.pos is not None and packet.pos >= 0:
                    segment = segment_at(packet.pos)
                    if segment > last_video_segment:  # the segment's first video packet
                        last_video_segment = segment
                        if packet.is_keyframe and packet_s is not None:
                            pending.keyframe_segments.append((segment, packet_s))
                if is_video and skipper is not None:
                    skipper.before(packet_s)
                try:
                    frames = packet.decode()
                except (av.error.FFmpegError, ValueError) as exc:
                    self.decode_errors += 1
                    gave_up = progress.failed(packet_s, one_line(exc, with_type=True))
                    if gave_up:
                        pending.errors.append(gave_up)
                    continue
                recovered = progress.recovered()
                if recovered:
                    pending.errors.append(recovered)
                for frame in frames:
                    if frame.pts is None:
                        continue
                    pts_s = float(frame.pts * frame.time_base)
                    if is_video:
                        t_s = clock.to_stream_s("video", pts_s, video_frame_s)
                    else:
                        t_s = clock.to_stream_s("audio", pts_s, frame.samples / frame.sample_rate)
                    if self.resume_at_s is not None and t_s < self.resume_at_s:
                        # A reconnection's base is its first frame's PTS: the other modality's first
                        # frames may lie before it, under media the last connection already gave.
                        continue
                    if is_video:
                        pending.frames_decoded += 1
                        if skipper is not None:
                            skipper.decoded(t_s)
                        video.watermark_s = max(video.watermark_s, t_s)
                        slot = math.floor(t_s * cfg.video.fps + 1e-6)
                        if slot > last_kept_slot:
                            last_kept_slot = slot
                            # Only kept frames pay for scaling and RGB conversion. AREA is an
                            # anti-aliased box filter, 3x cheaper than swscale's bicubic default.
                            pending.frames.append(_rgb(kept_scaler, frame, size, size))
                            pending.frame_pts_s.append(t_s)
                            self.frames_kept += 1
                        tag_slot = math.floor(t_s * tag_fps + 1e-6) if tag_fps else -1
                        if tag_slot > last_tag_slot:
                            # The tagger's frames are sampled apart: fewer, and at its own size.
                            last_tag_slot = tag_slot
                            pending.tag_frames.append(_rgb(tag_scaler, frame, tag_size, tag_size))
                            pending.tag_pts_s.append(t_s)
                        face_slot = math.floor(t_s * face_fps + 1e-6) if face_fps else -1
                        if face_slot > last_face_slot:
                            # One size per stream, so a chunk's face frames stack (and batch).
                            last_face_slot = face_slot
                            face_size = face_size or face_frame_size(frame.width, frame.height, cfg.faces.width)
                            pending.face_frames.append(_rgb(face_scaler, frame, *face_size))
                            pending.face_pts_s.append(t_s)
                    else:
                        cutter.push(frame, t_s)
                media_s = max(video.watermark_s, cutter.watermark_s if cutter else 0.0)
                if first_media_s is None and frames:
                    first_media_s = media_s
                    next_boundary_s = (math.floor(media_s / self.chunk_s) + 1) * self.chunk_s
                if media_s >= next_boundary_s:
                    next_boundary_s = (math.floor(media_s / self.chunk_s) + 1) * self.chunk_s
                    if cfg.decode.realtime:
                        _sleep_until(wall_start, media_s - first_media_s)
                    yield emit(final=False)
        except (av.error.ExitError, av.error.TimeoutError) as exc:  # our read timeout, or the protocol's
            self.end_reason, self.end_detail = "timeout", one_line(exc, with_type=True)
            if self.ends_stream:
                pending.errors.append(f"demuxing stopped: {self.end_detail}")
        except (av.error.FFmpegError, OSError) as exc:
            self.end_reason, self.end_detail = "error", one_line(exc, with_type=True)
            if self.ends_stream:
                pending.errors.append(f"demuxing stopped: {self.end_detail}")
        for progress in (video, audio):
            if progress.consecutive_errors and not progress.done:
                pending.errors.append(progress.recovered())
        yield emit(final=True)


def _rgb(scaler: VideoReformatter, frame: av.VideoFrame, width: int, height: int) -> np.ndarray:
    """``frame`` in RGB at ``width`` x ``height`` through ``scaler``, which keeps its SwsContext (FFmpeg
    rebuilds its scaling graph only when a size, format or flag changes); one thread: the outputs are
    small, and the decoder's threads have the cores."""
    return scaler.reformat(frame, width=width, height=height, format="rgb24", interpolation="AREA",
                           threads=1).to_ndarray()


def face_frame_size(width: int, height: int, face_width: int) -> tuple[int, int]:
    """(width, height) of the face detector's frames: ``face_width`` wide, the source's aspect,
    an even height (at least 2)."""
    return face_width, max(2, 2 * round(face_width * height / width / 2))


def _stacked(frames: list[np.ndarray], pts_s: list[float]) -> VideoFrames | None:
    return VideoFrames(np.stack(frames), np.asarray(pts_s, np.float64)) if frames else None


def _sleep_until(wall_start: float, media_s: float) -> None:
    ahead_s = media_s - (time.monotonic() - wall_start)
    if ahead_s > 0:
        time.sleep(ahead_s)
