"""The Kafka sink's broker-free contract: which topic each record goes to, the headers that
name its schema, and the connection settings, with secrets unwrapped only for the client."""

from __future__ import annotations

import pytest

from pipeline.core.config import ConfigError, KafkaConfig, config_to_yaml, load_config
from pipeline.kafka.sink import client_security, headers_for, topic_for
from pipeline.output.records import (
    RECORD_TYPES,
    DeadLetter,
    Error,
    Event,
    StreamEnd,
    StreamStart,
    Summary,
    Transcript,
    Window,
)

TOPICS = {"jobs": "t.jobs", "media": "t.media", "events": "t.events", "summaries": "t.summaries",
          "errors": "t.errors", "windows": "t.windows", "progress": "t.progress", "transcripts": "t.transcripts",
          "dead": "t.dead"}


def _records() -> dict[str, object]:
    return {
        "event": Event(stream_id="cam-01", label="scene_cut", start_s=3.0, end_s=3.0, confidence=0.9,
                       detector="scene_cut", detector_version="1.0.0"),
        "error": Error(stream_id="cam-01", stage="decode", reason="corrupt packet"),
        "window": Window(stream_id="cam-01", index=0, start_s=0.0, end_s=2.0, video_tokens=8, audio_tokens=20,
                         missing=[], fusion="concat", embedding=[0.0, 1.0]),
        "summary": Summary(stream_id="cam-01", final=True, processed_s=12.0, wall_s=3.0, speed_x_realtime=4.0,
                           counts_by_label={}, silence_s=1.0, black_s=1.5, frozen_s=2.5, speech_s=0.0, scenes=2,
                           windows=6,
                           partial_windows=0, top_moments=[]),
        "stream_start": StreamStart(stream_id="cam-01", uri="file:///c.mp4", started_at=1.0, duration_s=12.0,
                                    video=None, audio=None),
        "stream_end": StreamEnd(stream_id="cam-01", status="ok", reason=None, processed_s=12.0, wall_s=3.0,
                                events=5, frames_decoded=300, frames_kept=48, decode_errors=0),
        "transcript": Transcript(stream_id="cam-01", transcript_id="4c19df7b-c5fe-5f32-a96e-b3168724c55e",
                                 start_s=1.0, end_s=2.5, text="Hello.", language="en", language_probability=1.0,
                                 words=[], avg_logprob=-0.1, no_speech_prob=0.0, model="tiny.en"),
        "dead_letter": DeadLetter(stream_id="cam-01", reason="its stream actor died", attempts=4,
                                  input={"topic": "t.jobs", "partition": 0, "offset": 3}),
    }


@pytest.mark.parametrize("record_type, topic", [
    ("event", "t.events"),
    ("error", "t.errors"),
    ("window", "t.windows"),
    ("summary", "t.summaries"),
    ("stream_start", "t.summaries"),
    ("stream_end", "t.summaries"),
    ("transcript", "t.transcripts"),
    ("dead_letter", "t.dead"),
])
def test_each_record_type_goes_to_its_configured_topic(record_type, topic):
    cfg = KafkaConfig(topics=TOPICS)

    assert topic_for(_records()[record_type], cfg) == topic


def test_default_topics_keep_record_kinds_apart():
    cfg = KafkaConfig()
    topics = {kind: topic_for(record, cfg) for kind, record in _records().items()}

    assert len({topics["event"], topics["error"], topics["window"], topics["summary"], topics["transcript"]}) == 5
    assert topics["stream_start"] == topics["stream_end"] == topics["summary"]


@pytest.mark.parametrize("record_type", ["event", "error", "window", "summary", "stream_start", "stream_end",
                                         "transcript"])
def test_headers_name_the_schema_its_version_and_json_content(record_type):
    headers = headers_for(_records()[record_type])

    assert dict(headers) == {"schema": f"avfuse.{record_type}".encode(),
                             "schema_version": str(RECORD_TYPES[record_type].version).encode(),
                             "content-type": b"application/json"}
    assert all(isinstance(key, str) and isinstance(value, bytes) for key, value in headers)


def test_plaintext_connection_has_no_sasl_or_ssl_settings():
    settings = client_security(KafkaConfig(bootstrap_servers="k1:9092,k2:9092"))

    assert settings == {"bootstrap_servers": ["k1:9092", "k2:9092"], "bootstrap_timeout_ms": 30000,
                        "security_protocol": "PLAINTEXT"}


def test_sasl_settings_pass_through_with_the_password_unwrapped():
    cfg = KafkaConfig(security={"protocol": "SASL_PLAINTEXT", "sasl_mechanism": "SCRAM-SHA-512",
                                "sasl_username": "avfuse", "sasl_password": "s3cret"})

    settings = client_security(cfg)

    assert settings["security_protocol"] == "SASL_PLAINTEXT"
    assert settings["sasl_mechanism"] == "SCRAM-SHA-512"
    assert settings["sasl_plain_username"] == "avfuse"
    assert settings["sasl_plain_password"] == "s3cret"
    assert not any(key.startswith("ssl_") for key in settings)  # no TLS on a plaintext connection


def test_ssl_settings_pass_through_with_the_key_password_unwrapped():
    cfg = KafkaConfig(security={"protocol": "SASL_SSL", "sasl_mechanism": "PLAIN", "sasl_username": "u",
                                "sasl_password": "s3cret", "ssl_cafile": "/etc/ca.pem",
                                "ssl_certfile": "/etc/client.pem", "ssl_keyfile": "/etc/client.key",
                                "ssl_password": "k3y-pass", "ssl_check_hostname": False})

    settings = client_security(cfg)

    assert settings["security_protocol"] == "SASL_SSL"
    assert settings["sasl_plain_password"] == "s3cret"
    assert settings["ssl_cafile"] == "/etc/ca.pem"
    assert settings["ssl_certfile"] == "/etc/client.pem"
    assert settings["ssl_keyfile"] == "/etc/client.key"
    assert settings["ssl_password"] == "k3y-pass"
    assert settings["ssl_check_hostname"] is False


def test_ssl_without_a_key_password_passes_none():
    settings = client_security(KafkaConfig(security={"protocol": "SSL", "ssl_cafile": "/etc/ca.pem"}))

    assert settings["ssl_cafile"] == "/etc/ca.pem"
    assert settings["ssl_password"] is None
    assert settings["ssl_check_hostname"] is True
    assert "sasl_mechanism" not in settings


def test_secrets_stay_wrapped_in_the_config_itself():
    cfg = load_config(None, ["kafka.security.sasl_password=s3cret", "kafka.security.ssl_password=k3y-pass"],
                      environ={})

    assert "s3cret" not in repr(cfg) and "s3cret" not in str(cfg.kafka.security)
    assert "k3y-pass" not in repr(cfg)
    assert cfg.kafka.security.sasl_password.get_secret_value() == "s3cret"


def test_print_config_never_shows_a_password_from_set_or_environment():
    cfg = load_config(None, ["kafka.security.sasl_password=s3cret", "kafka.security.protocol=SASL_SSL",
                             "kafka.security.sasl_mechanism=PLAIN"],
                      environ={"AVFUSE__KAFKA__SECURITY__SSL_PASSWORD": "k3y-pass"})

    printed = config_to_yaml(cfg)

    assert "s3cret" not in printed
    assert "k3y-pass" not in printed
    assert "sasl_password:" in printed and "ssl_password:" in printed  # masked, not missing
    assert "SASL_SSL" in printed  # the rest of the section is printed as usual


def test_a_bad_password_value_is_refused_without_echoing_it():
    with pytest.raises(ConfigError) as raised:
        load_config(None, ["kafka.security.sasl_password=[s3cret]"], environ={})

    assert "sasl_password" in str(raised.value)
    assert "s3cret" not in str(raised.value)
