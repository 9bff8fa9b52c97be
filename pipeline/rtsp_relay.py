"""A loopback relay for one guarded RTSP open: FFmpeg talks to it, it talks to the checked address.

FFmpeg's RTSP client follows a server's 3xx reply (``Location: rtsp://elsewhere``)
by connecting wherever it names, resolving that name itself, and no FFmpeg
option turns this off. So the guard points FFmpeg at this relay
(``rtsp://user@127.0.0.1:PORT/path``); the relay connects to an address the policy
already checked and passes bytes both ways unchanged, except that it ends the
connection, and records a refusal, as soon as the server's bytes hold a
``Location`` header: FFmpeg takes a redirect's target from no other place. The
check reads the server's bytes as FFmpeg does (lines end at ``\n``, a ``\r``
anywhere is dropped, any status line counts), not as RTSP says they should be,
so no spelling FFmpeg would obey gets through; it runs over the whole stream,
interleaved RTP included, with a carry-over so a header split between reads is
still seen before its end is passed on.

The request URLs FFmpeg sends then name the relay (127.0.0.1:PORT) instead of the
camera; RTSP servers route by path, and digest authentication covers the URL
FFmpeg sent, so both still work.
"""

from __future__ import annotations

import logging
import re
import socket
import threading

from pipeline.egress_proxy import IDLE_TIMEOUT_S, HopRefused, close_quietly, connect_checked
from pipeline.uri_policy import IPAddress, redact

log = logging.getLogger("avfuse.egress")

# FFmpeg's ff_rtsp_parse_line: av_stristart(line, "Location:"); spaces allowed here too, to be safe.
_LOCATION = re.compile(rb"\n[ \t]*location[ \t]*:[ \t]*([^\n]*)", re.IGNORECASE)
_CARRY_BYTES = 256  # more than "\nLocation:" and some of its value


class RtspRelay:
    """Listens on 127.0.0.1:``port`` until ``close()``; every connection goes to ``addresses``
    (already checked) on ``upstream_port``. ``hop`` names the server in refusals."""

    def __init__(self, addresses: list[IPAddress], upstream_port: int, hop: str, stream_id: str | None = None):
        self.addresses, self.upstream_port, self.hop, self.stream_id = addresses, upstream_port, hop, stream_id
        self.refusals: list[HopRefused] = []
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._closed = False
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(8)
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, name="avfuse-rtsp-relay", daemon=True).start()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            sockets = list(self._open)
        close_quietly(self._listener)
        for sock in sockets:
            close_quietly(sock)

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), name="avfuse-rtsp-conn", daemon=True).start()

    def _track(self, *socks: socket.socket) -> bool:
        with self._lock:
            if self._closed:
                return False
            self._open.update(socks)
            return True

    def _serve(self, client: socket.socket) -> None:
        upstream = connect_checked(self.addresses, self.upstream_port)
        try:
            if upstream is None or not self._track(client, upstream):
                return
            client.settimeout(IDLE_TIMEOUT_S)
            upstream.settimeout(IDLE_TIMEOUT_S)
            requests = threading.Thread(target=_pump_raw, args=(client, upstream), name="avfuse-rtsp-requests",
                                        daemon=True)
            requests.start()
            self._pump_server(upstream, client)
        except (OSError, ValueError) as exc:
            log.debug("rtsp relay connection ended: %s", exc, extra={"stream_id": self.stream_id})
        finally:
            with self._lock:
                self._open.difference_update((client, upstream))
            for sock in (client, upstream):
                if sock is not None:
                    close_quietly(sock)

    def _pump_server(self, upstream: socket.socket, client: socket.socket) -> None:
        """Pass the server's bytes on until they end or hold a Location header."""
        tail = b"\n"  # the stream starts at the start of a line
        while True:
            data = upstream.recv(65536)
            if not data:
                return
            window = (tail + data).replace(b"\r", b"")  # FFmpeg drops every \r when it reads a line
            found = _LOCATION.search(window)
            if found:
                self._refuse(found.group(1))
                return
            client.sendall(data)
            tail = (tail + data)[-_CARRY_BYTES:]

    def _refuse(self, location: bytes) -> None:
        where = location.decode("latin-1", "replace").strip() or "an empty location"
        refused = HopRefused(self.hop, f"the RTSP server redirects to {redact(where)[:120]}, "
                                       f"and redirects are not followed")
        with self._lock:
            self.refusals.append(refused)
        log.warning("%s", refused, extra={"stream_id": self.stream_id, "stage": "egress"})


def _pump_raw(src: socket.socket, dst: socket.socket) -> None:
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

