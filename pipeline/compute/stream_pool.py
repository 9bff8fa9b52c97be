"""A bounded pool of idle stream actors, so that a stream's start costs no new process.

Starting an actor spawns (or claims) a worker process and imports PyAV and the
pipeline in it: a quarter to half a second of a core per stream, measured on the
60 s benchmark clip, which is most of a short file's start-up. The pool keeps up to
``size`` finished stream actors and hands them to the next streams. An actor goes back
only if it still answers (``reset``), so one that died with its stream (OOM killer,
lost node) is never handed out again. Segmented (Kafka media) stream actors are not
pooled: their bytes may arrive before the stream's first call (see StreamActor).
"""

from __future__ import annotations

import asyncio
import logging

import ray

from pipeline.compute.stream_actor import StreamActor
from pipeline.compute.stream_runner import OperatorHandles
from pipeline.core.config import Config

log = logging.getLogger("avfuse.runtime")

# A healthy actor answers reset at once.
RESET_TIMEOUT_S = 10.0


class StreamPool:
    def __init__(self, cfg: Config, operators: OperatorHandles, size: int):
        self.cfg, self.operators, self.size = cfg, operators, size
        self._idle: list = []
        self.started = 0  # actors (processes) this pool has started, for the reuse test and the benchmark

    def _new(self, **stream):
        self.started += 1
        return StreamActor.options(num_cpus=self.cfg.runtime.decode_cpus).remote(self.cfg, self.operators, **stream)

    def prestart(self, count: int = 1) -> None:
        """Start idle actors ahead of the first streams (their imports overlap model loading)."""
        while len(self._idle) < min(count, self.size):
            self._idle.append(self._new())

    def take(self):
        """A stream actor for the next stream (its ``run`` names the stream): an idle one if there is
        one, else a new one."""
        return self._idle.pop() if self._idle else self._new()

    def segmented(self, stream_id: str, uri: str, resume=None):
        """An actor of its own for a stream whose bytes the caller feeds (``resume``: from its checkpoint)."""
        return self._new(stream_id=stream_id, uri=uri, segmented=True, resume=resume)

    async def give_back(self, actor) -> None:
        """Keep a finished stream's actor for the next stream if it is healthy and there is room."""
        if len(self._idle) < self.size:
            try:
                await asyncio.wait_for(actor.reset.remote(), RESET_TIMEOUT_S)
            except (ray.exceptions.RayError, asyncio.TimeoutError):
                log.debug("a stream actor did not answer its reset; not reused", exc_info=True)
            except BaseException:  # cancelled (Ctrl-C): no one will hand it out again
                kill(actor)
                raise
            else:
                self._idle.append(actor)
                return
        kill(actor)

    def shutdown(self) -> None:
        while self._idle:
            kill(self._idle.pop())


def kill(actor) -> None:
    try:
        ray.kill(actor)
    except Exception:  # a cluster that is gone took the actor with it
        log.debug("could not kill a stream actor", exc_info=True)
