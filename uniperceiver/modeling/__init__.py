"""Models: ``build_model(cfg)`` builds ``MODEL.META_ARCHITECTURE`` from MODEL_REGISTRY."""
from .registry import ENCODER_REGISTRY, MODEL_REGISTRY, build_model  # noqa: F401
from . import meta_arch  # noqa: F401  (registers the architectures)
