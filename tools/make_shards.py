#!/usr/bin/env python
"""Write a task's training split as WebDataset tar shards in img2dataset's layout.

    python tools/make_shards.py --config-file configs/quick_schedules/instant_retrieval.yaml --out shards/ \
        --shard-size 1000
    python tools/make_shards.py --config-file CFG --task imagenet --out DIR --shard-size 5000 [KEY VALUE ...]

Writes ``DIR/00000.tar``, ``DIR/00001.tar``, ... with one sample per training record, in the reader's order:
``{key}.jpg`` (the image file's bytes as they are; ``.png`` etc. keep their extension), ``{key}.txt`` (the
caption, image-text readers) or ``{key}.cls`` (the label, classification readers), and ``{key}.json``
(``{"key", "source", "caption" | "label"}``).  Keys are 9-digit running numbers, as img2dataset writes them.
Train on them with ``DATASETS.FORMAT webdataset DATASETS.TRAIN "DIR/{00000..NNNNN}.tar"`` (the tool prints the
pattern).  A config with several tasks needs ``--task``.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tarfile
from typing import Iterator, Tuple

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def training_records(cfg, task_name: str) -> Tuple[str, Iterator[dict]]:
    """(kind, records with an absolute ``path`` and a ``caption`` or ``label``) of a task's training split."""
    from uniperceiver.config import ConfigError
    from uniperceiver.data.datasets import build_reader, reader_name

    task_cfg = cfg.task(task_name)
    reader = reader_name(task_cfg)
    if reader not in ("imagenet", "coco_caption", "jsonl_pairs"):
        raise ConfigError(f"task {task_name}: tools/make_shards.py writes image classification and image-text "
                          f"pairs; its reader {reader!r} is not one of them")
    dataset = build_reader(task_cfg, cfg, "train", mode="pairs")
    kind = "label" if reader == "imagenet" else "pairs"

    def records():
        for record in dataset.records:
            out = {"path": dataset.image_path(record), "source": record["image"]}
            out["label" if kind == "label" else "caption"] = record["label" if kind == "label" else "caption"]
            yield out

    return kind, records()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644
    tar.addfile(info, io.BytesIO(data))


def write_shards(records, kind: str, out: str, shard_size: int) -> Tuple[int, int]:
    """Write the shards; returns (samples, shards).  Deterministic bytes (mtime 0)."""
    if shard_size <= 0:
        raise ValueError(f"--shard-size must be > 0, got {shard_size}")
    os.makedirs(out, exist_ok=True)
    tar, shards, n = None, 0, 0
    try:
        for record in records:
            if n % shard_size == 0:
                if tar is not None:
                    tar.close()
                tar = tarfile.open(os.path.join(out, f"{shards:05d}.tar"), "w")
                shards += 1
            key = f"{n:09d}"
            ext = os.path.splitext(record["path"])[1].lower().lstrip(".") or "jpg"
            ext = "jpg" if ext == "jpeg" else ext
            with open(record["path"], "rb") as f:
                _add(tar, f"{key}.{ext}", f.read())
            meta = {"key": key, "source": record["source"]}
            if kind == "label":
                _add(tar, f"{key}.cls", str(int(record["label"])).encode())
                meta["label"] = int(record["label"])
            else:
                _add(tar, f"{key}.txt", record["caption"].encode("utf-8"))
                meta["caption"] = record["caption"]
            _add(tar, f"{key}.json", json.dumps(meta).encode("utf-8"))
            n += 1
    finally:
        if tar is not None:
            tar.close()
    return n, shards


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True, metavar="FILE")
    parser.add_argument("--task", default="", help="task NAME (needed when the config has several)")
    parser.add_argument("--out", required=True, help="folder for 00000.tar, 00001.tar, ...")
    parser.add_argument("--shard-size", type=int, default=1000, help="samples per shard")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    args = parser.parse_args(argv)
    from uniperceiver.config import ConfigError, setup_cfg
    from uniperceiver.data.demo import prepare_data_root

    try:
        cfg = setup_cfg(args.config_file, args.opts)
        names = [t.NAME for t in cfg.TASKS]
        task = args.task or (names[0] if len(names) == 1 else "")
        if not task:
            raise ConfigError(f"{args.config_file} has {len(names)} tasks ({', '.join(names)}): choose one with --task")
        if task not in names:
            raise ConfigError(f"--task {task!r} is not a task of {args.config_file}; tasks: {', '.join(names)}")
        prepare_data_root(cfg)
        kind, records = training_records(cfg, task)
        n, shards = write_shards(records, kind, args.out, args.shard_size)
    except (ConfigError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    last = max(shards - 1, 0)
    print(f"wrote {n} samples in {shards} shards to {args.out}: "
          f"DATASETS.FORMAT webdataset DATASETS.TRAIN \"{os.path.abspath(args.out)}/{{00000..{last:05d}}}.tar\"")
    return 0


if __name__ == "__main__":
    sys.exit(main())
