"""Logging setup: rank 0 logs to the console and ``OUTPUT_DIR/log.txt``; rank N > 0 to ``log.txt.rank<N>``."""
from __future__ import annotations

import logging
import os
import sys
from typing import Optional

_FORMAT = "[%(asctime)s %(name)s %(levelname)s] %(message)s"
_DATEFMT = "%m/%d %H:%M:%S"


def setup_logger(output_dir: Optional[str] = None, distributed_rank: int = 0, name: str = "uniperceiver",
                 level: int = logging.INFO) -> logging.Logger:
    """Configure the ``name`` logger (idempotent: old handlers are replaced).

    Rank 0 writes INFO to stdout; other ranks write only WARNING+ to stdout.  Every rank writes its own file
    under ``output_dir``: ``log.txt`` (rank 0) or ``log.txt.rank<N>``.
    """
    logger = logging.getLogger(name)
    logger.setLevel(level)
    logger.propagate = False
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    prefix = f"[rank{distributed_rank}]" if distributed_rank > 0 else ""
    formatter = logging.Formatter(prefix + _FORMAT, datefmt=_DATEFMT)

    console = logging.StreamHandler(stream=sys.stdout)
    console.setLevel(level if distributed_rank == 0 else logging.WARNING)
    console.setFormatter(formatter)
    logger.addHandler(console)

    if output_dir:
        os.makedirs(output_dir, exist_ok=True)
        filename = os.path.join(output_dir, "log.txt" if distributed_rank == 0 else f"log.txt.rank{distributed_rank}")
        fh = logging.FileHandler(filename, mode="a")
        fh.setLevel(logging.DEBUG)
        fh.setFormatter(logging.Formatter(f"[rank{distributed_rank}]" + _FORMAT, datefmt=_DATEFMT))
        logger.addHandler(fh)
    # fvcore logs through its own loggers; route them into the same handlers.
    for other in ("fvcore",):
        lg = logging.getLogger(other)
        lg.setLevel(level)
        lg.propagate = False
        lg.handlers = list(logger.handlers)
    return logger
