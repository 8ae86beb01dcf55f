"""MODEL.COMPILE off | blocks | model (engine.defaults.maybe_compile)."""
from __future__ import annotations

import pytest
import torch

from conftest import INSTANT
from uniperceiver.config import ConfigError, setup_cfg
from uniperceiver.engine.defaults import maybe_compile
from uniperceiver.modeling import build_model


def _model(mode):
    cfg = setup_cfg(INSTANT, ["MODEL.BERT.NUM_HIDDEN_LAYERS", "2", "MODEL.COMPILE", mode])
    return cfg, build_model(cfg)


def test_blocks_are_compiled_in_place_with_the_same_parameter_names():
    cfg, model = _model("blocks")
    names = [n for n, _ in model.named_parameters()]
    out = maybe_compile(cfg, model)
    assert out is model and [n for n, _ in out.named_parameters()] == names  # checkpoints are unchanged
    assert all(block._compiled_call_impl is not None for block in model.encoder.blocks)
    assert model._compiled_call_impl is None  # only the blocks


def test_off_and_model():
    cfg, model = _model("off")
    assert maybe_compile(cfg, model) is model and model.encoder.blocks[0]._compiled_call_impl is None
    cfg, model = _model("model")
    compiled = maybe_compile(cfg, model)
    assert isinstance(compiled, torch._dynamo.eval_frame.OptimizedModule) and compiled._orig_mod is model


def test_unknown_mode_is_refused():
    cfg, model = _model("everything")
    with pytest.raises(ConfigError, match="MODEL.COMPILE must be one of off, blocks, model"):
        maybe_compile(cfg, model)


@pytest.mark.slow
def test_compiled_blocks_match_eager_across_sequence_lengths():
    cfg, model = _model("blocks")
    model.eval()
    torch.manual_seed(0)
    inputs = [dict(images=torch.randn(2, 3, 32, 32)), dict(text=torch.randint(1, 1000, (2, 7)),
                                                          text_mask=torch.ones(2, 7, dtype=torch.bool))]
    with torch.no_grad():
        eager = [model(**x)["spe"] for x in inputs]
        maybe_compile(cfg, model)
        compiled = [model(**x)["spe"] for x in inputs]
    for a, b in zip(eager, compiled):
        assert torch.allclose(a, b, atol=1e-5)
