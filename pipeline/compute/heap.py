"""Hand freed heap memory back to the system now and then, in the long-lived actors.

glibc's malloc keeps what a process freed in its arenas for reuse; a process whose allocations
vary in size (decoded frames, token batches, operator tensors) holds on to more of those pages
as hours go by, which its RSS counts although nothing is leaked. ``malloc_trim(0)`` returns the
free pages at the top of each arena and the wholly free ones inside it. It takes milliseconds,
so it runs at most every ``every_s`` seconds, from calls the actor makes anyway.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import time

_libc = None


def _malloc_trim():
    global _libc
    if _libc is None:
        name = ctypes.util.find_library("c")
        _libc = ctypes.CDLL(name) if name else False
    return getattr(_libc, "malloc_trim", None) if _libc else None


class HeapTrimmer:
    def __init__(self, every_s: float = 60.0):
        self.every_s = every_s
        self._next = time.monotonic() + every_s
        self._trim = _malloc_trim()  # None off glibc (musl, macOS): nothing to do

    def maybe_trim(self) -> None:
        if self._trim is None or self.every_s <= 0:
            return
        now = time.monotonic()
        if now >= self._next:
            self._next = now + self.every_s
            self._trim(0)
