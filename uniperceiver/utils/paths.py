"""Where data and caches live: data paths resolve against DATA_PATH; caches go to CACHE_DIR."""
from __future__ import annotations

import os

from uniperceiver.config import default_cache_dir


def get_cache_dir(cfg=None) -> str:
    """``cfg.CACHE_DIR``, else ``$UNIPERCEIVER_CACHE``, else ``~/.cache/uniperceiver``."""
    path = (cfg.CACHE_DIR if cfg is not None else "") or default_cache_dir()
    return os.path.abspath(os.path.expanduser(path))


def demo_data_root(cfg=None) -> str:
    return os.path.join(get_cache_dir(cfg), "demo")


def get_data_root(cfg=None) -> str:
    """``cfg.DATA_PATH``, else ``$DATA_PATH``, else the built-in demo data root."""
    path = (cfg.DATA_PATH if cfg is not None else "") or os.environ.get("DATA_PATH", "") or demo_data_root(cfg)
    return os.path.abspath(os.path.expanduser(path))


def resolve_data_path(cfg, path: str) -> str:
    """An absolute path stays; a relative one is taken under the data root."""
    if not path:
        return path
    path = os.path.expanduser(path)
    return path if os.path.isabs(path) else os.path.join(get_data_root(cfg), path)
