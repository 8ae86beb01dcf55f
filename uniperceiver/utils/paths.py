"""Where data and caches live: data paths resolve against DATA_PATH; caches go to CACHE_DIR."""
from __future__ import annotations

import os


def default_cache_dir() -> str:
    """``$UNIPERCEIVER_CACHE``, else ``~/.cache/uniperceiver``."""
    return os.environ.get("UNIPERCEIVER_CACHE") or os.path.expanduser("~/.cache/uniperceiver")


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


# First folder of the published configs' data paths ("open_source_dataset/imagenet/meta").
PUBLISHED_PREFIX = "open_source_dataset"


def resolve_data_path(cfg, path: str) -> str:
    """An absolute path stays; a relative one is taken under the data root, as written (published paths
    ``open_source_dataset/...`` included).  Only when the data root is itself named ``open_source_dataset``
    (the published data/prepare_data.md's ``export DATA_PATH=.../open_source_dataset``) and the path as
    written does not exist is the repeated prefix dropped."""
    if not path:
        return path
    path = os.path.expanduser(path)
    if os.path.isabs(path):
        return path
    root = get_data_root(cfg)
    full = os.path.join(root, path)
    head, _, rest = path.replace(os.sep, "/").partition("/")
    if (head == PUBLISHED_PREFIX and rest and os.path.basename(root.rstrip("/")) == PUBLISHED_PREFIX
            and not os.path.exists(full)):
        return os.path.join(root, rest)
    return full
