"""FaceDetector: MTCNN face boxes and face counts per frame.

``PNet``, ``RNet`` and ``ONet`` are our own copies of the MTCNN cascade (Zhang et al. 2016,
"Joint Face Detection and Alignment using Multi-task Cascaded Convolutional Networks"),
with the key names of facenet-pytorch's modules, so that its state_dicts load strictly.
``FaceDetector`` runs the cascade the way facenet-pytorch's ``MTCNN.detect`` does (same
pyramid, thresholds, box regression, squaring and clipping, so the same boxes), but batched:
every stage runs once over all candidates of all frames of a call, and the crops the second
and third networks read are box-averaged from an integral image in one gather instead of
one resize per box. Everything runs on the device of the weights, in float32.

Weights: ``facenet_pytorch/data/{pnet,rnet,onet}.pt`` inside the ``facenet-pytorch`` 2.6.0
wheel (MIT), installed with ``--no-deps`` (its pins ask for torch < 2.3) and found through
the installed distribution's metadata: its code is never imported. Each file is pinned by
sha256; a missing, corrupt or mismatched one is one CheckpointError line naming the file
and the expected hash. The wheel's face-recognition weights are not used.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import batched_nms

from operators.checkpoint import CheckpointError, load_state_strict, read_torch_file, seeded_init
from operators.device import module_device
from operators.weights_cache import WeightsSource, file_sha256, installed_file

PACKAGE = "facenet-pytorch"
PACKAGE_VERSION = "2.6.0"
# network -> (file inside the wheel, its sha256)
PACKAGED_FILES = {
    "pnet": ("facenet_pytorch/data/pnet.pt", "a2a71925e0b9996a42f63e47efc1ca19043e69558b5c523b978d611dfae49c8f"),
    "rnet": ("facenet_pytorch/data/rnet.pt", "bbb937de72efc9ef83b186c49f5f558467a1d7e3453a8ece0d71a886633f6a86"),
    "onet": ("facenet_pytorch/data/onet.pt", "165bfbe42940416ccfb977545cf0e976d5bf321f67083ae2aaaa5c764280118d"),
}
_INSTALL = f"pip install --no-deps {PACKAGE}=={PACKAGE_VERSION}"

# MTCNN's defaults (facenet-pytorch's MTCNN(), after the original Caffe models).
MIN_FACE_SIZE_PX = 20
PYRAMID_FACTOR = 0.709
THRESHOLDS = (0.6, 0.7, 0.7)  # face probability each of PNet, RNet, ONet requires
_PNET_CELL_PX, _PNET_STRIDE = 12, 2
# Overlap thresholds of the non-maximum suppressions: PNet per scale, PNet over the scales and
# RNet (intersection over union), ONet (intersection over the smaller box).
_NMS_OVERLAP = (0.5, 0.7, 0.7, 0.7)
_INPUT_OFFSET, _INPUT_SCALE = 127.5, 0.0078125


class PNet(nn.Module):
    """Proposal network, fully convolutional over an image of any size >= 12 px.

    Input float [N, 3, H, W] normalised ((x - 127.5) / 128); output (box offsets
    [N, 4, H', W'], face probability [N, H', W']), one cell per 12 px window at stride 2.
    """

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 10, kernel_size=3)
        self.prelu1 = nn.PReLU(10)
        self.pool1 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(10, 16, kernel_size=3)
        self.prelu2 = nn.PReLU(16)
        self.conv3 = nn.Conv2d(16, 32, kernel_size=3)
        self.prelu3 = nn.PReLU(32)
        self.conv4_1 = nn.Conv2d(32, 2, kernel_size=1)
        self.conv4_2 = nn.Conv2d(32, 4, kernel_size=1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.prelu3(self.conv3(self.prelu2(self.conv2(x))))
        return self.conv4_2(x), torch.softmax(self.conv4_1(x), dim=1)[:, 1]


def _flatten_as_tensorflow(x: torch.Tensor) -> torch.Tensor:
    # The weights came from TensorFlow, which flattens [N, W, H, C]: the dense layers expect that order.
    return x.permute(0, 3, 2, 1).reshape(x.shape[0], -1)


class RNet(nn.Module):
    """Refinement network. Input float [K, 3, 24, 24] normalised; output (box offsets [K, 4],
    face probability [K])."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 28, kernel_size=3)
        self.prelu1 = nn.PReLU(28)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(28, 48, kernel_size=3)
        self.prelu2 = nn.PReLU(48)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3 = nn.Conv2d(48, 64, kernel_size=2)
        self.prelu3 = nn.PReLU(64)
        self.dense4 = nn.Linear(576, 128)
        self.prelu4 = nn.PReLU(128)
        self.dense5_1 = nn.Linear(128, 2)
        self.dense5_2 = nn.Linear(128, 4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.prelu4(self.dense4(_flatten_as_tensorflow(self.prelu3(self.conv3(x)))))
        return self.dense5_2(x), torch.softmax(self.dense5_1(x), dim=1)[:, 1]


class ONet(nn.Module):
    """Output network. Input float [K, 3, 48, 48] normalised; output (box offsets [K, 4],
    five landmarks [K, 10] (x then y, relative to the box), face probability [K])."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, kernel_size=3)
        self.prelu1 = nn.PReLU(32)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(32, 64, kernel_size=3)
        self.prelu2 = nn.PReLU(64)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3 = nn.Conv2d(64, 64, kernel_size=3)
        self.prelu3 = nn.PReLU(64)
        self.pool3 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv4 = nn.Conv2d(64, 128, kernel_size=2)
        self.prelu4 = nn.PReLU(128)
        self.dense5 = nn.Linear(1152, 256)
        self.prelu5 = nn.PReLU(256)
        self.dense6_1 = nn.Linear(256, 2)
        self.dense6_2 = nn.Linear(256, 4)
        self.dense6_3 = nn.Linear(256, 10)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.pool3(self.prelu3(self.conv3(x)))
        x = self.prelu5(self.dense5(_flatten_as_tensorflow(self.prelu4(self.conv4(x)))))
        return self.dense6_2(x), self.dense6_3(x), torch.softmax(self.dense6_1(x), dim=1)[:, 1]


@dataclass
class FaceDetections:
    """The faces found in one frame, most probable first.

    boxes_px: float32 [K, 4], (x1, y1, x2, y2) in pixels of the frame as given; like MTCNN's,
              a box may reach past the frame's edges.
    probs:    float32 [K], ONet's face probability of each box (all >= its threshold, 0.7).
    count:    how many of them reach the detector's ``min_probability``.
    Both tensors are on the CPU.
    """

    boxes_px: torch.Tensor
    probs: torch.Tensor
    count: int

    @property
    def max_probability(self) -> float:
        return float(self.probs[0]) if len(self.probs) else 0.0


def pyramid_scales(height: int, width: int, min_face_size: int = MIN_FACE_SIZE_PX,
                   factor: float = PYRAMID_FACTOR) -> list[float]:
    """The image scales PNet runs at: the smallest face maps onto its 12 px window, then every
    ``factor`` smaller while the shorter side is still >= 12 px."""
    scale = _PNET_CELL_PX / min_face_size
    shorter = min(height, width) * scale
    scales = []
    while shorter >= _PNET_CELL_PX:
        scales.append(scale)
        scale *= factor
        shorter *= factor
    return scales


def _integral_image(frames_u8_nchw: torch.Tensor) -> torch.Tensor:
    """Summed-area table [N, C, H + 1, W + 1] of uint8 frames, in integers: box sums are exact."""
    n, c, h, w = frames_u8_nchw.shape
    dtype = torch.int32 if 255 * h * w < 2**31 else torch.int64
    table = frames_u8_nchw.to(dtype).cumsum(2, dtype=dtype).cumsum(3, dtype=dtype)
    return F.pad(table, (1, 0, 1, 0))


def _box_averaged_crops(integral: torch.Tensor, frame: torch.Tensor, top: torch.Tensor, left: torch.Tensor,
                        height: torch.Tensor, width: torch.Tensor, size: int) -> torch.Tensor:
    """Crops [K, C, size, size] (float) of the frames, each crop resized by area averaging.

    Crop k is rows [top, top + height) and columns [left, left + width) of frame ``frame[k]``.
    Each output pixel is the mean over the same input cells as ``F.interpolate(mode="area")``
    (adaptive average pooling: bin i spans floor(i * n / size) .. ceil((i + 1) * n / size)),
    which is how MTCNN resizes crops, but for every crop in one gather.
    """
    bins = torch.arange(size, device=integral.device)

    def edges(origin: torch.Tensor, extent: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        extent = extent[:, None]
        start = (bins[None, :] * extent) // size
        end = ((bins[None, :] + 1) * extent + size - 1) // size
        return origin[:, None] + start, origin[:, None] + end

    r0, r1 = edges(top, height)
    c0, c1 = edges(left, width)
    k = frame[:, None, None]
    rows0, rows1, cols0, cols1 = r0[:, :, None], r1[:, :, None], c0[:, None, :], c1[:, None, :]
    # Advanced indices around a slice put their dimensions first: each gather is [K, size, size, C].
    sums = (integral[k, :, rows1, cols1] - integral[k, :, rows0, cols1]
            - integral[k, :, rows1, cols0] + integral[k, :, rows0, cols0])
    cells = (rows1 - rows0) * (cols1 - cols0)
    return (sums.to(torch.float32) / cells[..., None].to(torch.float32)).permute(0, 3, 1, 2)


def _square(boxes: torch.Tensor) -> torch.Tensor:
    """Boxes [K, >= 4] made square on their longer side around the same centre (MTCNN's rerec)."""
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    side = torch.maximum(w, h)
    x1, y1 = boxes[:, 0] + w * 0.5 - side * 0.5, boxes[:, 1] + h * 0.5 - side * 0.5
    return torch.cat([torch.stack([x1, y1, x1 + side, y1 + side], 1), boxes[:, 4:]], 1)


def _regress(boxes: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """RNet / ONet box regression: offsets in units of the box's inclusive width and height."""
    w, h = boxes[:, 2] - boxes[:, 0] + 1, boxes[:, 3] - boxes[:, 1] + 1
    moved = boxes[:, :4] + offsets * torch.stack([w, h, w, h], 1)
    return torch.cat([moved, boxes[:, 4:]], 1)


def _nms_min(boxes: torch.Tensor, scores: torch.Tensor, frame: torch.Tensor, threshold: float) -> torch.Tensor:
    """Greedy NMS within each frame by intersection over the smaller box (MTCNN's last step,
    with its inclusive pixel areas); indices of the kept boxes, most probable first."""
    order = scores.argsort(descending=True)
    b, f = boxes[order], frame[order]
    area = (b[:, 2] - b[:, 0] + 1) * (b[:, 3] - b[:, 1] + 1)
    iw = (torch.minimum(b[:, None, 2], b[None, :, 2]) - torch.maximum(b[:, None, 0], b[None, :, 0]) + 1).clamp(min=0)
    ih = (torch.minimum(b[:, None, 3], b[None, :, 3]) - torch.maximum(b[:, None, 1], b[None, :, 1]) + 1).clamp(min=0)
    overlap = iw * ih / torch.minimum(area[:, None], area[None, :])
    suppresses = ((overlap > threshold) & (f[:, None] == f[None, :])).cpu()  # K is small after ONet
    removed = torch.zeros(len(order), dtype=torch.bool)
    kept = []
    for i in range(len(order)):
        if not removed[i]:
            kept.append(i)
            removed |= suppresses[i]
    return order[torch.tensor(kept, dtype=torch.long, device=order.device)]


class FaceDetector(nn.Module):
    """MTCNN over a batch of frames: face boxes, probabilities and a count per frame.

    Input:  ``frames_rgb_u8`` uint8 [N, H, W, 3], RGB, one size per call, H and W >= 1 (frames
            whose shorter side is under ``min_face_size`` px have no faces); any device (moved
            to the weights' device).
    Output: N ``FaceDetections`` in frame order (boxes in pixels of the given frames; tensors on
            the CPU); N == 0 gives [].
    Detection: MTCNN's image pyramid (``min_face_size`` 20 px, ``factor`` 0.709) for PNet,
    then RNet and ONet, with ``thresholds`` (0.6, 0.7, 0.7) and non-maximum suppression per
    frame (torchvision's ``batched_nms``; intersection over the smaller box after ONet), all
    batched across the N frames on the device of the weights, in float32 whatever autocast
    is active. A face counts when ONet's probability reaches ``min_probability``. Each frame's
    faces depend only on that frame. Build it with ``load_face_detector``; a bare
    ``FaceDetector()`` has seeded random weights.
    """

    # On the CPU, batches run in slices of this many frames: that bounds the memory of the
    # pyramid's activations and the integral image (~200 MB at 640x360), and larger slices
    # were measured no faster per frame.
    CPU_CHUNK = 16

    def __init__(self, min_probability: float = 0.9, min_face_size: int = MIN_FACE_SIZE_PX,
                 factor: float = PYRAMID_FACTOR, thresholds: tuple[float, float, float] = THRESHOLDS):
        super().__init__()
        if not 0.0 <= min_probability <= 1.0 or min_face_size < 1 or not 0.0 < factor < 1.0:
            raise ValueError(f"FaceDetector: min_probability {min_probability} in [0, 1], min_face_size "
                             f"{min_face_size} >= 1 and factor {factor} in (0, 1) are required")
        with seeded_init():
            self.pnet, self.rnet, self.onet = PNet(), RNet(), ONet()
        self.min_probability, self.min_face_size, self.factor = min_probability, min_face_size, factor
        self.thresholds = tuple(thresholds)
        self.eval()

    @property
    def device(self) -> torch.device:
        return module_device(self)

    @torch.inference_mode()
    def forward(self, frames_rgb_u8: torch.Tensor) -> list[FaceDetections]:
        shape = tuple(frames_rgb_u8.shape)
        if frames_rgb_u8.dtype != torch.uint8 or len(shape) != 4 or shape[3] != 3 or min(shape[1:3], default=0) < 1:
            raise ValueError(f"FaceDetector expects uint8 frames [N, H, W, 3], got {frames_rgb_u8.dtype} {list(shape)}")
        device = self.device
        frames = frames_rgb_u8.to(device)
        chunk = self.CPU_CHUNK if device.type == "cpu" else max(1, shape[0])
        with torch.autocast(device_type=device.type, enabled=False):
            return [found for part in frames.split(chunk) for found in self._detect(part)]

    def _detect(self, frames_nhwc: torch.Tensor) -> list[FaceDetections]:
        n, h, w, _ = frames_nhwc.shape
        frames = frames_nhwc.permute(0, 3, 1, 2)  # a view: channels-last memory, which the convolutions take
        boxes, frame = self._propose(frames.float(), h, w)
        integral = _integral_image(frames) if len(boxes) else None
        if len(boxes):
            boxes, frame = self._refine(integral, boxes, frame, h, w)
        if len(boxes):
            boxes, frame = self._output(integral, boxes, frame, h, w)
        boxes, frame = boxes.cpu(), frame.cpu()
        found = []
        for i in range(n):
            mine = boxes[frame == i]
            mine = mine[mine[:, 4].argsort(descending=True)]
            probs = mine[:, 4].contiguous()
            found.append(FaceDetections(mine[:, :4].contiguous(), probs,
                                        int((probs >= self.min_probability).sum())))
        return found

    def _propose(self, images: torch.Tensor, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
        """PNet over the pyramid: candidate boxes [K, 5] (x1, y1, x2, y2, prob) squared, and their frames."""
        candidates, owners = [], []
        for scale in pyramid_scales(h, w, self.min_face_size, self.factor):
            scaled = F.interpolate(images, size=(int(h * scale + 1), int(w * scale + 1)), mode="area")
            offsets, prob = self.pnet((scaled - _INPUT_OFFSET) * _INPUT_SCALE)
            frame, row, col = torch.nonzero(prob >= self.thresholds[0], as_tuple=True)
            cell = torch.stack([col, row], 1).to(offsets.dtype)  # (x, y) of each window's cell
            top_left = ((_PNET_STRIDE * cell + 1) / scale).floor()
            bottom_right = ((_PNET_STRIDE * cell + _PNET_CELL_PX) / scale).floor()
            found = torch.cat([top_left, bottom_right, prob[frame, row, col][:, None], offsets[frame, :, row, col]], 1)
            keep = batched_nms(found[:, :4], found[:, 4], frame, _NMS_OVERLAP[0])
            candidates.append(found[keep])
            owners.append(frame[keep])
        if not candidates:
            return torch.zeros(0, 5, device=images.device), torch.zeros(0, dtype=torch.long, device=images.device)
        found, frame = torch.cat(candidates), torch.cat(owners)
        keep = batched_nms(found[:, :4], found[:, 4], frame, _NMS_OVERLAP[1])
        found, frame = found[keep], frame[keep]
        w_box, h_box = found[:, 2] - found[:, 0], found[:, 3] - found[:, 1]
        moved = found[:, :4] + found[:, 5:9] * torch.stack([w_box, h_box, w_box, h_box], 1)
        return _square(torch.cat([moved, found[:, 4:5]], 1)), frame

    def _crops(self, integral: torch.Tensor, boxes: torch.Tensor, frame: torch.Tensor, h: int, w: int,
               size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The normalised [K', 3, size, size] crops of the boxes clipped to the frame (MTCNN's pad),
        and which boxes had any pixel inside it."""
        corners = boxes[:, :4].trunc().to(torch.long)
        left, top = corners[:, 0].clamp(min=1) - 1, corners[:, 1].clamp(min=1) - 1
        right, bottom = corners[:, 2].clamp(max=w), corners[:, 3].clamp(max=h)
        inside = (right > left) & (bottom > top)
        crops = _box_averaged_crops(integral, frame[inside], top[inside], left[inside],
                                    (bottom - top)[inside], (right - left)[inside], size)
        return (crops - _INPUT_OFFSET) * _INPUT_SCALE, inside

    def _refine(self, integral: torch.Tensor, boxes: torch.Tensor, frame: torch.Tensor, h: int,
                w: int) -> tuple[torch.Tensor, torch.Tensor]:
        crops, inside = self._crops(integral, boxes, frame, h, w, 24)
        boxes, frame = boxes[inside], frame[inside]
        offsets, prob = self.rnet(crops)
        passed = prob > self.thresholds[1]
        boxes = torch.cat([boxes[passed, :4], prob[passed, None]], 1)
        frame, offsets = frame[passed], offsets[passed]
        keep = batched_nms(boxes[:, :4], boxes[:, 4], frame, _NMS_OVERLAP[2])
        return _square(_regress(boxes[keep], offsets[keep])), frame[keep]

    def _output(self, integral: torch.Tensor, boxes: torch.Tensor, frame: torch.Tensor, h: int,
                w: int) -> tuple[torch.Tensor, torch.Tensor]:
        crops, inside = self._crops(integral, boxes, frame, h, w, 48)
        boxes, frame = boxes[inside], frame[inside]
        offsets, _landmarks, prob = self.onet(crops)
        passed = prob > self.thresholds[2]
        boxes = _regress(torch.cat([boxes[passed, :4], prob[passed, None]], 1), offsets[passed])
        frame = frame[passed]
        keep = _nms_min(boxes[:, :4], boxes[:, 4], frame, _NMS_OVERLAP[3])
        return boxes[keep], frame[keep]


# ---------------------------------------------------------------- weights


def packaged_weights_paths(distribution: str = PACKAGE) -> dict[str, Path]:
    """network -> its state_dict file inside the installed ``distribution`` wheel (CheckpointError if absent)."""
    return {name: installed_file(distribution, file, sha256, "MTCNN face weights", _INSTALL)
            for name, (file, sha256) in PACKAGED_FILES.items()}


def load_face_detector(min_probability: float = 0.9,
                       distribution: str = PACKAGE) -> tuple[FaceDetector, WeightsSource]:
    """The FaceDetector with facenet-pytorch's MTCNN weights (eval mode, on the CPU), and where they came from.

    Every file must hash to its pinned sha256 and load strictly into its network; any failure
    is one CheckpointError line naming the file (and the expected hash). The WeightsSource
    names the wheel's data folder, and its sha256 is that of the three files' "name sha256"
    lines, so one hash identifies the set.
    """
    paths = packaged_weights_paths(distribution)
    detector = FaceDetector(min_probability)
    lines = []
    for name, path in paths.items():
        expected = PACKAGED_FILES[name][1]
        sha = file_sha256(path, "MTCNN weights file")
        if sha != expected:
            raise CheckpointError(f"MTCNN weights file {path} has sha256 {sha}, expected {expected} "
                                  f"(truncated or replaced? reinstall: {_INSTALL})")
        load_state_strict(getattr(detector, name), read_torch_file(path), path)
        lines.append(f"{path.name} {sha}")
    folder = paths["pnet"].parent
    manifest = hashlib.sha256("\n".join(lines).encode()).hexdigest()
    short = ", ".join(line.split()[0] + " " + line.split()[1][:12] for line in lines)
    return detector, WeightsSource(folder, manifest, f"MTCNN from {PACKAGE} {PACKAGE_VERSION} ({short})")


__all__ = ["FaceDetections", "FaceDetector", "ONet", "PNet", "RNet", "load_face_detector",
           "packaged_weights_paths", "pyramid_scales"]
