"""The evaluator interface (``reset / process / evaluate``), its registry, and rank-gathering helpers.

An evaluator consumes the plain outputs of ``Task.predict`` (tensors, lists of strings), so it is testable
without a model.  ``evaluate()`` returns a flat ``{metric: float}`` on rank 0 and ``{}`` on the other ranks;
every rank must call it (it runs collectives).  Gathering goes through ``torch.distributed`` collectives,
never through files.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence

import torch
import torch.distributed as dist

from uniperceiver.utils import comm
from uniperceiver.utils.registry import Registry, lookup

EVALUATOR_REGISTRY = Registry("EVALUATOR")
EVALUATOR_REGISTRY.__doc__ = (
    "Evaluators keyed by INFERENCE.NAME (or the task type's default); built with "
    "cls.from_config(task_cfg, root_cfg, split)."
)


class DatasetEvaluator:
    """Accumulates the outputs of one split, then computes its metrics."""

    def __init__(self):
        self.reset()

    @classmethod
    def from_config(cls, task_cfg, root_cfg, split: str = "val") -> "DatasetEvaluator":
        """Translate config keys into constructor arguments (override when the evaluator has any)."""
        return cls()

    def reset(self) -> None:
        """Forget everything processed so far; called before each evaluation."""
        raise NotImplementedError

    def process(self, batch: Dict[str, Any], outputs: Dict[str, Any]) -> None:
        """Record one batch: ``outputs`` is what ``Task.predict(model, batch)`` returned."""
        raise NotImplementedError

    def evaluate(self) -> Dict[str, float]:
        """Metrics on rank 0 (``{}`` elsewhere); a collective: every rank calls it."""
        raise NotImplementedError

    def chance_levels(self) -> Dict[str, float]:
        """After ``evaluate()``, on rank 0: ``{metric: chance level or trivial baseline}`` computed from the
        split just evaluated (e.g. 100 / #classes for Acc@1); metrics without one are left out.  Evaluators
        set ``self._chance`` in ``evaluate()``; reported as ``chance_<metric>`` beside the metrics."""
        return dict(getattr(self, "_chance", {}) or {})


def build_evaluator(task, split: str = "val") -> DatasetEvaluator:
    """The evaluator named by ``task.evaluator_name``, configured from the task's node."""
    cls = lookup(EVALUATOR_REGISTRY, task.evaluator_name, f"TASKS.{task.name}.INFERENCE.NAME")
    return cls.from_config(task.cfg, task.root_cfg, split=split)


# ------------------------------------------------------------------------------------------------------
# Gathering helpers (collectives; every rank must call them in the same order)
# ------------------------------------------------------------------------------------------------------
def _collective_device() -> torch.device:
    if comm.is_dist() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_gather_cat(parts: Sequence[torch.Tensor], trailing_shape: Optional[Sequence[int]] = None,
                   dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """Concatenate this rank's ``parts`` along dim 0, then all ranks' results in rank order (a CPU tensor).

    A rank may hold no parts (fewer samples than ranks); its trailing shape and dtype are then taken from
    the ranks that do, agreed on through one small object all-gather.
    """
    local = torch.cat([p.detach() for p in parts], 0) if parts else None
    if comm.get_world_size() == 1:
        if local is None:
            return torch.empty((0,) + tuple(trailing_shape or ()), dtype=dtype or torch.float32)
        return local.cpu()
    meta = comm.all_gather(None if local is None else (tuple(local.shape[1:]), local.dtype))
    known = [m for m in meta if m is not None]
    if not known:
        return torch.empty((0,) + tuple(trailing_shape or ()), dtype=dtype or torch.float32)
    shape, dt = known[0]
    if local is None:
        local = torch.empty((0,) + shape, dtype=dt)
    wire_dtype = torch.uint8 if dt == torch.bool else dt
    gathered = comm.all_gather_tensors(local.to(_collective_device(), wire_dtype).contiguous())
    return torch.cat([g.cpu() for g in gathered], 0).to(dt)


def gather_list(items: List[Any]) -> List[Any]:
    """Concatenate picklable per-rank lists in rank order on rank 0 (``[]`` on other ranks)."""
    if comm.get_world_size() == 1:
        return list(items)
    out: List[Any] = []
    for part in comm.gather(list(items), dst=0):
        out.extend(part)
    return out


def as_long_tensor(values: Any) -> torch.Tensor:
    if isinstance(values, torch.Tensor):
        return values.detach().reshape(-1).long().cpu()
    return torch.as_tensor(list(values), dtype=torch.long).reshape(-1)
