"""A forward HTTP proxy on loopback that lets one guarded open reach only what the URI policy allows.

FFmpeg is told to use it (``http_proxy``) for every HTTP request of the open:
the job's URL, each redirect it follows, and each URL a playlist names (HLS
variants, segments, keys). Plain HTTP arrives as an absolute-form request
(``GET http://host/path``), HTTPS as ``CONNECT host:443``. For each one the proxy
resolves the host once, checks every address (``UriPolicy.check_host``) and
connects to a checked address itself, so a second lookup cannot answer
differently (DNS rebinding). A refused hop is answered 403 and recorded in
``refusals``; nothing is sent towards it.

One request per client connection: the upstream request says
``Connection: close`` and so does the response relayed back, so a request on a
kept-alive connection can never ride on a connection checked for another host.
TLS stays end to end (a CONNECT tunnel is relayed byte for byte).

Threads: one accepting, one per connection (two for a tunnel); all daemons,
ended by ``close()`` (``LoopbackServer``).
"""

from __future__ import annotations

import logging
import socket
import threading
from urllib.parse import urlsplit

from pipeline.ingest.egress.loopback_server import LoopbackServer, close_quietly
from pipeline.ingest.egress.uri_policy import HostUnresolved, IPAddress, UriPolicy, UriRefused, redact

log = logging.getLogger("avfuse.egress")

MAX_HEAD_BYTES = 64 * 1024  # request or response line plus headers
CONNECT_TIMEOUT_S = 10.0
HEAD_TIMEOUT_S = 30.0
# A live stream may pause while the pipeline catches up; a dead one is ended by FFmpeg's own timeout.
IDLE_TIMEOUT_S = 300.0
_HOP_BY_HOP = ("connection", "proxy-connection", "keep-alive", "proxy-authorization", "proxy-authenticate",
               "te", "trailer", "upgrade")
_SHOWN_CHARS = 160


class HopRefused(Exception):
    """One connection the policy refused: ``hop`` names it (no password), ``reason`` says why."""

    def __init__(self, hop: str, reason: str):
        super().__init__(f"refused {hop}: {reason}")
        self.hop, self.reason = hop, reason


class EgressProxy(LoopbackServer):
    """Serves on ``url`` (http://127.0.0.1:PORT) until ``close()``.

    ``schemes``: the URL schemes requests may use ("http" for absolute-form GETs,
    "https" for CONNECT tunnels). ``refusals`` lists every refused hop, oldest first.
    """

    def __init__(self, policy: UriPolicy, stream_id: str | None = None, schemes: tuple[str, ...] = ("http", "https")):
        self.policy, self.stream_id, self.schemes = policy, stream_id, schemes
        self.refusals: list[HopRefused] = []
        super().__init__(backlog=64, thread_name="avfuse-egress-proxy", conn_thread_name="avfuse-egress-conn")
        self.url = f"http://127.0.0.1:{self.port}"

    # -- connections -----------------------------------------------------------------

    def _serve(self, client: socket.socket) -> None:
        upstream = None
        try:
            client.settimeout(HEAD_TIMEOUT_S)
            head, rest = _read_head(client)
            if head is None:
                return
            request_line, headers = _parse_head(head)
            parts = request_line.split(" ")
            if len(parts) != 3:
                return _reply(client, 400, "bad request line")
            method, target, _version = parts
            if method == "CONNECT":
                upstream = self._connect_tunnel(client, target)
                if upstream is not None:
                    client.settimeout(IDLE_TIMEOUT_S)
                    upstream.settimeout(IDLE_TIMEOUT_S)
                    if rest:
                        upstream.sendall(rest)
                    _splice(client, upstream)
                return
            upstream = self._forward(client, method, target, headers, rest)
        except (OSError, ValueError) as exc:
            log.debug("egress proxy connection ended: %s", exc, extra={"stream_id": self.stream_id})
        finally:
            self._forget(upstream)

    def _connect_tunnel(self, client: socket.socket, target: str) -> socket.socket | None:
        host, _, port_text = target.rpartition(":")
        host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
        hop = f"https://{target}"
        if not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
            _reply(client, 400, "CONNECT needs host:port")
            return None
        if "https" not in self.schemes:
            return self._refuse(client, hop, "scheme 'https' is not allowed")
        return self._open_upstream(client, hop, host, int(port_text), on_open=lambda: client.sendall(
            b"HTTP/1.1 200 Connection established\r\n\r\n"))

    def _forward(self, client: socket.socket, method: str, target: str, headers: list[tuple[str, str]],
                 rest: bytes) -> socket.socket | None:
        try:
            url = urlsplit(target)
            host, port = url.hostname, (url.port if url.port is not None else 80)
        except ValueError:
            _reply(client, 400, "bad URL")
            return None
        if url.scheme.lower() != "http" or not host or not port:
            # Origin-form requests ("GET /x") are for servers, not proxies: never guessed at.
            _reply(client, 400, "a proxy request needs an absolute http:// URL")
            return None
        hop = _shown(redact(target))
        if "http" not in self.schemes:
            return self._refuse(client, hop, "scheme 'http' is not allowed")
        names = {name.lower() for name, _ in headers}
        if "transfer-encoding" in names:
            _reply(client, 400, "request bodies must have a Content-Length")
            return None
        upstream = self._open_upstream(client, hop, host, port)
        if upstream is None:
            return None
        path = url.path or "/"
        if url.query:
            path += "?" + url.query
        lines = [f"{method} {path} HTTP/1.1"]
        if "host" not in names:
            lines.append(f"Host: {url.netloc.rpartition('@')[2]}")
        lines += [f"{name}: {value}" for name, value in headers if name.lower() not in _HOP_BY_HOP]
        lines.append("Connection: close")
        upstream.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        length = next((int(v) for n, v in headers if n.lower() == "content-length" and v.strip().isdigit()), 0)
        _send_body(client, upstream, rest, length)
        upstream.settimeout(IDLE_TIMEOUT_S)
        client.settimeout(IDLE_TIMEOUT_S)
        head, body = _read_head(upstream)
        if head is None:
            return upstream
        status_line, response_headers = _parse_head(head)
        out = [status_line] + [f"{n}: {v}" for n, v in response_headers if n.lower() not in _HOP_BY_HOP]
        out.append("Connection: close")
        client.sendall(("\r\n".join(out) + "\r\n\r\n").encode("latin-1") + body)
        while True:
            data = upstream.recv(65536)
            if not data:
                return upstream
            client.sendall(data)

    def _open_upstream(self, client: socket.socket, hop: str, host: str, port: int,
                       on_open=None) -> socket.socket | None:
        try:
            addresses = self.policy.check_host(host)
        except HostUnresolved as exc:
            _reply(client, 502, exc.reason)
            return None
        except UriRefused as exc:
            return self._refuse(client, hop, exc.reason)
        upstream = connect_checked(addresses, port)
        if upstream is None:
            _reply(client, 502, f"cannot connect to {host}:{port}")
            return None
        if not self._track(upstream):
            return None
        if on_open is not None:
            on_open()
        return upstream

    def _refuse(self, client: socket.socket, hop: str, reason: str) -> None:
        refused = HopRefused(hop, reason)
        with self._lock:
            self.refusals.append(refused)
        log.warning("%s", refused, extra={"stream_id": self.stream_id, "stage": "egress"})
        _reply(client, 403, str(refused))
        return None


def connect_checked(addresses: list[IPAddress], port: int) -> socket.socket | None:
    """A connection to the first of ``addresses`` that answers: addresses, never names."""
    for address in addresses:
        family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.settimeout(CONNECT_TIMEOUT_S)
        try:
            sock.connect((str(address), port))
            return sock
        except OSError:
            close_quietly(sock)
    return None


def _read_head(sock: socket.socket) -> tuple[bytes | None, bytes]:
    """The bytes up to the blank line ending a message head, and whatever came after them."""
    data = b""
    while b"\r\n\r\n" not in data:
        if len(data) > MAX_HEAD_BYTES:
            raise ValueError("message head too long")
        chunk = sock.recv(65536)
        if not chunk:
            return None, b""
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    return head, rest


def _parse_head(head: bytes) -> tuple[str, list[tuple[str, str]]]:
    lines = head.decode("latin-1").split("\r\n")
    headers = []
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        if not colon or not name.strip() or name != name.strip():
            raise ValueError("malformed header line")
        headers.append((name, value.strip()))
    return lines[0], headers


def _send_body(client: socket.socket, upstream: socket.socket, rest: bytes, length: int) -> None:
    body, left = rest[:length], length - min(len(rest), length)
    if body:
        upstream.sendall(body)
    while left > 0:
        chunk = client.recv(min(left, 65536))
        if not chunk:
            raise ValueError("request body ended early")
        upstream.sendall(chunk)
        left -= len(chunk)


def pump(src: socket.socket, dst: socket.socket) -> None:
    """Pass ``src``'s bytes to ``dst`` unchanged until ``src`` ends, then shut both down
    (so the pump the other way ends too)."""
    try:
        while True:
            data = src.recv(65536)
            if not data:
                break
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for sock in (src, dst):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def _splice(a: socket.socket, b: socket.socket) -> None:
    """Relay both ways until either side closes."""
    other = threading.Thread(target=pump, args=(b, a), name="avfuse-egress-tunnel", daemon=True)
    other.start()
    pump(a, b)
    other.join(IDLE_TIMEOUT_S)


def _reply(sock: socket.socket, status: int, text: str) -> None:
    words = {400: "Bad Request", 403: "Forbidden", 502: "Bad Gateway"}[status]
    body = (text + "\n").encode("utf-8", "replace")
    try:
        sock.sendall(f"HTTP/1.1 {status} {words}\r\nContent-Type: text/plain; charset=utf-8\r\n"
                     f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body)
    except OSError:
        pass


def _shown(text: str) -> str:
    return text if len(text) <= _SHOWN_CHARS else text[: _SHOWN_CHARS - 3] + "..."
