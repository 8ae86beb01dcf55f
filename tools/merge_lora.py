#!/usr/bin/env python
"""Fold the LoRA adapters of a checkpoint into its base weights and write a plain checkpoint.

    python tools/merge_lora.py work_dirs/lora/model_final.pth work_dirs/lora/merged.pth

The output is ``{"model": state}`` without optimizer / trainer state and without ``*.lora_*`` entries: it loads
as ``MODEL.WEIGHTS`` into the same config with ``MODEL.LORA.ENABLED False`` and gives the same outputs.
(Same as ``tools/convert_checkpoint.py --from lora IN OUT``.)
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("input", help="a checkpoint trained with MODEL.LORA.ENABLED True")
    parser.add_argument("output", help="the merged plain checkpoint to write")
    args = parser.parse_args(argv)
    from uniperceiver.checkpoint.lora import merge_lora_checkpoint

    try:
        state = merge_lora_checkpoint(args.input, args.output)
    except (ValueError, KeyError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {args.output}: {len(state)} tensors with the LoRA adapters merged")
    return 0


if __name__ == "__main__":
    sys.exit(main())
