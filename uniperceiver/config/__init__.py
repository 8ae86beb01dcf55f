"""The config system: ``get_cfg()`` returns a fresh copy of the default tree (``defaults.py``)."""
from .config import CfgNode, ConfigError
from .defaults import TASK_SUBTREES, default_cache_dir


def get_cfg() -> CfgNode:
    """A fresh, mutable copy of the default config tree."""
    from .defaults import _C

    return _C.clone()


def setup_cfg(config_file: str = "", opts=None, freeze: bool = True) -> CfgNode:
    """defaults < ``config_file`` (with its ``_BASE_`` chain) < ``opts`` (``KEY VALUE`` list); tasks expanded."""
    cfg = get_cfg()
    if config_file:
        cfg.merge_from_file(config_file)
    cfg.merge_from_list(list(opts or []))
    cfg.finalize()
    if freeze:
        cfg.freeze()
    return cfg


__all__ = ["CfgNode", "ConfigError", "get_cfg", "setup_cfg", "TASK_SUBTREES", "default_cache_dir"]
