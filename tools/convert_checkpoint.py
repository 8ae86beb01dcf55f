#!/usr/bin/env python
"""Consolidate a DeepSpeed ZeRO checkpoint (stage 1/2/3 shards, one per rank) into a plain model file.

    python tools/convert_checkpoint.py work_dirs/<config>/<job>/deepspeed model_final.pth           # latest tag
    python tools/convert_checkpoint.py work_dirs/<config>/<job> model_final.pth --tag iter_0004999

The output is ``{"model": fp32 state dict}`` (the fp32 master weights, not the bf16/fp16 copies), readable with
``torch.load(path, weights_only=True)``, usable as ``MODEL.WEIGHTS`` and by ``--eval-only`` without DeepSpeed.
Runs on CPU; no GPUs or process group needed.
"""
from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def find_checkpoint_dir(path: str) -> str:
    """``path`` itself if it holds DeepSpeed tags (a ``latest`` file or ``iter_*`` folders), else ``path/deepspeed``."""
    def has_tags(d: str) -> bool:
        return os.path.isdir(d) and (os.path.isfile(os.path.join(d, "latest"))
                                     or any(n.startswith("iter_") for n in os.listdir(d)))

    for candidate in (path, os.path.join(path, "deepspeed")):
        if has_tags(candidate):
            return candidate
    raise SystemExit(f"convert_checkpoint: no DeepSpeed checkpoint in {path} (nor in {path}/deepspeed)")


def convert(checkpoint_dir: str, output: str, tag: str = None) -> dict:
    from uniperceiver.engine.deepspeed_step import import_deepspeed

    import_deepspeed()
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    state = get_fp32_state_dict_from_zero_checkpoint(checkpoint_dir, tag=tag)
    state = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    tmp = output + ".tmp"
    torch.save({"model": state}, tmp)
    os.replace(tmp, output)
    return state


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="OUTPUT_DIR of a DeepSpeed run, or its deepspeed/ folder")
    parser.add_argument("output", help="the plain .pth file to write, e.g. model_final.pth")
    parser.add_argument("--tag", default=None, help="checkpoint tag (iter_XXXXXXX); default: the latest")
    args = parser.parse_args(argv)
    ckpt_dir = find_checkpoint_dir(args.checkpoint)
    state = convert(ckpt_dir, args.output, args.tag)
    n = sum(v.numel() for v in state.values())
    print(f"wrote {args.output}: {len(state)} tensors, {n} values from {ckpt_dir} (tag {args.tag or 'latest'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
