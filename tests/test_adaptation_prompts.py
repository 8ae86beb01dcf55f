"""Prompt tuning (MODEL.PROMPT, docs/adaptation.md): the prompt attention mask, prompts keep causality and padding
and are the identity when zero, prompt tuning alone improves a tiny task, and the instant prompt config trains
only the prompt parameters."""
import torch
import torch.nn.functional as F

from conftest import REPO, batch, prompt_cfg, run_main, tiny_cfg
from uniperceiver.modeling import build_model
from uniperceiver.modeling.adaptation import apply_trainable
from uniperceiver.modeling.encoder import prompt_attention_mask


def test_prompt_mask_extension_shapes_and_values():
    assert prompt_attention_mask(None, 5, 3) is None
    pad = torch.tensor([[True, True, True, False, False]])[:, None, None, :]
    out = prompt_attention_mask(pad, 5, 3)
    assert out.shape == (1, 1, 1, 8) and out[0, 0, 0].tolist() == [True] * 3 + [False] * 2 + [True] * 3
    full = torch.ones(5, 5, dtype=torch.bool).tril()[None, None]
    out = prompt_attention_mask(full, 5, 2)
    assert out.shape == (1, 1, 7, 7)
    assert torch.equal(out[0, 0, :5, :5], full[0, 0]) and out[0, 0, :, 5:].all() and out[0, 0, 5:].all()


def test_prompts_keep_causality_and_padding_and_are_the_identity_when_zero():
    torch.manual_seed(0)
    model = build_model(prompt_cfg(tokens=3, LAYER_SCALE_INIT=0.1)).eval()
    images, text, mask = batch(0, frames=0)
    out = model(images=images, text=text, text_mask=mask, num_queries=6, causal_text=True)
    changed = text.clone()
    changed[:, 4] = 7  # query i sees text < i: queries 0..4 must not change
    out2 = model(images=images, text=changed, text_mask=mask, num_queries=6, causal_text=True)
    assert torch.allclose(out["queries"][:, :5], out2["queries"][:, :5], atol=1e-6)
    assert not torch.allclose(out["queries"][0, 5], out2["queries"][0, 5], atol=1e-4)  # (sample 1: padding)
    padded = text.clone()
    padded[1, -2:] = 123  # padding of sample 1 (mask False there) is invisible
    a = model(text=text, text_mask=mask)["spe"]
    b = model(text=padded, text_mask=mask)["spe"]
    assert torch.allclose(a[1], b[1], atol=1e-6)
    # With prompts and the <spe> bias zero and the head blended at weight 0, the output is the plain model's.
    plain = build_model(tiny_cfg(LAYER_SCALE_INIT=0.1)).eval()
    zero = build_model(prompt_cfg(tokens=0, fc_weight=0.0, LAYER_SCALE_INIT=0.1)).eval()
    zero.load_state_dict(plain.state_dict())
    assert torch.allclose(plain(images=images, text=text, text_mask=mask)["spe"],
                          zero(images=images, text=text, text_mask=mask)["spe"])
    # prompts change the output
    assert not torch.allclose(model(images=images)["spe"], zero(images=images)["spe"], atol=1e-4)


def test_prompt_tuning_trains_only_prompts_and_improves_a_tiny_task():
    """'Pre-train' the tiny model on a 4-class task, then prompt-tune it (everything else frozen) for a
    downstream task that names the classes differently (labels shifted by one)."""
    torch.manual_seed(0)
    cfg = prompt_cfg(tokens=4, fc_weight=0.5, LAYER_SCALE_INIT=0.1)
    model = build_model(cfg)
    g = torch.Generator().manual_seed(1)
    labels = torch.arange(16) % 4
    images = torch.randn(4, 3, 32, 32, generator=g)[labels] + 0.5 * torch.randn(16, 3, 32, 32, generator=g)
    class_ids = torch.randint(0, 49406, (4, 3), generator=g)

    def loss_fn(target):
        logits = model.logits(model(images=images)["spe"], model.encode_targets(class_ids), "logit_img_cls")
        return F.cross_entropy(logits, target)

    def train(params, target, lr, steps):
        opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
        for _ in range(steps):
            opt.zero_grad()
            loss_fn(target).backward()
            opt.step()

    train([p for n, p in model.named_parameters() if "prompt" not in n], labels, 1e-3, 15)
    downstream = (labels + 1) % 4
    apply_trainable(model, cfg.MODEL.TRAINABLE)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    first = loss_fn(downstream).item()
    train([p for p in model.parameters() if p.requires_grad], downstream, 3e-2, 20)
    last = loss_fn(downstream).item()
    assert last < 0.5 * first, (first, last)
    for n, p in model.named_parameters():
        if n in frozen:
            assert torch.equal(p, frozen[n]), n


def test_instant_prompt_config_runs_with_only_prompt_parameters_trainable(tmp_path):
    out = tmp_path / "out"
    run_main(["--config-file", REPO / "configs/quick_schedules/instant_prompt.yaml", "SOLVER.MAX_ITER", "4",
              "OUTPUT_DIR", out])
    log = (out / "log.txt").read_text()
    assert "trainable parameters: 41088 / total" in log
    final = torch.load(out / "model_final.pth", map_location="cpu", weights_only=True)
    state = final["optimizer"]["state"]
    assert len(state) == 4  # AdamW moments exist for the 4 prompt tensors only
