"""A bounded pool of idle decode actors, so that a stream's start costs no new process.

Starting an actor spawns (or claims) a worker process and imports PyAV and the
pipeline in it: a quarter to half a second of a core per stream, measured on the
60 s benchmark clip, which is most of a short file's start-up. The pool keeps up to
``size`` finished decoders and hands them to the next streams. A decoder goes back
only if it still answers (``reset``), so one that died with its stream (OOM killer,
lost node) is never handed out again. Segmented (Kafka media) decoders are not
pooled: their bytes may arrive before the stream's first call (see DecodeActor).
"""

from __future__ import annotations

import asyncio
import logging

import ray

from pipeline.compute.actors import DecodeActor
from pipeline.core.config import Config

log = logging.getLogger("avfuse.runtime")

# A healthy decoder answers reset at once, after the few chunk requests still queued.
RESET_TIMEOUT_S = 10.0


class DecoderPool:
    def __init__(self, cfg: Config, size: int):
        self.cfg = cfg
        self.size = size
        self._idle: list = []

    def _new(self, **stream):
        return DecodeActor.options(num_cpus=self.cfg.runtime.decode_cpus).remote(self.cfg, **stream)

    def prestart(self, count: int = 1) -> None:
        """Start idle decoders ahead of the first streams (their imports overlap model loading)."""
        while len(self._idle) < min(count, self.size):
            self._idle.append(self._new())

    def take(self, stream_id: str, uri: str, open_options: dict[str, str] | None = None):
        """A decoder started on this stream: an idle one if there is one, else a new one."""
        if not self._idle:
            return self._new(stream_id=stream_id, uri=uri, open_options=open_options)
        decoder = self._idle.pop()
        decoder.start.remote(stream_id, uri, open_options)  # runs before any call made after it
        return decoder

    async def give_back(self, decoder) -> None:
        """Keep a finished stream's decoder for the next stream if it is healthy and there is room."""
        if len(self._idle) < self.size:
            try:
                await asyncio.wait_for(decoder.reset.remote(), RESET_TIMEOUT_S)
            except (ray.exceptions.RayError, asyncio.TimeoutError):
                log.debug("a decoder did not answer its reset; not reused", exc_info=True)
            except BaseException:  # cancelled (Ctrl-C): no one will hand it out again
                kill(decoder)
                raise
            else:
                self._idle.append(decoder)
                return
        kill(decoder)

    def shutdown(self) -> None:
        while self._idle:
            kill(self._idle.pop())


def kill(decoder) -> None:
    try:
        ray.kill(decoder)
    except Exception:  # a cluster that is gone took the actor with it
        log.debug("could not kill a decoder", exc_info=True)
