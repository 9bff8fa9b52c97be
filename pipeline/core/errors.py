"""Typed errors. Each carries the stream id and a one-line reason for the user;
tracebacks belong in debug logs only."""


class AvfuseError(Exception):
    def __init__(self, stream_id: str | None, reason: str):
        super().__init__(reason)
        self.stream_id = stream_id
        self.reason = reason

    def __reduce__(self):
        # Errors cross process boundaries (Ray); rebuild them from both fields.
        return type(self), (self.stream_id, self.reason)

    def __str__(self) -> str:
        return f"[{self.stream_id}] {self.reason}" if self.stream_id else self.reason


class StreamOpenError(AvfuseError):
    """The input could not be opened as media (missing, not media, no streams)."""


class OpenRefusedError(StreamOpenError):
    """The URI policy refused the input (or a hop of it): trying again cannot help."""


class StreamFailedError(AvfuseError):
    """A stream broke while running (truncated input, an actor died)."""


class StreamActorLost(StreamFailedError):
    """A stream's actor died (the OOM killer, a lost node) while its cluster lives on: transient,
    the service runs the stream again (``kafka.max_stream_retries``)."""


class OperatorLoadError(AvfuseError):
    """An operator could not be built from the config (e.g. a checkpoint that disagrees with it)."""


class ServiceError(AvfuseError):
    """The Kafka service cannot go on (broker unreachable at start, a transaction failed)."""


class ClusterLost(AvfuseError):
    """The shared operator actors no longer answer (the head restarted, their worker is gone):
    this process cannot rebuild them. The stream it ends is not done: it runs again after a
    restart of the service."""


def one_line(exc: BaseException, with_type: bool = False) -> str:
    """The first line of an exception's message, what a user reads: its type name when it has none,
    and before it with ``with_type`` (for errors whose message alone does not say what failed)."""
    text = str(exc).strip().splitlines()
    if with_type:
        return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")
    return text[0] if text else type(exc).__name__
