"""Model and encoder registries."""
import torch.nn as nn

from uniperceiver.utils.registry import Registry, lookup

MODEL_REGISTRY = Registry("MODEL")
MODEL_REGISTRY.__doc__ = (
    "Meta architectures, picked by MODEL.META_ARCHITECTURE; built as cls(**cls.from_config(cfg)) when the "
    "class has from_config, else cls(cfg)."
)
ENCODER_REGISTRY = Registry("ENCODER")
ENCODER_REGISTRY.__doc__ = "Shared encoders, picked by MODEL.ENCODER; built as cls(**cls.from_config(cfg))."


def build_model(cfg) -> nn.Module:
    """Build ``cfg.MODEL.META_ARCHITECTURE`` (on CPU; the caller moves it to its device)."""
    cls = lookup(MODEL_REGISTRY, cfg.MODEL.META_ARCHITECTURE, "MODEL.META_ARCHITECTURE")
    if hasattr(cls, "from_config"):
        return cls(**cls.from_config(cfg))
    return cls(cfg)
