"""The egress guard: what a job's open may make FFmpeg reach, enforced at every connection.

The URI policy checks a job's URI once, in the service. FFmpeg then resolves the
host again, follows redirects and opens whatever a playlist names. The guard
closes those paths for opens the service marks (``for_job``), in the process
that decodes, when ``MediaDecoder.open`` calls ``EgressGuard.start``:

- ``protocol_whitelist``: only the protocols the URI's scheme needs (``file`` for
  files; ``http,tcp`` / ``https,tls,tcp,httpproxy`` and ``crypto`` for HLS keys,
  as far as the policy allows those schemes). ``concat``, ``subfile``, ``pipe``,
  ``data``, ``udp``, ``rtp`` are never on it, and ``file`` only for a file job.
- ``format_whitelist``: media demuxers only. Demuxers that open other URLs
  (hls, dash, concat, imf, sdp, image2 patterns) are refused, except ``hls`` for
  HTTP(S) jobs, whose every fetch goes through the proxy. So a playlist cannot
  reference files at all: a network playlist has no ``file`` protocol, a local
  one no playlist demuxer.
- HTTP(S): every request goes through an ``EgressProxy`` on loopback
  (``http_proxy``), which checks each hop and connects to the checked address.
- RTSP: FFmpeg talks to an ``RtspRelay`` on loopback that connects to the checked
  address and refuses redirects; RTP runs inside the TCP connection.
- RTMP, SRT: the URI is pinned to the checked address (FFmpeg gets an IP literal).

Other schemes have no guard here and are refused even when the policy allows them.
"""

from __future__ import annotations

import os
import re
from contextlib import contextmanager
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlsplit, urlunsplit

import av
import av.logging

from pipeline.core.errors import OpenRefusedError, StreamOpenError
from pipeline.ingest.egress.proxy import EgressProxy, HopRefused
from pipeline.ingest.egress.rtsp_relay import RtspRelay
from pipeline.ingest.egress.uri_policy import HostUnresolved, IPAddress, UriPolicy, UriRefused, network_host, redact

RESERVED_OPTION_PREFIX = "avfuse."  # avfuse's own settings for the decoder, never FFmpeg's
GUARD_OPTION = RESERVED_OPTION_PREFIX + "egress_guard"

# Demuxers of one media stream each: none of them opens another URL. Everything a
# camera, a CDN or a recorder sends fits; a format missing here fails with
# "Format not on whitelist" rather than open something the policy cannot see.
MEDIA_DEMUXERS = (
    "mov", "mp4", "m4a", "3gp", "3g2", "mj2", "matroska", "webm", "mpegts", "mpegtsraw", "flv", "live_flv",
    "avi", "asf", "ogg", "wav", "w64", "mp3", "aac", "ac3", "eac3", "dts", "truehd", "flac", "loas", "amr",
    "h264", "hevc", "vvc", "m4v", "mpeg", "mpegvideo", "mjpeg", "vc1", "av1", "obu", "ivf", "mxf", "gxf", "dv",
    "nut", "caf", "aiff", "wv", "tta", "webvtt", "yuv4mpegpipe",
)
# Adds only HLS: its playlists and segments are fetched by FFmpeg through the proxy.
HTTP_DEMUXERS = MEDIA_DEMUXERS + ("hls",)

_PROTOCOLS_BY_SCHEME = {
    "http": ("http", "tcp", "crypto"),
    "https": ("https", "tls", "tcp", "httpproxy", "crypto"),
    "rtsp": ("rtsp", "tcp"),
    "rtmp": ("rtmp", "tcp"),
    "srt": ("srt",),
}
_DEFAULT_PORTS = {"rtsp": 554, "rtmp": 1935}
# FFmpeg's own words when a whitelist stops it (libavformat/avio.c, demux.c).
_PROTOCOL_REFUSED = re.compile(r"Protocol '([^']*)' not on whitelist")
_FORMAT_REFUSED = "Format not on whitelist"
# Media bytes from Kafka come through a file-like object and need no protocol at all:
# a "playlist" among them (ffconcat, SDP, HLS) must not make FFmpeg open anything.
SEGMENT_OPTIONS = {"protocol_whitelist": "none", "format_whitelist": ",".join(MEDIA_DEMUXERS)}


def prepare_open(stream_id: str, uri: str, options: dict[str, str], policy_cfg,
                 from_source: bool) -> tuple["EgressGuard | None", str, dict[str, str]]:
    """What ``MediaDecoder.open`` passes to ``av.open``: (the guard or None, the URI, the options).

    A job's open (``for_job`` options) is guarded under ``policy_cfg`` (``kafka.uri_policy``);
    bytes ``from_source`` get ``SEGMENT_OPTIONS``; an operator's own URI (``avfuse replay``)
    passes unchanged. Raises ``StreamOpenError`` for a URI the guard refuses.
    """
    guarded, options = split_options(options)
    if from_source:
        return None, uri, {**options, **SEGMENT_OPTIONS}
    if not guarded:
        return None, uri, options
    try:
        guard = EgressGuard.start(UriPolicy.from_config(policy_cfg), uri, options, stream_id)
    except HostUnresolved as exc:
        raise StreamOpenError(stream_id, f"cannot open {_hop(uri)}: {exc.reason}") from None
    except UriRefused as exc:
        raise OpenRefusedError(stream_id, f"refused {_hop(uri)}: {exc.reason}") from None
    return guard, guard.uri, guard.options


def for_job(options: dict[str, str]) -> dict[str, str]:
    """The open options of a job, marked so that the decoder guards the open."""
    return {**options, GUARD_OPTION: "1"}


def split_options(options: dict[str, str]) -> tuple[bool, dict[str, str]]:
    """(guarded?, the options for FFmpeg without avfuse's own)."""
    guarded = options.get(GUARD_OPTION) == "1"
    return guarded, {k: v for k, v in options.items() if not k.startswith(RESERVED_OPTION_PREFIX)}


@dataclass
class EgressGuard:
    """One guarded open: ``uri`` and ``options`` are what to pass to ``av.open``; the
    loopback helpers it started live until ``close()`` (after the container's close)."""

    uri: str
    options: dict[str, str]
    _helpers: list = field(default_factory=list)
    _ffmpeg_refusals: list[HopRefused] = field(default_factory=list)

    @classmethod
    def start(cls, policy: UriPolicy, uri: str, options: dict[str, str],
              stream_id: str | None = None) -> "EgressGuard":
        """Check ``uri`` again (this process may resolve names differently than the service's)
        and build the open; raises ``UriRefused``."""
        scheme = policy.scheme(uri)
        if scheme in policy.allowed_schemes and scheme != "file" and scheme not in _PROTOCOLS_BY_SCHEME:
            raise UriRefused(f"scheme {scheme!r} has no egress guard (guarded: file, "
                             f"{', '.join(_PROTOCOLS_BY_SCHEME)})")
        checked = policy.check(uri)
        if scheme == "file":
            return cls(checked, {**options, "protocol_whitelist": "file",
                                 "format_whitelist": ",".join(MEDIA_DEMUXERS)})
        if scheme in ("http", "https"):
            return cls._http(policy, uri, options, stream_id)
        host = network_host(uri)
        port = _port(uri, scheme)
        if scheme == "srt" and parse_qs(urlsplit(uri).query).get("mode", ["caller"]) != ["caller"]:
            raise UriRefused("an srt uri may only be a caller (mode=listener/rendezvous would listen)")
        addresses = policy.check_host(host)
        if scheme == "rtsp":
            relay = RtspRelay(addresses, port, _hop(uri), stream_id)
            # rtsp_transport tcp: with UDP the server would say where RTP goes.
            return cls(_with_address(uri, "127.0.0.1", relay.port),
                       {**options, "rtsp_transport": "tcp", "protocol_whitelist": "rtsp,tcp",
                        "format_whitelist": "rtsp"}, [relay])
        return cls(_with_address(uri, _literal(addresses[0]), port),
                   {**options, "protocol_whitelist": ",".join(_PROTOCOLS_BY_SCHEME[scheme]),
                    "format_whitelist": ",".join(MEDIA_DEMUXERS)})

    @classmethod
    def _http(cls, policy: UriPolicy, uri: str, options: dict[str, str], stream_id: str | None) -> "EgressGuard":
        if os.environ.get("no_proxy"):
            # FFmpeg connects directly to hosts that no_proxy names, past any http_proxy.
            raise UriRefused("the environment sets no_proxy, which lets FFmpeg bypass the egress guard; "
                             "unset it for avfuse")
        schemes = tuple(s for s in ("http", "https") if s in policy.allowed_schemes)
        proxy = EgressProxy(policy, stream_id, schemes)
        protocols = dict.fromkeys(p for s in schemes for p in _PROTOCOLS_BY_SCHEME[s])
        return cls(uri, {**options, "http_proxy": proxy.url, "protocol_whitelist": ",".join(protocols),
                         "format_whitelist": ",".join(HTTP_DEMUXERS)}, [proxy])

    def refusals(self) -> list[HopRefused]:
        """Every hop refused so far: by the loopback helpers, then by FFmpeg's whitelists."""
        return [refused for helper in self._helpers for refused in helper.refusals] + self._ffmpeg_refusals

    @contextmanager
    def watching(self):
        """Wrap ``av.open``: what FFmpeg's whitelists stop (a ``file:`` segment, a playlist
        demuxer) becomes a refusal too, named as well as FFmpeg's log names it."""
        previous = av.logging.get_level()
        av.logging.set_level(av.logging.ERROR)  # the capture sees nothing while PyAV logging is off
        capture = av.logging.Capture()
        try:
            with capture:
                yield
        finally:
            av.logging.set_level(previous)
            for _level, name, message in capture.logs:
                protocol = _PROTOCOL_REFUSED.search(message)
                if protocol:
                    self._ffmpeg_refusals.append(HopRefused(
                        f"a {protocol.group(1)}: URL", f"protocol {protocol.group(1)!r} is not allowed here"))
                elif _FORMAT_REFUSED in message:
                    self._ffmpeg_refusals.append(HopRefused(
                        _hop(self.uri), f"demuxer {name!r} is not allowed (it can open other files or URLs)"))

    def refused(self, stream_id: str) -> StreamOpenError | None:
        """The open's error when a hop was refused: the first one, named."""
        refusals = self.refusals()
        if not refusals:
            return None
        more = f" (and {len(refusals) - 1} more)" if len(refusals) > 1 else ""
        return OpenRefusedError(stream_id, f"{refusals[0]}{more}")

    def close(self) -> None:
        for helper in self._helpers:
            helper.close()


def _port(uri: str, scheme: str) -> int:
    try:
        port = urlsplit(uri).port
    except ValueError:
        raise UriRefused("uri has an invalid port") from None
    if port is None and scheme not in _DEFAULT_PORTS:
        raise UriRefused(f"a {scheme} uri needs a port")
    return port if port is not None else _DEFAULT_PORTS[scheme]


def _literal(address: IPAddress) -> str:
    return f"[{address}]" if address.version == 6 else str(address)


def _with_address(uri: str, host: str, port: int) -> str:
    """``uri`` with its host and port replaced; user, path and query kept as written."""
    parts = urlsplit(uri)
    userinfo, at, _ = parts.netloc.rpartition("@")
    return urlunsplit(parts._replace(netloc=f"{userinfo}{at}{host}:{port}"))


def _hop(uri: str) -> str:
    parts = urlsplit(redact(uri))
    return urlunsplit(parts._replace(query="", fragment=""))
