"""Fault injection, checkpoints: kills during a save, a checkpoint carrying a pickled object, a disk that fills
during a save or a metrics write, a checkpoint whose widths do not fit the model, an unreadable last_checkpoint tag.

tests/test_checkpoint.py covers atomic save under an exception, corrupt last checkpoint fallback, strict loading.
"""
from __future__ import annotations

import os
import signal
import subprocess

import pytest
import torch

from conftest import ENGINE_SMOKE, PYTHON, REPO, clean_env, evil_pickle, restored_loggers


# -------------------------------------------------------------------------------- kill during checkpointing
_KILL_DURING_SAVE = r"""
import os, signal, sys, torch
from uniperceiver.checkpoint import Checkpointer
out, where = sys.argv[1], sys.argv[2]
model = torch.nn.Linear(256, 256)
ckpt = Checkpointer(model, out)
ckpt.save("model_0000004", iteration=4)
real_save, real_tag = torch.save, ckpt.tag_last_checkpoint
def die():
    os.kill(os.getpid(), signal.SIGKILL)
def save_then_die(obj, f, *a, **k):          # killed while the bytes are going to disk
    real_save(obj, f, *a, **k)
    with open(f, "r+b") as fh:
        fh.truncate(os.path.getsize(f) // 2)
    die()
def tag_then_die(name):                      # killed between the file's rename and the tag
    die()
if where == "save":
    torch.save = save_then_die
else:
    ckpt.tag_last_checkpoint = tag_then_die
with torch.no_grad():
    model.weight.add_(1.0)
ckpt.save("model_0000009", iteration=9)
"""


@pytest.mark.parametrize("where", ["save", "tag"])
def test_kill_during_checkpoint_save_keeps_the_previous_one(tmp_path, where):
    out = tmp_path / "out"
    proc = subprocess.run([PYTHON, "-c", _KILL_DURING_SAVE, str(out), where], cwd=REPO, env=clean_env(),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert (out / "last_checkpoint").read_text() == "model_0000004.pth"
    names = sorted(os.listdir(out))
    # a partial file never has a checkpoint's name (only a temp name a later save ignores)
    assert ("model_0000009.pth" in names) == (where == "tag")
    from uniperceiver.checkpoint import Checkpointer

    model = torch.nn.Linear(256, 256)
    extra = Checkpointer(model, str(out)).resume()
    assert extra["iteration"] == 4


# ------------------------------------------------------------------------------------------------- security
def test_resume_from_a_checkpoint_carrying_a_pickled_object_runs_nothing(tmp_path, capsys):
    import main

    out = tmp_path / "out"
    out.mkdir()
    evil_pickle(out / "model_0000003.pth", tmp_path / "marker")
    (out / "last_checkpoint").write_text("model_0000003.pth")
    with restored_loggers():
        code = main.run(["--config-file", ENGINE_SMOKE, "--resume", "OUTPUT_DIR", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "no readable checkpoint" in err and len(err.splitlines()) == 1
    assert "pickled Python object (posix.system)" in (out / "log.txt").read_text()
    assert not (tmp_path / "marker").exists()
