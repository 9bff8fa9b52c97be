"""Specifications of the operators: encoders, checkpoints, signal features and fusion (CPU, no Ray)."""

from __future__ import annotations

import contextlib
import copy
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

from operators import (
    AudioEncoder,
    CheckpointError,
    CheckpointMismatchError,
    SignalFeatures,
    VisionEncoder,
    WindowInput,
    autocast_for,
    build_fusion,
    collate_windows,
    is_avfuse_checkpoint,
    load_checkpoint,
    resolve_device,
    save_checkpoint,
)
from operators.checkpoint import preprocessing_differences
from operators.continuity import frame_difference, histogram_distance, spectral_flux
from operators.fusion import FusionSpec
from operators.row_encoder import AudioEncoderSpec
from operators.vision import VisionSpec

SR = 16000
ROW = 1600  # 100 ms at 16 kHz
IMG = 64  # small frames keep the vision tests fast
STRATEGIES = ["cross_attention", "concat", "weighted"]
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def vision() -> VisionEncoder:
    return VisionEncoder(VisionSpec(embed_dim=32), image_size=IMG)


@pytest.fixture(scope="module")
def audio() -> AudioEncoder:
    return AudioEncoder(AudioEncoderSpec(embed_dim=32), sample_rate_hz=SR, row_samples=ROW)


def frames(n: int, seed: int = 0, size: int = IMG) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def noise_rows(k: int, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal((k, ROW)) * 0.1).astype(np.float32)


def sine(freq_hz: float, n: int, amplitude: float = 1.0) -> np.ndarray:
    return (amplitude * np.sin(2 * np.pi * freq_hz * np.arange(n) / SR)).astype(np.float32)


def window(start_s: float, n_video: int, n_audio: int, seed: int = 0, dim: int = 16) -> WindowInput:
    rng = np.random.default_rng(seed)
    return WindowInput(
        start_s=start_s,
        video_tokens=rng.standard_normal((n_video, dim)).astype(np.float32) if n_video else None,
        video_t_s=start_s + np.arange(n_video) * 0.25 if n_video else None,
        audio_tokens=rng.standard_normal((n_audio, dim)).astype(np.float32) if n_audio else None,
        audio_t_s=start_s + np.arange(n_audio) * 0.1 if n_audio else None,
    )


def fusion(strategy: str, **kw):
    return build_fusion(FusionSpec(strategy=strategy, dim=32, heads=4, **kw), video_dim=16, audio_dim=16)


# --- device -----------------------------------------------------------------------------------


def test_cpu_and_auto_resolve_to_a_usable_device():
    assert resolve_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_request_without_cuda_raises_value_error():
    for spec in ("cuda", "cuda:1"):
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device(spec)


def test_unknown_device_spec_is_rejected():
    with pytest.raises(ValueError, match="auto, cpu, cuda or cuda:N"):
        resolve_device("tpu")


def test_autocast_is_a_no_op_on_cpu():
    assert isinstance(autocast_for(torch.device("cpu")), contextlib.nullcontext)


# --- checkpoints ------------------------------------------------------------------------------


def test_missing_unreadable_and_wrong_kind_checkpoints_raise_checkpoint_error(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "absent.pt", "fusion", {})
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not readable"):
        load_checkpoint(garbage, "fusion", {})
    path = tmp_path / "audio.pt"
    save_checkpoint(path, "audio_encoder", {"w": torch.zeros(1)}, {"n_mels": 64})
    with pytest.raises(CheckpointError, match="'audio_encoder', not a 'fusion'") as info:
        load_checkpoint(path, "fusion", {"n_mels": 64})
    assert not isinstance(info.value, CheckpointMismatchError)
    assert "\n" not in str(info.value)


def test_preprocessing_compares_tuples_as_lists_and_floats_approximately():
    recorded = {"mean": [0.485, 0.456, 0.406], "image_size": 128}
    assert preprocessing_differences(recorded, {"mean": (0.485, 0.456, 0.406 + 1e-15), "image_size": 128}) == []
    assert preprocessing_differences(recorded, {"mean": (0.5, 0.456, 0.406), "image_size": 128}) == [
        "mean: checkpoint=[0.485, 0.456, 0.406] config=(0.5, 0.456, 0.406)"
    ]


def test_saved_checkpoint_is_recognised(tmp_path, audio):
    audio.save(tmp_path / "a.pt")
    obj = torch.load(tmp_path / "a.pt", weights_only=True)
    assert is_avfuse_checkpoint(obj) and obj["kind"] == "audio_encoder" and obj["version"] == 1
    assert not is_avfuse_checkpoint(audio.state_dict())


def test_checkpoint_round_trip_reproduces_outputs_exactly(tmp_path, vision, audio):
    # Perturb the weights so that a loader ignoring the file would be caught.
    trained_v, trained_a = copy.deepcopy(vision), copy.deepcopy(audio)
    with torch.no_grad():
        trained_v.proj.weight.mul_(3.0)
        trained_a.proj.bias.add_(1.0)
    trained_v.save(tmp_path / "v.pt")
    trained_a.save(tmp_path / "a.pt")
    loaded_v = VisionEncoder(VisionSpec(embed_dim=32, checkpoint=str(tmp_path / "v.pt")), IMG)
    loaded_a = AudioEncoder(AudioEncoderSpec(embed_dim=32, checkpoint=str(tmp_path / "a.pt")), SR, ROW)
    x, rows = frames(3), noise_rows(4)
    np.testing.assert_array_equal(loaded_v.encode(x), trained_v.encode(x))
    np.testing.assert_array_equal(loaded_a.encode(rows), trained_a.encode(rows))
    assert not np.allclose(vision.encode(x), loaded_v.encode(x))
    assert not np.allclose(audio.encode(rows), loaded_a.encode(rows))


def test_checkpoint_with_other_image_size_fails_loudly(tmp_path, vision):
    vision.save(tmp_path / "v.pt")
    with pytest.raises(CheckpointMismatchError, match=r"image_size: checkpoint=64 config=96"):
        VisionEncoder(VisionSpec(embed_dim=32, checkpoint=str(tmp_path / "v.pt")), image_size=96)


@pytest.mark.filterwarnings("ignore:At least one mel filterbank")  # 64 mels at 48 kHz, irrelevant here
def test_audio_checkpoint_with_other_sample_rate_fails_loudly(tmp_path, audio):
    audio.save(tmp_path / "a.pt")
    with pytest.raises(CheckpointMismatchError) as info:
        AudioEncoder(AudioEncoderSpec(embed_dim=32, checkpoint=str(tmp_path / "a.pt")), 48000, 4800)
    assert "row_samples: checkpoint=1600 config=4800" in str(info.value)
    assert "sample_rate_hz: checkpoint=16000 config=48000" in str(info.value)


def test_torchvision_state_dict_loads_into_backbone(tmp_path, vision):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1234)  # weights unlike the encoder's own deterministic init
        reference = torchvision.models.mobilenet_v3_small(weights=None)
    torch.save(reference.state_dict(), tmp_path / "mobilenet.pth")
    loaded = VisionEncoder(VisionSpec(embed_dim=32, checkpoint=str(tmp_path / "mobilenet.pth")), IMG)
    for key, value in loaded.backbone.state_dict().items():
        torch.testing.assert_close(value, reference.state_dict()[key], rtol=0, atol=0)
    assert not torch.equal(loaded.backbone.features[0][0].weight, vision.backbone.features[0][0].weight)


def test_torchvision_state_dict_with_missing_keys_is_rejected(tmp_path):
    state = torchvision.models.mobilenet_v3_small(weights=None).state_dict()
    del state["features.0.0.weight"]
    torch.save(state, tmp_path / "broken.pth")
    with pytest.raises(CheckpointError, match="missing features.0.0.weight"):
        VisionEncoder(VisionSpec(checkpoint=str(tmp_path / "broken.pth")), IMG)


# --- vision encoder ---------------------------------------------------------------------------


def test_vision_encoder_emits_one_float32_embedding_per_frame(vision):
    out = vision.encode(frames(5))
    assert out.shape == (5, 32) and out.dtype == np.float32 and np.isfinite(out).all()


def test_vision_encoder_rejects_frames_of_another_size(vision):
    with pytest.raises(ValueError, match=r"\[N, 64, 64, 3\]"):
        vision.encode(frames(2, size=IMG + 8))


def test_read_only_frames_from_the_object_store_encode_without_warning(vision):
    x = frames(2)
    x.setflags(write=False)  # as Ray hands out arrays from its object store
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = vision.encode(x)
    np.testing.assert_array_equal(out, vision.encode(frames(2)))


def test_untrained_vision_encoder_still_tells_frames_apart(vision):
    out = vision.encode(frames(2))
    assert np.abs(out[0] - out[1]).max() > 1e-3


def test_frame_encoded_alone_equals_frame_encoded_in_batch(vision):
    batch = frames(6, seed=3)
    # Embeddings are O(10..100); conv kernels pick other float orderings per batch size.
    np.testing.assert_allclose(vision.encode(batch[2:3]), vision.encode(batch)[2:3], atol=1e-3, rtol=1e-3)


def test_two_constructions_give_identical_weights(vision, audio):
    rng_before = torch.random.get_rng_state()
    again_v = VisionEncoder(VisionSpec(embed_dim=32), IMG)
    again_a = AudioEncoder(AudioEncoderSpec(embed_dim=32), SR, ROW)
    again_f = fusion("cross_attention")
    assert torch.equal(torch.random.get_rng_state(), rng_before)  # the global RNG is untouched
    for first, second in ((vision, again_v), (audio, again_a), (fusion("cross_attention"), again_f)):
        for (key, a), b in zip(first.state_dict().items(), second.state_dict().values()):
            assert torch.equal(a, b), key


def test_two_processes_produce_identical_vision_embeddings(vision):
    # Same intra-op thread count as this process: reduction order, and so the last bits, depend on it.
    script = (
        f"import torch; torch.set_num_threads({torch.get_num_threads()});"
        "import numpy as np, sys; from operators import VisionEncoder; from operators.vision import VisionSpec;"
        f"x = np.random.default_rng(0).integers(0, 256, (2, {IMG}, {IMG}, 3), dtype=np.uint8);"
        f"sys.stdout.write(VisionEncoder(VisionSpec(embed_dim=32), {IMG}).encode(x).tobytes().hex())"
    )
    hexed = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert bytes.fromhex(hexed) == vision.encode(frames(2)).tobytes()


# --- audio encoder ----------------------------------------------------------------------------


def test_audio_encoder_emits_one_token_per_100ms_row(audio):
    out = audio.encode(noise_rows(7))
    assert out.shape == (7, 32) and out.dtype == np.float32 and np.isfinite(out).all()
    assert audio.encode(np.zeros((0, ROW), np.float32)).shape == (0, 32)


def test_audio_encoder_rejects_rows_of_another_length(audio):
    with pytest.raises(ValueError, match=r"\[K, 1600\]"):
        audio.encode(np.zeros((2, 800), np.float32))


def test_audio_row_encoded_alone_equals_row_encoded_in_batch_and_silence_differs_from_tone(audio):
    rows = np.stack([sine(440, ROW), np.zeros(ROW, np.float32), noise_rows(1)[0]])
    out = audio.encode(rows)
    np.testing.assert_allclose(audio.encode(rows[1:2]), out[1:2], atol=1e-5, rtol=1e-5)
    assert np.abs(out[0] - out[1]).max() > 1e-3


# --- signal features --------------------------------------------------------------------------


def test_full_scale_sine_is_minus_3_dbfs():
    rows = torch.from_numpy(np.stack([sine(1000, ROW), np.zeros(ROW, np.float32)]))
    signals = SignalFeatures().audio(rows, SR)
    assert signals.rms_dbfs.shape == (2, 10) and signals.band_log_energy.shape == (2, 10, 24)
    torch.testing.assert_close(signals.rms_dbfs[0], torch.full((10,), -3.0103), atol=0.01, rtol=0)
    assert torch.equal(signals.rms_dbfs[1], torch.full((10,), -120.0))  # digital silence


def test_sine_energy_lands_in_its_frequency_band():
    bands = SignalFeatures().audio(torch.from_numpy(sine(1200, ROW)[None]), SR).band_log_energy
    # 24 equal bands over 0..8 kHz are 333 Hz wide: 1.2 kHz is in band 3 (1000..1333 Hz).
    assert bands[0].argmax(dim=1).tolist() == [3] * 10


def test_black_and_white_frames_give_luma_0_and_1():
    x = np.zeros((2, 32, 48, 3), np.uint8)
    x[1] = 255
    signals = SignalFeatures().video(torch.from_numpy(x))
    torch.testing.assert_close(signals.luma_mean, torch.tensor([0.0, 1.0]))
    assert signals.luma_thumb.shape == (2, 256)
    torch.testing.assert_close(signals.luma_thumb[1], torch.ones(256))
    thumbs = signals.luma_thumb.numpy()
    np.testing.assert_allclose(frame_difference(thumbs[:1], thumbs[1:]), [1.0])


def test_colour_histogram_channels_each_sum_to_one():
    hist = SignalFeatures().video(torch.from_numpy(frames(3))).color_hist
    assert hist.shape == (3, 48)
    torch.testing.assert_close(hist.reshape(3, 3, 16).sum(dim=2), torch.ones(3, 3))


def test_histogram_distance_of_different_colours_is_large():
    x = np.zeros((3, 16, 16, 3), np.uint8)
    x[0, ..., 0] = 255  # red
    x[1, ..., 2] = 255  # blue
    x[2, ..., 0] = 250  # nearly the same red
    hist = SignalFeatures().video(torch.from_numpy(x)).color_hist.numpy()
    distance = histogram_distance(hist[[0, 0]], hist[[1, 2]])
    # Red vs blue differs in two of three channels entirely.
    np.testing.assert_allclose(distance, [2 / 3, 0.0], atol=1e-6)


def test_spectral_flux_counts_only_energy_increases():
    quiet, loud = np.zeros((1, 24), np.float32), np.full((1, 24), 2.0, np.float32)
    np.testing.assert_allclose(spectral_flux(quiet, loud), [2.0])
    np.testing.assert_allclose(spectral_flux(loud, quiet), [0.0])


# --- fusion -----------------------------------------------------------------------------------


def test_collate_pads_to_the_longest_sequence_with_times_relative_to_window_start():
    batch = collate_windows([window(100.0, 3, 5), window(7.0, 0, 2, seed=1)], "cpu")
    assert batch.video.shape == (2, 3, 16) and batch.audio.shape == (2, 5, 16)
    assert batch.video_mask.tolist() == [[True] * 3, [False] * 3]
    assert batch.audio_mask.tolist() == [[True] * 5, [True, True, False, False, False]]
    torch.testing.assert_close(batch.audio_t_s[0], torch.tensor([0.0, 0.1, 0.2, 0.3, 0.4]))
    assert batch.present.tolist() == [[True, True], [False, True]]
    empty = collate_windows([WindowInput(start_s=0.0)], "cpu", video_dim=16, audio_dim=16)
    assert empty.video.shape == (1, 1, 16) and not empty.video_mask.any()


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_each_fusion_strategy_gives_one_finite_embedding_per_window(strategy):
    model = fusion(strategy)
    out = model.fuse([window(0.0, 8, 20), window(5.0, 4, 0, seed=1), window(9.0, 0, 10, seed=2)])
    assert out.embedding.shape == (3, 32) and out.embedding.dtype == torch.float32
    assert torch.isfinite(out.embedding).all() and (out.embedding.abs().sum(dim=1) > 0).all()
    assert out.present.tolist() == [[True, True], [True, False], [False, True]]
    assert model.preprocessing == {"strategy": strategy, "dim": 32, "heads": 4, "video_dim": 16, "audio_dim": 16}


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_window_without_any_tokens_fuses_to_finite_zeros(strategy):
    out = fusion(strategy).fuse([WindowInput(start_s=3.0), window(0.0, 2, 3)])
    assert torch.equal(out.embedding[0], torch.zeros(32))
    assert torch.isfinite(out.embedding).all()
    if out.video_over_audio_attn is not None:
        assert torch.isfinite(out.video_over_audio_attn).all()


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_window_fused_alone_equals_window_fused_in_batch(strategy):
    model = fusion(strategy)
    windows = [window(0.0, 8, 20), window(4.0, 3, 7, seed=1), window(2.0, 0, 5, seed=2), WindowInput(1.0)]
    together = model.fuse(windows).embedding
    for i, w in enumerate(windows):
        torch.testing.assert_close(model.fuse([w]).embedding[0], together[i], atol=1e-5, rtol=0)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_masked_audio_tokens_do_not_change_fused_embedding(strategy):
    model = fusion(strategy)
    batch = model.collate([window(0.0, 4, 20), window(3.0, 4, 6, seed=1), window(6.0, 4, 0, seed=2)])
    with torch.inference_mode():
        before = model(batch).embedding
        padded = ~batch.audio_mask
        batch.audio[padded] = 1e3 * torch.randn(int(padded.sum()), 16)
        batch.audio_t_s[padded] = 77.0
        after = model(batch).embedding
    torch.testing.assert_close(after, before, atol=0, rtol=0)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_missing_modality_is_not_the_same_as_zero_filled_tokens(strategy):
    model = fusion(strategy)
    missing = window(0.0, 4, 0)
    zero_filled = window(0.0, 4, 0)
    zero_filled.audio_tokens, zero_filled.audio_t_s = np.zeros((5, 16), np.float32), np.arange(5) * 0.1
    out = model.fuse([missing, zero_filled])
    assert out.present.tolist() == [[True, False], [True, True]]
    assert (out.embedding[0] - out.embedding[1]).abs().max() > 1e-3


@pytest.mark.parametrize("strategy", ["cross_attention", "concat"])
def test_fusion_sees_times_relative_to_window_start(strategy):
    model = fusion(strategy)
    early, late = window(10.0, 4, 10), window(1010.0, 4, 10)  # same tokens, same offsets
    shuffled = window(10.0, 4, 10)
    shuffled.audio_t_s = shuffled.audio_t_s[::-1].copy()  # same tokens at other times
    out = model.fuse([early, late, shuffled]).embedding
    torch.testing.assert_close(out[0], out[1], atol=1e-4, rtol=0)
    assert (out[0] - out[2]).abs().max() > 1e-3


def test_cross_attention_reports_video_over_audio_weights_over_real_tokens_only():
    out = fusion("cross_attention").fuse([window(0.0, 3, 4), window(1.0, 5, 2, seed=1), window(2.0, 2, 0, seed=2)])
    attn = out.video_over_audio_attn
    assert attn.shape == (3, 5, 4)
    torch.testing.assert_close(attn[0, :3].sum(dim=1), torch.ones(3))
    torch.testing.assert_close(attn[1].sum(dim=1), torch.ones(5))
    assert torch.equal(attn[0, 3:], torch.zeros(2, 4))  # padded video positions
    assert torch.equal(attn[1, :, 2:], torch.zeros(5, 2))  # padded audio positions
    assert torch.equal(attn[2], torch.zeros(5, 4))  # no audio in this window


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_fusion_checkpoint_round_trip_and_strategy_mismatch(tmp_path, strategy):
    model = fusion(strategy)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01)
    model.save(tmp_path / "f.pt")
    loaded = fusion(strategy, checkpoint=str(tmp_path / "f.pt"))
    windows = [window(0.0, 3, 9), window(1.0, 0, 4, seed=1)]
    assert torch.equal(loaded.fuse(windows).embedding, model.fuse(windows).embedding)
    assert not torch.equal(fusion(strategy).fuse(windows).embedding, model.fuse(windows).embedding)
    other = next(s for s in STRATEGIES if s != strategy)
    with pytest.raises(CheckpointMismatchError, match=f"strategy: checkpoint='{strategy}' config='{other}'"):
        fusion(other, checkpoint=str(tmp_path / "f.pt"))


def test_vision_encoder_prepared_for_inference_gives_the_same_embeddings():
    cfg = VisionSpec(embed_dim=32)
    plain = VisionEncoder(cfg, IMG)
    prepared = VisionEncoder(cfg, IMG).prepare_for_inference()
    x = frames(4)
    expected, got = plain.encode(x), prepared.encode(x)
    assert np.allclose(got, expected, rtol=1e-4, atol=1e-3 * np.abs(expected).max())
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in prepared.modules())
    with pytest.raises(RuntimeError, match="cannot be saved"):
        prepared.save("unused.pt")


def test_the_vendored_imagenet_names_are_torchvisions():
    from torchvision.models._meta import _IMAGENET_CATEGORIES

    from operators.imagenet_classes import imagenet_classes

    assert imagenet_classes() == tuple(_IMAGENET_CATEGORIES)
