"""A TCP listener on loopback that serves each connection on its own thread until ``close()``.

The common part of the guard's helpers that FFmpeg connects to instead of the
real server (``EgressProxy``, ``RtspRelay``): a listening socket, an accepting
thread, one thread per connection, and a record of every socket open on their
behalf so that ``close()`` can end them all, including any blocked reading.

It binds 127.0.0.1 only, on a port the kernel picks: nothing outside this host
can connect to it, so it never becomes a way into the networks the policy keeps
jobs out of.

Threads: one accepting, one per connection; all daemons, ended by ``close()``.
"""

from __future__ import annotations

import socket
import threading
from abc import ABC, abstractmethod


class LoopbackServer(ABC):
    """Listens on 127.0.0.1:``port`` until ``close()``; ``_serve(client)`` handles each connection.

    ``backlog``: connections the kernel may queue before ``accept``; ``thread_name`` names the
    accepting thread, ``conn_thread_name`` each connection's (``thread_name``-conn by default).
    A subclass sets its own attributes before calling ``__init__``: connections are accepted
    from the moment it returns.
    """

    def __init__(self, backlog: int, thread_name: str, conn_thread_name: str | None = None):
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._closed = False
        self._conn_thread_name = conn_thread_name or f"{thread_name}-conn"
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            self._listener.bind(("127.0.0.1", 0))
            self._listener.listen(backlog)
        except OSError:
            self._listener.close()
            raise
        self.port: int = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, name=thread_name, daemon=True).start()

    def close(self) -> None:
        """Stop listening and close every tracked socket (waking threads blocked on them)."""
        with self._lock:
            self._closed = True
            sockets = list(self._open)
        close_quietly(self._listener)
        for sock in sockets:
            close_quietly(sock)

    @abstractmethod
    def _serve(self, client: socket.socket) -> None:
        """Handle one accepted connection, on its own thread; ``client`` is closed when this returns.

        Any other socket it opens goes through ``_track`` (and ``_forget`` when done)."""

    def _track(self, *socks: socket.socket) -> bool:
        """Record ``socks`` for ``close()``; False once closed, and then they are closed here."""
        with self._lock:
            if not self._closed:
                self._open.update(socks)
                return True
        # Closed: a socket opened while close() ran would otherwise outlive it.
        for sock in socks:
            close_quietly(sock)
        return False

    def _forget(self, *socks: socket.socket | None) -> None:
        """Close ``socks`` (None is skipped) and drop them from the record."""
        for sock in socks:
            if sock is not None:
                with self._lock:
                    self._open.discard(sock)
                close_quietly(sock)

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # closed
            if not self._track(client):
                return
            threading.Thread(target=self._handle, args=(client,), name=self._conn_thread_name,
                             daemon=True).start()

    def _handle(self, client: socket.socket) -> None:
        try:
            self._serve(client)
        finally:
            self._forget(client)


def close_quietly(sock: socket.socket) -> None:
    """Shut down, then close: a close alone would not wake another thread blocked reading it."""
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass
