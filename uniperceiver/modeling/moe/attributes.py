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


# ------------------------------------------------------------------------------------------------------------
# Segment rows of the published Uni-Perceiver-MoE gate (``MOE.ATTRIBUTE_GATE segment_row``).
#
# The published collator attaches to every input one fixed 8-dim attribute row per segment of the sequence
# (published ``uniperceiver/datasets/moe_embeddings.py``): one row for a one-segment input (an image, a text,
# a candidate set), two rows for captioning (the visual segment, then the caption text).  ``<spe>`` belongs to
# the first segment; the caption words and the caption queries to the second.  The rows, by the published
# table they come from:
SEGMENT_ROWS: Dict[str, tuple] = {
    # inputs of image/video classification and retrieval
    "visual_input": (1, 0, 0, 1, 1, 0, 0, 0),
    # first row of image/video_caption: the visual segment of captioning
    "caption_visual": (1, 1, 0, 1, 1, 0, 0, 0),
    # inputs of text_mlm and text_classification
    "text_input": (0, 1, 0, 1, 0, 1, 0, 0),
    # second row of image/video_caption: the caption words (and queries)
    "caption_text": (1, 1, 0, 1, 0, 1, 0, 1),
    # class-name sets (ImageNet, Kinetics, Moments in Time) and the texts of image/video retrieval
    "class_target": (1, 0, 0, 1, 0, 1, 1, 0),
    # the vocabulary (Vocab_Word, captioning and MLM candidates) and the GLUE label words
    "word_target": (1, 1, 0, 1, 0, 1, 1, 0),
}
SEGMENT_ROW_LENGTH = 8
# (segment kind, task type, side) -> row name.  Derived from the attributes our tasks pass: inputs carry the
# task class's ``attributes``, candidate sets ``{"modality": "text", "task": <the task's>}`` with side
# "target".  The text of retrieval is the published "target" data of image/video_retrieval, also when our task
# encodes it as an input.
SEGMENT_ROW_OF: Dict[tuple, str] = {
    ("visual", "classification", "input"): "visual_input",
    ("visual", "retrieval", "input"): "visual_input",
    ("visual", "caption", "input"): "caption_visual",
    ("text", "caption", "input"): "caption_text",
    ("text", "mlm", "input"): "text_input",
    ("text", "retrieval", "input"): "class_target",
    ("text", "retrieval", "target"): "class_target",
    ("text", "classification", "target"): "class_target",
    ("text", "caption", "target"): "word_target",
    ("text", "mlm", "target"): "word_target",
}
SEGMENT_ROWS_KEY = "segment_rows"


def segment_row_names(token_attributes: torch.Tensor) -> list:
    """``[S, 3]`` (modality, task type, side) ids of one sequence -> the published row name of each position.

    Visual tokens form the visual segment, text tokens and caption queries (``special`` after position 0) the
    text segment; ``<spe>`` (position 0) takes the row of the segment after it (the first segment)."""
    ids = token_attributes.tolist()
    special = MODALITIES.index("special")

    def kind(modality: int) -> str:
        return "text" if modality in (MODALITIES.index("text"), special) else "visual"

    names = []
    for pos, (modality, task, side) in enumerate(ids):
        if pos == 0 and modality == special and len(ids) > 1:
            modality = ids[1][0]
        key = (kind(modality), TASK_TYPES[task], SIDES[side])
        if key not in SEGMENT_ROW_OF:
            raise KeyError(f"MOE.ATTRIBUTE_GATE segment_row: the published Uni-Perceiver-MoE has no attribute row for "
                           f"a {key[0]} segment of task type {key[1]!r} on the {key[2]} side (known: "
                           f"{sorted(SEGMENT_ROW_OF)}; uniperceiver/modeling/moe/attributes.py)")
        names.append(SEGMENT_ROW_OF[key])
    return names


def segment_rows(token_attributes: torch.Tensor) -> torch.Tensor:
    """``[S, 3]`` ids -> ``[S, 8]`` fp32 published attribute rows, on the ids' device."""
    names = segment_row_names(token_attributes)
    return torch.tensor([SEGMENT_ROWS[n] for n in names], dtype=torch.float32, device=token_attributes.device)
