"""The egress guard against real servers on loopback: a job's open reaches only what the URI
policy allows, at every hop FFmpeg makes (redirects, playlist entries, a second name lookup),
and FFmpeg's own protocols and demuxers cannot read a file or open a URL around it.

127.0.0.1 stands for an allowed host and 127.0.0.2 for a forbidden one (the cloud metadata
service, say): the policy denies 127.0.0.2/32. A forbidden server records every connection
it accepts, so "never connected" is asserted on the server side; a forbidden file is a FIFO,
whose writer only gets through once something opens it for reading.
"""

from __future__ import annotations

import http.server
import io
import os
import re
import socket
import threading
import time
from pathlib import Path

import pytest

from pipeline.app.sample import ClipSpec, write_clip
from pipeline.core.config import UriPolicyConfig, load_config
from pipeline.core.errors import StreamOpenError
from pipeline.ingest.decode import MediaDecoder
from pipeline.ingest.egress import guard as egress
from pipeline.ingest.egress.uri_policy import DEFAULT_DENY_NETWORKS, UriPolicy, UriRefused
from tests.kafka_support import ts_segments

ALLOWED, OTHER_ALLOWED, DENIED = "127.0.0.1", "127.0.0.3", "127.0.0.2"


# --- servers ------------------------------------------------------------------------


class MediaServer(http.server.ThreadingHTTPServer):
    """HTTP on one loopback address: ``routes`` (path -> (status, headers, body)) first,
    then the files of ``folder``. ``connections`` counts every accepted connection."""

    daemon_threads = True

    def __init__(self, address: str, folder: Path, port: int = 0):
        self.folder, self.routes, self.connections, self.paths = folder, {}, 0, []
        super().__init__((address, port), _Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    def verify_request(self, request, client_address) -> bool:
        self.connections += 1  # before any byte is read: a connection that sends nothing counts
        return True

    def url(self, path: str) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}{path}"

    def redirect(self, path: str, to: str, status: int = 302) -> str:
        self.routes[path] = (status, {"Location": to}, b"")
        return self.url(path)

    def close(self) -> None:
        self.shutdown()
        self.server_close()


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"  # one response per connection, as the simplest servers do

    def do_GET(self):
        self.server.paths.append(self.path)
        route = self.server.routes.get(self.path)
        if route is None:
            route = self._file()
        status, headers, body = route
        self.send_response(status)
        for name, value in {**headers, "Content-Length": str(len(body))}.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def _file(self) -> tuple[int, dict[str, str], bytes]:
        """A file of the folder, with byte ranges: FFmpeg seeks (an MP4's index may be at its end)."""
        path = self.server.folder / self.path.lstrip("/").split("?")[0]
        if not path.is_file():
            return 404, {}, b""
        data = path.read_bytes()
        ranged = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
        if not ranged:
            return 200, {"Accept-Ranges": "bytes"}, data
        first = int(ranged.group(1))
        last = min(int(ranged.group(2) or len(data) - 1), len(data) - 1)
        if first >= len(data):
            return 416, {"Content-Range": f"bytes */{len(data)}"}, b""
        return 206, {"Accept-Ranges": "bytes", "Content-Range": f"bytes {first}-{last}/{len(data)}"}, \
            data[first:last + 1]

    def log_message(self, *args) -> None:
        pass


def twin_recorders(checked_address: str, other_address: str, reply=None, tries: int = 20):
    """Recorders on the same port of two addresses (a port free on one may be taken on the other)."""
    for _ in range(tries):
        checked = TcpRecorder(checked_address, reply=reply)
        try:
            return checked, TcpRecorder(other_address, port=checked.port)
        except OSError:
            checked.close()
    raise AssertionError(f"no port free on both {checked_address} and {other_address}")


class TcpRecorder:
    """A TCP listener that records each connection and the first bytes sent on it, answering
    with ``reply(first_bytes)`` (nothing by default)."""

    def __init__(self, address: str, port: int = 0, reply=None):
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((address, port))
        self.sock.listen(8)
        self.address, self.port = address, self.sock.getsockname()[1]
        self.received: list[bytes] = []
        self.reply = reply
        threading.Thread(target=self._run, daemon=True).start()

    @property
    def connections(self) -> int:
        return len(self.received)

    def _run(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._talk, args=(conn,), daemon=True).start()

    def _talk(self, conn: socket.socket) -> None:
        conn.settimeout(1)
        index = len(self.received)
        self.received.append(b"")
        try:
            while True:
                data = conn.recv(4096)
                if not data:
                    break
                self.received[index] += data
                if self.reply is not None and b"\r\n\r\n" in self.received[index]:
                    conn.sendall(self.reply(self.received[index]))
                    self.received[index] += b"<replied>"
        except OSError:
            pass
        finally:
            conn.close()

    def close(self) -> None:
        self.sock.close()


class ForbiddenFile:
    """A FIFO: opening it for reading is the only way its writer thread gets through."""

    def __init__(self, path: Path):
        os.mkfifo(path)
        self.path, self.opened = path, threading.Event()
        threading.Thread(target=self._writer, daemon=True).start()

    def _writer(self) -> None:
        fd = os.open(self.path, os.O_WRONLY)  # blocks until a reader opens the FIFO
        self.opened.set()
        os.close(fd)

    def release(self) -> None:
        if not self.opened.is_set():  # unblock the writer thread ourselves
            os.close(os.open(self.path, os.O_RDONLY | os.O_NONBLOCK))


# --- fixtures -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> Path:
    """A short clip, its MPEG-TS segments (s0.ts, s1.ts, ...) and nothing else."""
    folder = tmp_path_factory.mktemp("egress-media")
    clip = write_clip(folder / "clip.mp4", ClipSpec(duration_s=3.0))
    for i, data in enumerate(ts_segments(clip)):
        (folder / f"s{i}.ts").write_bytes(data)
    return folder


@pytest.fixture
def allowed(media):
    server = MediaServer(ALLOWED, media)
    yield server
    server.close()


@pytest.fixture
def denied(media):
    server = MediaServer(DENIED, media)
    yield server
    server.close()


def policy_config(**overrides) -> UriPolicyConfig:
    return UriPolicyConfig(**{"deny_networks": [*DEFAULT_DENY_NETWORKS, f"{DENIED}/32"], **overrides})


def open_job(uri: str, options: dict[str, str] | None = None, **policy) -> MediaDecoder:
    """Open ``uri`` as the service opens a job's URI; the caller closes the decoder."""
    cfg = load_config(None, [], environ={})
    cfg.kafka.uri_policy = policy_config(**policy)
    decoder = MediaDecoder("job-1", uri, cfg, egress.for_job(options or {}))
    decoder.open()
    return decoder


def refusal(uri: str, **policy) -> str:
    with pytest.raises(StreamOpenError) as caught:
        open_job(uri, **policy).close()
    reason = caught.value.reason
    assert "\n" not in reason
    return reason


def segments(media: Path) -> list[str]:
    return sorted(p.name for p in media.glob("s*.ts"))


def playlist(uris: list[str], header: str = "") -> bytes:
    lines = ["#EXTM3U", "#EXT-X-VERSION:3", "#EXT-X-TARGETDURATION:2", *filter(None, [header])]
    for uri in uris:
        lines += ["#EXTINF:1.0,", uri]
    return ("\n".join(lines + ["#EXT-X-ENDLIST", ""])).encode()


def serve_playlist(server: MediaServer, uris: list[str], name: str = "/live.m3u8", header: str = "") -> str:
    server.routes[name] = (200, {"Content-Type": "application/vnd.apple.mpegurl"}, playlist(uris, header))
    return server.url(name)


# --- HTTP redirects -----------------------------------------------------------------


@pytest.mark.parametrize("status", [301, 302, 307])
def test_a_redirect_to_a_denied_address_is_refused_at_that_hop_and_never_connected(allowed, denied, status):
    uri = allowed.redirect("/start.mp4", denied.url("/clip.mp4"), status)
    reason = refusal(uri)
    assert reason == f"refused {denied.url('/clip.mp4')}: address {DENIED} is in denied network {DENIED}/32"
    assert denied.connections == 0
    assert allowed.paths == ["/start.mp4"]


def test_a_chain_of_three_redirects_is_checked_hop_by_hop(allowed, denied):
    allowed.redirect("/hop2", allowed.url("/hop3"), 301)
    allowed.redirect("/hop3", denied.url("/clip.mp4"), 307)
    uri = allowed.redirect("/hop1", allowed.url("/hop2"), 302)
    assert refusal(uri).startswith(f"refused {denied.url('/clip.mp4')}: address {DENIED}")
    assert allowed.paths == ["/hop1", "/hop2", "/hop3"]
    assert denied.connections == 0


def test_a_redirect_to_https_on_a_denied_address_is_refused_before_the_tunnel(allowed, denied):
    port = denied.server_address[1]
    uri = allowed.redirect("/start.mp4", f"https://{DENIED}:{port}/clip.mp4")
    assert refusal(uri) == f"refused https://{DENIED}:{port}: address {DENIED} is in denied network {DENIED}/32"
    assert denied.connections == 0


def test_redirects_to_the_same_or_another_allowed_host_still_play(media, allowed):
    other = MediaServer(OTHER_ALLOWED, media)
    try:
        allowed.redirect("/moved.mp4", "/clip.mp4", 301)  # same host, relative Location
        allowed.redirect("/elsewhere.mp4", other.url("/clip.mp4"), 302)
        for path in ("/clip.mp4", "/moved.mp4", "/elsewhere.mp4"):
            decoder = open_job(allowed.url(path))
            try:
                assert sum(1 for _ in decoder.container.demux()) > 50
            finally:
                decoder.close()
        assert other.connections >= 1
    finally:
        other.close()


def test_a_password_in_a_refused_hop_is_redacted(allowed, denied):
    with_password = denied.url("/clip.mp4").replace("http://", "http://admin:s3cret@")
    assert refusal(with_password).startswith(f"refused http://admin:***@{DENIED}:")
    reason = refusal(allowed.redirect("/start.mp4", with_password))
    assert reason.startswith("refused http://") and "s3cret" not in reason
    assert denied.connections == 0


# --- DNS rebinding ------------------------------------------------------------------


def _resolver(monkeypatch, answers: dict[str, list[str]]):
    """Python's lookups of each name get the next answer of its list (the last one repeats)."""
    real = socket.getaddrinfo
    asked: dict[str, int] = {}

    def getaddrinfo(host, port, *args, **kwargs):
        if host not in answers:
            return real(host, port, *args, **kwargs)
        index = asked[host] = asked.get(host, -1) + 1
        address = answers[host][min(index, len(answers[host]) - 1)]
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port or 0))]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return asked


def test_a_name_that_resolves_to_an_allowed_then_a_denied_address_is_refused_without_connecting(
        media, monkeypatch):
    here = MediaServer(ALLOWED, media)
    there = MediaServer(DENIED, media, port=here.server_address[1])  # same port: only the address differs
    try:
        asked = _resolver(monkeypatch, {"cam.test": [ALLOWED, DENIED]})
        reason = refusal(f"http://cam.test:{here.server_address[1]}/clip.mp4")
        assert reason.endswith(f"host 'cam.test' resolves to {DENIED}, in denied network {DENIED}/32")
        assert asked["cam.test"] >= 1  # the name was looked up again, and that answer was checked
        assert there.connections == 0
    finally:
        here.close()
        there.close()


def test_ffmpeg_connects_to_the_address_that_was_checked_not_to_its_own_lookup(media, monkeypatch):
    # libc (FFmpeg's resolver) says localhost is 127.0.0.1; the checked lookup says 127.0.0.3.
    # 127.0.0.1 is denied here: only a connection to the checked address can get the clip.
    checked = MediaServer(OTHER_ALLOWED, media)
    libc_answer = MediaServer(ALLOWED, media, port=checked.server_address[1])
    try:
        _resolver(monkeypatch, {"localhost": [OTHER_ALLOWED]})
        decoder = open_job(f"http://localhost:{checked.server_address[1]}/clip.mp4",
                           deny_networks=[*DEFAULT_DENY_NETWORKS, f"{ALLOWED}/32"])
        decoder.close()
        assert set(checked.paths) == {"/clip.mp4"}
        assert libc_answer.connections == 0
    finally:
        checked.close()
        libc_answer.close()


# --- playlists ----------------------------------------------------------------------


def test_an_hls_playlist_on_allowed_hosts_plays(media, allowed):
    uri = serve_playlist(allowed, [allowed.url(f"/{name}") for name in segments(media)])
    decoder = open_job(uri)
    try:
        assert decoder.container.format.name == "hls"
        assert sum(1 for _ in decoder.container.demux()) > 50
    finally:
        decoder.close()
    assert set(allowed.paths) >= {"/live.m3u8", *(f"/{name}" for name in segments(media))}


@pytest.mark.parametrize("where", ["segment", "variant playlist", "key", "init section"])
def test_hls_entries_on_a_denied_host_are_refused_and_never_fetched(media, allowed, denied, where):
    names = segments(media)
    own = [allowed.url(f"/{name}") for name in names]
    if where == "segment":
        uri = serve_playlist(allowed, [denied.url(f"/{names[0]}"), *own[1:]])
    elif where == "variant playlist":
        serve_playlist(denied, [denied.url(f"/{name}") for name in names])
        master = f"#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=500000\n{denied.url('/live.m3u8')}\n".encode()
        allowed.routes["/master.m3u8"] = (200, {}, master)
        uri = allowed.url("/master.m3u8")
    elif where == "key":
        uri = serve_playlist(allowed, own, header=f'#EXT-X-KEY:METHOD=AES-128,URI="{denied.url("/key")}"')
    else:
        uri = serve_playlist(allowed, own, header=f'#EXT-X-MAP:URI="{denied.url("/init.mp4")}"')
    reason = refusal(uri)
    assert reason.startswith(f"refused {denied.url('/')}"), reason
    assert denied.connections == 0


def test_a_denied_segment_met_while_decoding_is_refused_and_skipped(media, allowed, denied):
    # After the open, FFmpeg fetches segments as it goes: the proxy still refuses the hop.
    names = segments(media)
    own = [allowed.url(f"/{name}") for name in names]
    decoder = open_job(serve_playlist(allowed, [*own[:-1], denied.url(f"/{names[-1]}")]))
    try:
        packets = sum(1 for _ in decoder.container.demux())
    finally:
        decoder.close()
    assert packets > 0
    assert [str(r) for r in decoder.egress.refusals()] == [
        f"refused {denied.url('/' + names[-1])}: address {DENIED} is in denied network {DENIED}/32"]
    assert denied.connections == 0


def test_a_file_segment_in_a_network_playlist_is_refused_and_never_read(media, allowed, tmp_path):
    secret = ForbiddenFile(tmp_path / "secret.ts")
    try:
        uri = serve_playlist(allowed, [f"file://{secret.path}", allowed.url("/s0.ts")])
        reason = refusal(uri, file_roots=[str(tmp_path)])  # even inside the roots
        assert reason == "refused a file: URL: protocol 'file' is not allowed here"
        # A bare path is a URL relative to the playlist's: a request to the same allowed server.
        uri = serve_playlist(allowed, [str(secret.path), allowed.url("/s0.ts")], name="/bare.m3u8")
        open_job(uri, file_roots=[str(tmp_path)]).close()
        assert str(secret.path) in allowed.paths
        time.sleep(0.2)
        assert not secret.opened.is_set()
    finally:
        secret.release()


def test_a_local_playlist_may_not_name_files_at_all(media, tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    secret = ForbiddenFile(tmp_path / "secret.ts")
    try:
        (root / "list.m3u8").write_bytes(playlist([str(secret.path), str(media / "s0.ts")]))
        reason = refusal(str(root / "list.m3u8"), file_roots=[str(root)])
        assert reason.endswith("demuxer 'hls' is not allowed (it can open other files or URLs)")
        time.sleep(0.2)
        assert not secret.opened.is_set()
    finally:
        secret.release()


def test_a_concat_list_served_over_http_or_from_a_root_is_refused_and_opens_nothing(
        media, allowed, denied, tmp_path):
    secret = ForbiddenFile(tmp_path / "secret.ts")
    try:
        listing = f"ffconcat version 1.0\nfile s0.ts\nfile {denied.url('/s1.ts')}\nfile {secret.path}\n"
        allowed.routes["/list.ffconcat"] = (200, {}, listing.encode())
        assert "demuxer 'concat' is not allowed" in refusal(allowed.url("/list.ffconcat"))
        (tmp_path / "list.ffconcat").write_text(listing)
        assert "demuxer 'concat' is not allowed" in refusal(str(tmp_path / "list.ffconcat"),
                                                           file_roots=[str(tmp_path)])
        time.sleep(0.2)
        assert denied.connections == 0
        assert not secret.opened.is_set()
    finally:
        secret.release()


# --- FFmpeg's own protocols ---------------------------------------------------------


@pytest.mark.parametrize("uri", [
    "concat:{root}/s0.ts|{root}/s1.ts",
    "subfile,,start,0,end,0,,:{root}/s0.ts",
    "data:video/mp2t;base64,R0AREAAA",
    "pipe:0",
    "file:{root}/../egress-outside.ts",
    "crypto:{root}/s0.ts",
    "tcp://127.0.0.1:9/",
    "udp://127.0.0.2:9",
])
def test_ffmpeg_protocols_that_open_other_inputs_are_refused_even_when_the_policy_allows_them(media, uri):
    uri = uri.format(root=media)
    schemes = ["file", "http", "https", "concat", "subfile", "data", "pipe", "crypto", "tcp", "udp"]
    reason = refusal(uri, allowed_schemes=schemes, file_roots=[str(media)])
    assert reason.startswith("refused "), reason
    assert "has no egress guard" in reason or "outside the file roots" in reason


def test_a_network_job_opens_only_the_protocols_its_schemes_need(allowed):
    decoder = open_job(allowed.url("/clip.mp4"), allowed_schemes=["http"])
    decoder.close()
    options = decoder.egress.options
    assert options["protocol_whitelist"] == "http,tcp,crypto"
    assert options["http_proxy"].startswith("http://127.0.0.1:")
    assert "hls" in options["format_whitelist"].split(",")
    assert "concat" not in options["format_whitelist"].split(",")


def test_https_is_refused_when_only_http_is_allowed(allowed, denied):
    port = allowed.server_address[1]
    uri = allowed.redirect("/start.mp4", f"https://{ALLOWED}:{port}/clip.mp4")
    with pytest.raises(StreamOpenError):  # FFmpeg's whitelist has no https: it does not even try
        open_job(uri, allowed_schemes=["http"]).close()
    assert allowed.paths == ["/start.mp4"]


def test_no_proxy_in_the_environment_fails_closed(allowed, monkeypatch):
    monkeypatch.setenv("no_proxy", ALLOWED)  # FFmpeg would connect past the proxy
    assert "no_proxy" in refusal(allowed.url("/clip.mp4"))
    assert allowed.connections == 0


# --- RTSP, RTMP ---------------------------------------------------------------------


def _rtsp_reply(status: str, extra: str = ""):
    def reply(request: bytes) -> bytes:
        cseq = next((line for line in request.split(b"\r\n") if line.lower().startswith(b"cseq")), b"CSeq: 1")
        return f"RTSP/1.0 {status}\r\n".encode() + cseq + f"\r\n{extra}Content-Length: 0\r\n\r\n".encode()
    return reply


@pytest.mark.parametrize("status, header", [
    ("302 Moved", "Location: {to}"),
    ("301 Moved", "location:{to}"),
    ("305 Use Proxy", "  LOCATION : {to}"),
    ("302 Moved", "Loc\rat\rion: {to}"),  # FFmpeg drops every \r of a line
])
def test_an_rtsp_redirect_to_a_denied_address_is_refused_and_never_followed(status, header):
    forbidden = TcpRecorder(DENIED, reply=_rtsp_reply("200 OK"))
    location = header.format(to=f"rtsp://{DENIED}:{forbidden.port}/x")
    camera = TcpRecorder(ALLOWED, reply=_rtsp_reply(status, location + "\r\n"))
    try:
        reason = refusal(f"rtsp://admin:s3cret@{ALLOWED}:{camera.port}/stream1")
        assert reason.startswith(f"refused rtsp://admin:***@{ALLOWED}:{camera.port}/stream1: the RTSP server "
                                 f"redirects to rtsp://{DENIED}:{forbidden.port}/x"), reason
        assert camera.connections == 1 and camera.received[0].startswith(b"OPTIONS rtsp://")
        assert forbidden.connections == 0
    finally:
        camera.close()
        forbidden.close()


def test_rtsp_goes_over_tcp_to_the_checked_address(monkeypatch):
    checked, libc_answer = twin_recorders(OTHER_ALLOWED, ALLOWED, reply=_rtsp_reply("404 Not Found"))
    try:
        _resolver(monkeypatch, {"camera.test": [OTHER_ALLOWED]})
        with pytest.raises(StreamOpenError):
            open_job(f"rtsp://camera.test:{checked.port}/stream1", {"rtsp_transport": "tcp"})
        assert checked.connections == 1 and b"OPTIONS rtsp://" in checked.received[0]
        assert libc_answer.connections == 0
    finally:
        checked.close()
        libc_answer.close()


def test_rtmp_is_pinned_to_the_checked_address(monkeypatch):
    checked, libc_answer = twin_recorders(OTHER_ALLOWED, ALLOWED)
    try:
        _resolver(monkeypatch, {"localhost": [OTHER_ALLOWED]})
        with pytest.raises(StreamOpenError):  # the recorder does not speak RTMP
            open_job(f"rtmp://localhost:{checked.port}/live/key", deny_networks=[f"{ALLOWED}/32"])
        assert checked.connections >= 1
        assert libc_answer.connections == 0
    finally:
        checked.close()
        libc_answer.close()


# --- bytes from the media topic -----------------------------------------------------


def test_media_segment_bytes_cannot_make_ffmpeg_open_anything(media, tmp_path, monkeypatch):
    # Bytes from the media topic are demuxed from a file-like object: an SDP among them would
    # make FFmpeg bind the UDP ports it names, an ffconcat list read files of the working folder.
    cfg = load_config(None, [], environ={})
    secret = ForbiddenFile(tmp_path / "secret.ts")
    monkeypatch.chdir(tmp_path)
    sdp = (f"v=0\r\no=- 0 0 IN IP4 {DENIED}\r\ns=x\r\nc=IN IP4 {DENIED}\r\nt=0 0\r\n"
           f"m=video 5004 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\n").encode()
    try:
        for data in (sdp, b"ffconcat version 1.0\nfile secret.ts\n", playlist([f"http://{DENIED}:9/s0.ts"])):
            decoder = MediaDecoder("seg-1", "kafka://media/seg-1", cfg, source=io.BytesIO(data))
            with pytest.raises(StreamOpenError):
                decoder.open()
        time.sleep(0.2)
        assert not secret.opened.is_set()
    finally:
        secret.release()
    decoder = MediaDecoder("seg-2", "kafka://media/seg-2", cfg, source=io.BytesIO((media / "s0.ts").read_bytes()))
    decoder.open()
    assert decoder.container.format.name == "mpegts"
    decoder.close()


def test_operator_uris_are_not_guarded(media):
    # `avfuse replay` opens what the operator names, outside any root.
    cfg = load_config(None, [], environ={})
    decoder = MediaDecoder("replay-1", str(media / "clip.mp4"), cfg)
    decoder.open()
    assert decoder.egress is None
    decoder.close()



def test_srt_is_pinned_and_may_only_call(monkeypatch):
    # PyAV's FFmpeg has no libsrt: the plan the guard hands to FFmpeg is what can be checked.
    _resolver(monkeypatch, {"encoder.test": [OTHER_ALLOWED]})
    policy = UriPolicy(deny_networks=(*DEFAULT_DENY_NETWORKS, f"{DENIED}/32"))
    guard = egress.EgressGuard.start(policy, "srt://encoder.test:9000?latency=200", {})
    assert guard.uri == f"srt://{OTHER_ALLOWED}:9000?latency=200"
    assert guard.options["protocol_whitelist"] == "srt"
    for uri in ("srt://encoder.test:9000?mode=listener", "srt://encoder.test:9000?mode=rendezvous"):
        with pytest.raises(UriRefused):
            egress.EgressGuard.start(policy, uri, {})
    with pytest.raises(UriRefused):
        egress.EgressGuard.start(policy, f"srt://{DENIED}:9000", {})
