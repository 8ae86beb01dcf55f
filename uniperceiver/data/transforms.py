"""Image transforms (timm ``create_transform``) and batch mixing (timm ``Mixup``: mixup / CutMix).

Train: random-resized crop (scale per task family), horizontal flip, optional RandAugment
(``DATALOADER.RAND_AUGMENT``, a timm policy string such as ``rand-m9-mstd0.5-inc1``), normalisation.
Test: resize to ``IMG_INPUT_SIZE / crop_pct`` then centre crop.  Pixels are normalised with the ImageNet
mean / std (what the model expects for ``images``).
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence, Tuple

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, Mixup, create_transform

from uniperceiver.config import ConfigError

# Random-resized-crop scale range per task family: aggressive for classification, mild where the caption
# must still describe the crop.
CROP_SCALE = {"classification": (0.08, 1.0), "caption": (0.5, 1.0), "video_classification": (0.25, 1.0)}


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
        return create_transform(
            input_size=input_size,
            is_training=True,
            scale=tuple(scale),
            hflip=hflip,
            color_jitter=color_jitter or None,
            auto_augment=rand_augment or None,
            interpolation="bicubic",
            mean=tuple(mean),
            std=tuple(std),
        )
    return create_transform(
        input_size=input_size, is_training=False, interpolation="bicubic", crop_pct=crop_pct,
        mean=tuple(mean), std=tuple(std),
    )


def crop_scale(task_cfg, family: str) -> Tuple[float, float]:
    """``DATALOADER.CROP_SCALE`` of a task node, or its family's default; checked."""
    scale = tuple(float(v) for v in task_cfg.DATALOADER.CROP_SCALE) or CROP_SCALE.get(family, CROP_SCALE["classification"])
    if len(scale) != 2 or not 0 < scale[0] <= scale[1] <= 1:
        raise ConfigError(f"DATALOADER.CROP_SCALE of task {task_cfg.get('NAME', '?')!r} must be [min, max] with "
                          f"0 < min <= max <= 1, got {list(task_cfg.DATALOADER.CROP_SCALE)}")
    return scale


def crop_pct(task_cfg) -> float:
    pct = float(task_cfg.DATALOADER.CROP_PCT)
    if not 0 < pct <= 1:
        raise ConfigError(f"DATALOADER.CROP_PCT of task {task_cfg.get('NAME', '?')!r} must be in (0, 1], got {pct}")
    return pct


def transform_from_config(task_cfg, root_cfg, is_train: bool, family: str = "classification") -> Callable:
    """The transform of a task node: ``MODEL.IMG_INPUT_SIZE``, ``DATALOADER.RAND_AUGMENT``, ``CROP_SCALE``
    (else the family's crop scale) and ``CROP_PCT``; horizontal flips for classification only."""
    return build_image_transform(
        int(root_cfg.MODEL.IMG_INPUT_SIZE),
        is_train,
        rand_augment=task_cfg.DATALOADER.RAND_AUGMENT,
        scale=crop_scale(task_cfg, family),
        hflip=0.5 if family == "classification" else 0.0,
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
