"""BundleAudioEncoder: a pretrained torchaudio wav2vec2 / HuBERT / WavLM bundle as the audio encoder.

It keeps AudioEncoder's contract (one token per row), so the pipeline cannot
tell the two apart: each row goes through the bundle model's feature extractor
and transformer, the last layer's frames are mean-pooled, and a linear layer
projects them to ``embed_dim``.

Weights are the bundle's own: the file its ``get_model()`` reads from torch.hub's
cache (downloaded there on first use), or a local copy of that state_dict.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
import torchaudio
from torch import nn
from torchaudio.pipelines import Wav2Vec2Bundle

from operators.checkpoint import (
    CheckpointError,
    CheckpointMismatchError,
    check_checkpoint,
    is_avfuse_checkpoint,
    load_state_strict,
    preprocessing_differences,
    read_torch_file,
    seeded_init,
)
from operators.hub_weights import fetch_hub_state_dict
from operators.row_encoder import KIND, AudioEncoderSpec, RowEncoder

ENCODER = "torchaudio_bundle"

# Where torchaudio's bundles keep files named by a bare file name (pipelines/_wav2vec2/utils.py).
TORCHAUDIO_MODELS_URL = "https://download.pytorch.org/torchaudio/models/"
# torchaudio.models.wav2vec2_model's feature extractor when the params leave it unset.
_DEFAULT_CONV_LAYERS = [(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512, 2, 2)] * 2
_FACTORIES = {"Wav2Vec2": torchaudio.models.wav2vec2_model, "WavLM": torchaudio.models.wavlm_model}


def bundle_names() -> list[str]:
    """The torchaudio.pipelines bundles this encoder can use (wav2vec2, HuBERT, WavLM, MMS)."""
    pipelines = torchaudio.pipelines
    return [name for name in pipelines.__all__ if isinstance(getattr(pipelines, name, None), Wav2Vec2Bundle)]


def resolve_bundle(spec: str | Wav2Vec2Bundle) -> Wav2Vec2Bundle:
    """A bundle object as given, or ``getattr(torchaudio.pipelines, name)``; CheckpointError for anything else."""
    if isinstance(spec, Wav2Vec2Bundle):
        return spec
    bundle = getattr(torchaudio.pipelines, spec, None) if isinstance(spec, str) and not spec.startswith("_") else None
    if not isinstance(bundle, Wav2Vec2Bundle):
        raise CheckpointError(
            f"audio_encoder.bundle {spec!r} is not a wav2vec2 / HuBERT / WavLM bundle of torchaudio.pipelines; "
            f"one of {', '.join(bundle_names())}"
        )
    return bundle


def bundle_url(bundle: Wav2Vec2Bundle) -> str:
    """The URL the bundle's ``get_model()`` loads through torch.hub (as torchaudio's ``_get_state_dict`` builds it)."""
    path = bundle._path
    return path if path.startswith("https") else TORCHAUDIO_MODELS_URL + path


def frames_per_row(bundle: Wav2Vec2Bundle, row_samples: int) -> int:
    """Feature frames the bundle's conv front end makes of one row (no padding: floor((L - k) / s) + 1 per layer)."""
    length = row_samples
    for _, kernel, stride in bundle._params.get("extractor_conv_layer_config") or _DEFAULT_CONV_LAYERS:
        length = (length - kernel) // stride + 1 if length >= kernel else 0
    return length


def _bare_model(bundle: Wav2Vec2Bundle) -> nn.Module:
    """The bundle's architecture without weights and without its ASR head (``aux``): only features are used."""
    if bundle._model_type not in _FACTORIES:
        raise CheckpointError(f"audio_encoder.bundle of model type {bundle._model_type!r} is not supported")
    params = dict(bundle._params, aux_num_out=None)
    return _FACTORIES[bundle._model_type](**params)


def _model_state(state: dict) -> dict:
    """A bundle state_dict as the bare model names it: the file's, or ``get_model().state_dict()``'s."""
    # get_model() wraps models that normalise their input, which prefixes every key with 'model.'.
    if state and all(key.startswith("model.") for key in state):
        state = {key[len("model."):]: value for key, value in state.items()}
    return state


class BundleAudioEncoder(RowEncoder):
    """Audio rows to embeddings with a pretrained torchaudio bundle.

    Input:  ``rows`` float32 [K, R], mono, in [-1, 1], R == row_samples, sampled
            at ``sample_rate_hz``, which must be the bundle's rate; on the
            module's device.
    Output: float32 [K, embed_dim], one token per row, independent of the
            other rows in the batch (each row is normalised on its own where the
            bundle normalises its input; torchaudio's wrapper normalises the
            whole batch tensor at once).

    Weights: ``cfg.checkpoint`` if set (an avfuse checkpoint of kind
    'audio_encoder' made by this encoder, or the bundle's state_dict), else the
    bundle's published file through torch.hub's cache. The projection is a
    seeded init until an avfuse checkpoint replaces it.

    ``bundle`` (a Wav2Vec2Bundle object) overrides the name in ``cfg.bundle``;
    the name is still what checkpoints record.
    """

    def __init__(
        self,
        cfg: AudioEncoderSpec,
        sample_rate_hz: int,
        row_samples: int,
        bundle: Wav2Vec2Bundle | None = None,
    ):
        super().__init__()
        self.cfg = cfg
        self.sample_rate_hz = int(sample_rate_hz)
        self.row_samples = int(row_samples)
        self.bundle_name = str(cfg.bundle)
        self.bundle = resolve_bundle(bundle if bundle is not None else cfg.bundle)
        # Checked before anything is read, downloaded or built: these fail at once.
        bundle_rate = float(self.bundle.sample_rate)
        bundle_rate_hz = int(bundle_rate) if bundle_rate.is_integer() else bundle_rate
        differences = preprocessing_differences(
            {"sample_rate_hz": bundle_rate_hz}, {"sample_rate_hz": self.sample_rate_hz}
        )
        if differences:
            raise CheckpointMismatchError(
                f"audio_encoder.bundle {self.bundle_name} was trained on other audio (set audio.sample_rate_hz "
                f"to {bundle_rate_hz}): " + "; ".join(differences)
            )
        if frames_per_row(self.bundle, self.row_samples) < 1:
            raise ValueError(f"row_samples={row_samples} is too short for audio_encoder.bundle {self.bundle_name}")
        self.normalize_waveform = bool(self.bundle._normalize_waveform)
        weights, source = self._read_weights()
        with seeded_init():
            self.model = _bare_model(self.bundle)
            self.proj = nn.Linear(int(self.bundle._params["encoder_embed_dim"]), cfg.embed_dim)
        if is_avfuse_checkpoint(weights):
            load_state_strict(self, weights["state_dict"], source)
        else:
            # 'aux.' is the ASR head of fine-tuned bundles, which features do not use.
            load_state_strict(self.model, _model_state(weights), source, ignore_prefixes=("aux.",))
        self.eval()

    def _read_weights(self) -> tuple[Any, str]:
        """(an avfuse checkpoint or the bundle's state_dict, where it came from), validated as far as it can be."""
        path = self.cfg.checkpoint
        if path:
            obj = read_torch_file(path)
            if is_avfuse_checkpoint(obj):
                return check_checkpoint(obj, path, KIND, self.preprocessing), path
            if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
                return obj, path
            raise CheckpointError(f"checkpoint {path} is neither an avfuse checkpoint nor a bundle state_dict")
        url = bundle_url(self.bundle)
        state = fetch_hub_state_dict(
            f"audio_encoder.bundle {self.bundle_name}",
            url,
            # The bundle's own loader: what get_model() reads, including its fix-ups of ASR heads.
            lambda download_kwargs: self.bundle._get_state_dict(download_kwargs),
            local_key="audio_encoder.checkpoint",
        )
        return state, url

    @property
    def preprocessing(self) -> dict:
        return {
            "encoder": ENCODER,
            "bundle": self.bundle_name,
            "sample_rate_hz": self.sample_rate_hz,
            "row_samples": self.row_samples,
        }

    def tokens(self, rows: torch.Tensor) -> torch.Tensor:
        if self.normalize_waveform:
            rows = F.layer_norm(rows, rows.shape[-1:])
        layers, _ = self.model.extract_features(rows)
        return self.proj(layers[-1].mean(dim=1))  # [K, frames, D] -> [K, embed_dim]
