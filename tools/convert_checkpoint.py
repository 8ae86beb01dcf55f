#!/usr/bin/env python
"""Consolidate a DeepSpeed ZeRO checkpoint (stage 1/2/3 shards, one per rank) into a plain model file.

    python tools/convert_checkpoint.py work_dirs/<config>/<job>/deepspeed model_final.pth           # latest tag
    python tools/convert_checkpoint.py work_dirs/<config>/<job> model_final.pth --tag iter_0004999

The output is ``{"model": fp32 state dict}`` (the fp32 master weights, not the bf16/fp16 copies), readable with
``torch.load(path, weights_only=True)``, usable as ``MODEL.WEIGHTS`` and by ``--eval-only`` without DeepSpeed.
Runs on CPU; no GPUs or process group needed.

Other sources (``--from``; uniperceiver/checkpoint/official.py, uniperceiver/modeling/lora.py):
    python tools/convert_checkpoint.py --from uniperceiver-official uni-perceiver-base-L12-H768.pth base.pth \
        --config configs/BERT_L12_H768_experiments/base_model_bert_l12_h768.yaml
  (docs/published_checkpoints.md).  Every published tensor is mapped, or dropped by a named rule listed in
  the output; anything else, or a checkpoint that does not fit --config, is refused in one line with exit
  status 2 and nothing is written.
    python tools/convert_checkpoint.py --from lora work_dirs/lora/model_final.pth merged.pth   # = tools/merge_lora.py

safetensors (``--to safetensors``, with any ``--from``; a .pth input needs no ``--from``): the model weights only,
shared tensors stored once; usable as MODEL.WEIGHTS (uniperceiver/checkpoint/safetensors_io.py):
    python tools/convert_checkpoint.py --to safetensors work_dirs/exp/model_final.pth model.safetensors
    python tools/convert_checkpoint.py --to safetensors --ema work_dirs/exp/model_final.pth model_ema.safetensors
    python tools/convert_checkpoint.py --to safetensors --from lora work_dirs/lora/model_final.pth merged.safetensors
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
    from uniperceiver.utils.deepspeed import import_deepspeed

    import_deepspeed()
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    tag_dir = os.path.join(checkpoint_dir, tag or _latest_tag(checkpoint_dir))
    if os.path.isdir(tag_dir) and any("_expert_" in name for name in os.listdir(tag_dir)):
        raise SystemExit(f"convert_checkpoint: {tag_dir} is a DeepSpeed-MoE checkpoint (layer_*_expert_* files), "
                         f"which DeepSpeed's zero_to_fp32 cannot consolidate; use the model_*.pth the run wrote "
                         f"in its OUTPUT_DIR: the full fp32 model with every expert")
    state = get_fp32_state_dict_from_zero_checkpoint(checkpoint_dir, tag=tag)
    state = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    tmp = output + ".tmp"
    torch.save({"model": state}, tmp)
    os.replace(tmp, output)
    return state


def _latest_tag(checkpoint_dir: str) -> str:
    path = os.path.join(checkpoint_dir, "latest")
    if not os.path.isfile(path):
        return ""
    with open(path) as f:
        return f.read().strip()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--from", dest="source", default="deepspeed", choices=["deepspeed", "uniperceiver-official", "lora"],
                        help="deepspeed: consolidate ZeRO shards; uniperceiver-official: map a published .pth onto "
                             "our model; lora: fold LoRA adapters into a plain checkpoint")
    parser.add_argument("--config", "--config-file", dest="config", default="",
                        help="uniperceiver-official: a config the result must load into strictly (checked before "
                             "anything is written), e.g. configs/BERT_L12_H768_experiments/base_model_bert_l12_h768.yaml")
    parser.add_argument("--learned-spatial", action="store_true",
                        help="uniperceiver-official: keep the spatial position table (for MODEL.POSEMBEDFIX False)")
    parser.add_argument("checkpoint", help="OUTPUT_DIR of a DeepSpeed run, or its deepspeed/ folder; else the input .pth")
    parser.add_argument("output", help="the plain .pth file to write, e.g. model_final.pth")
    parser.add_argument("--tag", default=None, help="checkpoint tag (iter_XXXXXXX); default: the latest")
    parser.add_argument("--to", default="pth", choices=["pth", "safetensors"],
                        help="safetensors: write the model weights of the (converted) checkpoint as OUT.safetensors")
    parser.add_argument("--ema", action="store_true", help="--to safetensors: export the EMA weights (model_ema)")
    args = parser.parse_args(argv)
    if args.ema and args.to != "safetensors":
        parser.error("--ema goes with --to safetensors")
    if args.to == "safetensors":
        return export_safetensors(args)
    if args.source != "deepspeed":
        return convert_other(args)
    ckpt_dir = find_checkpoint_dir(args.checkpoint)
    state = convert(ckpt_dir, args.output, args.tag)
    n = sum(v.numel() for v in state.values())
    print(f"wrote {args.output}: {len(state)} tensors, {n} values from {ckpt_dir} (tag {args.tag or 'latest'})")
    return 0


def convert_other(args) -> int:
    """``--from uniperceiver-official`` / ``--from lora``."""
    if args.source == "lora":
        from uniperceiver.checkpoint.lora import merge_lora_checkpoint

        state = merge_lora_checkpoint(args.checkpoint, args.output)
        print(f"wrote {args.output}: {len(state)} tensors with the LoRA adapters merged")
        return 0
    return convert_official(args)


def convert_official(args) -> int:
    """``--from uniperceiver-official``: exit 2 with one line on stderr for anything refused."""
    from uniperceiver.checkpoint.official import OfficialCheckpointError, convert_official_checkpoint
    from uniperceiver.config import ConfigError, setup_cfg

    if not os.path.isfile(args.checkpoint):
        print(f"convert_checkpoint: {args.checkpoint}: no such file", file=sys.stderr)
        return 2
    try:
        cfg = setup_cfg(args.config) if args.config else None
        report = convert_official_checkpoint(args.checkpoint, args.output, cfg=cfg, config_name=args.config,
                                             learned_spatial=args.learned_spatial)
    except (OfficialCheckpointError, ConfigError) as e:
        print(f"convert_checkpoint: {e}", file=sys.stderr)
        return 2
    print(f"wrote {args.output}: {len(report['written'])} tensors from {report['mapped']} published tensors "
          f"({report['moe_mapped']} by the MoE converter)")
    print(f"derived: {'; '.join(report['derived'])}")
    for key, rule in report["dropped"]:
        print(f"dropped {key}: {rule}")
    for note in report["notes"]:
        print(f"note: {note}")
    if args.config:
        adapters = report["adapters_missing"]
        print(f"loads strictly into {args.config}" + (f"; adapters left at their init ({len(adapters)}): "
                                                      f"{', '.join(adapters)}" if adapters else ""))
    return 0


def export_safetensors(args) -> int:
    """``--to safetensors``: IN (a .pth; or what ``--from`` makes of IN, converted into a temporary .pth first)
    -> the model weights (``--ema``: the EMA weights) in OUT.safetensors."""
    import contextlib
    import io
    import shutil
    import tempfile

    from uniperceiver.checkpoint import load_checkpoint_file
    from uniperceiver.checkpoint.safetensors_io import SUFFIX, export_weights

    if not args.output.endswith(SUFFIX):
        raise SystemExit(f"convert_checkpoint: --to safetensors writes a {SUFFIX} file, got {args.output}")
    plain = args.source == "deepspeed" and os.path.isfile(args.checkpoint)  # DeepSpeed checkpoints are folders
    tmpdir = None if plain else tempfile.mkdtemp(dir=os.path.dirname(os.path.abspath(args.output)))
    try:
        source = args.checkpoint
        if tmpdir is not None:
            inner = argparse.Namespace(**{**vars(args), "to": "pth", "output": os.path.join(tmpdir, "converted.pth")})
            out = io.StringIO()
            with contextlib.redirect_stdout(out):
                if args.source == "deepspeed":
                    convert(find_checkpoint_dir(args.checkpoint), inner.output, args.tag)
                else:
                    convert_other(inner)
            print(out.getvalue().replace(inner.output, "(converted)"), end="")
            source = inner.output
        try:
            data = load_checkpoint_file(source)
        except Exception as e:
            from uniperceiver.checkpoint.checkpointer import describe_load_error

            raise SystemExit(f"convert_checkpoint: cannot read {args.checkpoint}: {describe_load_error(e)}") from None
        what = args.checkpoint if plain else f"{args.checkpoint} (--from {args.source})"
        try:
            report = export_weights(data, args.output, ema=args.ema, source=what)
        except (ValueError, TypeError) as e:  # no model_ema; a non-tensor entry
            raise SystemExit(f"convert_checkpoint: {e}") from None
    finally:
        if tmpdir is not None:
            shutil.rmtree(tmpdir, ignore_errors=True)
    shared = f", {len(report['aliases'])} shared names stored once" if report["aliases"] else ""
    print(f"wrote {args.output}: {report['tensors']} tensors ({report['weights']} weights{shared})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
