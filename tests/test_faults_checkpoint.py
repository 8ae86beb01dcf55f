"""Fault injection, checkpoints: kills during a save, a checkpoint carrying a pickled object, a disk that fills
during a save or a metrics write, a checkpoint whose widths do not fit the model, an unreadable last_checkpoint tag.

tests/test_checkpoint.py covers atomic save under an exception, corrupt last checkpoint fallback, strict loading.
"""
from __future__ import annotations

import errno
import json
import logging
import os
import signal
import subprocess
from pathlib import Path

import pytest
import torch

from conftest import CLS, ENGINE_SMOKE, PYTHON, REPO, clean_env, evil_pickle, restored_loggers
from uniperceiver.checkpoint import Checkpointer


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


# ------------------------------------------------------------------------------------------------- disk full
SMOKE = ["--config-file", ENGINE_SMOKE, "SOLVER.MAX_ITER", "12", "SOLVER.CHECKPOINT_PERIOD", "5", "SOLVER.WRITE_PERIOD",
         "1"]


def _iterations(out: Path) -> list:
    return [json.loads(line)["iteration"] for line in (out / "metrics.json").read_text().splitlines()]


def _enospc(path=None) -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), *([path] if path else []))


def test_disk_full_during_a_checkpoint_keeps_the_previous_one_and_resume_continues(tmp_path, monkeypatch, capsys):
    import main

    out = tmp_path / "out"
    real_save, calls = torch.save, []

    def save_until_full(obj, f, *a, **k):
        calls.append(f)
        if len(calls) == 2:  # model_0000009: half written, then the disk is full
            with open(f, "wb") as fh:
                fh.write(b"PK\x03\x04 partial")
            raise _enospc(f)
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(torch, "save", save_until_full)
    with restored_loggers():
        code = main.run([*SMOKE, "OUTPUT_DIR", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1, err
    assert err.startswith(f"error: cannot write checkpoint {out / 'model_0000009.pth'}: No space left on device")
    assert f"the previous checkpoint {out / 'model_0000004.pth'} is intact" in err
    assert (out / "last_checkpoint").read_text() == "model_0000004.pth"
    assert sorted(p.name for p in out.glob("model_*")) == ["model_0000004.pth"]  # no partial file under any name
    assert "Traceback" in (out / "log.txt").read_text()
    monkeypatch.setattr(torch, "save", real_save)
    with restored_loggers():
        assert main.run(["--resume", *SMOKE, "OUTPUT_DIR", str(out)]) == 0
    assert "Starting training from iteration 5 to 12" in (out / "log.txt").read_text()
    assert _iterations(out) == list(range(12))  # every step once: the rows after the checkpoint were trimmed


def test_disk_full_during_a_metrics_write_is_one_line_and_resume_has_no_duplicated_rows(tmp_path, monkeypatch,
                                                                                         capsys):
    import main
    from uniperceiver.utils import events

    out = tmp_path / "out"

    class FullAfterSixRows:
        """metrics.json on a disk that fills up after six rows: the seventh is cut short, then ENOSPC."""

        def __init__(self, path, mode, buffering=-1):
            self.f, self.rows = open(path, mode, buffering=buffering), 0

        def write(self, data):
            self.rows += bytes(data).count(b"\n")
            if self.rows > 6:
                self.f.write(bytes(data)[:5])
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return self.f.write(data)

        def fileno(self):
            return self.f.fileno()

        def close(self):
            self.f.close()

    monkeypatch.setattr(events, "open", FullAfterSixRows, raising=False)
    with restored_loggers():
        code = main.run([*SMOKE, "OUTPUT_DIR", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1, err
    assert err.startswith(f"error: No space left on device writing {out / 'metrics.json'}; checkpoints already "
                          "written are intact")
    assert not (out / "metrics.json").read_text().endswith("\n")  # the cut row is on disk
    monkeypatch.undo()
    with restored_loggers():
        assert main.run(["--resume", *SMOKE, "OUTPUT_DIR", str(out)]) == 0
    assert _iterations(out) == list(range(12))


def test_real_full_tmpfs_during_a_checkpoint(tmp_path, capsys):
    """The same on a real 160 KiB tmpfs (two placeholder checkpoints do not fit), then grown for --resume."""
    import main

    disk = tmp_path / "disk"
    disk.mkdir()
    mount = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=160k", "tmpfs", str(disk)], capture_output=True,
                           text=True)
    if mount.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root / CAP_SYS_ADMIN): {mount.stderr.strip()}")
    try:
        out = disk / "out"
        with restored_loggers():
            code = main.run([*SMOKE, "OUTPUT_DIR", str(out)])
        err = capsys.readouterr().err
        assert code == 1 and "error: " in err, err
        tagged = (out / "last_checkpoint").read_text()
        Checkpointer(torch.nn.Module(), str(out), save_to_disk=False).load_last_readable()  # readable
        assert not [p for p in out.iterdir() if ".tmp" in p.name]
        subprocess.run(["mount", "-o", "remount,size=4m", str(disk)], check=True)
        with restored_loggers():
            assert main.run(["--resume", *SMOKE, "OUTPUT_DIR", str(out)]) == 0
        assert f"Resuming from {out / tagged}" in (out / "log.txt").read_text()
        assert _iterations(out) == list(range(12))
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)


# ---------------------------------------------------------------------------------------- bad checkpoints
def _width_128_state(path: Path, **extra) -> None:
    from uniperceiver.config import setup_cfg
    from uniperceiver.modeling import build_model

    cfg = setup_cfg(CLS, ["MODEL.BERT.HIDDEN_SIZE", "128", "MODEL.BERT.NUM_ATTENTION_HEADS", "2"])
    torch.save({"model": build_model(cfg).state_dict(), **extra}, path)


@pytest.mark.parametrize("how", ["weights", "resume"])
def test_checkpoint_of_another_width_is_one_line_exit_2(tmp_path, capsys, how):
    """Width 128 into the width-192 model: resizable tables (position embeddings) included, one line, exit 2."""
    import main

    out = tmp_path / "out"
    out.mkdir()
    if how == "weights":
        _width_128_state(tmp_path / "w128.pth")
        argv = ["MODEL.WEIGHTS", str(tmp_path / "w128.pth")]
    else:
        _width_128_state(out / "model_0000003.pth", iteration=3)
        (out / "last_checkpoint").write_text("model_0000003.pth")
        argv = ["--resume"]
    with restored_loggers():
        code = main.run(["--config-file", CLS, *argv, "OUTPUT_DIR", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert "shape mismatch for embed.text_pos_embed: checkpoint (64, 128), model (64, 192)" in err
    assert not (out / "model_final.pth").exists()


@pytest.mark.parametrize("tag", [b"\xff\xfe\x00garbage", b"", b"../../etc/passwd"])
def test_unreadable_last_checkpoint_tag_falls_back_to_the_checkpoints_by_name(tmp_path, caplog, tag):
    out = tmp_path / "out"
    ckpt = Checkpointer(torch.nn.Linear(2, 2), str(out))
    ckpt.save("model_0000004", iteration=4)
    ckpt.save("model_0000009", iteration=9)
    (out / "last_checkpoint").write_bytes(tag)
    with caplog.at_level(logging.WARNING, logger="uniperceiver"):
        assert Checkpointer(torch.nn.Linear(2, 2), str(out)).resume()["iteration"] == 9
    assert "last_checkpoint" in caplog.text and "looking for checkpoints by name" in caplog.text


def test_unreadable_tag_without_any_checkpoint_is_one_line_exit_2(tmp_path, capsys):
    import main

    out = tmp_path / "out"
    out.mkdir()
    (out / "last_checkpoint").write_bytes(b"\xff\xff")
    with restored_loggers():
        code = main.run(["--config-file", ENGINE_SMOKE, "--resume", "OUTPUT_DIR", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.splitlines() == [f"error: no readable checkpoint in {out} (tag points at nothing)"]
