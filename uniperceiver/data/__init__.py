"""Data: per-task datasets, deterministic samplers and the multi-task training loader."""
from .build import build_train_loader  # noqa: F401
from .multitask import MultiTaskLoader  # noqa: F401
