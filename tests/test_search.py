"""avfuse search: moments of real records found by phrase and by meaning, with the real MiniLM."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest

from operators.audioset import AudioSetClasses
from operators.text_embedding import load_text_encoder
from pipeline.app.cli import main
from pipeline.output.records import Event
from pipeline.output.sinks import JsonlSink
from pipeline.search.cli import search
from pipeline.search.index import SearchIndex
from pipeline.search.moments import read_moments
from pipeline.search.rank import rank
from pipeline.search.table import build_table
from tests.conftest import REPO, SHARED_MEDIA


@pytest.fixture(scope="module")
def encoder():
    return load_text_encoder()


def transcript(stream_id: str, start_s: float, words: list[tuple[str, float, float]], transcript_id: str) -> dict:
    """A transcript record as the ASR stage writes it (avfuse.transcript/1), words with their times."""
    return {"schema": "avfuse.transcript/1", "type": "transcript", "stream_id": stream_id,
            "transcript_id": str(uuid.uuid5(uuid.NAMESPACE_URL, transcript_id)),
            "start_s": start_s, "end_s": words[-1][2] if words else start_s,
            "text": "".join(w for w, _, _ in words).strip(), "language": "en", "language_probability": 0.98,
            "words": [{"word": w, "start_s": s, "end_s": e, "probability": 0.9} for w, s, e in words],
            "avg_logprob": -0.2, "no_speech_prob": 0.01, "model": "tiny.en"}


def spoken(sentence: str, start_s: float, word_s: float = 0.4) -> list[tuple[str, float, float]]:
    """Whisper-style words (leading space) of ``sentence``, one every ``word_s`` from ``start_s``."""
    return [(f" {w}", round(start_s + i * word_s, 3), round(start_s + (i + 1) * word_s - 0.05, 3))
            for i, w in enumerate(sentence.split())]


def sound(stream_id: str, label: str, start_s: float, end_s: float, ancestors=(), alternatives=()) -> dict:
    attributes = {"modality": "audio", "ancestors": list(ancestors),
                  "alternatives": [{"label": a, "mean_score": s} for a, s in alternatives]}
    return Event(stream_id, label, start_s, end_s, 0.8, "sound_tags", "1", attributes=attributes).to_dict()


def sight(stream_id: str, label: str, start_s: float, end_s: float) -> dict:
    return Event(stream_id, label, start_s, end_s, 0.7, "visual_tags", "1", attributes={"modality": "video"}).to_dict()


def write_jsonl(path: Path, records: list[dict], tail: str = "") -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + tail)
    return path


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> Path:
    """Records of a launch broadcast: two transcript segments, tag events, signal events, a summary."""
    folder = tmp_path_factory.mktemp("written")
    records = [
        transcript("launch.mp4", 10.0, spoken("Good morning from the control room.", 10.0)
                   + spoken("The launch window opens at noon and closes at one.", 12.4), "t-1"),
        transcript("launch.mp4", 20.0, spoken("Weather is go, range is go.", 20.0), "t-2"),
        sound("launch.mp4", "Race car, auto racing", 30.0, 36.0, ["Motor vehicle (road)", "Vehicle"]),
        sound("launch.mp4", "Acoustic guitar", 40.0, 48.0,
              ["Guitar", "Plucked string instrument", "Musical instrument", "Music"]),
        sound("launch.mp4", "Dog", 50.0, 52.0, ["Domestic animals, pets", "Animal"], [("Bark", 0.4), ("Rain", 0.02)]),
        sound("launch.mp4", "Rain", 60.0, 70.0, ["Water", "Natural sounds"]),
        sight("launch.mp4", "golden retriever", 50.0, 53.0),
        Event("launch.mp4", "black_video", 80.0, 81.5, 1.0, "black_video", "1").to_dict(),
        Event("launch.mp4", "silence", 82.0, 84.0, 1.0, "silence", "1").to_dict(),
        {"schema": "avfuse.summary/2", "type": "summary", "stream_id": "launch.mp4", "final": True,
         "processed_s": 90.0, "audio_tags": [{"label": "Siren", "seconds": 2.0, "max_confidence": 0.4},
                                             {"label": "Rain", "seconds": 10.0, "max_confidence": 0.9}],
         "visual_tags": []},
    ]
    return write_jsonl(folder / "launch.jsonl", records)


@pytest.fixture(scope="module")
def replayed(pretrained_pipeline, tmp_path_factory) -> Path:
    """A real replay of chaplin (music, piano) and Big Buck Bunny with the default pretrained profile."""
    out = tmp_path_factory.mktemp("replayed") / "records.jsonl"
    sink = JsonlSink(out)
    try:
        asyncio.run(pretrained_pipeline.replay([str(SHARED_MEDIA / "chaplin.mp4"),
                                                str(SHARED_MEDIA / "big_buck_bunny_0_30.webm")], sink))
    finally:
        sink.close()
    ends = [json.loads(line) for line in out.read_text().splitlines() if '"stream_end"' in line]
    failed = [f"{e['stream_id']}: {e['reason']}" for e in ends if e["status"] != "ok"]
    assert len(ends) == 2 and not failed, f"the replay failed: {failed}"
    return out


def find(encoder, query: str, *paths: Path, top: int = 10):
    results, _ = search(query, [str(p) for p in paths], top, encoder=encoder)
    return results


# ---------------------------------------------------------------- the text encoder


def test_encoder_matches_sentence_transformers(encoder, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer

    reference = SentenceTransformer(str(encoder.weights.path.parent), device="cpu")
    texts = ["automobile", "Race car, auto racing", "The launch window opens at noon and closes at one.",
             "xqzvbnm plorf", "Héllo, WORLD! Don't stop.", "", " ".join(["countdown"] * 400)]  # last: cut at 256
    ours = encoder.encode(texts)
    theirs = reference.encode(texts, convert_to_numpy=True, normalize_embeddings=True)
    cosine = (ours * theirs).sum(axis=1)
    assert cosine.min() >= 0.999, cosine
    assert np.allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)


def test_encoding_does_not_depend_on_the_batch(encoder):
    alone = encoder.encode(["Rain on surface"])
    batched = encoder.encode(["a", "Rain on surface", "a much longer sentence about rockets and the weather"])
    assert float(alone[0] @ batched[1]) > 0.99999


# ---------------------------------------------------------------- phrases said


def test_written_records_fit_the_record_schemas(written):
    import jsonschema

    for record in map(json.loads, written.read_text().splitlines()):
        schema_file = REPO / "pipeline" / "output" / "schemas" / f"{record['type']}.schema.json"
        if record["type"] != "summary":  # the test's summary carries only the fields search reads
            jsonschema.validate(record, json.loads(schema_file.read_text()))


def test_spoken_phrase_is_found_at_the_time_of_its_words(encoder, written):
    best = find(encoder, "launch window", written)[0]
    assert best.phrase and best.kind == "transcript" and best.record_id.endswith("#1")
    # "The launch window opens ..." starts at 12.4 s: "launch" is its second word (12.8 s), "window" ends 13.55 s.
    assert abs(best.start_s - 12.8) < 1.0 and abs(best.end_s - 13.55) < 1.0
    assert best.text.startswith("The launch window opens")  # the sentence, not the whole segment


def test_phrase_ignores_case_and_punctuation_but_keeps_word_boundaries(encoder, written):
    assert find(encoder, "LAUNCH-WINDOW", written)[0].phrase
    assert find(encoder, "weather is go range", written)[0].start_s == pytest.approx(20.0)
    results = find(encoder, "window opens at noo", written)  # "noo" is no word of "noon"
    assert not any(r.phrase for r in results)


def test_meaning_finds_a_sentence_without_the_exact_phrase(encoder, written):
    results = find(encoder, "what time can they launch", written)
    assert results and not results[0].phrase
    assert results[0].kind == "transcript" and "launch window" in results[0].text


# ---------------------------------------------------------------- sounds and sights by other words


def test_sound_class_is_found_by_a_synonym_through_its_ancestors(encoder, written):
    results = find(encoder, "automobile", written)
    assert results[0].text == "Race car, auto racing"
    assert all(r.text not in ("Dog", "Rain") for r in results)
    guitar = find(encoder, "guitar", written)
    assert guitar[0].text == "Acoustic guitar" and guitar[0].start_s == 40.0


def test_an_events_faint_alternatives_are_not_searched(encoder, written):
    # The Dog event names Rain as an alternative with a mean score of 0.02: that is no rain.
    rain = [r for r in find(encoder, "rain", written) if r.kind == "sound"]
    assert [(r.text, r.start_s) for r in rain] == [("Rain", 60.0)]
    bark = find(encoder, "barking", written)
    assert bark and bark[0].text == "Dog" and "Bark" in bark[0].why


def test_signal_events_are_found_by_their_words(encoder, written):
    assert find(encoder, "black video", written)[0].start_s == 80.0
    assert find(encoder, "black screen", written)[0].start_s == 80.0
    assert find(encoder, "silence", written)[0].start_s == 82.0


def test_summary_tags_without_an_event_are_searched_over_the_stream(encoder, written):
    siren = find(encoder, "siren", written)[0]
    assert (siren.kind, siren.start_s, siren.end_s) == ("heard", 0.0, 90.0) and "not timed" in siren.why
    # Rain has its own event: the summary's Rain is not a second result.
    assert [r.kind for r in find(encoder, "rain", written) if r.text == "Rain"] == ["sound"]


def test_chaplin_piano_is_found_in_a_real_replay(encoder, replayed):
    results = find(encoder, "piano", replayed)
    assert results, "no result for piano"
    best = results[0]
    assert best.stream_id == "chaplin.mp4" and best.kind in ("sound", "heard"), best
    assert "Piano" in best.why or best.text == "Piano"


def test_real_replay_signal_and_sight_moments(encoder, replayed):
    scene_cuts = [r for r in find(encoder, "scene cut", replayed, top=50) if r.phrase]
    assert scene_cuts and {r.stream_id for r in scene_cuts} == {"big_buck_bunny_0_30.webm"}
    assert all(r.kind == "signal" and r.start_s == r.end_s for r in scene_cuts)


# ---------------------------------------------------------------- nothing for nonsense


def test_nonsense_matches_no_audioset_or_imagenet_class(encoder, tmp_path):
    from torchvision.models._meta import _IMAGENET_CATEGORIES

    classes = AudioSetClasses()
    records = [sound("all.mp4", name, float(i), i + 1.0) for i, name in enumerate(classes.names)]
    records += [sight("all.mp4", name, 600.0 + i, 601.0 + i) for i, name in enumerate(_IMAGENET_CATEGORIES)]
    path = write_jsonl(tmp_path / "all.jsonl", records)
    table = build_table(read_moments(path), encoder)
    for nonsense in ("xqzvbnm plorf", "blorptang", "asdf qwer", "lorem ipsum dolor", "qwertyuiop"):
        assert rank(nonsense, [table], encoder) == [], nonsense
    automobile = {r.text for r in rank("automobile", [table], encoder, top_k=10)}
    assert {"Vehicle", "Car", "Race car, auto racing"} <= automobile
    guitar = {r.text for r in rank("guitar", [table], encoder, top_k=10)}
    assert "Guitar" in guitar and guitar & {"Plucked string instrument", "Acoustic guitar", "electric guitar"}


def test_nonsense_prints_no_match_and_exits_0(written, replayed, capsys):
    assert main(["search", "xqzvbnm plorf", str(written), str(replayed)]) == 0
    assert capsys.readouterr().out.strip() == "no match"


def test_search_cli_starts_no_ray(written):
    code = ("import sys; from pipeline.app.cli import main; rc = main(['search', 'xqzvbnm plorf', sys.argv[1]]); "
            "print('ray imported' if 'ray' in sys.modules else 'no ray'); sys.exit(rc)")
    done = subprocess.run([sys.executable, "-c", code, str(written)], capture_output=True, text=True, cwd=REPO,
                          timeout=120, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["no", "match", "no", "ray"]


# ---------------------------------------------------------------- output


def test_json_output_has_one_object_per_result(written, capsys):
    assert main(["search", "animal", str(written), "--json", "--top", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and all(json.loads(line)["text"] for line in lines)
    assert main(["search", "launch window", str(written), "--json"]) == 0
    first = json.loads(capsys.readouterr().out.splitlines()[0])
    assert {"stream_id", "start_s", "end_s", "kind", "text", "score", "why"} <= set(first)
    assert first["kind"] == "transcript" and first["phrase"] is True


def test_plain_output_is_one_line_per_result(written, capsys):
    assert main(["search", "guitar", str(written), "--top", "1"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("launch.mp4  40.0–48.0 s  ") and line.endswith(': "Acoustic guitar"'), line


# ---------------------------------------------------------------- bad input


def test_not_avfuse_jsonl_exits_2_with_one_line(tmp_path, capsys):
    other = write_jsonl(tmp_path / "other.jsonl", [{"level": "info", "msg": "hello"}])
    assert main(["search", "hello", str(other)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "no avfuse record" in err and "line 1" in err
    text = tmp_path / "notes.jsonl"
    text.write_text("just some words\nand more\n")
    assert main(["search", "words", str(text)]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    assert main(["search", "words", str(tmp_path / "missing.jsonl")]) == 2
    assert "No such file" in capsys.readouterr().err


def test_truncated_last_line_is_noted_and_results_still_given(written, tmp_path, capsys):
    cut = tmp_path / "cut.jsonl"
    cut.write_text(written.read_text() + '{"schema":"avfuse.event/1","type":"event","stream_id":"launch.mp4","lab')
    assert main(["search", "launch window", str(cut)]) == 0
    captured = capsys.readouterr()
    assert "12.8–13.6 s" in captured.out.splitlines()[0]
    assert "cut short" in captured.err and len(captured.err.strip().splitlines()) == 1


def test_unknown_record_types_are_skipped_with_a_count(written, tmp_path, capsys):
    future = {"schema": "avfuse.face/1", "type": "face", "stream_id": "launch.mp4", "start_s": 1.0}
    path = write_jsonl(tmp_path / "future.jsonl", [future, future, *map(json.loads, written.read_text().splitlines())])
    assert main(["search", "guitar", str(path), "--top", "1"]) == 0
    captured = capsys.readouterr()
    assert "Acoustic guitar" in captured.out
    assert "skipped 2 records" in captured.err and "face (2)" in captured.err


# ---------------------------------------------------------------- the index


QUERIES = ("launch window", "automobile", "guitar", "piano", "black screen", "siren", "xqzvbnm plorf", "scene cut")


def test_index_gives_the_results_of_a_plain_search_and_is_reused(encoder, written, replayed, tmp_path):
    index_dir = tmp_path / "index"
    files = [str(written), str(replayed)]
    first, _ = search("automobile", files, 10, str(index_dir), encoder=encoder)
    manifest = index_dir / "index.json"
    stamps = {p.name: p.stat().st_mtime_ns for p in index_dir.iterdir()}
    assert len(stamps) == 5  # the manifest, and an .npz and a .jsonl per file
    for query in QUERIES:
        before = encoder.texts_encoded
        indexed, _ = search(query, files, 10, str(index_dir), encoder=encoder)
        assert encoder.texts_encoded == before + 1  # the query only: nothing was embedded again
        plain, _ = search(query, files, 10, encoder=encoder)
        assert indexed == plain, query
    assert first == search("automobile", files, 10, encoder=encoder)[0]
    assert {p.name: p.stat().st_mtime_ns for p in index_dir.iterdir()} == stamps
    # Without files, the index searches all it has.
    assert search("launch window", [], 10, str(index_dir), encoder=encoder)[0] == \
        search("launch window", files, 10, encoder=encoder)[0]
    assert json.loads(manifest.read_text())["model"] == "all-MiniLM-L6-v2"


def test_index_embeds_changed_files_again_and_drops_removed_ones(encoder, written, tmp_path):
    copy = write_jsonl(tmp_path / "copy.jsonl", [json.loads(line) for line in written.read_text().splitlines()])
    other = write_jsonl(tmp_path / "other.jsonl", [sound("other.mp4", "Siren", 5.0, 9.0, ["Alarm"])])
    index = SearchIndex(tmp_path / "index", "all-MiniLM-L6-v2", encoder.weights.sha256)
    _, update = index.tables([copy, other], encoder)
    assert len(update.embedded) == 2
    with open(copy, "a") as handle:
        handle.write(json.dumps(sound("launch.mp4", "Helicopter", 95.0, 99.0, ["Aircraft", "Vehicle"])) + "\n")
    index = SearchIndex(tmp_path / "index", "all-MiniLM-L6-v2", encoder.weights.sha256)
    tables, update = index.tables([copy, other], encoder)
    assert (update.embedded, update.reused) == ([str(copy.resolve())], [str(other.resolve())])
    assert rank("helicopter", tables, encoder)[0].start_s == 95.0
    other.unlink()
    index = SearchIndex(tmp_path / "index", "all-MiniLM-L6-v2", encoder.weights.sha256)
    tables, update = index.tables(None, encoder)
    assert update.dropped == [str(other.resolve())] and [t.path for t in tables] == [copy.resolve()]
    assert sorted(p.name for p in (tmp_path / "index").iterdir()) == sorted(
        ["index.json", *(f"{index.files[str(copy.resolve())]['key']}{ext}" for ext in (".npz", ".jsonl"))])


def test_the_same_records_in_two_files_are_one_result(encoder, written, tmp_path):
    twin = tmp_path / "twin.jsonl"
    twin.write_text(written.read_text())
    once = find(encoder, "guitar", written)
    assert find(encoder, "guitar", written, twin) == once

