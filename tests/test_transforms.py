"""Tasks declare their training crop and flip as data (``Task.crop_scale`` / ``Task.hflip``) and hand them to
the transforms as plain values: each task type's effective augmentation is pinned here, and a syntax-tree walk
checks that nothing in ``uniperceiver/data`` reads or compares against a task type."""
from __future__ import annotations

import ast
from pathlib import Path
from typing import List

import pytest

from uniperceiver.config import get_cfg
from uniperceiver.data.datasets import READERS
from uniperceiver.data.datasets.video import VideoTransform
from uniperceiver.data.transforms import CropFlipNormalize
from uniperceiver.tasks import TASK_REGISTRY, build_task

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "uniperceiver" / "data"

# task type -> (training crop area range, horizontal-flip probability), as each was before tasks declared them
# (the crop table of data/transforms.py, keyed by the old crop "family").
EXPECTED = {
    "image_classification": ((0.08, 1.0), 0.5),
    "image_retrieval": ((0.5, 1.0), 0.0),
    "image_caption": ((0.5, 1.0), 0.0),
    "vqa": ((0.5, 1.0), 0.0),
    "video_classification": ((0.25, 1.0), 0.5),
    "video_retrieval": ((0.5, 1.0), 0.0),
    "video_caption": ((0.5, 1.0), 0.0),
}


class _Captured:
    """What a task's ``build_dataset`` gets back from the reader: records the transform it was given."""

    meta_file = ""

    def __init__(self, transform):
        self.transform = transform

    def drop_records(self, *args, **kwargs) -> int:
        return 0


def _training_transform(task_type: str, monkeypatch, crop_scale=()):
    """The transform ``build_dataset("train")`` of a ``task_type`` task hands to its reader."""
    import uniperceiver.tasks.image_classification as classification
    import uniperceiver.tasks.image_retrieval as retrieval
    import uniperceiver.tasks.vqa as vqa

    for module in (classification, retrieval, vqa):
        monkeypatch.setattr(module, "build_reader", lambda *a, transform=None, **k: _Captured(transform))
    cfg = get_cfg()
    cfg.merge_from_dict({"TASKS": [{"NAME": "t", "DATASETS": {"TASK_TYPE": task_type},
                                    "MODEL": {"LABELS_NUM": 10}, "DATALOADER": {"CROP_SCALE": list(crop_scale)}}]})
    cfg.finalize()
    return build_task(cfg.TASKS[0], cfg).build_dataset("train").transform


def _crop_and_flip(transform):
    if isinstance(transform, (VideoTransform, CropFlipNormalize)):
        return tuple(transform.scale), float(transform.hflip)
    steps = transform.transforms
    (crop,) = [s for s in steps if type(s).__name__.startswith("RandomResizedCrop")]
    flips = [s.p for s in steps if type(s).__name__ == "RandomHorizontalFlip"]
    return tuple(crop.scale), float(flips[0]) if flips else 0.0


def test_every_image_and_video_task_type_is_pinned():
    reads_pixels = {name for name, cls in TASK_REGISTRY if cls.attributes.get("modality") in ("image", "video")}
    assert reads_pixels == set(EXPECTED), "pin the crop / flip of a new image or video task type in EXPECTED"


@pytest.mark.parametrize("task_type", sorted(EXPECTED))
def test_each_task_type_trains_with_its_declared_crop_and_flip(task_type, monkeypatch):
    cls = TASK_REGISTRY.get(task_type)
    assert (tuple(cls.crop_scale), cls.hflip) == EXPECTED[task_type]
    transform = _training_transform(task_type, monkeypatch)
    assert isinstance(transform, VideoTransform) == task_type.startswith("video_")
    assert _crop_and_flip(transform) == EXPECTED[task_type]
    # DATALOADER.CROP_SCALE still overrides the task's default scale (and leaves the flip alone)
    transform = _training_transform(task_type, monkeypatch, crop_scale=(0.3, 0.9))
    assert _crop_and_flip(transform) == ((0.3, 0.9), EXPECTED[task_type][1])


# --------------------------------------------------------------------------------- no task types in data
# Former crop "families" and every registered task type, less the reader names (DATASETS.DATASET_NAME
# readers "vqa" / "video_caption" are data's own vocabulary, which two task types happen to share).
FORMER_FAMILIES = {"classification", "caption", "video_classification"}
TASK_WORDS = ({name for name, _ in TASK_REGISTRY} | FORMER_FAMILIES) - set(READERS)
# Names that would carry a task type into data code.
TASK_NAMES = {"family", "task_type", "TASK_TYPE"}


def task_type_uses(source: str) -> List[str]:
    """Each line of ``source`` that reads a task type (a name, argument, attribute or keyword called
    family / task_type / TASK_TYPE) or compares a value against a task-type string."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Name) and node.id in TASK_NAMES:
            found.append(f"{node.lineno}: name {node.id}")
        elif isinstance(node, ast.arg) and node.arg in TASK_NAMES:
            found.append(f"{node.lineno}: argument {node.arg}")
        elif isinstance(node, ast.Attribute) and node.attr in TASK_NAMES:
            found.append(f"{node.lineno}: attribute .{node.attr}")
        elif isinstance(node, ast.keyword) and node.arg in TASK_NAMES:
            found.append(f"{node.value.lineno}: keyword {node.arg}=")
        elif isinstance(node, ast.Compare):
            for side in [node.left, *node.comparators]:
                for c in ast.walk(side):
                    if isinstance(c, ast.Constant) and c.value in TASK_WORDS:
                        found.append(f"{node.lineno}: compares against {c.value!r}")
    return found


def test_data_never_branches_on_a_task_type():
    bad = [f"{path.relative_to(REPO)}:{use}" for path in sorted(DATA.rglob("*.py"))
           for use in task_type_uses(path.read_text(encoding="utf-8"))]
    assert not bad, "uniperceiver/data must not know task types (tasks pass values):\n" + "\n".join(bad)


def test_the_walk_sees_the_old_family_branches():
    """The patterns this replaced are caught (a check that could not fail proves nothing)."""
    old = ('def transform_from_config(task_cfg, root_cfg, is_train, family="classification"):\n'
           '    hflip = 0.5 if family == "classification" else 0.0\n'
           'def video(task_cfg, kind):\n'
           '    scale = crop_scale(task_cfg, "video_classification" if kind == "classification" else "caption")\n'
           'def reader(task_cfg):\n'
           '    return task_cfg.DATASETS.TASK_TYPE in ("image_caption", "video_retrieval")\n')
    found = "\n".join(task_type_uses(old))
    for line in ("1: argument family", "2: name family", "2: compares against 'classification'",
                 "4: compares against 'classification'", "6: attribute .TASK_TYPE",
                 "6: compares against 'image_caption'", "6: compares against 'video_retrieval'"):
        assert line in found
