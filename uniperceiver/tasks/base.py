"""The Task interface: a task owns its data, input packing, loss and evaluator name.

The model and the trainer never branch on task names or types; they only call these methods.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch

from uniperceiver.data.demo import prepare_data_root
from uniperceiver.data.transforms import transform_from_config
from uniperceiver.utils.errors import ConfigError
from uniperceiver.utils.registry import Registry, lookup

TASK_REGISTRY = Registry("TASK")
TASK_REGISTRY.__doc__ = "Task classes keyed by task type (DATASETS.TASK_TYPE); built as cls(task_cfg, root_cfg)."


def register_task(name: str):
    """Class decorator: the :class:`Task` subclass handles ``DATASETS.TASK_TYPE`` ``name``, and its
    ``task_type`` attribute becomes ``name``::

        @register_task("image_matching")
        class ImageMatchingTask(Task):
            ...

    ``register_task(name)(cls)`` on an already registered class adds one more name (an alias); its
    ``task_type`` stays the first name."""
    register = TASK_REGISTRY.register(name=name)

    def decorate(cls):
        if "task_type" not in vars(cls):  # the first name given to this class
            cls.task_type = name
        return register(cls)
    return decorate


class Task:
    """Base class of task types.  Subclasses are registered with :func:`register_task` (which sets
    ``task_type``), set ``default_evaluator`` / ``attributes`` and, when they read images or videos,
    ``crop_scale`` / ``hflip``."""

    task_type: str = ""  # the DATASETS.TASK_TYPE this class is registered under
    default_evaluator: str = ""
    # Token attributes for attribute-routed MoE, e.g. {"modality": "image", "task": "classification"}.
    attributes: Dict[str, str] = {}
    # Training augmentation of image / video tasks, handed to the transform as plain values: the random-resized
    # crop's area range (DATALOADER.CROP_SCALE overrides it per task) and the horizontal-flip probability.
    crop_scale: Tuple[float, float] = (0.08, 1.0)
    hflip: float = 0.5

    def __init__(self, task_cfg, root_cfg):
        self.name: str = task_cfg.NAME
        self.cfg = task_cfg
        self.root_cfg = root_cfg
        self.loss_weight: float = float(task_cfg.LOSSES.LOSS_WEIGHT)
        self.label_smoothing: float = float(task_cfg.LOSSES.LABELSMOOTHING)
        # Name of the learnable logit scale this task scores with (one per task type, shared by name).
        self.temp_name: str = task_cfg.MODEL.TEMP_NAME or "default"
        # Longest text this task packs (captions, questions, MLM sentences), special tokens included.
        self.max_len: int = int(task_cfg.MODEL.MAX_SEQ_LEN)

    @classmethod
    def config_errors(cls, task_cfg) -> List[str]:
        """Problems of ``task_cfg`` this task type can tell before anything is built, one line each naming the
        key (``config.validate.validate_cfg`` reports them)."""
        return []

    @property
    def evaluator_name(self) -> str:
        return self.cfg.INFERENCE.NAME or self.default_evaluator

    def build_dataset(self, split: str) -> torch.utils.data.Dataset:
        """The torch Dataset of ``split`` ("train", "val" or "test")."""
        raise NotImplementedError

    def build_transform(self, split: str) -> Callable:
        """The image transform of ``split``: this task's ``crop_scale`` / ``hflip`` in training (video tasks
        return the clip transform)."""
        return transform_from_config(self.cfg, self.root_cfg, split == "train", scale=self.crop_scale,
                                     hflip=self.hflip)

    def collate(self, samples: List[Any]) -> Dict[str, Any]:
        """Samples of ``build_dataset`` -> one batch of CPU tensors."""
        return torch.utils.data.default_collate(samples)

    def losses(self, model, batch: Dict[str, Any]) -> Dict[str, torch.Tensor]:
        """``{"loss_<NAME>": scalar}`` already multiplied by LOSSES.LOSS_WEIGHT."""
        raise NotImplementedError

    def accumulated_losses(self, engine, batches: List[Dict[str, Any]]) -> Optional[List[Dict[str, torch.Tensor]]]:
        """``SOLVER.ACCUM_NEGATIVES``: forward and backward (through ``engine``) of the k micro-batches of one
        optimizer step, all of this task, with a loss computed over their features together; returns each
        micro-batch's detached loss terms.  None (the default): this task has no such loss, each micro-batch
        is scored alone."""
        return None

    def predict(self, model, batch: Dict[str, Any]) -> Dict[str, Any]:
        """Evaluation outputs for this task's evaluator."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


def validate_tasks(cfg) -> None:
    """ConfigError naming every task whose ``DATASETS.TASK_TYPE`` is not a registered task type, and the task
    types' own config checks (``Task.config_errors``, e.g. captioning's DECODE_STRATEGY); run before anything is
    built."""
    known = sorted(k for k, _ in TASK_REGISTRY)
    errors: List[str] = []
    for task in cfg.TASKS:
        task_type = task.DATASETS.TASK_TYPE
        if task_type not in known:
            errors.append(f"TASKS.{task.NAME}.DATASETS.TASK_TYPE = {task_type!r} is not a registered task type "
                          f"(registered: {', '.join(known)})")
        else:
            errors.extend(TASK_REGISTRY.get(task_type).config_errors(task))
    if errors:
        raise ConfigError("; ".join(errors))


def build_task(task_cfg, root_cfg) -> Task:
    cls = lookup(TASK_REGISTRY, task_cfg.DATASETS.TASK_TYPE, f"TASKS.{task_cfg.NAME}.DATASETS.TASK_TYPE")
    return cls(task_cfg, root_cfg)


def build_tasks(cfg) -> "OrderedDict[str, Task]":
    """Every task of ``cfg``, in config order.  The one place data is prepared for them: when the data root is
    the built-in demo root (``DATA_PATH`` unset), the demo data is written there first (tasks and readers never
    build data)."""
    if cfg.TASKS:
        prepare_data_root(cfg)
    return OrderedDict((t.NAME, build_task(t, cfg)) for t in cfg.TASKS)
