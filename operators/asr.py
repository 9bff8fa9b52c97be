"""Speech recognition: Whisper (faster-whisper on CTranslate2) on speech segments another stage cut.

Contract of ``SpeechRecognizer``:

- Construction: ``SpeechRecognizer(model_dir, options, device, threads)`` loads a CTranslate2
  Whisper folder (``operators.asr_models.resolve_whisper`` finds and checks one): int8 on the CPU,
  float16 on CUDA. ``device`` is auto, cpu, cuda or cuda:N (ValueError otherwise): CUDA where
  CTranslate2 sees that GPU and can run on it (one second of silence is transcribed there first),
  else the CPU; ``fallback_reason`` says why a GPU asked for (cuda, cuda:N) is not used. The
  pipeline checked that torch has the GPU; CTranslate2 brings its own CUDA libraries (its 4.8
  wheels load cuBLAS 12), so it may not. ``threads`` is CTranslate2's intra-op threads on the CPU.
  A folder CTranslate2 cannot read raises ``CheckpointError`` naming its model.bin; a language the
  model does not know raises ``UnknownLanguageError``. Every message is one line. Nothing is
  downloaded.
- Input: ``transcribe(segments)``, a list of ``SpeechAudio``: ``samples_f32`` [N] float32 mono
  in [-1, 1] at ``SAMPLE_RATE_HZ`` (16 kHz, Whisper's rate; no resampling here) and ``start_s``,
  the time of ``samples_f32[0]`` in seconds on the stream clock. Whisper reads 30 s at a time; a
  segment longer than ``MAX_SEGMENT_S`` is refused (ValueError), so that nothing is dropped quietly.
- Output: one entry per segment, in order: a ``Transcription`` (text, language and its
  probability, words with their times on the stream clock, avg_logprob, no_speech_prob), or None
  when Whisper heard no speech in it (its own rule: no_speech_prob > 0.6 with avg_logprob < -1).
- Decoding: ``vad_filter`` off (the caller's VAD already cut the segment), no conditioning on
  the previous text (consecutive segments may come from different streams), word timestamps on,
  Whisper's temperature fallback on a repetitive or improbable decode. With ``language`` None the
  language is detected per segment (an English-only model always says "en", probability 1).
- Segments run one after another. faster-whisper's ``BatchedInferencePipeline`` does take several
  clips in one call, but on the CPU four 3-4 s segments cost the same batched as one by one
  (2.08 s vs 2.21 s greedy, 2.12 s vs 2.08 s beam 5, tiny.en int8, one thread): the encoder reads
  a padded 30 s window either way; and it detects one language for the whole call and drops the
  per-segment language probability, which segments of different streams need.
- Determinism: the same samples give the same output on one device: CTranslate2's kernels are
  deterministic, and the fallback's sampling is seeded per segment (``SEED``), so a segment's text
  does not depend on what was transcribed before it.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from operators.checkpoint import CheckpointError

SAMPLE_RATE_HZ = 16000
MAX_SEGMENT_S = 30.0  # one Whisper window
# Whisper's own thresholds (openai/whisper, faster-whisper's defaults).
NO_SPEECH_THRESHOLD = 0.6
LOG_PROB_THRESHOLD = -1.0
SEED = 0


class UnknownLanguageError(ValueError):
    """The language asked for is not one the model knows; the message is one line."""


@dataclass(frozen=True)
class AsrOptions:
    """How to decode. ``language`` None: detect per segment; ``beam_size`` 1 is greedy."""

    language: str | None = None
    beam_size: int = 5


@dataclass
class SpeechAudio:
    """One segment to transcribe: samples_f32 [N] float32 mono at 16 kHz, starting at start_s (stream clock)."""

    samples_f32: np.ndarray
    start_s: float


@dataclass
class Word:
    word: str
    start_s: float
    end_s: float
    probability: float


@dataclass
class Transcription:
    """What Whisper heard in one segment; times in seconds on the stream clock.

    avg_logprob: mean log-probability per decoded token (<= 0); no_speech_prob: Whisper's
    probability that the segment holds no speech. Both are token-weighted means over the
    Whisper windows of the segment (one, unless Whisper continued after its first window ended early).
    """

    text: str
    language: str
    language_probability: float
    words: list[Word] = field(default_factory=list)
    avg_logprob: float = 0.0
    no_speech_prob: float = 0.0


def _ctranslate2_device(device: str) -> tuple[str, int, str | None]:
    """(kind, index, why not CUDA) for ``device``; ValueError for a malformed one."""
    import ctranslate2

    text = device.strip().lower()
    match = re.fullmatch(r"cuda(?::(\d+))?", text)
    if text not in ("auto", "cpu") and match is None:
        raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {device!r}")
    if text == "cpu":
        return "cpu", 0, None
    index = int(match.group(1) or 0) if match else 0
    cuda_devices = ctranslate2.get_cuda_device_count()
    if index >= cuda_devices:
        return "cpu", 0, None if text == "auto" else f"CTranslate2 sees {cuda_devices} CUDA device(s)"
    return "cuda", index, None


class SpeechRecognizer:
    """Whisper on speech segments; see the module docstring for the contract."""

    def __init__(self, model_dir: str | Path, options: AsrOptions = AsrOptions(), device: str = "auto",
                 threads: int = 1):
        # Only local folders are loaded, but faster-whisper imports huggingface_hub, which must
        # never try the network from a pipeline worker.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        import ctranslate2
        from faster_whisper import WhisperModel

        self._ctranslate2 = ctranslate2

        model_dir = Path(model_dir)
        kind, index, self.fallback_reason = _ctranslate2_device(device)  # why not on the GPU asked for
        if kind == "cuda":
            try:
                self.device, self.compute_type = f"cuda:{index}", "float16"
                self._model = WhisperModel(str(model_dir), device="cuda", device_index=index,
                                           compute_type=self.compute_type, num_workers=1)
                probe, _ = self._model.transcribe(np.zeros(SAMPLE_RATE_HZ, np.float32), vad_filter=False,
                                                  language=None if self._model.model.is_multilingual else "en")
                list(probe)  # a generator: decoding, and CTranslate2's first products, happen here
            except (RuntimeError, ValueError, OSError) as exc:
                # CTranslate2's CUDA build loads its own CUDA libraries (cuBLAS 12 for 4.8) at the
                # first product: a GPU that torch uses may still be out of its reach.
                self.fallback_reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                kind = "cpu"
        if kind == "cpu":
            self._load(WhisperModel, model_dir, kind, 0, threads)
        self.multilingual = bool(self._model.model.is_multilingual)
        if options.language is not None and options.language not in self._model.supported_languages:
            known = "English only" if not self.multilingual else f"{len(self._model.supported_languages)} languages"
            raise UnknownLanguageError(f"language {options.language!r} is not one this Whisper model knows ({known})")
        self.options = options

    def _load(self, whisper_model, model_dir: Path, kind: str, index: int, threads: int) -> None:
        self.device = kind if kind == "cpu" else f"cuda:{index}"
        self.compute_type = "float16" if kind == "cuda" else "int8"
        try:
            self._model = whisper_model(str(model_dir), device=kind, device_index=index,
                                        compute_type=self.compute_type, cpu_threads=threads, num_workers=1)
        except (RuntimeError, ValueError, OSError) as exc:  # CTranslate2 says RuntimeError for a damaged file
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise CheckpointError(f"Whisper weights {model_dir / 'model.bin'} are not loadable: {reason}") from None

    def transcribe(self, segments: list[SpeechAudio]) -> list[Transcription | None]:
        for segment in segments:
            if segment.samples_f32.size > MAX_SEGMENT_S * SAMPLE_RATE_HZ:
                raise ValueError(f"segment at {segment.start_s:.3f} s is longer than {MAX_SEGMENT_S:.0f} s")
        return [self._one(segment) for segment in segments]

    def _one(self, segment: SpeechAudio) -> Transcription | None:
        # A copy: segments may be read-only views of Ray's object store; faster-whisper pads in place.
        samples = np.array(segment.samples_f32, dtype=np.float32).reshape(-1)
        self._ctranslate2.set_random_seed(SEED)
        parts, info = self._model.transcribe(
            samples, language=self.options.language, beam_size=self.options.beam_size, vad_filter=False,
            word_timestamps=True, condition_on_previous_text=False,
            no_speech_threshold=NO_SPEECH_THRESHOLD, log_prob_threshold=LOG_PROB_THRESHOLD)
        parts = list(parts)  # a generator: decoding happens here
        text = "".join(part.text for part in parts).strip()
        if not text:
            return None
        weights = np.array([max(1, len(part.tokens)) for part in parts], np.float64)
        at = float(segment.start_s)
        words = [Word(w.word.strip(), at + float(w.start), at + float(w.end), float(w.probability))
                 for part in parts for w in (part.words or ()) if w.word.strip()]
        return Transcription(
            text=text, language=info.language, language_probability=float(info.language_probability),
            words=words,
            avg_logprob=float(np.average([p.avg_logprob for p in parts], weights=weights)),
            no_speech_prob=float(np.average([p.no_speech_prob for p in parts], weights=weights)))
