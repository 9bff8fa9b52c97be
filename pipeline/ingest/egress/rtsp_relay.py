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

from pipeline.ingest.egress.loopback_server import LoopbackServer
from pipeline.ingest.egress.proxy import IDLE_TIMEOUT_S, HopRefused, connect_checked, pump
from pipeline.ingest.egress.uri_policy import IPAddress, redact

log = logging.getLogger("avfuse.egress")

# FFmpeg's ff_rtsp_parse_line: av_stristart(line, "Location:"); spaces allowed here too, to be safe.
_LOCATION = re.compile(rb"\n[ \t]*location[ \t]*:[ \t]*([^\n]*)", re.IGNORECASE)
_CARRY_BYTES = 256  # more than "\nLocation:" and some of its value


class RtspRelay(LoopbackServer):
    """Listens on 127.0.0.1:``port`` until ``close()``; every connection goes to ``addresses``
    (already checked) on ``upstream_port``. ``hop`` names the server in refusals."""

    def __init__(self, addresses: list[IPAddress], upstream_port: int, hop: str, stream_id: str | None = None):
        self.addresses, self.upstream_port, self.hop, self.stream_id = addresses, upstream_port, hop, stream_id
        self.refusals: list[HopRefused] = []
        super().__init__(backlog=8, thread_name="avfuse-rtsp-relay", conn_thread_name="avfuse-rtsp-conn")

    def _serve(self, client: socket.socket) -> None:
        upstream = connect_checked(self.addresses, self.upstream_port)
        try:
            if upstream is None or not self._track(upstream):
                return
            client.settimeout(IDLE_TIMEOUT_S)
            upstream.settimeout(IDLE_TIMEOUT_S)
            requests = threading.Thread(target=pump, args=(client, upstream), name="avfuse-rtsp-requests",
                                        daemon=True)
            requests.start()
            self._pump_server(upstream, client)
        except (OSError, ValueError) as exc:
            log.debug("rtsp relay connection ended: %s", exc, extra={"stream_id": self.stream_id})
        finally:
            self._forget(upstream)

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
