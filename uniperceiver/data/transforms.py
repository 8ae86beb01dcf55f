"""Image transforms (timm ``create_transform``) and batch mixing (timm ``Mixup``: mixup / CutMix).

Train: random-resized crop and horizontal flip (the task's ``crop_scale`` / ``hflip``, passed in as values: this
module knows no task types), optional RandAugment
(``DATALOADER.RAND_AUGMENT``, a timm policy string such as ``rand-m9-mstd0.5-inc1``), normalisation.
Test: resize to ``IMG_INPUT_SIZE / crop_pct`` then centre crop.  Pixels are normalised with the ImageNet
mean / std (what the model expects for ``images``).
"""
from __future__ import annotations

import math
import random
from typing import Callable, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, Mixup, create_transform
from torchvision.transforms import InterpolationMode

from uniperceiver.config import ConfigError


class ToNormalizedTensor:
    """PIL RGB image -> normalised float tensor [3, H, W]: torchvision's ``ToTensor`` + ``Normalize`` in one
    numpy pass (the same float32 operations, bit for bit; ~3.7x faster on 28 px tiles, 1.15x at 224 px)."""

    def __init__(self, mean: Sequence[float], std: Sequence[float], fallback: Optional[Sequence[Callable]] = None):
        self.fallback = list(fallback or [])  # the replaced transforms, for tensor inputs
        self.mean = np.asarray([float(m) for m in mean], dtype=np.float32).reshape(3, 1, 1)
        self.std = np.asarray([float(s) for s in std], dtype=np.float32).reshape(3, 1, 1)

    def __call__(self, image) -> torch.Tensor:
        if isinstance(image, torch.Tensor):
            for step in self.fallback:
                image = step(image)
            return image
        a = np.ascontiguousarray(np.asarray(image, dtype=np.uint8).transpose(2, 0, 1), dtype=np.float32)
        a /= np.float32(255)
        a -= self.mean
        a /= self.std
        return torch.from_numpy(a)

    def __repr__(self) -> str:
        return f"ToNormalizedTensor(mean={self.mean.ravel().tolist()}, std={self.std.ravel().tolist()})"


class CropFlipNormalize:
    """timm's train transform when it is only ``RandomResizedCropAndInterpolation`` (one interpolation),
    ``RandomHorizontalFlip`` (optional) and :class:`ToNormalizedTensor`, on uint8 RGB arrays [H, W, 3]: the same
    random draws (python ``random`` for the crop, one ``torch.rand(1)`` for the flip, as timm / torchvision make
    them), the same pixels (PIL resizes a crop that is not already the output size), the same tensor.  About
    4x less time on 28 px tiles (no PIL round trip, no resize of a full-size crop); cached decoded images are
    arrays (``ImageRecordsDataset.enable_image_cache``), so no conversion either.  Anything else (a tensor, a
    non-RGB image) goes through the timm steps it replaces, ``fallback``."""

    accepts_arrays = True  # ImageRecordsDataset.read_image hands it cached arrays as they are

    def __init__(self, crop, flip, normalize: ToNormalizedTensor, fallback: Callable):
        self.size = tuple(int(v) for v in crop.size)  # (height, width)
        self.scale = tuple(float(v) for v in crop.scale)
        self.log_ratio = (math.log(crop.ratio[0]), math.log(crop.ratio[1]))
        self.ratio = (min(crop.ratio), max(crop.ratio))
        self.interpolation = _PIL_MODES[crop.interpolation]
        self.hflip = float(flip.p) if flip is not None else 0.0
        self.normalize = normalize
        self.fallback = fallback

    def crop_params(self, img_h: int, img_w: int) -> Tuple[int, int, int, int]:
        """``RandomResizedCropAndInterpolation.get_params`` (timm): 10 tries of a random area and log aspect
        ratio, then the centre crop; ``random.uniform(a, b)`` is ``a + (b - a) * random.random()``."""
        area = img_w * img_h
        (s0, s1), (r0, r1) = self.scale, self.log_ratio
        for _ in range(10):
            target_area = (s0 + (s1 - s0) * random.random()) * area
            aspect = math.exp(r0 + (r1 - r0) * random.random())
            w = int(round(math.sqrt(target_area * aspect)))
            h = int(round(math.sqrt(target_area / aspect)))
            if w <= img_w and h <= img_h:
                i = random.randint(0, img_h - h)
                return i, random.randint(0, img_w - w), h, w
        in_ratio = img_w / img_h
        if in_ratio < self.ratio[0]:
            w, h = img_w, int(round(img_w / self.ratio[0]))
        elif in_ratio > self.ratio[1]:
            w, h = int(round(img_h * self.ratio[1])), img_h
        else:
            w, h = img_w, img_h
        return (img_h - h) // 2, (img_w - w) // 2, h, w

    def __call__(self, image) -> torch.Tensor:
        a = image if isinstance(image, np.ndarray) else None
        if a is None and isinstance(image, Image.Image) and image.mode == "RGB":
            a = np.asarray(image)
        if a is None or a.ndim != 3 or a.shape[2] != 3 or a.dtype != np.uint8:
            return self.fallback(image if not isinstance(image, np.ndarray) else Image.fromarray(image))
        i, j, h, w = self.crop_params(a.shape[0], a.shape[1])
        a = a[i:i + h, j:j + w]
        if (h, w) != self.size:
            crop = Image.fromarray(np.ascontiguousarray(a))
            a = np.asarray(crop.resize(self.size[::-1], self.interpolation))
        if self.hflip > 0 and torch.rand(1).item() < self.hflip:  # float32 draw: the same answer as the tensor's <
            a = a[:, ::-1]
        return self.normalize(a)

    def __repr__(self) -> str:
        return (f"CropFlipNormalize(size={self.size}, scale={self.scale}, ratio={self.ratio}, "
                f"interpolation={self.interpolation}, hflip={self.hflip}, {self.normalize!r})")


_PIL_MODES = {InterpolationMode.BICUBIC: Image.BICUBIC, InterpolationMode.BILINEAR: Image.BILINEAR,
              InterpolationMode.NEAREST: Image.NEAREST, InterpolationMode.LANCZOS: Image.LANCZOS,
              InterpolationMode.BOX: Image.BOX, InterpolationMode.HAMMING: Image.HAMMING}


def _fuse_to_tensor_normalize(transform: Callable) -> Callable:
    """Replace timm's trailing ``MaybeToTensor, Normalize`` by :class:`ToNormalizedTensor`; a train transform
    that is then only crop, flip and that becomes one :class:`CropFlipNormalize`."""
    steps = getattr(transform, "transforms", None)
    if not steps or len(steps) < 2:
        return transform
    to_tensor, norm = steps[-2], steps[-1]
    if type(to_tensor).__name__ in ("MaybeToTensor", "ToTensor") and type(norm).__name__ == "Normalize":
        steps[-2:] = [ToNormalizedTensor(norm.mean, norm.std, fallback=[to_tensor, norm])]
    names = [type(t).__name__ for t in steps]
    if names in (["RandomResizedCropAndInterpolation", "ToNormalizedTensor"],
                 ["RandomResizedCropAndInterpolation", "RandomHorizontalFlip", "ToNormalizedTensor"]) \
            and steps[0].interpolation in _PIL_MODES:  # a list of interpolations draws one: not this path
        return CropFlipNormalize(steps[0], steps[1] if len(steps) == 3 else None, steps[-1], fallback=transform)
    return transform


def build_image_transform(
    input_size: int,
    is_train: bool,
    *,
    rand_augment: str = "",
    scale: Tuple[float, float] = (0.08, 1.0),
    hflip: float = 0.5,
    color_jitter: float = 0.0,
    crop_pct: float = 0.875,
    mean: Sequence[float] = IMAGENET_DEFAULT_MEAN,
    std: Sequence[float] = IMAGENET_DEFAULT_STD,
) -> Callable:
    """PIL RGB image -> float tensor [3, input_size, input_size], normalised."""
    if is_train:
        return _fuse_to_tensor_normalize(create_transform(
            input_size=input_size,
            is_training=True,
            scale=tuple(scale),
            hflip=hflip,
            color_jitter=color_jitter or None,
            auto_augment=rand_augment or None,
            interpolation="bicubic",
            mean=tuple(mean),
            std=tuple(std),
        ))
    return _fuse_to_tensor_normalize(create_transform(
        input_size=input_size, is_training=False, interpolation="bicubic", crop_pct=crop_pct,
        mean=tuple(mean), std=tuple(std),
    ))


def crop_scale(task_cfg, default: Tuple[float, float]) -> Tuple[float, float]:
    """``DATALOADER.CROP_SCALE`` of a task node, or ``default`` (its task type's) when unset; checked."""
    scale = tuple(float(v) for v in task_cfg.DATALOADER.CROP_SCALE) or tuple(default)
    if len(scale) != 2 or not 0 < scale[0] <= scale[1] <= 1:
        raise ConfigError(f"DATALOADER.CROP_SCALE of task {task_cfg.get('NAME', '?')!r} must be [min, max] with "
                          f"0 < min <= max <= 1, got {list(task_cfg.DATALOADER.CROP_SCALE)}")
    return scale


def crop_pct(task_cfg) -> float:
    pct = float(task_cfg.DATALOADER.CROP_PCT)
    if not 0 < pct <= 1:
        raise ConfigError(f"DATALOADER.CROP_PCT of task {task_cfg.get('NAME', '?')!r} must be in (0, 1], got {pct}")
    return pct


def transform_from_config(task_cfg, root_cfg, is_train: bool, *, scale: Tuple[float, float],
                          hflip: float) -> Callable:
    """The transform of a task node: ``MODEL.IMG_INPUT_SIZE``, ``DATALOADER.RAND_AUGMENT``, ``CROP_SCALE``
    (else ``scale``, the task's default crop scale), ``CROP_PCT``, and horizontal flips with probability
    ``hflip`` (the task's ``Task.crop_scale`` / ``Task.hflip``)."""
    return build_image_transform(
        int(root_cfg.MODEL.IMG_INPUT_SIZE),
        is_train,
        rand_augment=task_cfg.DATALOADER.RAND_AUGMENT,
        scale=crop_scale(task_cfg, scale),
        hflip=float(hflip),
        crop_pct=crop_pct(task_cfg),
    )


def build_mixup(task_cfg, num_classes: int) -> Optional[Mixup]:
    """timm Mixup for a classification task node, or None when ``DATALOADER.MIXUP`` and ``CUTMIX`` are 0.

    Applied to a whole collated batch (which must have an even size); produces soft targets [B, num_classes]
    with ``LOSSES.LABELSMOOTHING`` folded in."""
    mixup, cutmix = float(task_cfg.DATALOADER.MIXUP), float(task_cfg.DATALOADER.CUTMIX)
    if mixup <= 0 and cutmix <= 0:
        return None
    return Mixup(
        mixup_alpha=mixup,
        cutmix_alpha=cutmix,
        prob=1.0,
        switch_prob=0.5,
        mode="batch",
        label_smoothing=float(task_cfg.LOSSES.LABELSMOOTHING),
        num_classes=num_classes,
    )
