"""MODEL.TRAINABLE: freezing by parameter-name patterns (docs/adaptation.md): frozen weights stay bitwise equal,
the optimizer holds only trainable parameters, and bad patterns are config errors."""
import pytest
import torch

from conftest import full_loss, prompt_cfg, tiny_cfg
from uniperceiver.config import ConfigError
from uniperceiver.modeling import build_model
from uniperceiver.modeling.adaptation import apply_trainable
from uniperceiver.solver import build_optimizer


def test_trainable_freezes_weights_bitwise_and_optimizer_holds_only_trainable():
    torch.manual_seed(0)
    cfg = prompt_cfg()
    model = build_model(cfg)
    trainable, total = apply_trainable(model, cfg.MODEL.TRAINABLE)
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert names == {"encoder.prompt_tokens", "encoder.prompt_spe_bias", "predictor.prompt_fc_weight_matrix",
                     "predictor.prompt_fc_bias"}
    assert trainable == sum(p.numel() for n, p in model.named_parameters() if n in names) < total
    optimizer = build_optimizer(cfg, model)
    in_opt = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert in_opt == {id(p) for p in model.parameters() if p.requires_grad}
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    for seed in range(3):
        optimizer.zero_grad()
        full_loss(model, seed).backward()
        optimizer.step()
    for n, p in model.named_parameters():
        if n in frozen:
            assert torch.equal(p, frozen[n]), n
            assert p.grad is None, n
        else:
            assert not torch.equal(p, before[n]), n  # every trainable tensor moved


def test_trainable_errors_and_logging(caplog):
    model = build_model(tiny_cfg())
    with pytest.raises(ConfigError, match=r"nope_a.*nope_b|matches no parameter"):
        apply_trainable(model, ["nope_a", "nope_b"])
    with pytest.raises(ConfigError, match="not a valid regex"):
        apply_trainable(model, ["("])
    with caplog.at_level("INFO", logger="uniperceiver.modeling.adaptation"):
        trainable, total = apply_trainable(model, [r"^predictor\.proj\."])
    assert f"trainable parameters: {trainable} / total {total}" in caplog.text
    assert trainable == 192 * 192 + 192
    assert apply_trainable(model, []) == (total, total)  # empty = everything trains again
