"""Model and encoder registries."""
import torch.nn as nn

from uniperceiver.config import ConfigError
from uniperceiver.utils.registry import Registry

MODEL_REGISTRY = Registry("MODEL")
MODEL_REGISTRY.__doc__ = "Meta architectures, picked by MODEL.META_ARCHITECTURE; built as cls(cfg)."
ENCODER_REGISTRY = Registry("ENCODER")
ENCODER_REGISTRY.__doc__ = "Shared encoders, picked by MODEL.ENCODER; built as cls(cfg)."


def build_model(cfg) -> nn.Module:
    """Build ``cfg.MODEL.META_ARCHITECTURE`` (on CPU; the caller moves it to its device)."""
    name = cfg.MODEL.META_ARCHITECTURE
    if name not in MODEL_REGISTRY:
        known = ", ".join(sorted(k for k, _ in MODEL_REGISTRY))
        raise ConfigError(f"MODEL.META_ARCHITECTURE {name!r} is not registered; registered: {known}")
    return MODEL_REGISTRY.get(name)(cfg)
