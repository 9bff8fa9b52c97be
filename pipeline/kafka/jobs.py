"""Job messages from the ``avfuse.jobs`` topic, parsed into typed jobs.

A message value is a JSON object::

    {"stream_id": "cam-01", "uri": "rtsp://10.0.0.5/stream1", "options": {"rtsp_transport": "tcp"}}
    {"stream_id": "cam-02", "uri": "http://10.0.0.6/live.m3u8", "options": {"live.stall_s": 3, "live.max_outage_s": 600}}
    {"stream_id": "cam-01", "action": "stop"}

``action`` defaults to "start". Parsing is strict: a typo in a key fails with a
reason instead of starting a stream with a setting silently ignored. Parsing does
not judge the URI (``pipeline.ingest.egress.uri_policy`` does), but it refuses the FFmpeg open
options that would let a job reach past the policy (``check_open_option``). Options named
``live.<key>`` are the job's own ``live`` settings (``LiveConfig``: reconnect, stall, backoff,
max outage), checked like the config's; they set how a source reconnects, never what it may reach.
"""

from __future__ import annotations

import json
import math
import unicodedata
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from pipeline.core.config import LiveConfig
from pipeline.ingest.egress.guard import RESERVED_OPTION_PREFIX

LIVE_OPTION_PREFIX = "live."

MAX_JOB_BYTES = 64 * 1024  # jobs are a few hundred bytes; anything near this is a mistake
MAX_STREAM_ID_CHARS = 200
_ECHO_CHARS = 80
_KEYS_BY_ACTION = {
    "start": ("stream_id", "action", "uri", "options"),
    "stop": ("stream_id", "action"),
}
# FFmpeg open options a job may not set: each would let it reach what the URI policy
# and the egress guard (pipeline/ingest/egress/guard.py) refuse, read local files, make avfuse listen
# on a port, or send requests with side effects. The guard sets the first group itself.
_REFUSED_OPTIONS = frozenset({
    "protocol_whitelist", "protocol_blacklist", "format_whitelist", "http_proxy",  # the guard's own
    "method", "post_data", "chunked_post", "send_expect_100",  # http: POST and the like, not GET
    "allowed_extensions", "allowed_segment_extensions", "extension_picky", "seg_format_options",  # hls
    "enable_drefs", "use_absolute_path", "safe",  # mov external references, concat lists
    "ca_file", "cafile", "cert_file", "key_file", "external_sock",  # tls: local files, foreign sockets
    "rtmp_swfverify",  # fetches a URL of its own
    "listen_timeout", "mode",  # listening (http/tls/rtmp listen, srt listener)
})
# Options a job may set to these values only (the guard relies on them).
_OPTION_VALUES = {
    "rtsp_transport": ("tcp",),  # UDP would let the server name where RTP goes (Transport: source=)
    "listen": ("0",),
}
# Control and format characters, lone surrogates and line/paragraph separators:
# a stream id is a Kafka key, a label and a log field, and must stay one clean line.
_BAD_ID_CATEGORIES = ("Cc", "Cf", "Cs", "Zl", "Zp")


class BadJob(ValueError):
    """A job message that cannot be run; ``reason`` is one short line.

    ``stream_id`` is set when the message named a usable one, so the refusal can
    be reported on that stream. Reasons never echo the raw message or the URI,
    which may hold credentials.
    """

    def __init__(self, reason: str, stream_id: str | None = None):
        super().__init__(reason)
        self.reason = reason
        self.stream_id = stream_id

    def __reduce__(self):
        return type(self), (self.reason, self.stream_id)


@dataclass(frozen=True)
class StartJob:
    stream_id: str
    uri: str
    options: dict[str, str]  # FFmpeg open options, e.g. {"rtsp_transport": "tcp", "timeout": "5000000"}
    live: dict[str, Any] | None = None  # the job's live.* settings, over the config's (None: none given)


@dataclass(frozen=True)
class StopJob:
    stream_id: str


def parse_job(value: bytes | None) -> StartJob | StopJob:
    """Parse one message value or raise ``BadJob``."""
    body = _decode(value)
    stream_id = _stream_id(body)
    action = body.get("action", "start")
    if not isinstance(action, str) or action not in _KEYS_BY_ACTION:
        raise BadJob(f"action must be 'start' or 'stop', got {_echo(action)}", stream_id)
    allowed = _KEYS_BY_ACTION[action]
    for key in body:
        if key not in allowed:
            if any(key in keys for keys in _KEYS_BY_ACTION.values()):
                raise BadJob(f"key {_echo(key)} does not apply to action {action!r}", stream_id)
            raise BadJob(f"unknown key {_echo(key)} (expected: {', '.join(allowed)})", stream_id)
    if action == "stop":
        return StopJob(stream_id=stream_id)
    options = _options(body, stream_id)
    live = {name[len(LIVE_OPTION_PREFIX):]: options.pop(name) for name in list(options)
            if name.startswith(LIVE_OPTION_PREFIX)}
    return StartJob(stream_id=stream_id, uri=_uri(body, stream_id), options=options,
                    live=_live_settings(live, stream_id) if live else None)


def _live_settings(settings: dict[str, str], stream_id: str) -> dict[str, Any]:
    """A job's live.* options, typed and checked as the config's live section is."""
    try:
        checked = LiveConfig.model_validate({key: None if value == "null" else value
                                             for key, value in settings.items()})
    except ValidationError as exc:
        problem = exc.errors()[0]
        where = ".".join(str(part) for part in problem["loc"])
        raise BadJob(f"options[{_echo('live.' + where)}]: {problem['msg']}", stream_id) from None
    return checked.model_dump(include=set(settings))


def _decode(value: bytes | None) -> dict[str, Any]:
    if not value:
        raise BadJob("message has no value")
    if len(value) > MAX_JOB_BYTES:
        raise BadJob(f"message is {len(value)} bytes (limit {MAX_JOB_BYTES})")
    try:
        text = bytes(value).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadJob(f"message is not valid UTF-8 (byte {exc.start})") from None
    try:
        body = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constants)
    except json.JSONDecodeError as exc:
        raise BadJob(f"message is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except RecursionError:
        raise BadJob("message is not valid JSON: nested too deeply") from None
    except BadJob:
        raise
    except ValueError as exc:  # e.g. an integer past Python's digit limit
        raise BadJob(f"message is not valid JSON: {_echo(str(exc))}") from None
    if not isinstance(body, dict):
        raise BadJob(f"message must be a JSON object, got {_json_type(body)}")
    return body


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # json.loads keeps the last of two equal keys; two "uri"s is a producer bug.
    body: dict[str, Any] = {}
    for key, item in pairs:
        if key in body:
            raise BadJob(f"duplicate key {_echo(key)}")
        body[key] = item
    return body


def _no_constants(name: str) -> Any:
    raise BadJob(f"message is not valid JSON: {name} is not a number")


def _stream_id(body: dict[str, Any]) -> str:
    if "stream_id" not in body:
        raise BadJob("stream_id is missing")
    stream_id = body["stream_id"]
    if not isinstance(stream_id, str):
        raise BadJob(f"stream_id must be a string, got {_json_type(stream_id)}")
    if not stream_id.strip():
        raise BadJob("stream_id is empty")
    if len(stream_id) > MAX_STREAM_ID_CHARS:
        raise BadJob(f"stream_id is {len(stream_id)} characters (limit {MAX_STREAM_ID_CHARS})")
    if any(unicodedata.category(ch) in _BAD_ID_CATEGORIES for ch in stream_id):
        raise BadJob(f"stream_id {_echo(stream_id)} contains control characters")
    return stream_id


def _uri(body: dict[str, Any], stream_id: str) -> str:
    if "uri" not in body:
        raise BadJob("start job has no uri", stream_id)
    uri = body["uri"]
    if not isinstance(uri, str):
        raise BadJob(f"uri must be a string, got {_json_type(uri)}", stream_id)
    if not uri.strip():
        raise BadJob("uri is empty", stream_id)
    return uri


def _options(body: dict[str, Any], stream_id: str) -> dict[str, str]:
    options = body.get("options", {})
    if not isinstance(options, dict):
        raise BadJob(f"options must be an object, got {_json_type(options)}", stream_id)
    as_strings = {}
    for name, item in options.items():
        if not name:
            raise BadJob("options has an empty option name", stream_id)
        if isinstance(item, bool):
            # "1"/"0", not "true": FFmpeg parses many on/off options as integers.
            as_strings[name] = "1" if item else "0"
        elif isinstance(item, (int, float)):
            if isinstance(item, float) and not math.isfinite(item):
                raise BadJob(f"options[{_echo(name)}] is not a finite number", stream_id)
            as_strings[name] = str(item)
        elif isinstance(item, str):
            as_strings[name] = item
        else:
            raise BadJob(f"options[{_echo(name)}] must be a string, number or bool, "
                         f"got {_json_type(item)}", stream_id)
        problem = None if name.startswith(LIVE_OPTION_PREFIX) else check_open_option(name, as_strings[name])
        if problem:
            raise BadJob(problem, stream_id)
    return as_strings


def check_open_option(name: str, value: str) -> str | None:
    """Why a job may not pass FFmpeg open option ``name=value``, or None."""
    if name in _REFUSED_OPTIONS or name.startswith(RESERVED_OPTION_PREFIX):
        return f"open option {_echo(name)} is not allowed in a job"
    if name == "rtsp_flags" and "listen" in value:
        return "open option 'rtsp_flags' may not contain 'listen' in a job"
    allowed = _OPTION_VALUES.get(name)
    if allowed is not None and value not in allowed:
        return f"open option {_echo(name)} may only be {' or '.join(map(repr, allowed))} in a job"
    return None


def _json_type(item: Any) -> str:
    if item is None:
        return "null"
    if isinstance(item, bool):
        return "bool"
    if isinstance(item, (int, float)):
        return "number"
    if isinstance(item, str):
        return "string"
    if isinstance(item, list):
        return "array"
    return "object"


def _echo(item: Any) -> str:
    # repr keeps a reason on one line whatever the input holds.
    text = repr(item)
    return text if len(text) <= _ECHO_CHARS else text[: _ECHO_CHARS - 3] + "..."
