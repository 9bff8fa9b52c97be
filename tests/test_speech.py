"""Speech activity: the silero-vad operator, the `speech` detector, and both in the real pipeline.

The end-to-end clip is made here: a sentence spoken by espeak-ng (`make test-tools` installs it)
muxed with PyAV at 2.0 s between a tone, digital silence and a louder tone, so the speech span
is known to the sample. (Tones are kept out of the voice's pitch range: silero-vad scores the
onset of a loud 220 Hz tone, or of a 220 + 1000 Hz chord, after long digital silence as speech
for a few hundred ms.) ../shared/media/nasa_13013.mp4 is real narration (its subtitles run from
0.2 s to the end); chaplin.mp4 is music only.
"""

from __future__ import annotations

import io
import logging
import shutil
import subprocess
import sys
from fractions import Fraction

import av
import numpy as np
import pytest

from operators.speech import (
    SpeechActivity,
    SpeechNotInstalledError,
    SpeechUnavailableError,
    UnsupportedSampleRateError,
    unavailable_reason,
)
from pipeline.compute.speech_scoring import SpeechScoring
from pipeline.compute.stages import AudioStage
from pipeline.core.config import Config, DetectorsConfig, SpeechConfig, load_config
from pipeline.core.media import SpeechProbs
from pipeline.ingest.decode import MediaDecoder
from pipeline.output.records import event_id
from pipeline.stream.detectors.bank import DetectorBank
from tests.conftest import SHARED_MEDIA

RATE_HZ = 16000
STREAM = "talk-1"
WINDOW_S = 0.032


def noise(seconds: float, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(int(seconds * RATE_HZ)) * 0.05).astype(np.float32)


def feed_in_pieces(vad: SpeechActivity, samples: np.ndarray, sizes, start_s: float = 0.0):
    probs, times, at = [], [], 0
    for size in [*sizes, len(samples)]:
        piece = samples[at:at + size]
        p, t = vad.feed(piece, start_s + at / RATE_HZ)
        probs.append(p)
        times.append(t)
        at += piece.size
        if at >= len(samples):
            break
    return np.concatenate(probs), np.concatenate(times)


# ---------------------------------------------------------------------------------------------
# The operator


def test_arbitrary_piece_sizes_give_the_same_probabilities_as_one_piece():
    samples = noise(2.0)
    whole_p, whole_t = SpeechActivity(RATE_HZ).feed(samples, 0.5)
    assert len(whole_p) == len(samples) // 512 and whole_p.dtype == np.float32
    np.testing.assert_allclose(whole_t, 0.5 + np.arange(len(whole_p)) * WINDOW_S)
    for sizes in ([1600] * 19, [1, 511, 513, 0, 7, 3000], [100] * 300):
        p, t = feed_in_pieces(SpeechActivity(RATE_HZ), samples, sizes, start_s=0.5)
        np.testing.assert_array_equal(p, whole_p)
        np.testing.assert_array_equal(t, whole_t)


def test_window_times_follow_the_sample_count_not_rounded_piece_starts():
    vad = SpeechActivity(RATE_HZ)
    samples = noise(0.4)
    _, first = vad.feed(samples[:1600], 1.0)
    _, second = vad.feed(samples[1600:], 1.0 + 0.1 + 0.0004)  # within the 1 ms tolerance: contiguous
    times = np.concatenate([first, second])
    np.testing.assert_allclose(times, 1.0 + np.arange(len(times)) * WINDOW_S, atol=1e-12)


def test_a_gap_drops_the_partial_window_and_restarts_from_a_fresh_state():
    before, after = noise(0.5, seed=1), noise(0.5, seed=2)
    vad = SpeechActivity(RATE_HZ)
    p_before, t_before = vad.feed(before, 0.0)
    p_after, t_after = vad.feed(after, 3.0)
    assert t_before[-1] + WINDOW_S <= 0.5 and t_after[0] == 3.0
    fresh_p, fresh_t = SpeechActivity(RATE_HZ).feed(after, 3.0)
    np.testing.assert_array_equal(p_after, fresh_p)
    np.testing.assert_array_equal(t_after, fresh_t)


def test_8khz_scores_windows_of_256_samples():
    vad = SpeechActivity(8000)
    probs, t_s = vad.feed(np.zeros(8000, np.float32), 0.0)
    assert vad.window_samples == 256 and vad.window_s == pytest.approx(WINDOW_S)
    assert len(probs) == 31 and np.all((probs >= 0) & (probs <= 1))


@pytest.mark.parametrize("rate_hz", [22050, 44100, 48000])
def test_unsupported_rate_is_a_one_line_error_at_construction(rate_hz):
    with pytest.raises(UnsupportedSampleRateError) as info:
        SpeechActivity(rate_hz)
    assert isinstance(info.value, SpeechUnavailableError)
    assert str(info.value) == f"silero-vad supports 8000 or 16000 Hz audio, not {rate_hz} Hz"
    assert unavailable_reason(rate_hz) == str(info.value)


def test_missing_package_is_a_typed_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "silero_vad", None)  # import silero_vad now raises ImportError
    assert unavailable_reason(RATE_HZ) == "silero-vad is not installed"
    with pytest.raises(SpeechNotInstalledError, match="^silero-vad is not installed$"):
        SpeechActivity(RATE_HZ)


# ---------------------------------------------------------------------------------------------
# The detector, on synthetic probability series


def probs_series(segments: list[tuple[float, float]], duration_s: float, start_s: float = 0.0) -> SpeechProbs:
    """Windows from start_s: 0.9 inside the (start, end) segments, 0.05 outside."""
    t_s = start_s + np.arange(int(round(duration_s / WINDOW_S))) * WINDOW_S
    prob = np.full(len(t_s), 0.05, np.float32)
    for a, b in segments:
        prob[(t_s >= a - 1e-9) & (t_s < b - 1e-9)] = 0.9
    return SpeechProbs(prob, t_s, WINDOW_S)


def split_probs(probs: SpeechProbs, sizes) -> list[SpeechProbs]:
    bounds = [0, *np.cumsum(sizes)]
    bounds = [int(b) for b in bounds if b < len(probs)] + [len(probs)]
    return [SpeechProbs(probs.prob[a:b], probs.t_s[a:b], probs.window_s) for a, b in zip(bounds, bounds[1:])]


def detect(chunks, cfg: SpeechConfig | None = None, end_s: float | None = None):
    bank = DetectorBank(STREAM, DetectorsConfig(), cfg or SpeechConfig())
    events = [e for chunk in chunks for e in bank.on_speech(chunk)]
    return events + bank.finish(None, end_s)


def spans(events):
    return [(round(e.start_s, 6), round(e.end_s, 6)) for e in events]


def test_speech_starts_at_the_first_sure_window_and_ends_at_the_first_quiet_one():
    # Window starts are multiples of 32 ms: 1.024 = 32 windows, 2.048 = 64 windows.
    events = detect([probs_series([(1.024, 2.048)], 4.0)])
    assert spans(events) == [(1.024, 2.048)]
    event = events[0]
    assert event.label == event.detector == "speech" and event.detector_version == "1"
    assert event.confidence == pytest.approx(0.9)
    assert event.event_id == event_id(STREAM, "speech", 1.024)
    assert event.attributes["closed_by"] == "silence"


def test_probabilities_between_exit_and_enter_keep_speech_open_but_never_open_it():
    probs = probs_series([(1.024, 1.536)], 4.0)
    middle = (probs.t_s >= 1.536 - 1e-9) & (probs.t_s < 2.56 - 1e-9)
    probs.prob[middle] = 0.4  # below enter (0.5), above exit (0.35)
    probs.prob[probs.t_s >= 3.2 - 1e-9] = 0.4  # alone, never opens speech
    events = detect([probs])
    assert spans(events) == [(1.024, 2.56)]
    expected = np.mean(probs.prob[(probs.t_s >= 1.024 - 1e-9) & (probs.t_s < 2.56 - 1e-9)])
    assert events[0].confidence == pytest.approx(float(expected))


def test_a_pause_shorter_than_min_silence_is_merged_and_a_longer_one_splits():
    # 64 ms pause (2 windows) < 0.1 s: merged. 160 ms pause (5 windows): split.
    events = detect([probs_series([(0.512, 1.024), (1.088, 1.6), (1.76, 2.4)], 4.0)])
    assert spans(events) == [(0.512, 1.6), (1.76, 2.4)]


def test_speech_shorter_than_min_speech_is_no_event():
    events = detect([probs_series([(0.512, 0.736), (1.6, 1.856)], 3.0)])  # 224 ms and 256 ms
    assert spans(events) == [(1.6, 1.856)]


def test_chunk_boundaries_never_change_the_speech_events():
    probs = probs_series([(0.512, 1.024), (1.088, 1.6), (1.76, 2.4), (3.2, 5.0)], 5.0)
    reference = detect([probs], end_s=5.0)
    assert len(reference) == 3
    rng = np.random.default_rng(3)
    for _ in range(10):
        sizes = rng.integers(1, 40, size=60)
        events = detect(split_probs(probs, sizes), end_s=5.0)
        assert [e.to_dict() for e in events] == [e.to_dict() for e in reference]


def test_speech_open_at_the_end_closes_at_the_end_of_media_and_pending_shows_its_start():
    probs = probs_series([(1.024, 9.0)], 2.048)
    bank = DetectorBank(STREAM, DetectorsConfig(), SpeechConfig())
    assert bank.on_speech(probs) == []
    assert bank.pending_from_s() == pytest.approx(1.024)
    events = bank.finish(None, 5.0)  # never past the last window seen
    assert spans(events) == [(1.024, 2.048)] and events[0].attributes["closed_by"] == "end"


def test_a_gap_in_the_windows_closes_speech_at_the_last_window_before_it():
    first = probs_series([(0.0, 9.0)], 1.024)
    second = probs_series([(0.0, 9.0)], 1.024, start_s=3.0)
    events = detect([first, second])
    assert spans(events) == [(0.0, 1.024), (3.0, 4.024)]
    assert [e.attributes["closed_by"] for e in events] == ["gap", "end"]


def test_speech_thresholds_and_durations_come_from_the_config():
    cfg = load_config(None, ["speech.enter_prob=0.95", "speech.min_speech_s=0.1"], environ={})
    assert detect([probs_series([(1.024, 2.048)], 3.0)], cfg.speech) == []
    with pytest.raises(Exception, match="exit_prob"):
        load_config(None, ["speech.exit_prob=0.6"], environ={})
    assert "speech" not in DetectorBank(STREAM, DetectorsConfig(), SpeechConfig(enabled=False)).detector_names
    assert "speech" in DetectorBank(STREAM, DetectorsConfig(), SpeechConfig()).detector_names


# ---------------------------------------------------------------------------------------------
# The audio stage: where each stream's SpeechActivity lives


def test_unusable_speech_is_reported_once_and_audio_still_encodes(clips, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "silero_vad", None)
    with caplog.at_level(logging.WARNING, logger="avfuse.speech"):
        stage = AudioStage(load_config(None, [], environ={}))
    assert stage.speech.unavailable == "silero-vad is not installed"
    assert [r.getMessage() for r in caplog.records] == ["speech detection disabled: silero-vad is not installed"]
    rows = [c.audio for c in decode_chunks(clips["audio_only.m4a"]) if c.audio is not None]
    encoded = stage.run_batch(rows[:1])[0]
    assert encoded.speech is None and len(encoded.tokens_f32) == len(rows[0])


def test_other_audio_rates_disable_speech_with_a_reason():
    scoring = SpeechScoring(load_config(None, ["audio.sample_rate_hz=22050"], environ={}), 8)
    assert scoring.unavailable == "silero-vad supports 8000 or 16000 Hz audio, not 22050 Hz"


def decode_chunks(path, cfg: Config | None = None):
    decoder = MediaDecoder("clip", str(path), cfg or load_config(None, [], environ={}))
    decoder.open()
    chunks = list(decoder.chunks())
    decoder.close()
    return chunks


def test_audio_stage_scores_the_rows_it_encodes_and_forgets_a_stream_after_its_last(clips):
    stage = AudioStage(load_config(None, [], environ={}))
    chunks = [c for c in decode_chunks(clips["audio_only.m4a"]) if c.audio is not None]
    encoded = [stage.run_batch([c.audio])[0] for c in chunks]  # one chunk at a time, as the driver sends them
    rows_s = sum(len(c.audio) * c.audio.row_s for c in chunks)
    t_s = np.concatenate([e.speech.t_s for e in encoded])
    assert np.all(np.diff(t_s) > 0) and len(t_s) == int(rows_s * RATE_HZ) // 512
    assert stage.speech.open_streams == 1
    stage.forget("clip")  # the driver says so when a stream ends, however it ended
    assert stage.speech.open_streams == 0
    # Interleaved streams keep separate states: the same rows score the same under two ids.
    first = chunks[0].audio
    other = type(first)(first.samples_f32, first.start_s, first.sample_rate_hz, "other", False)
    again = type(first)(first.samples_f32, first.start_s, first.sample_rate_hz, "clip", False)
    a, b = stage.run_batch([other, again])
    np.testing.assert_array_equal(a.speech.prob, b.speech.prob)
    np.testing.assert_array_equal(a.speech.prob, encoded[0].speech.prob)
    last = type(first)(first.samples_f32, first.start_s, first.sample_rate_hz, "other", True)
    stage.run_batch([last])
    assert stage.speech.open_streams == 1  # "other" went with its last rows; "clip" is still open


# ---------------------------------------------------------------------------------------------
# End to end, with real speech

SPEECH_AT_S = 2.0
CLIP_S = 8.0
SENTENCE = "Speech activity starts here, and it ends a few seconds later."


def spoken_sentence(text: str = SENTENCE, *espeak_args: str) -> np.ndarray:
    """espeak-ng saying ``text`` (with ``espeak_args``, e.g. a voice and speed) as 16 kHz mono float32."""
    espeak = shutil.which("espeak-ng")
    assert espeak, "espeak-ng missing: `make test-tools` installs Debian's espeak-ng package"
    wav = subprocess.run([espeak, *espeak_args, "--stdout", text], capture_output=True, check=True).stdout
    resampler = av.AudioResampler(format="flt", layout="mono", rate=RATE_HZ)
    with av.open(io.BytesIO(wav)) as container:
        parts = [out.to_ndarray()[0] for frame in container.decode(audio=0) for out in resampler.resample(frame)]
    parts += [out.to_ndarray()[0] for out in resampler.resample(None)]
    speech = np.concatenate(parts)
    return (0.5 * speech / np.abs(speech).max()).astype(np.float32)


def voiced_span_s(samples: np.ndarray) -> tuple[float, float]:
    """First and last 10 ms frame louder than -45 dBFS."""
    frames = samples[: len(samples) // 160 * 160].reshape(-1, 160)
    loud = np.nonzero(10 * np.log10((frames ** 2).mean(axis=1) + 1e-12) > -45)[0]
    return loud[0] * 0.01, (loud[-1] + 1) * 0.01


def write_talk_clip(path) -> tuple[float, float]:
    """440 Hz 0-1 s, silence, the sentence from 2.0 s, silence, 1 kHz at -10 dBFS 6.5-8 s; returns the voiced span."""
    t_s = np.arange(int(CLIP_S * RATE_HZ)) / RATE_HZ
    audio = np.zeros(len(t_s), np.float32)
    audio[t_s < 1.0] = 0.1 * np.sin(2 * np.pi * 440 * t_s[t_s < 1.0])
    loud = t_s >= 6.5
    audio[loud] = 0.3 * np.sin(2 * np.pi * 1000 * t_s[loud])
    speech = spoken_sentence()
    assert SPEECH_AT_S + len(speech) / RATE_HZ < 6.5
    at = int(SPEECH_AT_S * RATE_HZ)
    audio[at:at + len(speech)] = speech
    on_s, off_s = voiced_span_s(speech)
    mux_with_video(path, audio, CLIP_S)
    return SPEECH_AT_S + on_s, SPEECH_AT_S + off_s


def mux_with_video(path, audio: np.ndarray, clip_s: float) -> None:
    """``audio`` (16 kHz mono float32) as AAC beside a 10 fps H.264 picture of changing grey, muxed by PTS."""
    with av.open(str(path), mode="w") as container:
        video = container.add_stream("libx264", rate=10)
        video.width, video.height, video.pix_fmt = 160, 120, "yuv420p"
        video.options = {"preset": "ultrafast"}
        sound = container.add_stream("aac", rate=RATE_HZ, layout="mono")
        items = [(i / 10, "video", i) for i in range(int(clip_s * 10))]
        items += [(start / RATE_HZ, "audio", start) for start in range(0, len(audio), 1024)]
        for _, kind, index in sorted(items):
            if kind == "video":
                picture = np.full((120, 160, 3), (index * 3) % 256, np.uint8)
                frame = av.VideoFrame.from_ndarray(picture, format="rgb24")
                frame.pts, frame.time_base = index, Fraction(1, 10)
                container.mux(video.encode(frame))
            else:
                frame = av.AudioFrame.from_ndarray(audio[None, index:index + 1024], format="flt", layout="mono")
                frame.sample_rate, frame.pts, frame.time_base = RATE_HZ, index, Fraction(1, RATE_HZ)
                container.mux(sound.encode(frame))
        for stream in (video, sound):
            container.mux(stream.encode(None))


@pytest.fixture(scope="module")
def talk_clip(tmp_path_factory):
    path = tmp_path_factory.mktemp("speech") / "talk.mp4"
    return path, write_talk_clip(path)


def test_spoken_sentence_is_one_speech_span_and_tones_and_silence_are_not(replay, talk_clip, clips):
    path, (on_s, off_s) = talk_clip
    run = replay(path, clips["av.mp4"])
    assert [r.status for r in run.results] == ["ok", "ok"]
    speech = run.events("talk.mp4", "speech")
    assert speech, run.events("talk.mp4")
    assert abs(speech[0]["start_s"] - on_s) <= 0.25
    assert abs(speech[-1]["end_s"] - off_s) <= 0.3
    assert all(on_s - 0.1 <= e["start_s"] < e["end_s"] <= off_s + 0.3 for e in speech)  # none in tone/silence
    assert all(0.5 <= e["confidence"] <= 1 for e in speech)
    final = run.of("summary", "talk.mp4")[-1]
    assert final["final"]
    assert final["speech_s"] == pytest.approx(sum(e["end_s"] - e["start_s"] for e in speech), abs=0.01)
    assert final["speech_s"] >= 0.7 * (off_s - on_s)
    # The sample clip: tones, a beep, digital silence; nothing spoken.
    assert not run.events("av.mp4", "speech")
    assert run.of("summary", "av.mp4")[-1]["speech_s"] == 0.0


def test_real_narration_is_speech_and_music_is_not(replay):
    run = replay(SHARED_MEDIA / "nasa_13013.mp4", SHARED_MEDIA / "chaplin.mp4")
    assert [r.status for r in run.results] == ["ok", "ok"]
    narration = run.events("nasa_13013.mp4", "speech")
    # The narrator speaks from about 0.7 s to 12.2 s in three sentences (silero: 0.70-4.80, 5.18-8.19, 8.58-12.16).
    assert 2 <= len(narration) <= 5
    assert 0.4 <= narration[0]["start_s"] <= 1.0 and 11.8 <= narration[-1]["end_s"] <= 12.6
    assert run.of("summary", "nasa_13013.mp4")[-1]["speech_s"] >= 9.0
    assert not run.events("chaplin.mp4", "speech")


def test_speech_disabled_leaves_the_audio_stage_without_it(clips):
    stage = AudioStage(load_config(None, ["speech.enabled=false"], environ={}))
    rows = next(c.audio for c in decode_chunks(clips["av.mp4"]) if c.audio is not None)
    assert stage.speech is None and stage.run_batch([rows])[0].speech is None


def test_an_ended_streams_state_serves_the_next_stream_as_new():
    from pipeline.core.media import AudioRows

    scoring = SpeechScoring(load_config(None, [], environ={}), 8)
    built = []
    make = scoring._make
    scoring._make = lambda rate: built.append(rate) or make(rate)
    talk = noise(2.0, seed=3).reshape(20, 1600)
    rows_t = np.arange(20) * 0.1

    def stream(stream_id: str) -> np.ndarray:
        first = scoring.score(AudioRows(talk[:10], rows_t[:10], 16000, stream_id))
        rest = scoring.score(AudioRows(talk[10:], rows_t[10:], 16000, stream_id, last=True))
        return np.concatenate([first.prob, rest.prob])

    fresh = stream("a")  # the state the stage loaded to check silero works
    again = stream("b")  # a's, reset
    np.testing.assert_array_equal(again, fresh)
    assert built == []  # no stream paid for loading silero


def test_the_onnx_sequence_path_scores_real_speech_as_the_torchscript_model_does():
    from operators.speech import _SequenceWindows, _TorchScriptWindows

    container = av.open(str(SHARED_MEDIA / "nasa_13013.mp4"))
    resampler = av.AudioResampler(format="flt", layout="mono", rate=RATE_HZ)
    samples = np.concatenate([out.to_ndarray()[0] for frame in container.decode(audio=0)
                              for out in resampler.resample(frame)])
    container.close()
    sequence = SpeechActivity(RATE_HZ)
    assert isinstance(sequence._windows, _SequenceWindows)  # the default at 16 kHz
    reference = SpeechActivity(RATE_HZ)
    reference._windows = _TorchScriptWindows(RATE_HZ, 1)
    reference.reset()
    fast, _ = feed_in_pieces(sequence, samples, [1600] * (len(samples) // 1600 + 1))
    slow, _ = reference.feed(samples, 0.0)
    assert len(fast) == len(slow) > 300 and slow.max() > 0.9  # a narration: speech is there
    np.testing.assert_allclose(fast, slow, atol=1e-5)


def test_speech_states_leave_the_hosting_process_threads_alone():
    # The audio stage may share its process with the other operators (runtime.operator_processes):
    # a new stream's state must not set that process to one torch thread.
    import silero_vad  # noqa: F401 (its import sets one thread, once; the actor sets its own after)
    import torch

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        for rate_hz in (8000, 16000):
            scoring = SpeechScoring(load_config(None, [f"audio.sample_rate_hz={rate_hz}"], environ={}), 8)
            scoring._take_spare(), scoring._take_spare()  # the checked one, then a new one
            assert torch.get_num_threads() == 2, rate_hz
    finally:
        torch.set_num_threads(before)
