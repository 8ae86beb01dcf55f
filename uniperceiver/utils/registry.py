"""Registries: one per kind of buildable thing (fvcore's Registry), and the one lookup they all share."""
from fvcore.common.registry import Registry

from .errors import ConfigError

__all__ = ["Registry", "lookup"]


def lookup(registry: Registry, name: str, key: str):
    """``registry.get(name)``; an unregistered ``name`` is a ConfigError naming the config ``key``, the value
    and everything that is registered."""
    if not name or name not in registry:
        known = ", ".join(sorted(k for k, _ in registry))
        raise ConfigError(f"{key} {name!r} is not a registered {registry._name.lower()}; registered: {known}")
    return registry.get(name)
