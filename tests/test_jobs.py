"""Job messages: well-formed jobs parse into StartJob / StopJob; anything else is a
BadJob with a short one-line reason that names the problem and leaks nothing."""

from __future__ import annotations

import json
import pickle

import pytest

from pipeline.kafka.jobs import MAX_JOB_BYTES, BadJob, StartJob, StopJob, parse_job


def _job(**body) -> bytes:
    return json.dumps(body).encode()


def _refusal(value: bytes | None) -> BadJob:
    with pytest.raises(BadJob) as caught:
        parse_job(value)
    return caught.value


def test_start_job_carries_uri_and_options():
    job = parse_job(_job(stream_id="cam-01", action="start", uri="rtsp://10.0.0.5/stream1",
                         options={"rtsp_transport": "tcp"}))
    assert job == StartJob(stream_id="cam-01", uri="rtsp://10.0.0.5/stream1",
                           options={"rtsp_transport": "tcp"})


def test_action_defaults_to_start_and_options_to_empty():
    assert parse_job(_job(stream_id="cam-01", uri="/srv/a.mp4")) == StartJob("cam-01", "/srv/a.mp4", {})


def test_stop_job_needs_only_a_stream_id():
    assert parse_job(_job(stream_id="cam-01", action="stop")) == StopJob("cam-01")


def test_option_scalars_become_the_strings_ffmpeg_expects():
    job = parse_job(_job(stream_id="cam-01", uri="rtsp://cam/s", options={
        "rtsp_transport": "tcp", "timeout": 5000000, "analyzeduration": 0.5,
        "reconnect": True, "listen": False,
    }))
    assert job.options == {"rtsp_transport": "tcp", "timeout": "5000000", "analyzeduration": "0.5",
                           "reconnect": "1", "listen": "0"}


@pytest.mark.parametrize("value, reason", [
    (None, "message has no value"),
    (b"", "message has no value"),
    (b"\xff\xfe{}", "message is not valid UTF-8 (byte 0)"),
    (b'{"stream_id": "cam-01",', "message is not valid JSON: Expecting property name enclosed in double quotes"),
    (b"[1, 2]", "message must be a JSON object, got array"),
    (b'"cam-01"', "message must be a JSON object, got string"),
    (b"null", "message must be a JSON object, got null"),
    (b'{"uri": "/a.mp4"}', "stream_id is missing"),
    (b'{"stream_id": 7, "uri": "/a.mp4"}', "stream_id must be a string, got number"),
    (b'{"stream_id": "", "uri": "/a.mp4"}', "stream_id is empty"),
    (b'{"stream_id": "  ", "uri": "/a.mp4"}', "stream_id is empty"),
    (b'{"stream_id": "cam\\n01", "uri": "/a.mp4"}', "stream_id 'cam\\n01' contains control characters"),
    (b'{"stream_id": "cam-01", "action": "restart"}', "action must be 'start' or 'stop', got 'restart'"),
    (b'{"stream_id": "cam-01", "action": null}', "action must be 'start' or 'stop', got None"),
    (b'{"stream_id": "cam-01", "urii": "/a.mp4"}', "unknown key 'urii' (expected: stream_id, action, uri, options)"),
    (b'{"stream_id": "cam-01", "action": "stop", "uri": "/a.mp4"}', "key 'uri' does not apply to action 'stop'"),
    (b'{"stream_id": "cam-01"}', "start job has no uri"),
    (b'{"stream_id": "cam-01", "uri": ["/a.mp4"]}', "uri must be a string, got array"),
    (b'{"stream_id": "cam-01", "uri": ""}', "uri is empty"),
    (b'{"stream_id": "cam-01", "uri": "/a.mp4", "options": ["tcp"]}', "options must be an object, got array"),
    (b'{"stream_id": "cam-01", "uri": "/a.mp4", "options": {"timeout": null}}',
     "options['timeout'] must be a string, number or bool, got null"),
    (b'{"stream_id": "cam-01", "uri": "/a.mp4", "options": {"x": {"y": 1}}}',
     "options['x'] must be a string, number or bool, got object"),
    (b'{"stream_id": "cam-01", "uri": "/a.mp4", "options": {"": "1"}}', "options has an empty option name"),
    (b'{"stream_id": "cam-01", "uri": "/a.mp4", "options": {"timeout": NaN}}',
     "message is not valid JSON: NaN is not a number"),
    (b'{"stream_id": "cam-01", "uri": "/a.mp4", "options": {"timeout": 1e999}}',
     "options['timeout'] is not a finite number"),
    (b'{"stream_id": "cam-01", "uri": "/a.mp4", "uri": "/b.mp4"}', "duplicate key 'uri'"),
])
def test_malformed_job_messages_give_one_line_reasons(value, reason):
    refused = _refusal(value)
    assert refused.reason.startswith(reason)
    assert len(refused.reason.splitlines()) == 1
    assert len(refused.reason) <= 120


def test_stream_ids_are_limited_in_length_and_to_printable_characters():
    assert parse_job(_job(stream_id="c" * 200, action="stop")) == StopJob("c" * 200)
    assert _refusal(_job(stream_id="c" * 201, action="stop")).reason == "stream_id is 201 characters (limit 200)"
    for sneaky in ("cam\x00", "cam\x1b[31m", "cam\u200b01", "cam\u202e10", "cam\u2028", "cam\ud800"):
        reason = _refusal(_job(stream_id=sneaky, action="stop")).reason
        assert reason.endswith("contains control characters"), repr(sneaky)
        assert len(reason.splitlines()) == 1


def test_long_input_echoes_are_truncated():
    long_key = "k" * 5000
    reason = _refusal(_job(stream_id="cam-01", uri="/a.mp4", **{long_key: 1})).reason
    assert reason.startswith("unknown key 'kkk")
    assert "..." in reason
    assert len(reason) < 160
    assert len(_refusal(_job(stream_id="cam-01", action="x" * 5000)).reason) < 120


def test_oversized_messages_are_refused_before_parsing():
    value = _job(stream_id="cam-01", uri="/a.mp4", options={"headers": "x" * MAX_JOB_BYTES})
    assert _refusal(value).reason == f"message is {len(value)} bytes (limit {MAX_JOB_BYTES})"


def test_reasons_never_echo_the_message_or_the_uri():
    uri = "rtsp://admin:s3cret@10.0.0.5/stream1"
    for value in (
        _job(stream_id="cam-01", uri=uri, options={"timeout": None}),
        _job(stream_id="cam-01", uri=uri, urii=uri),
        _job(stream_id="cam-01", uri=uri, action="stop"),
        json.dumps({"stream_id": "cam-01", "uri": uri})[:-1].encode(),  # truncated JSON
        b'{"stream_id": "cam-01", "uri": "' + uri.encode() + b'", "uri": "x"}',
    ):
        assert "s3cret" not in _refusal(value).reason


def test_refusal_carries_the_stream_id_once_it_is_known():
    assert _refusal(_job(stream_id="cam-01", urii="/a.mp4")).stream_id == "cam-01"
    assert _refusal(_job(stream_id="cam-01", uri=5)).stream_id == "cam-01"
    assert _refusal(_job(uri="/a.mp4")).stream_id is None
    assert _refusal(b"not json").stream_id is None


def test_bad_job_survives_pickling_across_processes():
    refused = _refusal(_job(stream_id="cam-01", urii="/a.mp4"))
    copy = pickle.loads(pickle.dumps(refused))
    assert (type(copy), copy.reason, copy.stream_id) == (BadJob, refused.reason, "cam-01")
    assert isinstance(copy, ValueError)


@pytest.mark.parametrize("name, value", [
    ("protocol_whitelist", "file,http,tcp"),
    ("protocol_blacklist", ""),
    ("format_whitelist", "concat"),
    ("http_proxy", "http://10.0.0.1:3128"),
    ("method", "POST"),
    ("post_data", "x"),
    ("allowed_extensions", "ALL"),
    ("allowed_segment_extensions", "ALL"),
    ("extension_picky", "0"),
    ("seg_format_options", "enable_drefs=1"),
    ("enable_drefs", "1"),
    ("use_absolute_path", "1"),
    ("safe", "0"),
    ("ca_file", "/etc/shadow"),
    ("key_file", "/etc/ssl/private/key.pem"),
    ("rtmp_swfverify", "http://169.254.169.254/"),
    ("avfuse.egress_guard", "0"),
])
def test_options_that_widen_what_a_job_reaches_are_refused(name, value):
    refused = _refusal(_job(stream_id="cam-01", uri="http://cdn.example/a.m3u8", options={name: value}))
    assert refused.reason == f"open option {name!r} is not allowed in a job"
    assert refused.stream_id == "cam-01"


@pytest.mark.parametrize("name, value, reason", [
    ("rtsp_transport", "udp", "open option 'rtsp_transport' may only be 'tcp' in a job"),
    ("listen", True, "open option 'listen' may only be '0' in a job"),
    ("rtsp_flags", "listen", "open option 'rtsp_flags' may not contain 'listen' in a job"),
])
def test_options_the_egress_guard_relies_on_keep_their_safe_values(name, value, reason):
    assert _refusal(_job(stream_id="cam-01", uri="rtsp://cam/s", options={name: value})).reason == reason
    safe = {"rtsp_transport": "tcp", "listen": False, "rtsp_flags": "prefer_tcp"}[name]
    assert parse_job(_job(stream_id="cam-01", uri="rtsp://cam/s", options={name: safe})).options


def test_options_that_only_tune_the_open_are_kept():
    options = {"timeout": "5000000", "user_agent": "avfuse", "headers": "Authorization: Bearer x\r\n",
               "reconnect": "1", "tls_verify": "1", "analyzeduration": "1000000", "max_redirects": "2"}
    assert parse_job(_job(stream_id="cam-01", uri="https://cdn.example/a.m3u8", options=options)).options == options


def test_live_options_are_the_jobs_own_live_settings_not_ffmpegs():
    job = parse_job(_job(stream_id="cam", uri="rtsp://10.0.0.5/s",
                         options={"live.stall_s": 3, "live.max_outage_s": 600, "live.reconnect": "always",
                                  "rtsp_transport": "tcp"}))
    assert job.live == {"stall_s": 3.0, "max_outage_s": 600.0, "reconnect": "always"}
    assert job.options == {"rtsp_transport": "tcp"}
    assert parse_job(_job(stream_id="cam", uri="rtsp://10.0.0.5/s")).live is None


@pytest.mark.parametrize("name, value", [("live.stall_s", -1), ("live.reconnect", "sometimes"),
                                         ("live.no_such_key", 1), ("live.max_outage_s", "soon")])
def test_live_options_are_checked_as_the_config_is(name, value):
    with pytest.raises(BadJob, match=r"options\[.live\."):
        parse_job(_job(stream_id="cam", uri="rtsp://10.0.0.5/s", options={name: value}))
