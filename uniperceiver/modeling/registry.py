"""Model and encoder registries."""
import torch.nn as nn

from uniperceiver.config import ConfigError
from uniperceiver.utils.registry import Registry

MODEL_REGISTRY = Registry("MODEL")
MODEL_REGISTRY.__doc__ = (
    "Meta architectures, picked by MODEL.META_ARCHITECTURE; built as cls(**cls.from_config(cfg)) when the "
    "class has from_config, else cls(cfg)."
)
ENCODER_REGISTRY = Registry("ENCODER")
ENCODER_REGISTRY.__doc__ = "Shared encoders, picked by MODEL.ENCODER; built as cls(**cls.from_config(cfg))."


def build_model(cfg) -> nn.Module:
    """Build ``cfg.MODEL.META_ARCHITECTURE`` (on CPU; the caller moves it to its device)."""
    name = cfg.MODEL.META_ARCHITECTURE
    if name not in MODEL_REGISTRY:
        known = ", ".join(sorted(k for k, _ in MODEL_REGISTRY))
        raise ConfigError(f"MODEL.META_ARCHITECTURE {name!r} is not registered; registered: {known}")
    cls = MODEL_REGISTRY.get(name)
    if hasattr(cls, "from_config"):
        return cls(**cls.from_config(cfg))
    return cls(cfg)
