"""Checkpoints with fvcore semantics: ``model_XXXXXXX.pth`` / ``model_final.pth`` + a ``last_checkpoint`` tag.

* A checkpoint is a dict: ``"model"`` (state dict), one entry per checkpointable (optimizer, scheduler, ...),
  and extras such as ``"iteration"``.  Everything is tensors or plain types: ``torch.load(p, weights_only=True)``
  reads it in a fresh process.
* :meth:`Checkpointer.save` is COLLECTIVE: every rank calls it (checkpointables may gather per-rank state);
  only the main rank writes, atomically (temp file + ``os.replace``; the tag is written after the file).
* :meth:`Checkpointer.resume_or_load`: ``resume=True`` with a tag restores everything; otherwise ``path``
  (MODEL.WEIGHTS) is loaded as weights only, strictly: missing / unexpected keys and shape mismatches are a
  :class:`CheckpointError` naming them, unless matched by ``ignore`` regexes (MODEL.WEIGHTS_IGNORE) or, for
  shape mismatches, by ``model.resize_rules()`` -> ``[(regex, fn(loaded, current) -> tensor), ...]``.
  MODEL.WEIGHTS may also be a ``.safetensors`` weights file (checkpoint/safetensors_io.py), matched the same way.
  The adapters a config adds on top of pre-trained weights (:data:`ADAPTER_PATTERNS`: ``*prompt*``,
  ``*lora_*``) may be missing from ``MODEL.WEIGHTS``; they keep their init and are listed in one log line.
* A corrupt or truncated last checkpoint is logged and the newest readable older one is used instead.
"""
from __future__ import annotations

import logging
import os
import pickle
import re
import shutil
import tempfile
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from uniperceiver.config import ConfigError
from uniperceiver.utils import comm
from uniperceiver.utils.wrappers import unwrap_model

from .safetensors_io import is_safetensors, load_safetensors, strip_prefix

logger = logging.getLogger(__name__)

TAG_FILE = "last_checkpoint"
# Parameters a config adds on top of pre-trained weights (prompt tuning, LoRA): MODEL.WEIGHTS may lack them.
ADAPTER_PATTERNS = (r"prompt", r"lora_")
_PERIODIC = re.compile(r"^model_(\d{7,})\.pth$")


class CheckpointError(ConfigError):
    """A checkpoint that does not fit the model (a user error: main.py prints one line, exit code 2)."""


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (disk full, quota, I/O error); the previous one is intact (exit 1)."""


def _write_failure(err: BaseException, directory: str) -> str:
    """Why a write failed, in a few words: the OS error, or torch's writer message plus the free space."""
    if isinstance(err, OSError) and err.strerror:
        why = err.strerror
    else:
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        why = lines[0] if lines else type(err).__name__
    try:
        free = shutil.disk_usage(directory).free
        why += f"; {free / 2**20:.1f} MiB free in {directory}"
    except OSError:
        pass
    return why


def _atomic_write(path: str, write: Callable[[str], None]) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=".tmp", dir=directory)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def describe_load_error(err: Exception) -> str:
    """One line for a checkpoint that cannot be read.  A file carrying pickled Python objects (which
    ``weights_only=True`` refuses to build, so nothing in it runs) is named as such, with the refused global."""
    text = str(err)
    if isinstance(err, pickle.UnpicklingError) and "weights only" in text.lower():
        m = re.search(r"(?:unsupported GLOBAL|Unsupported global:?)\s*(?:GLOBAL\s+)?([\w.]+)", text)
        what = f" ({m.group(1)})" if m else ""
        return (f"refused: it carries a pickled Python object{what}; checkpoints are loaded with "
                f"weights_only=True (tensors and plain types only), so nothing in it was run")
    first = text.strip().splitlines()[0] if text.strip() else ""
    return f"{type(err).__name__}: {first}"


def load_checkpoint_file(path: str) -> Dict[str, Any]:
    """``torch.load(path, weights_only=True)`` on CPU; a non-dict is wrapped as ``{"model": obj}``."""
    if is_safetensors(path):
        raise CheckpointError(f"{path} is a safetensors weights file: use it as MODEL.WEIGHTS; resuming and "
                              f"--eval-ema need a .pth checkpoint")
    data = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a dict checkpoint, got {type(data).__name__}")
    if "model" not in data:
        data = {"model": data}
    return data


def match_state_dict(model: nn.Module, loaded: Dict[str, torch.Tensor], ignore: Sequence[str] = (),
                     resize_rules: Sequence[Tuple[str, Callable]] = ()) -> Tuple[Dict[str, torch.Tensor], Dict[str, List[str]]]:
    """Check ``loaded`` against ``model.state_dict()``; return (state to load, report).

    report: ``{"loaded", "ignored", "resized", "missing_ignored", "unexpected_ignored"}`` key lists.  Any key
    that cannot be explained raises :class:`CheckpointError` naming all of them.
    """
    current = model.state_dict()
    ignore_re = [re.compile(p) for p in ignore]
    rules = [(re.compile(p), fn) for p, fn in resize_rules]
    ignored = lambda k: any(r.search(k) for r in ignore_re)  # noqa: E731
    out: Dict[str, torch.Tensor] = {}
    report: Dict[str, List[str]] = {k: [] for k in ("loaded", "resized", "ignored", "missing_ignored",
                                                    "unexpected_ignored")}
    errors: List[str] = []
    for key, value in loaded.items():
        if key not in current:
            (report["unexpected_ignored"].append(key) if ignored(key) else errors.append(f"unexpected key {key}"))
            continue
        target = current[key]
        if tuple(value.shape) != tuple(target.shape):
            rule = next((fn for r, fn in rules if r.search(key)), None)
            if rule is not None:
                try:
                    value = rule(value, target)
                except (ValueError, RuntimeError) as e:  # e.g. a checkpoint of another width
                    errors.append(f"shape mismatch for {key}: checkpoint {tuple(value.shape)}, model "
                                  f"{tuple(target.shape)} (cannot be resized: {e})")
                    continue
                if tuple(value.shape) != tuple(target.shape):
                    errors.append(f"resize rule for {key} returned shape {tuple(value.shape)}, "
                                  f"model has {tuple(target.shape)}")
                    continue
                report["resized"].append(key)
            elif ignored(key):
                report["ignored"].append(key)
                continue
            else:
                errors.append(f"shape mismatch for {key}: checkpoint {tuple(value.shape)}, "
                              f"model {tuple(target.shape)}")
                continue
        else:
            report["loaded"].append(key)
        out[key] = value.to(dtype=target.dtype)
    for key in current:
        if key not in loaded:
            (report["missing_ignored"].append(key) if ignored(key) else errors.append(f"missing key {key}"))
    if errors:
        shown = "; ".join(errors[:20]) + (f"; ... ({len(errors) - 20} more)" if len(errors) > 20 else "")
        raise CheckpointError(f"checkpoint does not match the model: {shown} "
                              f"(allow keys with MODEL.WEIGHTS_IGNORE regexes)")
    return out, report


class Checkpointer:
    """Saves / loads ``model`` plus named checkpointables (anything with ``state_dict`` / ``load_state_dict``)."""

    def __init__(self, model: nn.Module, save_dir: str, *, save_to_disk: Optional[bool] = None,
                 **checkpointables: Any):
        self.model = unwrap_model(model)
        self.save_dir = save_dir
        self.save_to_disk = comm.is_main_process() if save_to_disk is None else save_to_disk
        self.checkpointables = checkpointables

    # ------------------------------------------------------------------------------------------- saving
    def save(self, name: str, **extra: Any) -> Optional[str]:
        """Write ``save_dir/<name>.pth`` and point the tag at it.  Collective: call on every rank."""
        data: Dict[str, Any] = {"model": self.model.state_dict()}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data.update(extra)
        if not self.save_to_disk:
            return None
        os.makedirs(self.save_dir, exist_ok=True)
        basename = f"{name}.pth"
        path = os.path.join(self.save_dir, basename)
        try:
            _atomic_write(path, lambda tmp: torch.save(data, tmp))
            self.tag_last_checkpoint(basename)
        except (OSError, RuntimeError) as e:  # torch's zip writer reports a full disk as a RuntimeError
            previous = self.get_checkpoint_file()
            raise CheckpointWriteError(
                f"cannot write checkpoint {path}: {_write_failure(e, self.save_dir)}; the previous checkpoint "
                f"{previous or '(none)'} is intact: free space, then continue with --resume") from e
        logger.info("Saved checkpoint to %s", path)
        return path

    def tag_last_checkpoint(self, basename: str) -> None:
        def write(tmp: str) -> None:
            with open(tmp, "w") as f:
                f.write(basename)

        _atomic_write(os.path.join(self.save_dir, TAG_FILE), write)

    # ------------------------------------------------------------------------------------------ finding
    def has_checkpoint(self) -> bool:
        return os.path.exists(os.path.join(self.save_dir, TAG_FILE))

    def get_checkpoint_file(self) -> str:
        """The tagged checkpoint's path ("" without a tag, or with a tag that cannot be read: not UTF-8, empty,
        not a file name, unreadable; logged)."""
        tag = os.path.join(self.save_dir, TAG_FILE)
        try:
            with open(tag, encoding="utf-8") as f:
                name = f.read().strip()
        except FileNotFoundError:
            return ""
        except (OSError, ValueError) as e:  # a directory, no permission, undecodable bytes
            logger.warning("Checkpoint tag %s is unreadable (%s: %s); looking for checkpoints by name", tag,
                           type(e).__name__, e)
            return ""
        if not name or "\n" in name or os.sep in name or "\x00" in name:
            logger.warning("Checkpoint tag %s does not hold a checkpoint file name (%r); looking for checkpoints "
                           "by name", tag, name[:80])
            return ""
        return os.path.join(self.save_dir, name)

    def get_all_checkpoint_files(self) -> List[str]:
        """Periodic checkpoints in save_dir, oldest first."""
        if not os.path.isdir(self.save_dir):
            return []
        names = sorted((int(m.group(1)), f) for f in os.listdir(self.save_dir) if (m := _PERIODIC.match(f)))
        return [os.path.join(self.save_dir, f) for _, f in names]

    def load_last_readable(self) -> Tuple[str, Dict[str, Any]]:
        """Load the tagged checkpoint; if it is unreadable, the newest readable older one (logged)."""
        tagged = self.get_checkpoint_file()
        candidates = [tagged] + [p for p in reversed(self.get_all_checkpoint_files()) if p != tagged]
        final = os.path.join(self.save_dir, "model_final.pth")
        if not tagged:  # an unreadable tag: the final checkpoint first, then the periodic ones, newest first
            candidates = ([final] if os.path.isfile(final) else []) + candidates[1:]
        if tagged and os.path.basename(tagged) != "model_final.pth":
            # only periodic checkpoints older than the tagged one are fallbacks
            m = _PERIODIC.match(os.path.basename(tagged))
            if m:
                limit = int(m.group(1))
                candidates = [tagged] + [p for p in candidates[1:]
                                         if int(_PERIODIC.match(os.path.basename(p)).group(1)) < limit]
        for path in candidates:
            try:
                return path, load_checkpoint_file(path)
            except Exception as e:  # truncated zip, missing file, unpickling error...
                logger.warning("Checkpoint %s is unreadable (%s); trying the previous one", path,
                               describe_load_error(e))
        raise CheckpointError(f"no readable checkpoint in {self.save_dir} (tag points at {tagged or 'nothing'})")

    # ------------------------------------------------------------------------------------------ loading
    def load_weights(self, path: str, ignore: Sequence[str] = ()) -> Dict[str, List[str]]:
        """Load model weights only from ``path``, strictly (see module docstring)."""
        if not os.path.isfile(path):
            raise CheckpointError(f"MODEL.WEIGHTS file not found: {path}")
        if is_safetensors(path):  # weights only (checkpoint/safetensors_io.py)
            try:
                state = load_safetensors(path)
            except Exception as e:
                raise CheckpointError(f"cannot read MODEL.WEIGHTS {path}: {describe_load_error(e)}") from None
            return self._load_model(state, ignore, source=path)
        try:
            data = load_checkpoint_file(path)
        except CheckpointError:
            raise
        except Exception as e:
            raise CheckpointError(f"cannot read MODEL.WEIGHTS {path}: {describe_load_error(e)}") from None
        state = strip_prefix(data["model"])
        current = self.model.state_dict()
        adapters = [k for k in current if k not in state and any(re.search(p, k) for p in ADAPTER_PATTERNS)]
        if adapters:
            logger.info("adapters not in %s, kept at their init (%d): %s", path, len(adapters), ", ".join(adapters))
        try:
            return self._load_model(state, ignore, source=path, allow_missing=adapters)
        except CheckpointError as e:
            raise CheckpointError(f"MODEL.WEIGHTS {path}: {e}") from None

    def _load_model(self, state: Dict[str, torch.Tensor], ignore: Sequence[str], source: str,
                    allow_missing: Sequence[str] = ()) -> Dict[str, List[str]]:
        rules = self.model.resize_rules() if hasattr(self.model, "resize_rules") else []
        ignore = list(ignore) + [f"^{re.escape(k)}$" for k in allow_missing]
        state, report = match_state_dict(self.model, strip_prefix(state), ignore=ignore, resize_rules=rules)
        self.model.load_state_dict(state, strict=False)
        logger.info("Loaded %d tensors from %s", len(report["loaded"]), source)
        for kind in ("resized", "ignored", "missing_ignored", "unexpected_ignored"):
            if report[kind]:
                logger.info("%s (%d): %s", kind.replace("_", " "), len(report[kind]), ", ".join(report[kind]))
        return report

    def resume(self) -> Dict[str, Any]:
        """Restore everything from the last readable checkpoint; returns its extra entries (e.g. iteration)."""
        path, data = self.load_last_readable()
        logger.info("Resuming from %s", path)
        self._load_model(data.pop("model"), ignore=(), source=path)
        for key, obj in self.checkpointables.items():
            if key in data:
                obj.load_state_dict(data.pop(key))
            else:
                logger.warning("checkpoint %s has no state for %r; it starts fresh", path, key)
        return data

    def resume_or_load(self, path: str, *, resume: bool = True, ignore: Sequence[str] = ()) -> Dict[str, Any]:
        """detectron2 semantics: resume everything when ``resume`` and a tag exist, else load weights from
        ``path`` (if given).  Returns the extra entries of a resumed checkpoint ({} otherwise)."""
        if resume and self.has_checkpoint():
            return self.resume()
        if path:
            self.load_weights(path, ignore=ignore)
        return {}


def last_iteration(save_dir: str) -> Optional[int]:
    """The ``iteration`` stored in the last readable checkpoint of ``save_dir`` (None without one).  Reads
    nothing but that checkpoint; used to tell a finished run before anything is written."""
    ckpt = Checkpointer(nn.Module(), save_dir, save_to_disk=False)
    if not ckpt.has_checkpoint():
        return None
    try:
        _, data = ckpt.load_last_readable()
    except CheckpointError:
        return None
    it = data.get("iteration")
    return int(it) if it is not None else None
