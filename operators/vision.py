"""VisionEncoder: RGB frames to one embedding per frame.

A torchvision classification backbone with its classifier removed (global
pooled features) and a linear projection to ``embed_dim``. Conversion and
normalisation happen inside the module, so the GPU and CPU paths are one code.

Pretrained backbones come from ``vision.weights`` (torchvision's published
weights, through torch.hub's cache) or ``vision.checkpoint`` (a local file).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torch.fx.experimental import optimization as fx_optimization

from operators.checkpoint import (
    CheckpointError,
    CheckpointMismatchError,
    check_checkpoint,
    is_avfuse_checkpoint,
    load_state_strict,
    preprocessing_differences,
    read_torch_file,
    save_checkpoint,
    seeded_init,
)
from operators.device import module_device, run_on_device
from operators.hub_weights import fetch_hub_state_dict, hub_cache_file
from operators.specs import VisionSpec

KIND = "vision_encoder"

# Attribute names under which torchvision classification models keep their
# classifier head, in the order they are tried.
_HEAD_ATTRS = ("fc", "classifier", "head", "heads")

# DenseNet's published files predate its module names ('norm.1' is now 'norm1');
# torchvision's densenet builder renames them with this pattern, and so do we.
_DENSENET_LEGACY_KEY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$"
)


def resolve_weights(backbone: str, name: str) -> torchvision.models.WeightsEnum:
    """``vision.weights`` ('DEFAULT', 'IMAGENET1K_V1' or 'MobileNet_V3_Small_Weights.IMAGENET1K_V1') as an enum member.

    Raises CheckpointError when the backbone has no published weights or the
    name is not one of them (the message lists the names it has).
    """
    try:
        enum = torchvision.models.get_model_weights(backbone)
    except ValueError:
        raise CheckpointError(f"vision.backbone {backbone!r} has no pretrained weights in torchvision") from None
    choices = ", ".join(enum.__members__)
    if "." in name:
        prefix, _, member = name.partition(".")
        if prefix != enum.__name__:
            raise CheckpointError(f"vision.weights {name!r} are not {enum.__name__} of vision.backbone {backbone!r}")
        name = member
    if name not in enum.__members__:
        raise CheckpointError(f"vision.weights {name!r} are not weights of {backbone!r}; it has {choices}")
    return enum[name]


def weights_preprocessing(weights: torchvision.models.WeightsEnum) -> dict:
    """The input normalisation ``weights`` were trained with, from ``weights.transforms()``."""
    transform = weights.transforms()
    return {key: tuple(getattr(transform, key)) for key in ("mean", "std") if hasattr(transform, key)}


def _torchvision_state(state: dict) -> dict:
    """A published torchvision state_dict with the key names today's modules use."""
    renamed = {}
    for key, value in state.items():
        match = _DENSENET_LEGACY_KEY.match(key)
        renamed[match.group(1) + match.group(2) if match else key] = value
    return renamed


def _headless_backbone(name: str) -> tuple[nn.Module, str]:
    """Build ``torchvision.models.<name>(weights=None)`` and replace its head with Identity.

    Returns the model and the state_dict prefix of the removed head.
    """
    factory = getattr(torchvision.models, name, None)
    if factory is None or not callable(factory):
        raise ValueError(f"vision.backbone {name!r} is not a torchvision.models architecture")
    model = factory(weights=None)
    for attr in _HEAD_ATTRS:
        if isinstance(getattr(model, attr, None), nn.Module):
            setattr(model, attr, nn.Identity())
            return model, attr + "."
    raise ValueError(f"vision.backbone {name!r} has no classifier head named {' / '.join(_HEAD_ATTRS)}")


class VisionEncoder(nn.Module):
    """Frames to embeddings.

    Input:  ``frames_rgb_u8`` uint8 [N, H, W, 3], RGB, H == W == image_size, on
            the module's device.
    Output: float32 [N, embed_dim], one embedding per frame, independent of the
            other frames in the batch (the module is built in eval mode, so
            batch norm uses its running statistics).

    Weights: ``cfg.checkpoint`` if set (an avfuse checkpoint of kind
    'vision_encoder', or a plain torchvision state_dict for the backbone);
    else ``cfg.weights``, torchvision's published weights for the backbone,
    loaded by ``weights.get_state_dict`` from torch.hub's cache (downloaded there
    on first use); otherwise a deterministic random init with batch-norm
    statistics calibrated on seeded synthetic images, identical in every
    process. The projection is the seeded init unless an avfuse checkpoint
    replaces it.

    Published weights must have been trained with ``cfg.mean`` / ``cfg.std``
    (CheckpointMismatchError otherwise). Their crop size (224 px for most) need
    not equal ``image_size``: the backbones pool globally, so smaller frames
    work, at some loss of accuracy that a fine-tuned avfuse checkpoint recovers.
    """

    def __init__(self, cfg: VisionSpec, image_size: int):
        super().__init__()
        self.cfg = cfg
        self.image_size = int(image_size)
        weights = None
        if cfg.weights and not cfg.checkpoint:  # the config refuses both; a checkpoint would win
            # Checked before anything is built or downloaded: a mismatch fails at once.
            weights = resolve_weights(cfg.backbone, cfg.weights)
            differences = preprocessing_differences(
                weights_preprocessing(weights), {"mean": tuple(cfg.mean), "std": tuple(cfg.std)}
            )
            if differences:
                raise CheckpointMismatchError(
                    f"vision.weights {weights} were trained with other normalisation (set vision.mean and "
                    f"vision.std to theirs): " + "; ".join(differences)
                )
        # Not persistent: the values live in the config and the checkpoint's preprocessing.
        self.register_buffer("mean", torch.tensor(cfg.mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(cfg.std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        with seeded_init():
            self.backbone, self._head_prefix = _headless_backbone(cfg.backbone)
            feat_dim, self._pool_features = self._calibrate_and_probe()
            self.proj = nn.Linear(feat_dim, cfg.embed_dim)
        if cfg.checkpoint:
            self._load_weights(cfg.checkpoint)
        elif weights is not None:
            self._load_published_weights(weights)
        self.eval()

    @property
    def preprocessing(self) -> dict:
        return {
            "backbone": self.cfg.backbone,
            "image_size": self.image_size,
            "mean": tuple(self.cfg.mean),
            "std": tuple(self.cfg.std),
        }

    @property
    def embed_dim(self) -> int:
        return self.cfg.embed_dim

    def _calibrate_and_probe(self, n_images: int = 8) -> tuple[int, bool]:
        """One train-mode pass over seeded smooth random images; returns (feature dim, needs pooling).

        Untrained backbones with identity batch-norm statistics squash every
        input to nearly the same features (mobilenet_v3_small: ~1e-8 apart), so
        the random-weight encoder would be blind; this pass sets the statistics
        (a checkpoint, if any, overwrites them). The same pass finds the feature
        size, since heads differ between families (some pool inside the head).
        """
        norms = [m for m in self.backbone.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        momenta = [m.momentum for m in norms]
        for m in norms:
            m.reset_running_stats()
            m.momentum = None  # cumulative average: exactly this batch's statistics
        low_res = torch.rand(n_images, 3, 8, 8)
        images = F.interpolate(low_res, size=self.image_size, mode="bilinear", align_corners=False)
        self.backbone.train()
        with torch.no_grad():
            out = self.backbone((images - self.mean) / self.std)
        self.backbone.eval()
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
        if out.ndim == 4:  # the removed head did the pooling (e.g. squeezenet, maxvit)
            return int(out.shape[1]), True
        return int(out.flatten(1).shape[1]), False

    def _load_weights(self, path: str) -> None:
        obj = read_torch_file(path)
        if is_avfuse_checkpoint(obj):
            checkpoint = check_checkpoint(obj, path, KIND, self.preprocessing)
            load_state_strict(self, checkpoint["state_dict"], path)
        elif isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            # A torchvision state_dict: weights for the backbone; its classifier is not used.
            load_state_strict(self.backbone, _torchvision_state(obj), path, ignore_prefixes=(self._head_prefix,))
        else:
            raise CheckpointError(f"checkpoint {path} is neither an avfuse checkpoint nor a torchvision state_dict")

    def _load_published_weights(self, weights: torchvision.models.WeightsEnum) -> None:
        """Load ``weights`` into the backbone as a torchvision state_dict file would load (the same code)."""
        if getattr(self.backbone, "transform_input", None) is False:
            # googlenet / inception_v3: torchvision's builder turns on an input re-normalisation for
            # published weights that is no part of the state_dict; without it they would be silently wrong.
            raise CheckpointError(
                f"vision.weights are not supported for {self.cfg.backbone!r}: torchvision builds it differently "
                f"for pretrained weights (transform_input)"
            )
        state = fetch_hub_state_dict(
            f"vision.weights {weights}",
            weights.url,
            lambda download_kwargs: weights.get_state_dict(check_hash=True, **download_kwargs),
            local_key="vision.checkpoint",
        )
        cached = hub_cache_file(weights.url)
        load_state_strict(self.backbone, _torchvision_state(state), cached, ignore_prefixes=(self._head_prefix,))

    def forward(self, frames_rgb_u8: torch.Tensor) -> torch.Tensor:
        size = self.image_size
        shape_ok = frames_rgb_u8.ndim == 4 and tuple(frames_rgb_u8.shape[1:]) == (size, size, 3)
        if frames_rgb_u8.dtype != torch.uint8 or not shape_ok:
            raise ValueError(
                f"VisionEncoder expects uint8 frames [N, {size}, {size}, 3], "
                f"got {frames_rgb_u8.dtype} {list(frames_rgb_u8.shape)}"
            )
        if frames_rgb_u8.shape[0] == 0:
            return torch.zeros(0, self.embed_dim, device=frames_rgb_u8.device)
        # NHWC -> NCHW is a view; normalisation stays in fp32 even under autocast.
        x = frames_rgb_u8.permute(0, 3, 1, 2).float().div_(255.0)
        x = (x - self.mean) / self.std
        features = self.backbone(x)
        if self._pool_features:
            features = F.adaptive_avg_pool2d(features, 1)
        return self.proj(features.flatten(1)).float()

    def encode(self, frames_rgb_u8: np.ndarray) -> np.ndarray:
        """numpy uint8 [N, S, S, 3] -> numpy float32 [N, embed_dim], run on the module's device."""
        return run_on_device(self, frames_rgb_u8, module_device(self))

    def prepare_for_inference(self) -> "VisionEncoder":
        """Fold batch norm into the convolutions and use channels-last memory.

        About a third less CPU per frame (mobilenet_v3_small, 128 px: 2.6 -> 1.7 ms),
        the same outputs to float rounding. Call it after the weights are loaded; a
        prepared encoder can no longer be saved, since its layers are no longer the
        architecture's. Backbones that torch.fx cannot trace stay as they are.
        """
        self.eval()
        try:
            self.backbone = fx_optimization.fuse(self.backbone)
        except Exception:  # tracing failed: the unfused backbone is still correct
            pass
        self.backbone = self.backbone.to(memory_format=torch.channels_last)
        self._prepared = True
        return self

    def save(self, path: str | Path) -> None:
        if getattr(self, "_prepared", False):
            raise RuntimeError("a VisionEncoder prepared for inference cannot be saved; save before preparing")
        save_checkpoint(path, KIND, self.state_dict(), self.preprocessing, extra={"embed_dim": self.embed_dim})
