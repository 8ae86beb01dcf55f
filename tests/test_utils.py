"""The small shared helpers of ``uniperceiver.utils`` that the rest of the package must use: ``unwrap_model``
(one way through model wrappers), ``Registry.register(name=)`` / ``@register_task`` (one public registration
form) and ``RngStream`` (the named, pinned ``derive_seed`` streams)."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.nn as nn

from conftest import REPO, free_port
from uniperceiver.engine.step import TaskForward
from uniperceiver.utils.env import RngStream, derive_seed
from uniperceiver.utils.registry import Registry
from uniperceiver.utils.wrappers import unwrap_model

CODE = [p for d in ("uniperceiver", "tools") for p in (REPO / d).rglob("*.py")] + [REPO / "main.py"]


def _calls(name: str):
    """``(path, call node)`` of every call of a function or method named ``name`` in the package, tools/ and
    main.py."""
    for path in CODE:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call):
                f = node.func
                if (isinstance(f, ast.Name) and f.id == name) or (isinstance(f, ast.Attribute) and f.attr == name):
                    yield path.relative_to(REPO), node


# ------------------------------------------------------------------------------------------ unwrap_model
class _Engine(nn.Module):
    """Stands for a DeepSpeed engine: the model as ``.module``."""

    def __init__(self, module):
        super().__init__()
        self.module = module


def test_unwrap_model_looks_through_every_wrapper():
    model = nn.Sequential(nn.Linear(2, 2))
    assert unwrap_model(model) is model
    assert unwrap_model(TaskForward(model)) is model
    compiled = torch.compile(model)  # lazy: nothing is compiled until it is called
    assert unwrap_model(compiled) is model
    assert unwrap_model(_Engine(TaskForward(compiled))) is model
    names = [n for n, _ in unwrap_model(compiled).named_parameters()]
    assert names == ["0.weight", "0.bias"]  # its own names, not "_orig_mod.0.weight"
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    try:
        ddp = nn.parallel.DistributedDataParallel(TaskForward(compiled))
        assert unwrap_model(ddp) is model
    finally:
        dist.destroy_process_group()


def test_unwrap_model_keeps_a_wrapper_that_hides_its_module():
    from uniperceiver.engine.deepspeed_step import ZeroModelView

    view = ZeroModelView(nn.Linear(2, 2), stage=2)  # the Checkpointer's model under DeepSpeed
    assert unwrap_model(view) is view


def test_no_ad_hoc_unwrapping_left():
    """Code looks through wrappers with ``unwrap_model`` only: no ``getattr(x, "module", x)``."""
    found = [f"{p}:{n.lineno}" for p, n in _calls("getattr")
             if len(n.args) == 3 and isinstance(n.args[1], ast.Constant) and n.args[1].value == "module"
             and ast.dump(n.args[0]) == ast.dump(n.args[2])]
    assert not found, found


# ----------------------------------------------------------------------------------------- registration
def test_registry_register_with_and_without_a_name():
    reg = Registry("THING")

    @reg.register()
    class A:
        pass

    @reg.register(name="b_thing")
    class B:
        pass

    assert reg.register(A, name="alias_of_a") is A
    assert reg.get("A") is A and reg.get("b_thing") is B and reg.get("alias_of_a") is A
    assert "B" not in reg
    with pytest.raises(ValueError, match="'b_thing' is already registered in the THING registry"):
        reg.register(A, name="b_thing")


def test_every_task_type_is_registered_under_its_name_and_published_aliases_resolve():
    from uniperceiver.evaluation.evaluator import EVALUATOR_REGISTRY
    from uniperceiver.evaluation.glue import GLUEEvaluator
    from uniperceiver.tasks import TASK_REGISTRY, Task, register_task

    names = dict(TASK_REGISTRY)
    assert {"image_classification", "image_retrieval", "image_caption", "text_mlm", "text_classification",
            "video_classification", "video_retrieval", "video_caption", "vqa"} <= set(names)
    for name, cls in names.items():
        assert issubclass(cls, Task) and cls.task_type == name, (name, cls)
    assert EVALUATOR_REGISTRY.get("GLUEEvaler") is GLUEEvaluator  # the published INFERENCE.NAME

    class Matching(Task):
        pass

    try:
        assert register_task("test_matching")(Matching) is Matching
        assert TASK_REGISTRY.get("test_matching") is Matching and Matching.task_type == "test_matching"
        assert register_task("test_matching_alias")(Matching) is Matching  # an alias keeps the first name
        assert TASK_REGISTRY.get("test_matching_alias") is Matching and Matching.task_type == "test_matching"
    finally:
        for name in ("test_matching", "test_matching_alias"):
            TASK_REGISTRY._obj_map.pop(name, None)  # the registry is global: leave it as it was


def test_registration_uses_the_public_form_only():
    found = [f"{p}:{n.lineno}" for p, n in _calls("_do_register") if p != Path("uniperceiver/utils/registry.py")]
    assert not found, found


# ------------------------------------------------------------------------------------------ RNG streams
def test_rng_streams_are_distinct_and_pinned():
    """Exact resume and the determinism tests rely on these numbers: renumbering one changes every run."""
    pinned = {"SAMPLE": 1, "COLLATE": 2, "STEP": 3, "SHARD_RESAMPLE": 5, "SHARD_ORDER": 6, "SHUFFLE_BUFFER": 7}
    assert {name: int(member) for name, member in RngStream.__members__.items()} == pinned  # aliases included
    assert len(set(pinned.values())) == len(pinned)
    # a stream is its number to derive_seed, and derive_seed itself is pinned
    assert [derive_seed(0, 0, 0, s) for s in RngStream] == [derive_seed(0, 0, 0, v) for v in pinned.values()]
    assert derive_seed(0, 0, 0, RngStream.STEP) == 1277782112
    assert derive_seed(0, 0, 0, RngStream.SAMPLE) == 1169751637


def test_every_derive_seed_call_names_its_stream():
    """The last part of every ``derive_seed`` call is an ``RngStream`` member, never a bare number."""
    bad = []
    for path, node in _calls("derive_seed"):
        last = node.args[-1] if node.args else None
        named = (isinstance(last, ast.Attribute) and isinstance(last.value, ast.Name)
                 and last.value.id == "RngStream")
        if not named:
            bad.append(f"{path}:{node.lineno}")
    assert not bad, bad
