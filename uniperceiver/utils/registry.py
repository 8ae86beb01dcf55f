"""Registries: one per kind of buildable thing (fvcore's Registry), and the one lookup they all share."""
from typing import Any, Optional

from fvcore.common.registry import Registry as _FvcoreRegistry

from .errors import ConfigError

__all__ = ["Registry", "lookup"]


class Registry(_FvcoreRegistry):
    """fvcore's name -> object registry whose ``register`` also takes the name explicitly, for names that are
    not the object's ``__name__`` (task types, published names and aliases)::

        @REGISTRY.register()                  # as "MyThing"
        class MyThing: ...

        @REGISTRY.register(name="my_thing")   # as "my_thing"
        class MyThing: ...

        REGISTRY.register(MyThing, name="PublishedName")  # one more name for it

    Registering a taken name is an error naming it."""

    def register(self, obj: Any = None, *, name: Optional[str] = None) -> Any:
        """Register ``obj`` under ``name`` (default ``obj.__name__``); without ``obj``, a decorator that does.
        Returns ``obj``."""
        if obj is None:
            return lambda o: self.register(o, name=name)
        name = name or obj.__name__
        if name in self:
            raise ValueError(f"{name!r} is already registered in the {self._name} registry (as {self.get(name)!r})")
        self._do_register(name, obj)
        return obj


def lookup(registry: Registry, name: str, key: str):
    """``registry.get(name)``; an unregistered ``name`` is a ConfigError naming the config ``key``, the value
    and everything that is registered."""
    if not name or name not in registry:
        known = ", ".join(sorted(k for k, _ in registry))
        raise ConfigError(f"{key} {name!r} is not a registered {registry._name.lower()}; registered: {known}")
    return registry.get(name)
