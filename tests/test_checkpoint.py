"""Checkpointer: atomic writes, weights_only loads in a fresh process, corrupt-last fallback, strict loading."""
import os
import subprocess
import sys

import pytest
import torch
import torch.nn as nn

from uniperceiver.checkpoint import Checkpointer, CheckpointError
from uniperceiver.checkpoint.checkpointer import TAG_FILE, last_iteration
from uniperceiver.modeling.meta_arch.placeholder import PlaceholderModel
from uniperceiver.utils.env import RNGState


class _Counter:
    def __init__(self):
        self.value = 0

    def state_dict(self):
        return {"value": self.value, "nested": {"t": torch.arange(3), "f": 0.5, "s": "x"}}

    def load_state_dict(self, state):
        self.value = state["value"]


def _setup(tmp_path, model=None):
    model = model or PlaceholderModel(hidden=8)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.randn(2, 8)).sum().backward()
    opt.step()
    counter = _Counter()
    return model, opt, counter, Checkpointer(model, str(tmp_path), optimizer=opt, counter=counter, rng=RNGState())


def test_save_is_atomic_and_tagged(tmp_path, monkeypatch):
    model, opt, counter, ckpt = _setup(tmp_path)
    path = ckpt.save("model_0000004", iteration=4)
    assert open(tmp_path / TAG_FILE).read() == "model_0000004.pth"
    assert sorted(os.listdir(tmp_path)) == [TAG_FILE, "model_0000004.pth"]  # no temp files left

    def boom(obj, f, *a, **k):  # a crash in the middle of writing
        with open(f, "wb") as fh:
            fh.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(OSError):
        ckpt.save("model_0000009", iteration=9)
    assert sorted(os.listdir(tmp_path)) == [TAG_FILE, "model_0000004.pth"]
    assert open(tmp_path / TAG_FILE).read() == "model_0000004.pth"


def test_weights_only_load_in_fresh_process(tmp_path):
    _, _, _, ckpt = _setup(tmp_path)
    path = ckpt.save("model_final", iteration=7)
    code = ("import torch, sys; d = torch.load(sys.argv[1], weights_only=True); "
            "assert d['iteration'] == 7 and 'model' in d and 'optimizer' in d and 'rng' in d; "
            "assert d['counter']['nested']['s'] == 'x'; print(sorted(d))")
    out = subprocess.run([sys.executable, "-c", code, path], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "'model'" in out.stdout


def test_resume_restores_everything(tmp_path):
    model, opt, counter, ckpt = _setup(tmp_path)
    counter.value = 11
    torch.manual_seed(123)
    ckpt.save("model_0000002", iteration=2)
    expected_draw = torch.rand(3)
    model2, opt2, counter2, ckpt2 = _setup(tmp_path, PlaceholderModel(hidden=8))
    torch.manual_seed(999)
    extra = ckpt2.resume_or_load("", resume=True)
    assert extra["iteration"] == 2 and counter2.value == 11
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), model2.state_dict().values()))
    assert opt2.state_dict()["state"][0]["exp_avg"].equal(opt.state_dict()["state"][0]["exp_avg"])
    assert torch.equal(torch.rand(3), expected_draw)  # RNG restored
    assert last_iteration(str(tmp_path)) == 2


def test_corrupt_last_checkpoint_falls_back(tmp_path, caplog):
    model, opt, counter, ckpt = _setup(tmp_path)
    counter.value = 1
    ckpt.save("model_0000001", iteration=1)
    counter.value = 2
    path = ckpt.save("model_0000003", iteration=3)
    with open(path, "r+b") as f:  # truncate the newest
        f.truncate(os.path.getsize(path) // 2)
    _, _, counter2, ckpt2 = _setup(tmp_path)
    with caplog.at_level("WARNING"):
        extra = ckpt2.resume()
    assert extra["iteration"] == 1 and counter2.value == 1
    assert "model_0000003.pth is unreadable" in caplog.text


class _WithPos(nn.Module):
    def __init__(self, n):
        super().__init__()
        self.pos_embed = nn.Parameter(torch.arange(n, dtype=torch.float32))
        self.head = nn.Linear(2, 2)

    def resize_rules(self):
        def interp(loaded, current):
            return nn.functional.interpolate(loaded[None, None], size=current.shape[0], mode="linear",
                                             align_corners=True)[0, 0]
        return [(r"^pos_embed$", interp)]


def test_strict_weight_loading(tmp_path):
    src = PlaceholderModel(hidden=8)
    torch.save({"model": src.state_dict()}, tmp_path / "w.pth")
    dst = PlaceholderModel(hidden=8)
    report = Checkpointer(dst, str(tmp_path / "o")).load_weights(str(tmp_path / "w.pth"))
    assert torch.equal(dst.head.weight, src.head.weight) and not report["ignored"]

    # unexpected + missing keys name them
    bigger = PlaceholderModel(hidden=8, num_layers=3)
    with pytest.raises(CheckpointError, match=r"missing key blocks\.2\.1\.weight"):
        Checkpointer(bigger, str(tmp_path / "o")).load_weights(str(tmp_path / "w.pth"))
    smaller = PlaceholderModel(hidden=8, num_layers=1)
    with pytest.raises(CheckpointError, match=r"unexpected key blocks\.1\.1\.weight"):
        Checkpointer(smaller, str(tmp_path / "o")).load_weights(str(tmp_path / "w.pth"))
    report = Checkpointer(bigger, str(tmp_path / "o")).load_weights(str(tmp_path / "w.pth"), ignore=[r"^blocks\.2\."])
    assert "blocks.2.1.weight" in report["missing_ignored"]

    # shape mismatch names key and shapes; a DDP "module." prefix is accepted
    wide = PlaceholderModel(hidden=4)
    with pytest.raises(CheckpointError, match=r"shape mismatch for embeddings\.weight: checkpoint \(8, 8\), model \(4, 8\)"):
        Checkpointer(wide, str(tmp_path / "o")).load_weights(str(tmp_path / "w.pth"))
    torch.save({"module." + k: v for k, v in src.state_dict().items()}, tmp_path / "ddp.pth")
    Checkpointer(PlaceholderModel(hidden=8), str(tmp_path / "o")).load_weights(str(tmp_path / "ddp.pth"))


def test_resize_rule(tmp_path):
    torch.save({"model": _WithPos(3).state_dict()}, tmp_path / "p.pth")
    m = _WithPos(5)
    report = Checkpointer(m, str(tmp_path / "o")).load_weights(str(tmp_path / "p.pth"))
    assert report["resized"] == ["pos_embed"]
    assert torch.allclose(m.pos_embed, torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0]))


def test_resume_or_load_prefers_resume(tmp_path):
    model, _, _, ckpt = _setup(tmp_path / "run")
    ckpt.save("model_0000005", iteration=5)
    other = PlaceholderModel(hidden=8)
    torch.save(other.state_dict(), tmp_path / "init.pth")
    fresh = PlaceholderModel(hidden=8)
    # no --resume: weights only from MODEL.WEIGHTS, start at 0
    assert Checkpointer(fresh, str(tmp_path / "run")).resume_or_load(str(tmp_path / "init.pth"), resume=False) == {}
    assert torch.equal(fresh.head.weight, other.head.weight)
    # --resume with a tag: everything from the run, MODEL.WEIGHTS ignored
    extra = Checkpointer(fresh, str(tmp_path / "run")).resume_or_load(str(tmp_path / "init.pth"), resume=True)
    assert extra["iteration"] == 5 and torch.equal(fresh.head.weight, model.head.weight)
    # --resume without a tag: falls back to MODEL.WEIGHTS
    empty = PlaceholderModel(hidden=8)
    assert Checkpointer(empty, str(tmp_path / "none")).resume_or_load(str(tmp_path / "init.pth"), resume=True) == {}
    assert torch.equal(empty.head.weight, other.head.weight)
    with pytest.raises(CheckpointError, match="not found"):
        Checkpointer(empty, str(tmp_path / "none")).resume_or_load(str(tmp_path / "nope.pth"), resume=False)
