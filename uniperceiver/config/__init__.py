"""The config system: ``get_cfg()`` returns a fresh copy of the default tree (``defaults.py``)."""
import logging
import os
import re

from .config import CfgNode, ConfigError
from .defaults import TASK_SUBTREES, default_cache_dir

logger = logging.getLogger("uniperceiver.config")
_WARNED = set()  # each adjustment warning once per process (setup_cfg runs in the launcher and in each worker)


def _warn_once(text: str) -> None:
    if text not in _WARNED:
        _WARNED.add(text)
        logger.warning(text)


def get_cfg() -> CfgNode:
    """A fresh, mutable copy of the default config tree."""
    from .defaults import _C

    return _C.clone()


def setup_cfg(config_file: str = "", opts=None, freeze: bool = True) -> CfgNode:
    """defaults < ``config_file`` (with its ``_BASE_`` chain) < ``opts`` (``KEY VALUE`` list); tasks expanded.

    A published Uni-Perceiver config (``published.py``) is converted onto our tree first; its report is kept
    as ``cfg.published_report()`` (None for our own configs).  Then the run adjustments (``adjust_for_run``)."""
    from .published import convert_published, is_published_file

    cfg = get_cfg()
    report = None
    if config_file:
        if is_published_file(config_file):
            data, report = convert_published(config_file, cfg)
            cfg.merge_from_dict(data, source=f"{config_file} (converted from the published format)")
            for text in report.warnings:
                _warn_once(f"{config_file}: {text}")
        else:
            cfg.merge_from_file(config_file)
    cfg.merge_from_list(list(opts or []))
    cfg.finalize()
    adjust_for_run(cfg)
    cfg.__dict__["_published_report"] = report
    if freeze:
        cfg.freeze()
    return cfg


_PUBLISHED_WEIGHTS = re.compile(r"^model_Epoch_(\d+)_Iter_(\d+)\.pth$")


def published_weights_name(path: str) -> str:
    """Our checkpoint for a published checkpoint name ``model_Epoch_<n>_Iter_<i>.pth`` that does not exist:
    ``model_<i>.pth`` (the checkpoint of step i), else ``model_final.pth`` in the same folder when it exists;
    ``path`` itself otherwise.  A missing file of the published name with neither is a ConfigError that says
    which file to use."""
    match = _PUBLISHED_WEIGHTS.match(os.path.basename(path))
    if not match or os.path.exists(path):
        return path
    folder = os.path.dirname(path)
    ours = [os.path.join(folder, f"model_{int(match.group(2)):07d}.pth"), os.path.join(folder, "model_final.pth")]
    for candidate in ours:
        if os.path.exists(candidate):
            return candidate
    raise ConfigError(f"MODEL.WEIGHTS {path}: no such file; this code saves step {match.group(2)} as "
                      f"{os.path.basename(ours[0])} (model_final.pth at the last step): point MODEL.WEIGHTS at one "
                      f"of those in {folder or '.'}")


def adjust_for_run(cfg: CfgNode) -> None:
    """Adjustments a run needs, each with one line: fp16 autocast without CUDA runs in fp32 (a warning); a
    published checkpoint name in MODEL.WEIGHTS reads our file of that step (``published_weights_name``)."""
    if cfg.MODEL.WEIGHTS:
        weights = published_weights_name(cfg.MODEL.WEIGHTS)
        if weights != cfg.MODEL.WEIGHTS:
            _warn_once(f"MODEL.WEIGHTS {cfg.MODEL.WEIGHTS} (the published name) is read from {weights}")
            cfg.MODEL.WEIGHTS = weights
    amp = cfg.SOLVER.AMP
    if amp.ENABLED and amp.DTYPE == "fp16" and not cfg.SOLVER.DEEPSPEED.ENABLED:
        import torch

        if cfg.MODEL.DEVICE.startswith("cpu") or (not cfg.MODEL.DEVICE and not torch.cuda.is_available()):
            _warn_once("SOLVER.AMP.DTYPE fp16 needs CUDA and none is used: training in fp32 "
                       "(SOLVER.AMP.ENABLED False); set SOLVER.AMP.DTYPE bf16 for autocast on CPU")
            amp.ENABLED = False


__all__ = ["CfgNode", "ConfigError", "get_cfg", "setup_cfg", "TASK_SUBTREES", "default_cache_dir"]
