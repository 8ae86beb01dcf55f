"""Registries: one per kind of buildable thing.  fvcore's Registry; its errors name what is registered."""
from fvcore.common.registry import Registry

__all__ = ["Registry"]
