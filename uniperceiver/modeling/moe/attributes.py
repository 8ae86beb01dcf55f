"""Token attributes for attribute-routed MoE (Uni-Perceiver-MoE, Zhu et al., NeurIPS 2022, "conditional MoE").

Each token of a sequence ``[<spe>, visual, text, queries]`` gets three attribute ids:

* modality: ``text`` (text tokens), ``image`` / ``video`` (visual tokens; ``video`` when the input has more
  than one frame or the task declares ``modality: video``), ``special`` (``<spe>`` and the captioning queries);
* task type: ``attributes["task"]`` declared by the task class (``Task.attributes``), looked up in
  :data:`TASK_TYPES`;
* side: ``input``, or ``target`` for candidate sequences (``UniPerceiver.encode_targets``; a task may also
  declare ``side: target``).

The model computes them once per forward as a ``[S, 3]`` LongTensor (the layout is shared by the batch) and
hands them to every block inside ``attributes["token_attributes"]``; the gates never see task names.
"""
from __future__ import annotations

from typing import Any, Dict, Optional

import torch

MODALITIES = ("text", "image", "video", "special")
TASK_TYPES = ("generic", "classification", "retrieval", "caption", "mlm", "vqa", "regression")
SIDES = ("input", "target")
TOKEN_ATTRIBUTES_KEY = "token_attributes"


def _index(table, value: str, what: str) -> int:
    try:
        return table.index(value)
    except ValueError:
        raise KeyError(f"MoE attribute routing: unknown {what} {value!r}; known: {', '.join(table)} "
                       f"(uniperceiver/modeling/moe/attributes.py)") from None


def token_attribute_ids(num_visual: int, num_text: int, num_queries: int, *, num_frames: int = 1,
                        attributes: Optional[Dict[str, Any]] = None, side: Optional[str] = None,
                        device: Optional[torch.device] = None) -> torch.Tensor:
    """``[1 + V + L + Q, 3]`` (modality, task type, side) ids of the sequence layout."""
    attributes = attributes or {}
    visual = "video" if num_frames > 1 or attributes.get("modality") == "video" else "image"
    modality = torch.full((1 + num_visual + num_text + num_queries,), MODALITIES.index("special"), dtype=torch.long)
    modality[1 : 1 + num_visual] = MODALITIES.index(visual)
    modality[1 + num_visual : 1 + num_visual + num_text] = MODALITIES.index("text")
    task = _index(TASK_TYPES, attributes.get("task", "generic"), "task type")
    side_id = _index(SIDES, side or attributes.get("side", "input"), "side")
    ids = torch.stack([modality, torch.full_like(modality, task), torch.full_like(modality, side_id)], dim=1)
    return ids.to(device) if device is not None else ids


def with_token_attributes(attributes: Optional[Dict[str, Any]], ids: torch.Tensor) -> Dict[str, Any]:
    """A copy of the task's ``attributes`` with the per-token ids added."""
    out = dict(attributes or {})
    out[TOKEN_ATTRIBUTES_KEY] = ids
    return out
