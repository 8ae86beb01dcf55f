"""Tasks: one small object per task node; ``build_tasks(cfg)`` builds them all in config order."""
import importlib
import pkgutil

from .base import TASK_REGISTRY, Task, build_task, build_tasks, register_task, validate_tasks  # noqa: F401

for _mod in pkgutil.iter_modules(__path__):
    if _mod.name != "base":
        importlib.import_module(f"{__name__}.{_mod.name}")
