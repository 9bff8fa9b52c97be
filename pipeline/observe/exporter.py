"""The node's one scrape target: /metrics, /healthz and /readyz on one port.

/metrics merges the samples every avfuse process of this node wrote (see
``pipeline/observe/metrics.py``). /healthz answers 200 while the process is alive and,
in the service, its event loop turns (503 once it has not for 30 s: a liveness probe then
restarts a frozen process; a broker outage does not freeze it).
/readyz answers 200 once every readiness check passed (Ray connected, operators
warmed up, Kafka connected where configured) and 503 with the failing checks
otherwise, so Kubernetes sends no work before the pipeline can take it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST

from pipeline.observe import metrics

log = logging.getLogger("avfuse.exporter")


class Readiness:
    """Named checks, each not ready until set; thread-safe."""

    def __init__(self, *checks: str, stalled_after_s: float = 30.0):
        self._lock = threading.Lock()
        self._state: dict[str, str | None] = {name: "not yet" for name in checks}
        self._stalled_after_s = stalled_after_s
        self._last_beat: float | None = None  # None until the service's loop runs: starting is alive

    def beat(self) -> None:
        """The service's event loop is running (it beats every second)."""
        self._last_beat = time.monotonic()

    def stalled_s(self) -> float | None:
        """Seconds since the loop's last beat, once that is past ``stalled_after_s`` (else None)."""
        if self._last_beat is None:
            return None
        since = time.monotonic() - self._last_beat
        return since if since > self._stalled_after_s else None

    def set(self, check: str, ready: bool, reason: str = "not ready") -> None:
        with self._lock:
            self._state[check] = None if ready else reason

    def failing(self) -> dict[str, str]:
        with self._lock:
            return {name: reason for name, reason in self._state.items() if reason is not None}


class Exporter:
    """``collect`` makes the /metrics body (default: this node's folder, ``metrics.collect``)."""

    def __init__(self, port: int, readiness: Readiness, host: str = "0.0.0.0",
                 collect: Callable[[], bytes] = metrics.collect):
        self.readiness = readiness
        exporter = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    self._reply(200, collect(), CONTENT_TYPE_LATEST)
                elif path == "/healthz":
                    # Alive while the loop turns; a broker outage is not a reason to restart us.
                    stalled = exporter.readiness.stalled_s()
                    if stalled is None:
                        self._reply(200, b"ok\n")
                    else:
                        self._reply(503, f"event loop stalled for {stalled:.0f} s\n".encode())
                elif path == "/readyz":
                    failing = exporter.readiness.failing()
                    body = "".join(f"{name}: {why}\n" for name, why in failing.items()) or "ready\n"
                    self._reply(503 if failing else 200, body.encode())
                else:
                    self._reply(404, b"not found: try /metrics, /healthz or /readyz\n")

            def _reply(self, status: int, body: bytes, content_type: str = "text/plain; charset=utf-8") -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, fmt: str, *args) -> None:  # scrapes every 15 s are not news
                log.debug(fmt, *args)

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name="avfuse-exporter", daemon=True)

    def start(self) -> "Exporter":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
