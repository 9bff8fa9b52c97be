"""The ASR stage: Whisper on the speech segments of every stream (placed by Ray as the shared "asr"
operator, one model per process; runnable without it).

A request is one ``SpeechSegment``; the answer is the operator's ``Transcription`` of it, or
None when Whisper heard no speech in it. Segments of a batch are transcribed one after another
(operators/asr.py says why).
"""

from __future__ import annotations

import logging

from pipeline.core.config import Config
from pipeline.stream.speech_segments import ASR_SAMPLE_RATE_HZ, SpeechSegment

log = logging.getLogger("avfuse.asr")

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
