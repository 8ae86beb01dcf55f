#!/usr/bin/env python
"""Model statistics for a config: parameters per module (trainable and total), FLOPs per task input (fvcore)
and an activation-memory estimate per training sample.

    python tools/analyze_model.py --config-file configs/BERT_L12_H768_experiments/finetune_in1k.yaml
    python tools/analyze_model.py --config-file CFG --out stats.json MODEL.PROMPT.ENABLED True

For each task of the config one input of batch size 1 is built the way its task type feeds the model
(classification: an image; retrieval: an image and a MAX_SEQ_LEN caption, two sequences; captioning: image +
MAX_SEQ_LEN text + as many queries; MLM: MAX_SEQ_LEN text); FLOPs count one multiply-add as one FLOP
(fvcore's convention), attention included.  Activation memory = bytes of the tensors autograd keeps for the
backward pass of that input (fp32, no activation checkpointing), measured on CPU.  Writes a JSON report
(default OUTPUT_DIR/model_analysis.json) and prints tables.  Runs on CPU; nothing is downloaded.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections import OrderedDict
from typing import Any, Dict, List, Tuple

import torch
import torch.nn as nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

logger = logging.getLogger("analyze_model")


def params_per_module(model: nn.Module, depth: int = 2) -> "OrderedDict[str, Dict[str, int]]":
    """``{module prefix (up to depth name parts): {"total", "trainable"}}`` plus ``"(all)"``."""
    out: "OrderedDict[str, Dict[str, int]]" = OrderedDict()
    out["(all)"] = {"total": 0, "trainable": 0}
    for name, p in model.named_parameters():
        parts = name.split(".")
        keys = [".".join(parts[:d]) for d in range(1, min(depth, len(parts) - 1) + 1)]
        for key in ["(all)"] + keys:
            entry = out.setdefault(key, {"total": 0, "trainable": 0})
            entry["total"] += p.numel()
            entry["trainable"] += p.numel() if p.requires_grad else 0
    return out


def task_input(task_cfg, root_cfg) -> Tuple[List[Dict[str, Any]], str]:
    """Model calls (keyword dicts) for one sample of a task, and a description."""
    size = root_cfg.MODEL.IMG_INPUT_SIZE
    length = int(task_cfg.MODEL.MAX_SEQ_LEN)
    task_type = task_cfg.DATASETS.TASK_TYPE
    image = torch.randn(1, 3, size, size)
    if task_type.startswith("video"):
        image = torch.randn(1, int(task_cfg.DATALOADER.FRAMES_PER_CLIP), 3, size, size)
    text = torch.randint(0, 49406, (1, length))
    mask = torch.ones(1, length, dtype=torch.bool)
    if task_type.endswith("classification"):
        return [dict(images=image)], f"{tuple(image.shape)} pixels"
    if task_type.endswith("retrieval"):
        return [dict(images=image), dict(text=text, text_mask=mask)], f"image + {length}-token caption"
    if task_type.endswith("caption"):
        return ([dict(images=image, text=text, text_mask=mask, num_queries=length, causal_text=True)],
                f"image + {length} tokens + {length} queries")
    return [dict(text=text, text_mask=mask)], f"{length} tokens"


class _Traced(nn.Module):
    """The model's forward as a tuple of tensors (what fvcore's jit tracer wants)."""

    def __init__(self, model: nn.Module, kwargs: Dict[str, Any]):
        super().__init__()
        self.model = model
        self.static = {k: v for k, v in kwargs.items() if not isinstance(v, torch.Tensor)}
        self.names = [k for k, v in kwargs.items() if isinstance(v, torch.Tensor)]

    def forward(self, *tensors):
        out = self.model(**dict(zip(self.names, tensors)), **self.static)
        return tuple(v for v in out.values() if v is not None)


def _sdpa_flop(inputs, outputs) -> int:
    """QK^T and attention x V: 2 * B * H * Sq * Sk * head_dim multiply-adds."""
    from fvcore.nn.jit_handles import get_shape

    q, k = get_shape(inputs[0]), get_shape(inputs[1])
    b_h = 1
    for d in q[:-2]:
        b_h *= d
    return 2 * b_h * q[-2] * k[-2] * q[-1]


def count_flops(model: nn.Module, calls: List[Dict[str, Any]]) -> int:
    from fvcore.nn import FlopCountAnalysis

    total = 0
    for kwargs in calls:
        wrapped = _Traced(model, kwargs)
        inputs = tuple(v for v in kwargs.values() if isinstance(v, torch.Tensor))
        analysis = FlopCountAnalysis(wrapped, inputs)
        analysis.set_op_handle("aten::scaled_dot_product_attention", _sdpa_flop)
        analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
        total += int(analysis.total())
    return total


def activation_bytes(model: nn.Module, calls: List[Dict[str, Any]]) -> int:
    """Bytes of the tensors saved for backward by one training forward (parameters excluded)."""
    param_ptrs = {p.data_ptr() for p in model.parameters()}
    seen = set()
    total = 0

    def pack(t: torch.Tensor):
        nonlocal total
        key = (t.data_ptr(), t.numel(), t.dtype)
        if t.data_ptr() not in param_ptrs and key not in seen:
            seen.add(key)
            total += t.numel() * t.element_size()
        return t

    was = model.training
    model.train()
    with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        for kwargs in calls:
            model(**kwargs)
    model.train(was)
    return total


def analyze(cfg) -> Dict[str, Any]:
    from uniperceiver.modeling import build_model
    from uniperceiver.modeling.adaptation import apply_trainable

    torch.manual_seed(0)
    model = build_model(cfg)
    trainable, total = apply_trainable(model, cfg.MODEL.TRAINABLE)
    report: Dict[str, Any] = {"params": params_per_module(model), "trainable": trainable, "total": total,
                              "tasks": OrderedDict()}
    for task_cfg in cfg.TASKS:
        calls, desc = task_input(task_cfg, cfg)
        model.eval()
        with torch.no_grad():
            flops = count_flops(model, calls)
        report["tasks"][task_cfg.NAME] = {"input": desc, "flops": flops,
                                          "activation_bytes_per_sample": activation_bytes(model, calls)}
    return report


def format_report(report: Dict[str, Any]) -> str:
    lines = [f"{'module':<40} {'params':>14} {'trainable':>14}"]
    for name, c in report["params"].items():
        lines.append(f"{name:<40} {c['total']:>14,} {c['trainable']:>14,}")
    lines.append(f"trainable parameters: {report['trainable']:,} / total {report['total']:,}")
    lines.append("")
    lines.append(f"{'task':<28} {'GFLOPs':>10} {'act. MiB/sample':>16}  input")
    for name, t in report["tasks"].items():
        lines.append(f"{name:<28} {t['flops'] / 1e9:>10.3f} {t['activation_bytes_per_sample'] / 2**20:>16.2f}  {t['input']}")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True, metavar="FILE")
    parser.add_argument("--out", default="", help="JSON report (default OUTPUT_DIR/model_analysis.json)")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    from uniperceiver.config import ConfigError, setup_cfg

    try:
        cfg = setup_cfg(args.config_file, args.opts)
        report = analyze(cfg)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_report(report))
    out = args.out or os.path.join(cfg.OUTPUT_DIR, "model_analysis.json")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w") as f:
        json.dump(report, f, indent=2)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
