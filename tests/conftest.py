"""Shared test helpers: CPU-only defaults, a session cache dir, and running main.py in a subprocess."""
from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
# The real Tiny model on demo data (two tasks): the smoke test of every feature.
INSTANT = str(REPO / "configs" / "quick_schedules" / "instant.yaml")
# The placeholder model on synthetic data: engine / launch / resume / scale-out mechanics in seconds.
ENGINE_SMOKE = str(REPO / "configs" / "quick_schedules" / "instant_placeholder.yaml")
QUICK = REPO / "configs" / "quick_schedules"
# One task (image classification on the demo digits): the fault tests' usual run.
CLS = str(QUICK / "instant_classification.yaml")
INSTANT_MOE = str(QUICK / "instant_moe.yaml")

# Tiny models on a shared 2-core machine: one intra-op thread each is much faster than contention.
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)


@pytest.fixture(scope="session", autouse=True)
def _session_cache(tmp_path_factory):
    """UNIPERCEIVER_CACHE points to a session tmp dir so tests never write into ~/.cache."""
    cache = tmp_path_factory.mktemp("uniperceiver_cache")
    old = os.environ.get("UNIPERCEIVER_CACHE")
    os.environ["UNIPERCEIVER_CACHE"] = str(cache)
    yield cache
    if old is None:
        os.environ.pop("UNIPERCEIVER_CACHE", None)
    else:
        os.environ["UNIPERCEIVER_CACHE"] = old


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def output_dir(tmp_path) -> Path:
    return tmp_path / "out"


def clean_env(extra: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    """The environment for a child run: no inherited launcher / Slurm variables, one thread."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("SLURM_") and k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                      "MASTER_PORT", "LOCAL_WORLD_SIZE")}
    env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.update(extra or {})
    return env


def run_main(args: Sequence[str], *, launcher: Sequence[str] = (), env: Optional[Dict[str, str]] = None,
             timeout: float = 240, check: bool = True) -> subprocess.CompletedProcess:
    """Run ``[launcher...] main.py args...`` from the repo root; ``check`` asserts exit code 0."""
    cmd: List[str] = list(launcher) + [str(REPO / "main.py")] + [str(a) for a in args]
    if not launcher:
        cmd = [PYTHON] + cmd
    proc = subprocess.run(cmd, cwd=REPO, env=clean_env(env), capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {proc.returncode}\nSTDOUT:\n{proc.stdout[-4000:]}\n"
                             f"STDERR:\n{proc.stderr[-6000:]}")
    return proc


class CorruptLosses:
    """Wraps a task for the non-finite tests: at the given draws (0-based calls of ``losses``) its losses go
    through ``corrupt(model, losses) -> losses``."""

    def __init__(self, task, bad_calls, corrupt):
        self.task, self.bad_calls, self.corrupt, self.calls = task, set(bad_calls), corrupt, 0

    def losses(self, model, batch):
        out = self.task.losses(model, batch)
        self.calls += 1
        return self.corrupt(model, out) if self.calls - 1 in self.bad_calls else out


def load_tool(name: str):
    """The module ``tools/<name>.py`` (tools are scripts, not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"tool_{name}", REPO / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------- fault-test helpers (tests/test_faults_*)
def checkpoint_weights(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


def tagged_iteration(out: Path) -> int:
    return int(torch.load(out / (out / "last_checkpoint").read_text().strip(), weights_only=True)["iteration"])


def metric_rows(out: Path) -> dict:
    """iteration -> the LAST row written for it (a killed run's rows past its checkpoint are rewritten after the
    resume), without the wall-clock, throughput and memory keys."""
    rows = {}
    for line in (out / "metrics.json").read_text().splitlines():
        row = json.loads(line)
        rows[row["iteration"]] = {k: v for k, v in row.items()
                                  if "time" not in k and not k.startswith(("samples_per_s_", "max_rss", "max_mem"))}
    return rows


def start_main(args, out: Path) -> subprocess.Popen:
    cmd = [PYTHON, str(REPO / "main.py"), *[str(a) for a in args], "OUTPUT_DIR", str(out)]
    # own process group: SIGKILL reaches the data-loader workers too, like a node that dies
    return subprocess.Popen(cmd, cwd=REPO, env=clean_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)


def wait_for(pred, proc: subprocess.Popen, what: str, timeout: float = 240) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if pred():
            return
        if proc.poll() is not None:
            raise AssertionError(f"run ended before {what}:\n{proc.stdout.read()[-3000:]}")
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


@contextlib.contextmanager
def restored_loggers():
    """main.run reconfigures the package loggers (handlers, propagate); put them back for later tests."""
    saved = {name: (lg.handlers[:], lg.propagate, lg.level)
             for name in ("uniperceiver", "fvcore") for lg in [logging.getLogger(name)]}
    try:
        yield
    finally:
        for name, (handlers, propagate, level) in saved.items():
            lg = logging.getLogger(name)
            for h in lg.handlers:
                if h not in handlers:
                    h.close()
            lg.handlers, lg.propagate, lg.level = handlers, propagate, level


def evil_pickle(path: Path, marker: Path) -> None:
    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"model": {"w": torch.zeros(1)}, "payload": Evil(), "iteration": 3}, path)


# ------------------------------------------------------------- tiny-model helpers (test_model, test_adaptation_*)
TEMP_NAMES = ["logit_img_cls", "logit_word"]


def tiny_cfg(layers=2, img=32, **model):
    """Tiny width (192, 3 heads) with few layers and small images, two tasks with their own logit scales.
    ``model`` sets MODEL keys (``BERT_<KEY>``: MODEL.BERT keys)."""
    from uniperceiver.config import get_cfg

    cfg = get_cfg()
    cfg.merge_from_dict({"TASKS": [{"NAME": "cls", "MODEL": {"TEMP_NAME": TEMP_NAMES[0]}},
                                   {"NAME": "mlm", "MODEL": {"TEMP_NAME": TEMP_NAMES[1]}}]})
    cfg.MODEL.BERT.NUM_HIDDEN_LAYERS = layers
    cfg.MODEL.IMG_INPUT_SIZE = img
    cfg.MODEL.MAX_POSITION_EMBEDDINGS = 32
    for key, value in model.items():
        node, leaf = (cfg.MODEL.BERT, key[5:]) if key.startswith("BERT_") else (cfg.MODEL, key)
        node[leaf] = value
    cfg.finalize()
    return cfg


def prompt_cfg(tokens=4, fc_weight=0.5, **kw):
    """:func:`tiny_cfg` with prompt tuning on (``tokens`` prompts, head blend ``fc_weight``), only prompts trainable."""
    cfg = tiny_cfg(**kw)
    cfg.MODEL.PROMPT.ENABLED = True
    cfg.MODEL.PROMPT.NUM_TOKENS = tokens
    cfg.MODEL.PROMPT.FC_WEIGHT = fc_weight
    cfg.MODEL.TRAINABLE = ["prompt"]
    return cfg


def batch(seed=0, b=2, frames=2, img=32, length=6):
    """``(images, text, mask)``: random clips (or images when ``frames`` is 0) and token ids; the last two
    tokens of sample 1 are padding."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(b, frames, 3, img, img, generator=g) if frames else torch.randn(b, 3, img, img, generator=g)
    text = torch.randint(0, 49406, (b, length), generator=g)
    mask = torch.ones(b, length, dtype=torch.bool)
    mask[1, length - 2 :] = False
    return images, text, mask


def full_loss(model, seed=0):
    """A loss touching every output: video + text + captioning queries, targets, every logit scale."""
    images, text, mask = batch(seed)
    out = model(images=images, text=text, text_mask=mask, num_queries=text.shape[1], causal_text=True)
    targets = model.encode_targets(text[:, :3], mask[:, :3])
    loss = out["spe"].sum() * 0
    for i, name in enumerate(["default"] + TEMP_NAMES):
        query = [out["spe"], out["text"], out["queries"]][i]
        loss = loss + model.logits(query, targets, name).logsumexp(-1).mean()
    img_only = model(images=images[:, 0])  # a plain image is a one-frame video
    return loss + model.logits(img_only["spe"], targets, "default").logsumexp(-1).mean()


# -------------------------------------------------- Slurm / signal helpers (test_slurm, test_preemption, test_submit)
def slurm_available() -> str:
    """'' when a Slurm controller answers with an idle or mixed node in partition debug, else the reason."""
    if shutil.which("srun") is None or shutil.which("sinfo") is None:
        return "no srun/sinfo (start the local cluster: bash tools/slurm_cluster.sh start)"
    try:
        out = subprocess.run(["sinfo", "-h", "-p", "debug", "-o", "%T"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"sinfo failed: {e}"
    if out.returncode != 0:
        return f"slurmctld is not running (sinfo: {out.stderr.strip()}); start it: bash tools/slurm_cluster.sh start"
    states = out.stdout.split()
    if not any(s.startswith(("idle", "mixed", "allocated")) for s in states):
        return f"partition debug has no usable node (states: {states or 'none'})"
    return ""


_SLURM_REASON = slurm_available()
requires_slurm = pytest.mark.skipif(bool(_SLURM_REASON), reason=_SLURM_REASON)


def wait_for_rows(metrics: Path, rows: int, proc: Optional[subprocess.Popen], timeout: float = 120) -> None:
    """Wait until ``metrics`` (metrics.json) has ``rows`` lines; fail if ``proc`` ends first."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= rows:
            return
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"training ended before it was signalled:\n{proc.stdout.read()[-3000:]}")
        time.sleep(0.05)
    raise AssertionError(f"{metrics} did not reach {rows} rows in {timeout} s")
