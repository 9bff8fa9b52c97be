"""Bad input gets a one-line reason and an error record; the other streams keep going."""

from __future__ import annotations

import jsonschema

from pipeline.app.sample import ClipSpec, write_clip
from pipeline.output.records import schema_for
from tests.media_faults import truncated, with_garbled_packets


def bad_inputs(tmp_path, clips) -> dict[str, str]:
    text = tmp_path / "notes.mp4"
    text.write_text("this is not a video\n" * 50)
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    folder = tmp_path / "a_folder"
    folder.mkdir()
    mkv = write_clip(tmp_path / "whole.mkv", ClipSpec())
    return {
        "missing": str(tmp_path / "does-not-exist.mp4"),
        "directory": str(folder),
        "not_media": str(text),
        "zero_bytes": str(empty),
        "truncated_mp4": str(truncated(clips["av.mp4"], tmp_path / "truncated.mp4")),
        "truncated_mkv": str(truncated(mkv, tmp_path / "truncated.mkv")),
    }


def test_each_bad_input_yields_a_one_line_error_and_the_good_stream_completes(replay, clips, tmp_path):
    bad = bad_inputs(tmp_path, clips)
    run = replay(clips["av.mp4"], *bad.values(), stream_ids=["good", *bad])
    by_id = {r.stream_id: r for r in run.results}
    assert by_id["good"].status == "ok"
    assert len(run.events("good")) >= 8
    assert run.of("summary", "good")[-1]["final"]
    for stream_id in bad:
        assert by_id[stream_id].status == "failed", stream_id
        errors = run.of("error", stream_id)
        assert errors, f"no error record for {stream_id}"
        for error in errors:
            assert error["reason"] and "\n" not in error["reason"] and "Traceback" not in error["reason"]
            jsonschema.validate(error, schema_for("error"))
        assert run.of("stream_end", stream_id)[0]["status"] == "failed"
    assert "cannot open" in run.of("error", "missing")[0]["reason"]
    assert "truncated" in run.of("error", "truncated_mkv")[-1]["reason"]
    # What decoded before the cut still produced events: the cut at 3 s.
    assert any(e["label"] == "scene_cut" and abs(e["start_s"] - 3.0) < 0.3 for e in run.events("truncated_mkv"))


def test_undecodable_packets_are_reported_and_decoding_goes_on(replay, clips, tmp_path):
    # Matroska in and out, so that packet times pass through the remux unchanged.
    source = write_clip(tmp_path / "source.mkv", ClipSpec())
    garbled = with_garbled_packets(source, tmp_path / "garbled.mkv", 4.0, 5.0)
    run = replay(garbled)
    reasons = [e["reason"] for e in run.of("error")]
    assert any(r.startswith("video packets undecodable") for r in reasons), reasons
    assert any(r.startswith("audio packets undecodable") for r in reasons), reasons
    assert all(not e["fatal"] for e in run.of("error"))
    end = run.of("stream_end")[0]
    assert end["decode_errors"] >= 10
    assert end["processed_s"] > 11.5
    # Events after the damage are still found, at their true times.
    silence = [e for e in run.events() if e["label"] == "silence"]
    assert len(silence) == 1 and abs(silence[0]["start_s"] - 6.0) < 0.02 and abs(silence[0]["end_s"] - 7.0) < 0.02
    assert any(e["label"] == "black_video" and abs(e["start_s"] - 8.0) < 0.26 for e in run.events())
