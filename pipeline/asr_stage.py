"""The ASR stage: Whisper on the speech segments of every stream (placed by Ray as the shared "asr"
operator, one model per process; runnable without it), and whether the pipeline runs it at all.

A request is one ``SpeechSegment``; the answer is the operator's ``Transcription`` of it, or
None when Whisper heard no speech in it. Segments of a batch are transcribed one after another
(operators/asr.py says why).
"""

from __future__ import annotations

import logging

from pipeline.config import Config
from pipeline.speech_segments import SpeechSegment

log = logging.getLogger("avfuse.asr")

ASR_SAMPLE_RATE_HZ = 16000  # operators.asr.SAMPLE_RATE_HZ, without importing faster-whisper here


def transcripts_off_reason(cfg: Config) -> str | None:
    """Why ``asr.enabled`` cannot be honoured with this config; None when it can (or is not asked)."""
    if not cfg.asr.enabled:
        return None
    if not cfg.speech.enabled:
        return "they need speech detection (speech.enabled: false)"
    if cfg.audio.sample_rate_hz != ASR_SAMPLE_RATE_HZ:
        return f"Whisper hears 16 kHz audio, audio.sample_rate_hz is {cfg.audio.sample_rate_hz}"
    from operators.speech import unavailable_reason

    reason = unavailable_reason(cfg.audio.sample_rate_hz)
    return None if reason is None else f"they need speech detection ({reason})"


def transcripts_wanted(cfg: Config) -> bool:
    return cfg.asr.enabled and transcripts_off_reason(cfg) is None


class AsrStage:
    def __init__(self, cfg: Config):
        import torch

        from operators.asr import SAMPLE_RATE_HZ, AsrOptions, SpeechRecognizer, UnknownLanguageError
        from operators.asr_models import resolve_whisper

        if SAMPLE_RATE_HZ != ASR_SAMPLE_RATE_HZ:
            raise ValueError(f"the ASR stage sends {ASR_SAMPLE_RATE_HZ} Hz audio, Whisper reads {SAMPLE_RATE_HZ} Hz")
        folder = resolve_whisper(cfg.asr.model)
        language = None if cfg.asr.language == "auto" else cfg.asr.language
        try:
            self.recognizer = SpeechRecognizer(folder.path, AsrOptions(language, cfg.asr.beam_size),
                                               cfg.runtime.device, cfg.runtime.torch_threads)
        except UnknownLanguageError as exc:
            raise ValueError(f"asr.language: {exc}") from None
        if self.recognizer.fallback_reason is not None:
            log.warning("Whisper runs on the CPU: CTranslate2 cannot use the GPU (%s)",
                        self.recognizer.fallback_reason, extra={"stage": "asr"})
        self.weights = folder.source
        self.device = torch.device(self.recognizer.device)  # what StageActor reports and meters

    def run_batch(self, items: list[SpeechSegment]):
        from operators.asr import SpeechAudio

        return self.recognizer.transcribe([SpeechAudio(item.samples_f32, item.audio_start_s) for item in items])
