"""Output records: every record type serialises to JSON that its schema accepts,
and the schemas reject what they must."""

from __future__ import annotations

import json
import uuid
from importlib import resources

import pytest
from jsonschema import Draft202012Validator

from pipeline.output.records import (
    RECORD_TYPES,
    DeadLetter,
    Discontinuity,
    Error,
    Event,
    Signals,
    SourceState,
    StreamEnd,
    StreamStart,
    Summary,
    Transcript,
    Window,
    event_id,
    schema_for,
    transcript_id,
)


def _event(**overrides) -> Event:
    kwargs = dict(
        stream_id="cam-01",
        label="scene_cut",
        start_s=12.345,
        end_s=12.345,
        confidence=0.87,
        detector="scene_cut",
        detector_version="1.0.0",
        attributes={"histogram_distance": 0.52},
    )
    kwargs.update(overrides)
    return Event(**kwargs)


def _samples():
    top = _event()
    silence = _event(label="silence", start_s=3.0, end_s=4.25, confidence=0.99, detector="silence",
                     attributes={"mean_dbfs": -61.2})
    return {
        "stream_start": StreamStart(
            stream_id="cam-01",
            uri="rtsp://10.0.0.5/stream1",
            started_at=1_760_000_000.25,
            duration_s=None,
            video={"codec": "h264", "width": 1280, "height": 720, "avg_fps": 25.0},
            audio={"codec": "aac", "sample_rate_hz": 48000, "channels": 2},
        ),
        "event": top,
        "summary": Summary(
            stream_id="cam-01",
            final=False,
            processed_s=30.0,
            wall_s=7.5,
            speed_x_realtime=4.0,
            counts_by_label={"scene_cut": 3, "silence": 1},
            silence_s=1.25,
            black_s=0.0,
            frozen_s=0.0,
            speech_s=12.5,
            scenes=4,
            windows=29,
            partial_windows=2,
            top_moments=[
                {"label": e.label, "start_s": e.start_s, "end_s": e.end_s, "confidence": e.confidence,
                 "event_id": e.event_id}
                for e in (silence, top)
            ],
        ),
        "stream_end": StreamEnd(
            stream_id="cam-01",
            status="ok",
            reason=None,
            processed_s=61.04,
            wall_s=15.2,
            events=9,
            frames_decoded=1526,
            frames_kept=245,
            decode_errors=0,
        ),
        "error": Error(
            stream_id="cam-01",
            stage="decode",
            reason="corrupt packet at 41.2 s skipped",
            uri="rtsp://10.0.0.5/stream1",
            fatal=False,
            at=1_760_000_041.7,
        ),
        "transcript": _transcript(),
        "source_state": SourceState("cam-01", "retrying", "eof", "Connection refused", 41.2, 3, 4.2,
                                    at=1_760_000_045.9),
        "discontinuity": Discontinuity("cam-01", "eof", "the source stopped sending", 41.2, 47.0, 5.8, 4, 5.8,
                                       at=1_760_000_047.5),
        "window": Window(
            stream_id="cam-01",
            index=7,
            start_s=7.0,
            end_s=9.0,
            video_tokens=8,
            audio_tokens=0,
            missing=["audio"],
            fusion="cross_attention",
            embedding=[0.01 * i for i in range(16)],
            signals={"peak_luma": 0.71, "peak_luma_s": 8.25, "peak_dbfs": None, "peak_dbfs_s": None},
        ),
        "dead_letter": DeadLetter("cam-01", "its stream actor died (OOM)", 4,
                                  {"topic": "avfuse.jobs", "partition": 0, "offset": 17},
                                  job={"stream_id": "cam-01", "uri": "rtsp://cam/1"}, at=1_760_000_050.0),
        "signals": Signals("cam-01", 30.0, 1.0, loudness_dbfs={"mean": [-23.5, None], "peak": [-20.1, None]},
                           luma={"mean": [0.41, 0.4], "peak": [0.52, 0.44]},
                           motion={"mean": [0.01, 0.0], "peak": [0.03, 0.0]}),
    }


def _transcript(**overrides) -> Transcript:
    kwargs = dict(
        stream_id="cam-01",
        transcript_id=transcript_id("cam-01", 12.3),
        start_s=12.3,
        end_s=15.8,
        text="Turn left at the next junction.",
        language="en",
        language_probability=0.98,
        words=[{"word": "Turn", "start_s": 12.31, "end_s": 12.6, "probability": 0.91},
               {"word": "left", "start_s": 12.6, "end_s": 12.9, "probability": 0.97}],
        avg_logprob=-0.21,
        no_speech_prob=0.02,
        model="tiny.en",
    )
    kwargs.update(overrides)
    return Transcript(**kwargs)


def _roundtrip(record) -> dict:
    return json.loads(record.to_json())


def _errors(record_type: str, instance: dict) -> list:
    return list(Draft202012Validator(schema_for(record_type)).iter_errors(instance))


def test_every_record_type_has_a_schema_file():
    schemas = resources.files("pipeline.output").joinpath("schemas")
    for record_type in RECORD_TYPES:
        assert schemas.joinpath(f"{record_type}.schema.json").is_file(), record_type
    assert set(_samples()) == set(RECORD_TYPES)


@pytest.mark.parametrize("record_type", sorted(RECORD_TYPES))
def test_schema_is_valid_draft_2020_12(record_type):
    schema = schema_for(record_type)
    Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    version = RECORD_TYPES[record_type].version
    assert schema["$id"] == f"https://avfuse.dev/schemas/{record_type}-{version}.json"
    assert schema["properties"]["schema"]["const"] == f"avfuse.{record_type}/{version}"
    assert schema["properties"]["type"]["const"] == record_type
    assert schema["additionalProperties"] is False
    assert schema["title"] and schema["description"]


@pytest.mark.parametrize("record_type", sorted(RECORD_TYPES))
def test_sample_record_validates(record_type):
    record = _samples()[record_type]
    assert record.record_type == record_type
    data = _roundtrip(record)
    assert data["schema"] == f"avfuse.{record_type}/{RECORD_TYPES[record_type].version}"
    assert data["type"] == record_type
    assert _errors(record_type, data) == []


@pytest.mark.parametrize("record_type", sorted(RECORD_TYPES))
def test_required_lists_every_field_to_dict_writes(record_type):
    schema = schema_for(record_type)
    written = set(_samples()[record_type].to_dict())
    assert set(schema["required"]) == written
    assert set(schema["properties"]) == written


def test_defaults_validate():
    # Fields left at their dataclass defaults still give valid records.
    bare_event = Event(stream_id="s", label="silence", start_s=0.0, end_s=0.5, confidence=0.0,
                       detector="silence", detector_version="1")
    assert _errors("event", _roundtrip(bare_event)) == []
    bare_error = Error(stream_id="s", stage="runtime", reason="encoder actor died")
    assert _errors("error", _roundtrip(bare_error)) == []
    no_media_info = StreamStart(stream_id="s", uri="/data/a.wav", started_at=0.0, duration_s=12.5,
                                video=None, audio={"codec": "pcm_s16le", "sample_rate_hz": 16000, "channels": 1})
    assert _errors("stream_start", _roundtrip(no_media_info)) == []
    window = Window(stream_id="s", index=0, start_s=0.0, end_s=2.0, video_tokens=8, audio_tokens=20,
                    missing=[], fusion="concat", embedding=[0.5])
    assert _errors("window", _roundtrip(window)) == []


# -- negative cases ---------------------------------------------------------------


def test_event_with_confidence_above_one_is_rejected():
    data = _roundtrip(_event(confidence=1.5))
    assert _errors("event", data)


def test_event_without_event_id_is_rejected():
    data = _roundtrip(_event())
    del data["event_id"]
    assert _errors("event", data)


def test_event_with_malformed_event_id_is_rejected():
    data = _roundtrip(_event())
    data["event_id"] = "not-a-uuid"
    assert _errors("event", data)


@pytest.mark.parametrize("record_type", sorted(RECORD_TYPES))
def test_unknown_top_level_key_is_rejected(record_type):
    data = _roundtrip(_samples()[record_type])
    data["unexpected"] = 1
    assert _errors(record_type, data)


@pytest.mark.parametrize("record_type", sorted(RECORD_TYPES))
def test_wrong_schema_or_type_const_is_rejected(record_type):
    data = _roundtrip(_samples()[record_type])
    data["schema"] = f"avfuse.{record_type}/{RECORD_TYPES[record_type].version + 1}"
    assert _errors(record_type, data)
    data = _roundtrip(_samples()[record_type])
    data["type"] = "other"
    assert _errors(record_type, data)


def test_stream_end_with_unknown_status_is_rejected():
    data = _roundtrip(_samples()["stream_end"])
    data["status"] = "weird"
    assert _errors("stream_end", data)


def test_window_with_unknown_missing_modality_is_rejected():
    data = _roundtrip(_samples()["window"])
    data["missing"] = ["smell"]
    assert _errors("window", data)


def test_error_with_unknown_stage_or_multiline_reason_is_rejected():
    data = _roundtrip(_samples()["error"])
    data["stage"] = "teleport"
    assert _errors("error", data)
    data = _roundtrip(_samples()["error"])
    data["reason"] = "Traceback (most recent call last):\n  File ..."
    assert _errors("error", data)


def test_transcript_with_empty_text_a_bad_word_or_a_positive_logprob_is_rejected():
    assert _errors("transcript", _roundtrip(_transcript(text="")))
    assert _errors("transcript", _roundtrip(_transcript(avg_logprob=0.5)))
    assert _errors("transcript", _roundtrip(_transcript(no_speech_prob=1.5)))
    data = _roundtrip(_transcript())
    del data["words"][0]["probability"]
    assert _errors("transcript", data)
    data = _roundtrip(_transcript())
    data["words"][1]["speaker"] = "A"
    assert _errors("transcript", data)


def test_summary_counts_words_and_seconds_per_language():
    data = _roundtrip(_samples()["summary"])
    assert data["words"] == 0 and data["languages"] == {}
    data["words"], data["languages"] = 42, {"en": 12.5, "de": 3.0}
    assert _errors("summary", data) == []
    data["languages"] = {"en": -1.0}
    assert _errors("summary", data)


def test_negative_times_are_rejected():
    data = _roundtrip(_event(start_s=-0.5))
    assert _errors("event", data)


# -- event ids --------------------------------------------------------------------


def test_event_id_is_deterministic_and_depends_on_stream_label_and_start_ms():
    base = event_id("cam-01", "scene_cut", 12.345)
    assert str(uuid.UUID(base)) == base and uuid.UUID(base).version == 5
    assert event_id("cam-01", "scene_cut", 12.345) == base
    assert _event().event_id == base  # the dataclass fills it in the same way
    assert event_id("cam-02", "scene_cut", 12.345) != base
    assert event_id("cam-01", "silence", 12.345) != base
    assert event_id("cam-01", "scene_cut", 12.346) != base  # 1 ms later
    assert event_id("cam-01", "scene_cut", 12.3454) == base  # rounds to the same ms
    assert event_id("cam-01", "scene_cut", 12.3446) == base
    # An explicit id is kept, so a replayed record keeps its id.
    assert _event(event_id=base, start_s=99.0).event_id == base


def test_transcript_id_is_deterministic_per_stream_and_start_ms_and_never_an_event_id():
    base = transcript_id("cam-01", 12.3)
    assert uuid.UUID(base).version == 5 and transcript_id("cam-01", 12.3004) == base
    assert transcript_id("cam-01", 12.301) != base and transcript_id("cam-02", 12.3) != base
    assert base != event_id("cam-01", "transcript", 12.3)
