"""Speech recognition cost: CPU seconds per speech second and real-time factor, 1 and 4 streams.

The speech is real: the narration of ../shared/media/nasa_13013.mp4 (0.7-12.2 s), repeated to
``--seconds`` of continuous talk with its own sentence pauses. It is cut as the pipeline cuts it
(silero-vad, the speech detector, pipeline/stream/speech_segments.py with the default asr config) and,
as the worst case for a live stream's delay, into max_segment_s pieces with no pause at all.
Everything in one process, no Ray, one CTranslate2 thread (runtime.torch_threads):

- baseline: PyAV decode + resample of the same audio to 16 kHz mono, CPU ms per audio second;
- operator: SpeechRecognizer (tiny.en int8 unless --model) on each stream's segments, for
  1 stream and for 4 streams whose segments share the one recogniser, as the shared ASR stage
  does: CPU ms per speech second, and the real-time factor: seconds of recognition per second of
  speech that every stream speaks, from CPU time (what one core of its own would take; below 1
  keeps up with that many live streams) and from wall time (inflated on a busy machine);
- the word error rate of the narration's segments against the file's own subtitles, per beam.

With ``--pipeline`` it also replays an audio-only clip of the same talk through the real pipeline
(local Ray, default config) with asr on and off, 1 and 4 streams, and prints the wall times.

    python -m benchmarks.bench_asr [--seconds 60] [--beams 5 1] [--model tiny.en] [--pipeline]
"""

from __future__ import annotations

import argparse
import asyncio
import re
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from benchmarks.wer import word_error_rate
from operators.asr import AsrOptions, SpeechAudio, SpeechRecognizer
from operators.asr_models import resolve_whisper
from operators.speech import WINDOW_S, SpeechActivity
from pipeline.core.config import load_config
from pipeline.core.media import SpeechProbs
from pipeline.stream.detectors.bank import DetectorBank
from pipeline.stream.speech_segments import SpeechSegmenter

RATE_HZ = 16000
NASA = Path(__file__).resolve().parents[2] / "shared" / "media" / "nasa_13013.mp4"
NARRATION_S = (0.5, 12.4)
ROW = 1600


def decode_16k(path: Path) -> tuple[np.ndarray, float]:
    """The first audio stream as 16 kHz mono float32, and the CPU seconds that took."""
    started = time.process_time()
    resampler = av.AudioResampler(format="flt", layout="mono", rate=RATE_HZ)
    with av.open(str(path)) as container:
        parts = [out.to_ndarray()[0] for frame in container.decode(audio=0) for out in resampler.resample(frame)]
    parts += [out.to_ndarray()[0] for out in resampler.resample(None)]
    return np.concatenate(parts), time.process_time() - started


def subtitle_text(path: Path) -> str:
    with av.open(str(path)) as container:
        stream = container.streams.subtitles[0]
        cues = [(float(p.pts * p.time_base), s.dialogue.decode()) for p in container.demux(stream)
                if p.pts is not None for s in p.decode()]
    return " ".join(re.sub(r"^[A-Z][A-Z ]*:\s*", "", text) for start_s, text in cues if start_s < NARRATION_S[1])


def talk(narration: np.ndarray, seconds: float) -> np.ndarray:
    a, b = (int(t * RATE_HZ) for t in NARRATION_S)
    piece = narration[a:b]
    return np.tile(piece, int(np.ceil(seconds * RATE_HZ / len(piece))))[: int(seconds * RATE_HZ)]


def vad_segments(audio: np.ndarray, stream_id: str = "talk") -> tuple[list[SpeechAudio], float]:
    """Segments as the pipeline cuts them: silero-vad, the speech detector, the default asr config."""
    cfg = load_config(None, [], environ={})
    vad = SpeechActivity(RATE_HZ)
    bank = DetectorBank(stream_id, cfg.detectors, cfg.speech)
    cut = SpeechSegmenter(stream_id, RATE_HZ, cfg.asr.max_segment_s, cfg.asr.min_segment_s,
                          settle_s=cfg.speech.min_silence_s + WINDOW_S)
    segments, heard_until_s = [], 0.0
    chunk = int(cfg.decode.chunk_s * RATE_HZ) // ROW * ROW
    for at in range(0, len(audio) - ROW + 1, chunk):
        rows = audio[at:at + chunk][: (min(chunk, len(audio) - at) // ROW) * ROW].reshape(-1, ROW)
        starts = (at + np.arange(len(rows)) * ROW) / RATE_HZ
        cut.add_audio(rows, starts)
        probs, t_s = vad.feed(rows.reshape(-1), float(starts[0]))
        events = bank.on_speech(SpeechProbs(probs, t_s, WINDOW_S)) if len(t_s) else []
        heard_until_s = float(t_s[-1]) + WINDOW_S if len(t_s) else heard_until_s
        segments += cut.on_speech([(e.start_s, e.end_s) for e in events if e.detector == "speech"],
                                  bank.speech_open_from_s(), heard_until_s)
    events = bank.finish(None, len(audio) / RATE_HZ)
    segments += cut.on_speech([(e.start_s, e.end_s) for e in events if e.detector == "speech"], None, heard_until_s)
    return [SpeechAudio(s.samples_f32, s.audio_start_s) for s in segments], sum(s.duration_s for s in segments)


def fixed_segments(audio: np.ndarray, length_s: float) -> tuple[list[SpeechAudio], float]:
    n = int(length_s * RATE_HZ)
    return [SpeechAudio(audio[a:a + n], a / RATE_HZ) for a in range(0, len(audio), n)], len(audio) / RATE_HZ


def timed(recognizer: SpeechRecognizer, segments: list, streams: int) -> tuple[float, float, list]:
    """CPU and wall seconds to transcribe ``streams`` copies of ``segments``, interleaved as the
    shared stage receives them (stream 0's first, stream 1's first, ...)."""
    order = [segment for segment in segments for _ in range(streams)]
    started_cpu, started_wall = time.process_time(), time.perf_counter()
    results = [recognizer.transcribe([segment])[0] for segment in order]
    return time.process_time() - started_cpu, time.perf_counter() - started_wall, results[::streams]


def write_talk_clip(path: Path, audio: np.ndarray) -> None:
    """Audio only (AAC in MP4): the pipeline's cost is then the audio path's."""
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("aac", rate=RATE_HZ, layout="mono")
        for at in range(0, len(audio), 1024):
            frame = av.AudioFrame.from_ndarray(audio[None, at:at + 1024].copy(), format="flt", layout="mono")
            frame.sample_rate, frame.pts, frame.time_base = RATE_HZ, at, Fraction(1, RATE_HZ)
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))


def pipeline_runs(path: Path, seconds: float) -> None:
    from pipeline.compute.ray_init import init_ray
    from pipeline.compute.runtime import Pipeline
    from pipeline.output.sinks import NullSink

    init_ray(load_config(None, [], environ={}))
    print(f"\npipeline (local Ray, default config), audio-only {seconds:.0f} s clip of continuous talk:")
    for asr in ("true", "false"):
        pipeline = Pipeline(load_config(None, [f"asr.enabled={asr}", "records.stdout=false"], environ={}))
        try:
            asyncio.run(pipeline.warm_up())
            asyncio.run(pipeline.replay([str(path)], NullSink()))  # warm: first batches, caches
            for streams in (1, 4):
                started = time.perf_counter()
                results = asyncio.run(pipeline.replay([str(path)] * streams, NullSink()))
                wall_s = time.perf_counter() - started
                assert all(r.status == "ok" for r in results), [r.reason for r in results]
                print(f"  asr {asr:<5}  {streams} stream(s): {wall_s:6.1f} s wall, "
                      f"{seconds * streams / wall_s:5.1f} media s per wall s")
        finally:
            pipeline.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=60.0, help="seconds of continuous talk per stream")
    parser.add_argument("--beams", type=int, nargs="+", default=[5, 1])
    parser.add_argument("--model", default="tiny.en")
    parser.add_argument("--pipeline", action="store_true", help="also replay it through the real pipeline")
    args = parser.parse_args()

    narration, _ = decode_16k(NASA)
    audio = talk(narration, args.seconds)
    with tempfile.TemporaryDirectory() as folder:
        clip = Path(folder) / "talk.m4a"
        write_talk_clip(clip, audio)
        decoded, decode_cpu_s = decode_16k(clip)
        decode_ms = 1000 * decode_cpu_s / (len(decoded) / RATE_HZ)
        print(f"baseline: PyAV decode + resample to 16 kHz mono: {decode_ms:.2f} CPU ms per audio second")
        cases = {"VAD segments": vad_segments(audio),
                 "15 s, no pause": fixed_segments(audio, load_config(None, [], environ={}).asr.max_segment_s)}
        folder_ = resolve_whisper(args.model)
        reference = subtitle_text(NASA)
        narration_segments, _ = vad_segments(narration[: int(13 * RATE_HZ)], "nasa")
        print(f"operator: Whisper {args.model}, {args.seconds:.0f} s of talk per stream, one thread, CPU int8")
        print(f"{'beam':>4} {'segments':<16} {'n':>3} {'mean s':>6} {'streams':>7} {'CPU ms/speech s':>15} "
              f"{'x decode':>8} {'RTF cpu':>7} {'RTF wall':>8}")
        for beam in args.beams:
            recognizer = SpeechRecognizer(folder_.path, AsrOptions(beam_size=beam), "cpu", 1)
            recognizer.transcribe(narration_segments[:1])  # warm-up
            for name, (segments, speech_s) in cases.items():
                for streams in (1, 4):
                    cpu_s, wall_s, _ = timed(recognizer, segments, streams)
                    per_s = 1000 * cpu_s / (speech_s * streams)
                    print(f"{beam:>4} {name:<16} {len(segments):>3} {speech_s / len(segments):>6.1f} {streams:>7} "
                          f"{per_s:>15.1f} {per_s / decode_ms:>8.0f} {cpu_s / speech_s:>7.2f} "
                          f"{wall_s / speech_s:>8.2f}")
            texts = [r.text for r in recognizer.transcribe(narration_segments) if r is not None]
            wer = word_error_rate(reference, " ".join(texts))
            print(f"     WER on nasa_13013's narration vs its subtitles: {wer:.3f}")
        if args.pipeline:
            pipeline_runs(clip, args.seconds)
    print("RTF: seconds the one recogniser needs per second of speech each stream speaks (from CPU and "
          "from wall time); below 1 keeps that many live streams real-time on one core.")


if __name__ == "__main__":
    main()
