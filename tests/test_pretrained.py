"""Specifications of pretrained encoder loading: torchvision weights and torchaudio bundles (CPU, no Ray, offline).

Published weights are hundreds of MB, so these tests put small but real files
exactly where torch.hub would have downloaded them ($TORCH_HOME/hub/checkpoints)
and check that the real loading code reads them. No test downloads anything:
torch.hub's downloader is replaced by one that fails as an offline machine does.
"""

from __future__ import annotations

import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
import torchaudio
import torchvision
from torchaudio.pipelines import Wav2Vec2Bundle
from torchvision.models import MobileNet_V3_Small_Weights

from operators import (
    AudioEncoder,
    BundleAudioEncoder,
    CheckpointError,
    CheckpointMismatchError,
    VisionEncoder,
    build_audio_encoder,
)
from operators.hub_weights import hub_cache_file
from operators.vision import resolve_weights
from pipeline.compute.operator_specs import AudioEncoderSpec, VisionSpec, spec_of
from pipeline.compute.stages import AudioStage
from pipeline.core.config import Config, ConfigError, load_config

SR = 16000
ROW = 1600  # 100 ms at 16 kHz
IMG = 64  # small frames keep the vision tests fast
MOBILENET_WEIGHTS = MobileNet_V3_Small_Weights.IMAGENET1K_V1

# A wav2vec2 of the base architecture's shape (same conv strides, so 4 frames per 100 ms row), shrunk.
TINY_PARAMS = {
    "extractor_mode": "group_norm",
    "extractor_conv_layer_config": [(16, 10, 5)] + [(16, 3, 2)] * 4 + [(16, 2, 2)] * 2,
    "extractor_conv_bias": False,
    "encoder_embed_dim": 24,
    "encoder_projection_dropout": 0.1,
    "encoder_pos_conv_kernel": 8,
    "encoder_pos_conv_groups": 4,
    "encoder_num_layers": 2,
    "encoder_num_heads": 2,
    "encoder_attention_dropout": 0.1,
    "encoder_ff_interm_features": 48,
    "encoder_ff_interm_dropout": 0.0,
    "encoder_dropout": 0.1,
    "encoder_layer_norm_first": False,
    "encoder_layer_drop": 0.05,
    "aux_num_out": None,
}
TINY_NAME = "AVFUSE_TEST_TINY_WAV2VEC2"


def tiny_bundle(normalize_waveform: bool = False, sample_rate_hz: float = 16000) -> Wav2Vec2Bundle:
    file_name = f"avfuse_test_tiny_wav2vec2{'_norm' if normalize_waveform else ''}.pth"
    return Wav2Vec2Bundle(
        _path=file_name,  # a bare name: torchaudio fetches it from download.pytorch.org/torchaudio/models/
        _params=TINY_PARAMS,
        _sample_rate=sample_rate_hz,
        _normalize_waveform=normalize_waveform,
        _model_type="Wav2Vec2",
    )


def tiny_state_dict(seed: int = 7) -> dict:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return torchaudio.models.wav2vec2_model(**TINY_PARAMS).state_dict()


def mobilenet_state_dict(seed: int = 1234) -> dict:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # weights unlike the encoder's own deterministic init
        model = torchvision.models.mobilenet_v3_small(weights=None)
    # Published weights carry trained batch-norm statistics; give these some too.
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 2.0)
    return model.state_dict()


def bundle_config(**kw) -> AudioEncoderSpec:
    return AudioEncoderSpec(kind="torchaudio_bundle", bundle=kw.pop("bundle", TINY_NAME), embed_dim=32, **kw)


def frames(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, IMG, IMG, 3), dtype=np.uint8)


def noise_rows(k: int, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal((k, ROW)) * 0.1).astype(np.float32)


@pytest.fixture
def downloads(monkeypatch) -> list[tuple[str, str]]:
    """Every download torch.hub attempts, as (url, destination); each fails as it would offline."""
    attempts: list[tuple[str, str]] = []

    def offline(url, dst, *args, **kwargs):
        attempts.append((url, str(dst)))
        raise urllib.error.URLError("offline (test)")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    return attempts


@pytest.fixture
def hub_dir(tmp_path, monkeypatch, downloads) -> Path:
    """An empty torch hub cache of this test's own: $TORCH_HOME/hub/checkpoints."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)  # in case anything called torch.hub.set_dir
    checkpoints = tmp_path / "torch" / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    return checkpoints


@pytest.fixture
def tiny_in_cache(hub_dir, monkeypatch) -> Wav2Vec2Bundle:
    """The tiny bundle, named TINY_NAME in torchaudio.pipelines, with its weights file in the hub cache."""
    bundle = tiny_bundle()
    monkeypatch.setattr(torchaudio.pipelines, TINY_NAME, bundle, raising=False)
    torch.save(tiny_state_dict(), hub_dir / bundle._path)
    return bundle


# --- torchvision weights ----------------------------------------------------------------------


def test_weights_names_resolve_as_short_default_and_full_enum_names():
    for name in ("IMAGENET1K_V1", "DEFAULT", "MobileNet_V3_Small_Weights.IMAGENET1K_V1"):
        assert resolve_weights("mobilenet_v3_small", name) is MOBILENET_WEIGHTS
    with pytest.raises(CheckpointError, match="it has IMAGENET1K_V1, DEFAULT"):
        resolve_weights("mobilenet_v3_small", "IMAGENET1K_V2")
    with pytest.raises(CheckpointError, match="not MobileNet_V3_Small_Weights"):
        resolve_weights("mobilenet_v3_small", "ResNet18_Weights.IMAGENET1K_V1")


def test_vision_weights_load_the_cached_torchvision_file_like_the_same_state_dict_as_checkpoint(hub_dir, downloads):
    # The file name torchvision's own loader reads: the basename of the weights' URL.
    cached = hub_dir / Path(MOBILENET_WEIGHTS.url).name
    assert cached.name == "mobilenet_v3_small-047dcff4.pth" and cached == hub_cache_file(MOBILENET_WEIGHTS.url)
    state = mobilenet_state_dict()
    torch.save(state, cached)
    pretrained = VisionEncoder(VisionSpec(embed_dim=32, weights="IMAGENET1K_V1"), IMG)
    assert downloads == []  # read from the cache
    for key, value in pretrained.backbone.state_dict().items():
        assert torch.equal(value, state[key]), key
    same_file = VisionEncoder(VisionSpec(embed_dim=32, checkpoint=str(cached)), IMG)
    untrained = VisionEncoder(VisionSpec(embed_dim=32), IMG)
    x = frames(3)
    np.testing.assert_array_equal(pretrained.encode(x), same_file.encode(x))
    assert not np.allclose(pretrained.encode(x), untrained.encode(x), atol=1e-3)


def test_vision_weights_absent_from_the_cache_offline_name_the_expected_file_in_one_line(hub_dir, downloads):
    with pytest.raises(CheckpointError) as info:
        VisionEncoder(VisionSpec(weights="DEFAULT"), IMG)
    message = str(info.value)
    # The file named is the one torch.hub tried to download to, i.e. where a copy must go.
    assert downloads == [(MOBILENET_WEIGHTS.url, str(hub_dir / "mobilenet_v3_small-047dcff4.pth"))]
    assert f"copy that file to {hub_dir / 'mobilenet_v3_small-047dcff4.pth'}" in message
    assert "set vision.checkpoint to a local copy" in message and "offline (test)" in message
    assert "\n" not in message and not isinstance(info.value, CheckpointMismatchError)


def test_unreadable_cached_weights_file_is_named_in_one_line(hub_dir):
    (hub_dir / "mobilenet_v3_small-047dcff4.pth").write_bytes(b"a truncated download")
    with pytest.raises(CheckpointError, match="cached file .*mobilenet_v3_small-047dcff4.pth is not readable") as info:
        VisionEncoder(VisionSpec(weights="DEFAULT"), IMG)
    assert "\n" not in str(info.value)


def test_vision_weights_trained_with_other_mean_and_std_fail_loudly_naming_the_keys(hub_dir, downloads):
    cfg = VisionSpec(weights="IMAGENET1K_V1", mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    with pytest.raises(CheckpointMismatchError) as info:
        VisionEncoder(cfg, IMG)
    message = str(info.value)
    assert "mean: checkpoint=(0.485, 0.456, 0.406) config=(0.5, 0.5, 0.5)" in message
    assert "std: checkpoint=(0.229, 0.224, 0.225) config=(0.5, 0.5, 0.5)" in message
    assert downloads == []  # refused before fetching anything


def test_vision_weights_and_checkpoint_together_are_a_config_error():
    with pytest.raises(ConfigError, match="vision.weights and vision.checkpoint"):
        load_config(sets=["vision.weights=DEFAULT", "vision.checkpoint=/models/v.pt"], environ={})


# --- torchaudio bundles -----------------------------------------------------------------------


@pytest.mark.parametrize("normalize_waveform", [False, True])
def test_bundle_encoder_loads_the_file_get_model_reads_from_the_torch_hub_cache(
    hub_dir, downloads, monkeypatch, normalize_waveform
):
    bundle = tiny_bundle(normalize_waveform)
    monkeypatch.setattr(torchaudio.pipelines, TINY_NAME, bundle, raising=False)
    torch.save(tiny_state_dict(), hub_dir / bundle._path)
    encoder = build_audio_encoder(bundle_config(), SR, ROW)  # resolves the name in torchaudio.pipelines
    assert isinstance(encoder, BundleAudioEncoder) and downloads == []
    # The bundle's own get_model() reads the same cached file: features must agree row by row.
    reference = bundle.get_model()
    rows = noise_rows(3)
    with torch.inference_mode():
        pooled = torch.cat([reference.extract_features(torch.from_numpy(r[None]))[0][-1].mean(dim=1) for r in rows])
        expected = encoder.proj(pooled).numpy()
    np.testing.assert_allclose(encoder.encode(rows), expected, rtol=1e-5, atol=1e-5)


def test_bundle_state_dict_in_a_local_file_needs_no_cache(tmp_path, hub_dir, tiny_in_cache, downloads):
    from_cache = BundleAudioEncoder(bundle_config(), SR, ROW)
    local = tmp_path / "tiny.pth"
    torch.save(tiny_state_dict(), local)
    (hub_dir / tiny_in_cache._path).unlink()
    from_file = BundleAudioEncoder(bundle_config(checkpoint=str(local)), SR, ROW)
    # get_model().state_dict() of a bundle that normalises its input has 'model.' keys: also accepted.
    prefixed = tmp_path / "prefixed.pth"
    torch.save({f"model.{key}": value for key, value in tiny_state_dict().items()}, prefixed)
    from_prefixed = BundleAudioEncoder(bundle_config(checkpoint=str(prefixed)), SR, ROW)
    rows = noise_rows(2)
    np.testing.assert_array_equal(from_file.encode(rows), from_cache.encode(rows))
    np.testing.assert_array_equal(from_prefixed.encode(rows), from_cache.encode(rows))
    assert downloads == []


def test_named_bundle_absent_from_the_cache_offline_is_a_one_line_error(hub_dir, downloads):
    with pytest.raises(CheckpointError) as info:
        build_audio_encoder(bundle_config(bundle="WAV2VEC2_BASE"), SR, ROW)
    message = str(info.value)
    expected = hub_dir / "wav2vec2_fairseq_base_ls960.pth"
    # Exactly the file the bundle's own get_model() would have downloaded.
    assert downloads == [("https://download.pytorch.org/torchaudio/models/wav2vec2_fairseq_base_ls960.pth",
                          str(expected))]
    assert message.startswith("audio_encoder.bundle WAV2VEC2_BASE: wav2vec2_fairseq_base_ls960.pth is not in")
    assert f"copy that file to {expected}" in message and "set audio_encoder.checkpoint" in message
    assert "\n" not in message


def test_bundle_trained_at_another_sample_rate_fails_loudly(hub_dir, downloads):
    with pytest.raises(CheckpointMismatchError, match="sample_rate_hz: checkpoint=16000 config=48000"):
        build_audio_encoder(bundle_config(bundle="WAV2VEC2_BASE"), 48000, 4800)
    with pytest.raises(CheckpointMismatchError, match="set audio.sample_rate_hz to 8000"):
        BundleAudioEncoder(bundle_config(), SR, ROW, bundle=tiny_bundle(sample_rate_hz=8000))
    assert downloads == []


def test_bundle_encoder_keeps_the_audio_encoder_contract(tiny_in_cache):
    encoder = BundleAudioEncoder(bundle_config(), SR, ROW)
    rows = np.concatenate([noise_rows(3), np.zeros((1, ROW), np.float32)])
    out = encoder.encode(rows)
    assert out.shape == (4, 32) and out.dtype == np.float32 and np.isfinite(out).all()
    assert encoder.encode(np.zeros((0, ROW), np.float32)).shape == (0, 32)
    for i in range(len(rows)):  # rows are independent of the batch they are in
        np.testing.assert_allclose(encoder.encode(rows[i : i + 1]), out[i : i + 1], atol=1e-5, rtol=1e-5)
    assert np.abs(out[0] - out[3]).max() > 1e-3
    with pytest.raises(ValueError, match=r"\[K, 1600\]"):
        encoder.encode(np.zeros((2, 800), np.float32))
    with pytest.raises(ValueError, match="too short"):
        BundleAudioEncoder(bundle_config(), SR, 300)


def test_bundle_encoder_avfuse_checkpoint_reloads_to_identical_outputs_without_the_cache(
    tmp_path, hub_dir, tiny_in_cache
):
    trained = BundleAudioEncoder(bundle_config(), SR, ROW)
    with torch.no_grad():
        trained.proj.weight.mul_(3.0)  # a loader ignoring the file would be caught
    trained.save(tmp_path / "a.pt")
    (hub_dir / tiny_in_cache._path).unlink()
    loaded = build_audio_encoder(bundle_config(checkpoint=str(tmp_path / "a.pt")), SR, ROW)
    rows = noise_rows(4)
    np.testing.assert_array_equal(loaded.encode(rows), trained.encode(rows))
    with pytest.raises(CheckpointMismatchError, match="row_samples: checkpoint=1600 config=3200"):
        BundleAudioEncoder(bundle_config(checkpoint=str(tmp_path / "a.pt")), SR, 2 * ROW)


def test_mel_conv_checkpoint_does_not_load_into_a_bundle_encoder(tmp_path, tiny_in_cache):
    AudioEncoder(AudioEncoderSpec(embed_dim=32), SR, ROW).save(tmp_path / "mel.pt")
    with pytest.raises(CheckpointMismatchError, match="bundle: checkpoint='<absent>' config='AVFUSE_TEST_TINY"):
        BundleAudioEncoder(bundle_config(checkpoint=str(tmp_path / "mel.pt")), SR, ROW)


def test_unknown_bundle_name_lists_the_bundles_there_are():
    with pytest.raises(CheckpointError, match="not a wav2vec2 / HuBERT / WavLM bundle.*WAV2VEC2_BASE.*WAVLM_BASE"):
        build_audio_encoder(bundle_config(bundle="TACOTRON2_WAVERNN_CHAR_LJSPEECH"), SR, ROW)


def test_bundle_kind_needs_a_bundle_name_and_mel_conv_refuses_one():
    with pytest.raises(ConfigError, match="needs audio_encoder.bundle"):
        load_config(sets=["audio_encoder.kind=torchaudio_bundle"], environ={})
    with pytest.raises(ConfigError, match="used only with audio_encoder.kind: torchaudio_bundle"):
        load_config(sets=["audio_encoder.bundle=WAV2VEC2_BASE"], environ={})


# --- defaults ---------------------------------------------------------------------------------


def test_default_config_uses_untrained_encoders_and_needs_no_weight_files(hub_dir, downloads):
    cfg = Config()
    assert cfg.vision.weights is None and cfg.vision.checkpoint is None
    assert cfg.audio_encoder.kind == "mel_conv" and cfg.audio_encoder.bundle is None
    assert type(build_audio_encoder(spec_of(cfg.audio_encoder, AudioEncoderSpec), SR, ROW)) is AudioEncoder
    VisionEncoder(spec_of(cfg.vision, VisionSpec), IMG)
    assert downloads == []


def test_audio_stage_builds_the_configured_encoder(tiny_in_cache):
    cfg = load_config(sets=["runtime.device=cpu", "audio_encoder.kind=torchaudio_bundle",
                            f"audio_encoder.bundle={TINY_NAME}"], environ={})
    assert isinstance(AudioStage(cfg).encoder, BundleAudioEncoder)
