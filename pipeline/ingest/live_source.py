"""A live source: one stream over as many connections as it takes. Where a live source reconnects.

States: CONNECTING -> STREAMING -> DOWN (reason: eof, timeout or error) -> BACKOFF -> CONNECTING ...;
CLOSED once the stream is stopped; FAILED only after ``live.max_outage_s`` down (default: never).
On a live URI any end of demuxing is a disconnect, not the end of the stream:

- a camera that went away ends demuxing quietly (RTSP, HLS); one that froze reads nothing, and
  PyAV's read timeout (an interrupt callback of ours, checked while FFmpeg blocks) ends it after
  ``live.stall_s``, whatever the protocol's own timeouts do;
- reconnect attempts wait ``live.backoff_initial_s``, doubling up to ``live.backoff_max_s``, with
  jitter (cameras that come back do not get every client at once); a connection that delivered
  ``live.healthy_s`` of media starts the waits again from the first;
- each connection is one ``MediaDecoder``, which starts on the stream clock where the last one
  stopped plus the wall time the source was down: times stay monotonic, the gap stays a gap.

Contract: as ``MediaDecoder`` (``open``, ``chunks``, ``close``), plus ``request_close()`` from any
thread, which ends a connect or a backoff within ``_WAKE_S``. Changes reach the stream as
``SourceChange``s: ``on_change`` during ``open`` (there is no stream yet), and from then on in the
chunks, in order with the media (``down``, ``retrying`` in media-less chunks, ``resumed`` on the
first chunk after the gap).
"""

from __future__ import annotations

import logging
import random
import threading
import time
from typing import Callable, Iterator
from urllib.parse import urlsplit

from pipeline.core.config import Config
from pipeline.core.errors import OpenRefusedError, StreamOpenError
from pipeline.core.media import MediaChunk, SourceChange, StreamInfo
from pipeline.ingest.decode import MediaDecoder
from pipeline.observe import metrics

log = logging.getLogger("avfuse.ingest")

LIVE_SCHEMES = frozenset({"rtsp", "rtsps", "rtmp", "rtmps", "srt", "udp", "rtp"})
# PyAV's read timeout fires after about twice the value given (measured against a frozen RTSP
# server: 2.0 s for 1, 4.0 s for 2): half of live.stall_s is a stall of live.stall_s.
_READ_TIMEOUT_SHARE = 0.5


class SourceFailed(Exception):
    """Down for live.max_outage_s, or refused for good: the stream ends as failed."""


class SourceClosed(Exception):
    """Stopped while connecting or waiting to."""


def is_live_uri(uri: str) -> bool:
    return urlsplit(uri).scheme.lower() in LIVE_SCHEMES


def is_playlist(uri: str) -> bool:
    parts = urlsplit(uri)
    return parts.scheme.lower() in ("http", "https") and parts.path.lower().endswith(".m3u8")


def reconnects(cfg: Config, uri: str) -> bool:
    """Whether ``uri`` runs as a live source (an HLS playlist: until its first open says it has a
    duration, i.e. is a recording)."""
    if cfg.live.reconnect == "never":
        return False
    return cfg.live.reconnect == "always" or is_live_uri(uri) or is_playlist(uri)


def backoff_s(attempt: int, initial_s: float, max_s: float, rng: random.Random) -> float:
    """The wait before connection attempt ``attempt`` (1: the first after a disconnect): doubling
    from ``initial_s`` up to ``max_s``, the upper half of it drawn at random."""
    ceiling_s = min(max_s, initial_s * 2 ** (attempt - 1))
    return ceiling_s * (0.5 + 0.5 * rng.random())


class LiveSource:
    def __init__(self, stream_id: str, uri: str, cfg: Config, open_options: dict[str, str] | None = None,
                 on_change: Callable[[SourceChange], None] | None = None, rng: random.Random | None = None,
                 start_at_s: float | None = None):
        """``start_at_s``: the stream clock's time of the first connection's first media (a job run
        again from its checkpoint goes on where its clock had got to), else the source's own."""
        self.stream_id, self.uri, self.cfg = stream_id, uri, cfg
        self.open_options = dict(open_options or {})
        if urlsplit(uri).scheme.lower() in ("rtsp", "rtsps"):
            self.open_options.setdefault("rtsp_transport", cfg.live.rtsp_transport)
        self.on_change = on_change or (lambda change: None)
        self._rng = rng or random.Random()
        self._closing = threading.Event()
        self._decoder: MediaDecoder | None = None
        self.failed_reason: str | None = None
        self.start_at_s = start_at_s
        self.media_s = start_at_s or 0.0  # end of the media so far, on the stream clock
        self._attempt = 0  # connection attempts since the last healthy connection
        self._connections = 0  # that opened
        self._seq = 0
        self._finished_decoders_errors = 0
        self._finished_decoders_kept = 0
        label = metrics.stream_label(stream_id)
        m = metrics.get()
        self._up = m.source_up.labels(label)
        self._reconnects = m.source_reconnects.labels(label)
        self._outage = m.source_outage_seconds.labels(label)

    # -- what the stream runner reads, as of a MediaDecoder ----------------------------

    @property
    def decode_errors(self) -> int:
        return self._finished_decoders_errors + (self._decoder.decode_errors if self._decoder else 0)

    @property
    def frames_kept(self) -> int:
        return self._finished_decoders_kept + (self._decoder.frames_kept if self._decoder else 0)

    @property
    def is_recording(self) -> bool:
        """Once open: an HLS playlist with a duration (it just ends, as a file does); else a live source."""
        return self._decoder is not None and self._decoder.ends_stream

    @property
    def last_packet_monotonic_s(self) -> float:
        return self._decoder.last_packet_monotonic_s if self._decoder else time.monotonic()

    def request_close(self) -> None:
        self._closing.set()

    def close(self) -> None:
        self._closing.set()
        if self._decoder is not None:
            self._decoder.close()
        self._up.set(0)

    # -- connecting ------------------------------------------------------------------

    def open(self) -> StreamInfo:
        """The first connection, retried (changes to ``on_change``) until it opens; raises
        StreamOpenError when stopped first or failed."""
        down_since_s = time.monotonic()
        try:
            for change in self._connect(self.start_at_s, down_since_s, "not connected yet"):
                self.on_change(change)
        except (SourceClosed, SourceFailed) as exc:
            raise StreamOpenError(self.stream_id, str(exc)) from None
        if self._decoder.ends_stream:
            log.debug("stream %s: a recording, not a live source", self.stream_id)
        return self._info

    def _connect(self, resume_at_s: float | None, down_since_s: float, reason: str) -> Iterator[SourceChange]:
        """Attempts until one opens (``self._decoder``), yielding a "retrying" change before each
        wait; raises SourceClosed or SourceFailed."""
        live = self.cfg.live
        while True:
            if self._closing.is_set():
                raise SourceClosed("stopped before the source came back" if resume_at_s is not None
                                   else "stopped before it connected")
            self._attempt += 1
            connect_started_s = time.monotonic()
            decoder = MediaDecoder(self.stream_id, self.uri, self.cfg, self.open_options,
                                   resume_at_s=None if resume_at_s is None else
                                   resume_at_s + (connect_started_s - down_since_s),
                                   ends_stream=False,
                                   timeouts_s=(live.open_timeout_s, live.stall_s * _READ_TIMEOUT_SHARE),
                                   chunk_s=live.chunk_s)
            try:
                self._info = decoder.open()
            except OpenRefusedError as exc:
                raise SourceFailed(exc.reason) from None  # the policy will refuse it again
            except StreamOpenError as exc:
                reason = exc.reason
            else:
                if self._connections == 0 and is_playlist(self.uri) and self._info.duration_s \
                        and self.cfg.live.reconnect == "auto":
                    decoder.ends_stream = True  # a playlist with a duration is a recording: it just ends
                self._decoder = decoder
                self._connections += 1
                self._up.set(1)
                return
            down_s = time.monotonic() - down_since_s
            if live.max_outage_s is not None and down_s >= live.max_outage_s:
                raise SourceFailed(f"down for {down_s:.1f}s (live.max_outage_s {live.max_outage_s:g}): {reason}")
            wait_s = backoff_s(self._attempt, live.backoff_initial_s, live.backoff_max_s, self._rng)
            yield SourceChange("retrying", "error", self.media_s, detail=reason, attempt=self._attempt,
                               down_s=down_s, wall_s=time.time())
            if self._closing.wait(wait_s):
                continue  # closing: the loop's first check ends it

    # -- media -------------------------------------------------------------------------

    def chunks(self) -> Iterator[MediaChunk]:
        while True:
            decoder = self._decoder
            connected_media_s = self.media_s
            for chunk in decoder.chunks():
                self.media_s = max(self.media_s, chunk.video_watermark_s, chunk.audio_watermark_s)
                yield self._numbered(chunk)
            if decoder.ends_stream:
                return
            if self.media_s - connected_media_s >= self.cfg.live.healthy_s:
                self._attempt = 0
            down_since_s = decoder.last_packet_monotonic_s
            reason, detail = decoder.end_reason, decoder.end_detail or "the source stopped sending"
            self._retire(decoder)
            if self._closing.is_set():
                yield from self._end()
                return
            self._up.set(0)
            gap_at_s = self.media_s
            yield self._status(SourceChange("down", reason, gap_at_s, detail=detail,
                                            down_s=time.monotonic() - down_since_s, wall_s=time.time()))
            try:
                for change in self._connect(gap_at_s, down_since_s, detail):
                    yield self._status(change)
            except SourceClosed:
                yield from self._end()
                return
            except SourceFailed as exc:
                self.failed_reason = str(exc)
                yield from self._end(SourceChange("failed", reason, gap_at_s, detail=str(exc),
                                                  attempt=self._attempt, down_s=time.monotonic() - down_since_s,
                                                  wall_s=time.time()))
                return
            down_s = time.monotonic() - down_since_s
            self._reconnects.inc()
            self._outage.inc(down_s)
            resumed = SourceChange("resumed", reason, gap_at_s, detail=detail, resume_s=self._decoder.resume_at_s,
                                   attempt=self._attempt, down_s=down_s, wall_s=time.time())
            yield self._status(resumed)

    def _numbered(self, chunk: MediaChunk) -> MediaChunk:
        chunk.seq, self._seq = self._seq, self._seq + 1
        return chunk

    def _status(self, change: SourceChange) -> MediaChunk:
        """A chunk without media that carries ``change``; the watermarks stay where the media got to."""
        return self._numbered(MediaChunk(self.stream_id, 0, None, None, self.media_s, self.media_s, False, False,
                                         received_wall_s=time.time(), source_changes=[change]))

    def _end(self, change: SourceChange | None = None) -> Iterator[MediaChunk]:
        """The stream's last chunk: both modalities done."""
        chunk = self._status(change) if change is not None else self._status(
            SourceChange("closed", "stopped", self.media_s, wall_s=time.time()))
        chunk.video_done = chunk.audio_done = True
        yield chunk

    def _retire(self, decoder: MediaDecoder) -> None:
        self._finished_decoders_errors += decoder.decode_errors
        self._finished_decoders_kept += decoder.frames_kept
        decoder.close()
        self._decoder = None
