#!/usr/bin/env python
"""Performance benchmark of uniperceiver: one JSON line per measurement (``name``, ``value``, ``unit``; comparisons
add ``ratio``), so results can be grepped, diffed and plotted.  Modes (README, "Performance"):

    # P1: our image path (patch embed + shared encoder + <spe> predictor) vs timm's VisionTransformer of the
    # same depth / width / heads / patch / tokens, forward + backward + AdamW, interleaved A, B, A, B ...
    python tools/benchmark.py --mode reference --config-file configs/BERT_L12_H192_experiments/base_model_bert_l12_h192.yaml \
        --img-size 160 --batch-size 32 --amp fp32
    # throughput of a config's training step (image path, or a task's real losses with --task NAME);
    # peak memory of each configuration in a fresh subprocess; on GPU also TFLOP/s and MFU
    python tools/benchmark.py --mode train_step --config-file CFG --batch-size 32 --img-size 224 \
        --activation-checkpointing off,on --amp bf16 --compile off
    # P2: framework overhead of main.py's training loop against a bare loop (same model, optimizer, batches held on
    # the device), 3 rounds in one process, loop and bare steps alternating; --num-workers 0 or the config's own
    python tools/benchmark.py --mode loop --config-file configs/benchmarks/zeroshot_digits.yaml --num-workers config
    # P4: zero-shot retrieval: encode + rank throughput and peak memory vs the number of candidates
    python tools/benchmark.py --mode eval_retrieval --candidates 1000,25000
    # memory of annotation records (bytes per record, a forked worker's USS growth over one pass)
    python tools/benchmark.py --mode records --num-records 1000000
    # training loader samples/s per task: tar shards vs loose files (median of 3 interleaved rounds)
    python tools/benchmark.py --mode data --config-file configs/quick_schedules/instant_retrieval.yaml

Trailing ``KEY VALUE`` pairs override the config as in main.py.  Timings on a shared machine are noisy: compare
ratios measured in one process (reference mode), not absolute numbers from different runs.  FLOPs: an analytic
count (2 per multiply-add: patch embedding, qkv / proj / MLP matmuls, QK^T and AV; training = 3 x forward), with
fvcore's counter (which skips scaled_dot_product_attention) reported beside it.
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import itertools
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from typing import Any, Callable, Dict, List, Optional

import torch
import torch.nn as nn

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

H100_BF16_DENSE_TFLOPS = 989.0
DEFAULT_CONFIG = os.path.join(REPO, "configs", "BERT_L12_H192_experiments", "base_model_bert_l12_h192.yaml")
SEVEN_TASKS = os.path.join(REPO, "configs", "quick_schedules", "7tasks_demo.yaml")


# ----------------------------------------------------------------------------------------------- output
def emit(name: str, value: float, unit: str, **extra: Any) -> Dict[str, Any]:
    """Print one measurement as a JSON line (flushed: a parent process may be reading it)."""
    record = {"name": name, "value": round(float(value), 6), "unit": unit, **extra}
    print(json.dumps(record), flush=True)
    return record


def on_off(value: str) -> List[bool]:
    out = []
    for v in value.split(","):
        if v not in ("on", "off"):
            raise argparse.ArgumentTypeError(f"expected on/off (comma-separated), got {v!r}")
        out.append(v == "on")
    return out


def compile_list(value: str) -> List[str]:
    """MODEL.COMPILE modes, comma-separated (on = model)."""
    out = ["model" if v == "on" else v for v in value.split(",")]
    for v in out:
        if v not in ("off", "blocks", "model"):
            raise argparse.ArgumentTypeError(f"--compile takes off / blocks / model (comma-separated), got {v!r}")
    return out


def amp_list(value: str) -> List[str]:
    out = value.split(",")
    for v in out:
        if v not in ("bf16", "fp32"):
            raise argparse.ArgumentTypeError(f"--amp takes bf16 / fp32 (comma-separated), got {v!r}")
    return out


# ----------------------------------------------------------------------------------------------- memory
def rss_mb() -> float:
    """Current resident set size (Linux /proc; 0 elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError):
        return 0.0


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory of this process: CUDA allocator peak on GPU, ru_maxrss (KiB on Linux) on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# glibc raises its mmap threshold each time a large block is freed, after which freed activations stay in the
# heap: RSS creeps up batch after batch (Tiny text encoding: +170 MiB over 25 batches of 256) although live
# tensors do not grow.  A fixed threshold (setting it disables the adjustment) measures what our code keeps.
FIXED_MALLOC = {"MALLOC_MMAP_THRESHOLD_": "131072"}


def run_child(argv: List[str], malloc: str = "fixed") -> List[Dict[str, Any]]:
    """Run this tool in a fresh interpreter (fresh peak-memory counters); relay and return its JSON lines."""
    cmd = [sys.executable, os.path.abspath(__file__), "--malloc", malloc] + argv  # argv may end with KEY VALUE opts
    env = dict(os.environ, **(FIXED_MALLOC if malloc == "fixed" else {}))
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO, env=env)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr)
        raise SystemExit(f"benchmark child failed (exit {proc.returncode}): {' '.join(cmd)}")
    records = []
    for line in proc.stdout.splitlines():
        line = line.strip()
        if line.startswith("{"):
            records.append(json.loads(line))
            print(line, flush=True)
    return records


# ----------------------------------------------------------------------------------------------- setup
def make_cfg(args, extra_opts: Optional[List[str]] = None):
    from uniperceiver.config import setup_cfg

    opts = list(args.opts or []) + list(extra_opts or [])
    return setup_cfg(args.config_file, opts)


def device_of(args) -> torch.device:
    if args.device:
        return torch.device(args.device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def autocast(device: torch.device, amp: str):
    if amp == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def model_opts(args, checkpointing: bool, compile_: str, amp: str) -> List[str]:
    opts = ["MODEL.ACTIVATION_CHECKPOINTING", str(checkpointing), "MODEL.COMPILE", compile_,
            "SOLVER.AMP.ENABLED", str(amp == "bf16")]
    if args.img_size:
        opts += ["MODEL.IMG_INPUT_SIZE", str(args.img_size)]
    return opts


def build_ours(cfg, device: torch.device):
    """Our model, optimizer and (possibly compiled) callable, built the way engine.defaults.train builds them."""
    from uniperceiver.engine.defaults import maybe_compile
    from uniperceiver.modeling import build_model
    from uniperceiver.solver import build_optimizer

    model = build_model(cfg).to(device)
    optimizer = build_optimizer(cfg, model)
    return model, optimizer, maybe_compile(cfg, model)


def build_timm(cfg, img_size: int, device: torch.device, checkpointing: bool, compile_: str):
    """timm ViT with our depth / width / heads / MLP / patch, a class token, pre-norm (our embedding LayerNorm),
    LayerScale with our init, no head: the same token count and the same blocks."""
    from timm.models.vision_transformer import VisionTransformer

    bert = cfg.MODEL.BERT
    vit = VisionTransformer(
        img_size=img_size, patch_size=cfg.MODEL.PATCH_SIZE, embed_dim=bert.HIDDEN_SIZE, depth=bert.NUM_HIDDEN_LAYERS,
        num_heads=bert.NUM_ATTENTION_HEADS, mlp_ratio=bert.INTERMEDIATE_SIZE / bert.HIDDEN_SIZE, num_classes=0,
        global_pool="token", pre_norm=True, init_values=cfg.MODEL.LAYER_SCALE_INIT if cfg.MODEL.LAYER_SCALE else None,
    ).to(device)
    vit.set_grad_checkpointing(checkpointing)
    optimizer = torch.optim.AdamW(vit.parameters(), lr=1e-4, weight_decay=0.05)
    if compile_ == "blocks":
        for block in vit.blocks:
            block.compile(dynamic=True)
    return vit, optimizer, torch.compile(vit) if compile_ == "model" else vit


def image_step(fn: Callable, optimizer, images: torch.Tensor, amp: str, ours: bool) -> Callable[[], None]:
    """One forward + backward + optimizer step on the image path."""

    def step() -> None:
        with autocast(images.device, amp):
            out = fn(images=images)["spe"] if ours else fn(images)
        out.float().pow(2).mean().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def timed(step: Callable[[], None], device: torch.device) -> float:
    synchronize(device)
    start = time.perf_counter()
    step()
    synchronize(device)
    return time.perf_counter() - start


def image_flops(model: nn.Module, images: torch.Tensor) -> Dict[str, float]:
    """Training FLOPs of one image-path step (3 x forward): ``analytic`` (used for TFLOP/s and MFU; counts
    attention) and ``fvcore`` (its counter x 2, as a cross-check: it skips ``scaled_dot_product_attention``)."""
    out = {"analytic": 3 * analytic_forward_flops(model, images.shape[-2:]) * images.shape[0]}
    try:
        from fvcore.nn import FlopCountAnalysis

        with torch.no_grad():
            analysis = FlopCountAnalysis(model, (images[:1],))
            analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
            out["fvcore"] = 3 * analysis.total() * 2 * images.shape[0]
    except Exception:  # noqa: BLE001 - fvcore cannot trace every model; the analytic count stands
        pass
    return out


def analytic_forward_flops(model: nn.Module, hw) -> float:
    """Forward FLOPs of one image: 2 x (conv-stem and patch-embed MACs + per block: qkv, proj, MLP, QK^T and AV)."""
    enc, embed = model.encoder, model.embed
    d = embed.dim
    p = embed.patch_embed.patch_size
    n = (hw[0] // p) * (hw[1] // p)
    s = n + 1
    hidden = enc.blocks[0].mlp.fc1.out_features
    per_block = s * (3 * d * d + d * d + 2 * d * hidden) + 2 * s * s * d
    stem = sum(c.in_channels * c.out_channels * 9 for c in embed.patch_embed.stem if isinstance(c, nn.Conv2d))
    patch = n * embed.patch_embed.proj.in_channels * p * p * d
    return 2.0 * (hw[0] * hw[1] * stem + patch + enc.num_layers * per_block + d * d)


# ----------------------------------------------------------------------------------------------- modes
def mode_reference(args) -> None:
    """Interleaved paired repetitions of our image path vs timm's ViT in one process; medians and a ratio."""
    from timm.layers import set_fused_attn

    set_fused_attn(True)  # timm's F.scaled_dot_product_attention path, like ours
    device = device_of(args)
    amp = args.amp[0]
    ckpt, compile_ = args.activation_checkpointing[0], args.compile[0]
    cfg = make_cfg(args, model_opts(args, ckpt, compile_, amp))
    size = cfg.MODEL.IMG_INPUT_SIZE
    torch.manual_seed(0)
    images = torch.randn(args.batch_size, 3, size, size, device=device)
    model, opt, fn = build_ours(cfg, device)
    model.train()
    vit, vopt, vfn = build_timm(cfg, size, device, ckpt, compile_)
    vit.train()
    steps = {"ours": image_step(fn, opt, images, amp, True), "timm": image_step(vfn, vopt, images, amp, False)}
    for _ in range(args.warmup):
        for s in steps.values():
            s()
    times: Dict[str, List[float]] = {k: [] for k in steps}
    order = list(steps)
    for i in range(args.iters):
        for k in order if i % 2 == 0 else order[::-1]:  # alternate who goes first: A B, B A, ...
            times[k].append(timed(steps[k], device))
    common = dict(batch=args.batch_size, img_size=size, amp=amp, device=str(device), tokens=model.embed.grid ** 2 + 1,
                  activation_checkpointing=ckpt, compile=compile_, threads=torch.get_num_threads(), reps=args.iters)
    med = {k: statistics.median(v) for k, v in times.items()}
    for k in order:
        emit(f"step_time_{k}", med[k], "s", samples_per_s=round(args.batch_size / med[k], 2),
             min=round(min(times[k]), 6), **common)
    ratios = sorted(a / b for a, b in zip(times["ours"], times["timm"]))
    emit("ratio_vs_timm", med["ours"] / med["timm"], "x", ratio=round(med["ours"] / med["timm"], 4),
         paired_median=round(statistics.median(ratios), 4), **common)


def mode_train_step(args) -> None:
    """Each (checkpointing, compile, amp) configuration in a fresh subprocess; then memory comparisons."""
    results = {}
    for ckpt, comp, amp in itertools.product(args.activation_checkpointing, args.compile, args.amp):
        argv = ["--mode", "_train_step_one", "--config-file", args.config_file, "--batch-size", str(args.batch_size),
                "--iters", str(args.iters), "--warmup", str(args.warmup), "--img-size", str(args.img_size),
                "--activation-checkpointing", "on" if ckpt else "off", "--compile", comp,
                "--amp", amp, "--peak-tflops", str(args.peak_tflops), "--threads", str(args.threads)]
        if args.task:
            argv += ["--task", args.task]
        if args.device:
            argv += ["--device", args.device]
        records = run_child(argv + list(args.opts or []), args.malloc)
        results[(ckpt, comp, amp)] = {r["name"]: r for r in records}
    for (comp, amp) in itertools.product(args.compile, args.amp):
        off, on = results.get((False, comp, amp)), results.get((True, comp, amp))
        if off and on:
            for key in ("peak_memory", "peak_memory_delta"):
                saving = 1.0 - on[key]["value"] / off[key]["value"]
                emit(f"activation_checkpointing_{key}_saving", 100 * saving, "%", ratio=round(1 - saving, 4),
                     off_mb=off[key]["value"], on_mb=on[key]["value"], compile=comp, amp=amp,
                     batch=args.batch_size)


def task_batches(cfg, task_name: str, device: torch.device, count: int):
    """``count`` real training batches of one task (demo data unless DATA_PATH), collated and on the device."""
    from uniperceiver.data import build_train_loader
    from uniperceiver.engine.train_loop import to_device
    from uniperceiver.tasks import build_tasks

    tasks = build_tasks(cfg)
    if task_name not in tasks:
        raise SystemExit(f"--task {task_name!r} is not in the config; tasks: {', '.join(tasks)}")
    tasks = {task_name: tasks[task_name]}
    loader = build_train_loader(cfg, tasks)
    return tasks[task_name], [to_device(next(loader)[1], device) for _ in range(count)]


def mode_train_step_one(args) -> None:
    """One configuration: throughput (+ TFLOP/s, MFU on GPU) and peak memory of this fresh process."""
    device = device_of(args)
    amp, ckpt, compile_ = args.amp[0], args.activation_checkpointing[0], args.compile[0]
    extra = model_opts(args, ckpt, compile_, amp)
    if args.task:
        extra += [f"TASKS.{args.task}.DATALOADER.TRAIN_BATCH_SIZE", str(args.batch_size),
                  f"TASKS.{args.task}.DATALOADER.NUM_WORKERS", "0"]
    cfg = make_cfg(args, extra)
    size = cfg.MODEL.IMG_INPUT_SIZE
    torch.manual_seed(0)
    model, opt, fn = build_ours(cfg, device)
    model.train()
    if args.task:
        task, batches = task_batches(cfg, args.task, device, 4)
        state = {"i": 0}

        def step() -> None:
            batch = batches[state["i"] % len(batches)]
            state["i"] += 1
            with autocast(device, amp):
                losses = task.losses(fn, batch)
            sum(losses.values()).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        tokens = None
    else:
        images = torch.randn(args.batch_size, 3, size, size, device=device)
        step = image_step(fn, opt, images, amp, True)
        tokens = model.embed.grid ** 2 + 1
    synchronize(device)
    base_rss = rss_mb()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base_cuda = torch.cuda.memory_allocated(device) / 2**20
    first = [timed(step, device) for _ in range(max(1, args.warmup))]  # compiles (MODEL.COMPILE) on these
    times = [timed(step, device) for _ in range(args.iters)]
    med = statistics.median(times)
    common = dict(batch=args.batch_size, img_size=size, amp=amp, device=str(device), activation_checkpointing=ckpt,
                  compile=compile_, task=args.task or "image_path", threads=torch.get_num_threads())
    emit("warmup_time", sum(first), "s", steps=len(first), what="the warm-up steps (compilation included)", **common)
    emit("step_time", med, "s", min=round(min(times), 6), reps=len(times), **common)
    emit("samples_per_s", args.batch_size / med, "samples/s", **common)
    if tokens:
        emit("tokens_per_s", args.batch_size * tokens / med, "tokens/s", tokens_per_sample=tokens, **common)
        counts = image_flops(model, images)
        flops = counts["analytic"]
        emit("flops_per_step", flops, "FLOP", fvcore_without_attention=counts.get("fvcore"), **common)
        if device.type == "cuda":
            tflops = flops / med / 1e12
            emit("tflops_per_s", tflops, "TFLOP/s", **common)
            emit("mfu", 100 * tflops / args.peak_tflops, "%", peak_tflops=args.peak_tflops, **common)
    peak = peak_memory_mb(device)
    base = base_cuda if device.type == "cuda" else base_rss
    what = "cuda_max_memory_allocated" if device.type == "cuda" else "ru_maxrss"
    emit("peak_memory", peak, "MiB", measure=what, malloc=args.malloc, **common)
    emit("peak_memory_delta", peak - base, "MiB", measure=f"{what} - memory before the first step", **common)


def cache_decoded_images() -> None:
    """Keep decoded images in memory (per process): ``--cache-images`` takes PNG/JPEG decoding out of the loop."""
    from uniperceiver.data.datasets import base

    original = base.load_rgb
    cache: Dict[str, Any] = {}

    def load_rgb(path: str, *args, **kwargs):
        if path not in cache:
            cache[path] = original(path, *args, **kwargs)
        return cache[path].copy()

    base.load_rgb = load_rgb


class _Recorder:
    """Wraps the trainer's data iterator; keeps the micro-batches it hands out until ``take()`` (the bare loop
    replays them: the same tasks and shapes as the loop steps it is compared with)."""

    def __init__(self, it):
        self.it, self.kept = it, []

    def __iter__(self):
        return self

    def __next__(self):
        item = next(self.it)
        self.kept.append(item)
        return item

    def take(self) -> list:
        kept, self.kept = self.kept, []
        return kept


def step_time(times: List[float], kinds: List[Any]) -> float:
    """A round's step time: the median step of each kind (a step's tasks), weighted by how many steps of that kind
    the round has.  A multi-task loop's steps cluster by task (medians 64 to 140 ms on the 7-task demo, 2 cores):
    the median of such a mixture sits at a cluster's edge and jumps when a step or two cross it, so two rounds of
    the same steps can differ by several percent; per kind, the median still ignores a stalled step.  One kind:
    the median."""
    groups: Dict[Any, List[float]] = {}
    for t, kind in zip(times, kinds):
        groups.setdefault(kind, []).append(t)
    return sum(len(g) * statistics.median(g) for g in groups.values()) / len(times)


def bare_step_fn(trainer, grad_clip: float) -> Callable[[list], None]:
    """The loop without the framework: the same model (unwrapped), optimizer and autocast; ``step(micro_batches)``
    on micro-batches already collated and on the device: forward, backward of sum / k, clip (when configured),
    optimizer step."""
    engine, k = trainer.step_engine, trainer.accum_iter
    model = engine.model  # the module main.py steps (compiled when MODEL.COMPILE), single process: no DDP
    optimizer = engine.optimizer
    model.train()  # once, as main.py's loop (it sets the mode again only if something changed it)

    def step(micro_batches: list) -> None:
        for task_name, batch in micro_batches:
            with engine.autocast():
                losses = trainer.tasks[task_name].losses(model, batch)
                extra = getattr(model, "extra_losses", None)  # MoE aux losses
                losses.update(extra() if extra is not None else {})
            (sum(v.float() for v in losses.values()) / k).backward()
        if grad_clip > 0:
            torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.grad is not None], grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def mode_loop(args) -> None:
    """Framework overhead of main.py's training loop: ``engine.defaults.train(cfg)`` (hooks, writers, loader,
    step engine: everything main.py runs) against a bare loop on the same model, optimizer and micro-batches
    (pre-collated, held on the device), in one process.  ``rounds`` x (``iters`` loop steps and ``iters`` bare
    steps, alternating in blocks of ``--block`` steps); per round overhead = 100 x (median loop step - median
    bare step) / median loop step; reported: the median over rounds."""
    import tempfile

    from uniperceiver.engine import defaults as engine_defaults
    from uniperceiver.engine import train_loop
    from uniperceiver.engine.train_loop import Trainer

    to_device = getattr(train_loop, "to_device", None) or getattr(train_loop, "_to_device")  # older trees
    from uniperceiver.utils.logger import setup_logger

    if args.cache_images:
        cache_decoded_images()
    out = tempfile.mkdtemp(prefix="uniperceiver_bench_")
    rounds, n = args.rounds, args.iters
    total_iters = args.warmup + rounds * n
    device = device_of(args)
    opts = ["SOLVER.MAX_ITER", str(total_iters), "SOLVER.CHECKPOINT_PERIOD", str(10**9), "SOLVER.EVAL_PERIOD", "0",
            "OUTPUT_DIR", out, "MODEL.DEVICE", str(device),
            "LR_SCHEDULER.WARMUP", "0"]  # any run length; the schedule does not change the step's cost
    if args.img_size:
        opts += ["MODEL.IMG_INPUT_SIZE", str(args.img_size)]
    cfg = make_cfg(args, opts)
    if args.num_workers != "config":
        cfg.defrost()
        for t in cfg.TASKS:
            t.DATALOADER.NUM_WORKERS = int(args.num_workers)
        cfg.freeze()
    workers = sorted({int(t.DATALOADER.NUM_WORKERS) for t in cfg.TASKS})
    # Loop and bare steps alternate in blocks: one step each without workers (both sides see the same machine
    # at the same moment), a whole round each with workers (they refill their queues during the first bare
    # steps of a block: per-step blocks would charge that work to the bare loop).
    block = args.block or (1 if workers == [0] else n)  # each block's bare steps replay its loop steps' batches
    loop_times: List[List[float]] = [[] for _ in range(rounds)]
    bare_times: List[List[float]] = [[] for _ in range(rounds)]
    warmup_times: List[float] = []
    loop_cpu: List[List[float]] = [[] for _ in range(rounds)]  # CPU seconds of this process (workers excluded):
    bare_cpu: List[List[float]] = [[] for _ in range(rounds)]  # steadier than wall time on a loaded machine
    kinds: List[List[tuple]] = [[] for _ in range(rounds)]  # each step's tasks (bare steps: the same)
    state: Dict[str, Any] = {"start": None, "recorder": None}
    original_init, original_before, original_after = Trainer.__init__, Trainer.before_step, Trainer.after_step

    def init(self, *a, **k):
        original_init(self, *a, **k)
        if args.preload:  # every batch the run will use, collated now: the loop's data loading costs nothing
            self._data_iter = iter(list(itertools.islice(self._data_iter, total_iters * self.accum_iter)))
        state["recorder"] = self._data_iter = _Recorder(self._data_iter)

    def before_step(self):  # the step starts before the before_step hooks
        synchronize(device)
        state["start"], state["cpu"] = time.perf_counter(), time.process_time()
        return original_before(self)

    def after_step(self):
        original_after(self)
        synchronize(device)
        done = self.iter - args.warmup
        if done < 0:
            warmup_times.append(time.perf_counter() - state["start"])
            state["recorder"].take()
            return
        loop_times[done // n].append(time.perf_counter() - state["start"])
        loop_cpu[done // n].append(time.process_time() - state["cpu"])
        kinds[done // n].append(tuple(name for name, _ in state["recorder"].kept[-self.accum_iter:]))
        pos = done % n
        if (pos + 1) % block == 0 or pos == n - 1:  # a block of loop steps is complete: as many bare steps
            kept = [(name, to_device(batch, device)) for name, batch in state["recorder"].take()]
            k = self.accum_iter
            steps = [kept[i:i + k] for i in range(0, len(kept), k)]  # this block's steps, replayed
            if "bare" not in state:
                state["bare"] = bare_step_fn(self, cfg.SOLVER.GRAD_CLIP)
                state["bare"](steps[0])  # warm-up
            for micro_batches in steps:
                cpu = time.process_time()
                bare_times[done // n].append(timed(functools.partial(state["bare"], micro_batches), device))
                bare_cpu[done // n].append(time.process_time() - cpu)

    patches = [(Trainer, "__init__", init), (Trainer, "before_step", before_step), (Trainer, "after_step", after_step)]
    for obj, name, fn in patches:
        setattr(obj, name, fn)
    try:
        with contextlib.redirect_stdout(sys.stderr):  # stdout carries only the JSON lines
            setup_logger(out)
            engine_defaults.train(cfg)
    finally:
        for obj, name, fn in zip([p[0] for p in patches], [p[1] for p in patches],
                                 (original_init, original_before, original_after)):
            setattr(obj, name, fn)
    loop_med = [step_time(t, k) for t, k in zip(loop_times, kinds)]
    bare_med = [step_time(t, k) for t, k in zip(bare_times, kinds)]
    overheads = [100 * (lo - b) / lo for lo, b in zip(loop_med, bare_med)]
    common = dict(steps_per_round=n, rounds=rounds, block=block, warmup=args.warmup, device=str(device),
                  tasks=len(cfg.TASKS),
                  img_size=cfg.MODEL.IMG_INPUT_SIZE, num_workers=workers if len(workers) > 1 else workers[0],
                  cache_images=bool(args.cache_images), preload=bool(args.preload),
                  accum_iter=cfg.SOLVER.ACCUM_ITER,
                  threads=torch.get_num_threads())
    per_kind = "median per kind of step (its tasks), weighted by the steps of each kind"
    emit("loop_step_time", statistics.median(loop_med), "s", per_round=[round(v, 6) for v in loop_med],
         what=f"main.py's step: before_step hooks, run_step, after_step hooks; {per_kind}", **common)
    emit("bare_step_time", statistics.median(bare_med), "s", per_round=[round(v, 6) for v in bare_med],
         what=f"forward + backward (+ clip) + optimizer on pre-collated batches held on the device; {per_kind}",
         **common)
    emit("loop_warmup_time", sum(warmup_times), "s", compile=str(cfg.MODEL.COMPILE),
         what="the warm-up steps of the loop (MODEL.COMPILE compiles there)", **common)
    emit("framework_overhead", statistics.median(overheads), "%", ratio=round(statistics.median(overheads) / 100, 4),
         per_round=[round(v, 3) for v in overheads],
         what="100 x (loop step - bare step) / loop step, median of the rounds", **common)
    pooled = [100 * (statistics.median(lo) - statistics.median(b)) / statistics.median(lo)
              for lo, b in zip(loop_times, bare_times)]
    emit("framework_overhead_pooled", statistics.median(pooled), "%", ratio=round(statistics.median(pooled) / 100, 4),
         per_round=[round(v, 3) for v in pooled],
         what="the same with the median of all the round's steps as its step time (the figure before 2026-12-08; "
              "with several tasks it jumps between the tasks' clusters)", **common)
    if block == 1:  # each loop step has its bare step next to it: the median of the pairs' differences
        paired = [100 * statistics.median(a - b for a, b in zip(lo, ba)) / statistics.median(lo)
                  for lo, ba in zip(loop_times, bare_times)]
        emit("framework_overhead_paired", statistics.median(paired), "%",
             ratio=round(statistics.median(paired) / 100, 4), per_round=[round(v, 3) for v in paired],
             what="100 x median(loop step i - bare step i) / median loop step, median of the rounds", **common)
    loop_cpu_med = [step_time(t, k) for t, k in zip(loop_cpu, kinds)]
    bare_cpu_med = [step_time(t, k) for t, k in zip(bare_cpu, kinds)]
    cpu = [100 * (lo - b) / lo for lo, b in zip(loop_cpu_med, bare_cpu_med)]
    emit("framework_overhead_cpu", statistics.median(cpu), "%", ratio=round(statistics.median(cpu) / 100, 4),
         per_round=[round(v, 3) for v in cpu], loop_cpu_s=round(statistics.median(loop_cpu_med), 6),
         bare_cpu_s=round(statistics.median(bare_cpu_med), 6),
         what="the same with this process's CPU time (data workers' CPU not counted), median of the rounds",
         **common)


def mode_eval_retrieval(args) -> None:
    """One fresh subprocess per candidate count (peak memory), then the growth from the smallest to the largest."""
    results = []
    for n in args.candidates:
        argv = ["--mode", "_eval_retrieval_one", "--config-file", args.config_file, "--num-candidates", str(n),
                "--num-queries", str(args.num_queries), "--threads", str(args.threads), "--amp", args.amp[0]]
        if args.device:
            argv += ["--device", args.device]
        records = run_child(argv + list(args.opts or []), args.malloc)
        results.append({r["name"]: r for r in records})
    if len(results) > 1:
        lo, hi = results[0], results[-1]
        for key in ("retrieval_peak_memory", "retrieval_peak_memory_delta"):
            growth = hi[key]["value"] / lo[key]["value"] - 1
            emit(f"{key}_growth", 100 * growth, "%", ratio=round(1 + growth, 4), candidates=[args.candidates[0],
                 args.candidates[-1]], from_mb=lo[key]["value"], to_mb=hi[key]["value"])


def mode_eval_retrieval_one(args) -> None:
    """Zero-shot retrieval of ``--num-candidates`` captions and ``--num-queries`` images as in evaluation: both
    sides encoded in batches of 256 under no_grad and fed to the ``RetrievalEvaluator`` (chunked ranking)."""
    from uniperceiver.evaluation.retrieval import RetrievalEvaluator

    device = device_of(args)
    cfg = make_cfg(args, model_opts(args, False, "off", args.amp[0]))
    torch.manual_seed(0)
    from uniperceiver.modeling import build_model

    model = build_model(cfg).to(device).eval()
    n, q, length, batch = args.num_candidates, args.num_queries, 30, 256
    evaluator = RetrievalEvaluator(device=str(device))
    size = cfg.MODEL.IMG_INPUT_SIZE
    gen = torch.Generator().manual_seed(0)
    synchronize(device)
    base_rss = rss_mb()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device) / 2**20
    else:
        base = base_rss
    with torch.no_grad(), autocast(device, args.amp[0]):
        start = time.perf_counter()
        for s in range(0, n, batch):
            m = min(batch, n - s)
            ids = torch.randint(0, 49406, (m, length), generator=gen).to(device)
            mask = torch.ones(m, length, dtype=torch.bool, device=device)
            out = model(text=ids, text_mask=mask)["spe"]  # caption j describes image j % q
            evaluator.process({}, {"text_feats": out, "text_image_ids": torch.arange(s, s + m) % q})
        for s in range(0, q, batch):
            m = min(batch, q - s)
            img = model(images=torch.randn(m, 3, size, size, generator=gen).to(device))["spe"]
            evaluator.process({}, {"image_feats": img, "image_ids": torch.arange(s, s + m)})
        synchronize(device)
        encode_s = time.perf_counter() - start
        start = time.perf_counter()
        metrics = evaluator.evaluate()
        synchronize(device)
        rank_s = time.perf_counter() - start
    assert "R_mean" in metrics, metrics
    peak = peak_memory_mb(device)
    common = dict(candidates=n, queries=q, text_len=length, img_size=size, device=str(device), amp=args.amp[0])
    emit("retrieval_encode_throughput", (n + q) / encode_s, "sequences/s", seconds=round(encode_s, 4), **common)
    emit("retrieval_rank_throughput", (n * q * 2) / rank_s, "scores/s", seconds=round(rank_s, 4), **common)
    emit("retrieval_peak_memory", peak, "MiB", malloc=args.malloc, **common)
    emit("retrieval_peak_memory_delta", peak - base, "MiB", measure="peak - memory before encoding", **common)


# ------------------------------------------------------------------------------------------ data pipeline
def uss_kb() -> int:
    """Unique set size of this process (private pages), from /proc/self/smaps_rollup."""
    with open("/proc/self/smaps_rollup") as f:
        return sum(int(line.split()[1]) for line in f if line.startswith(("Private_Clean", "Private_Dirty")))


def _worker_pass_uss_growth(records) -> int:
    """USS growth (KiB) of a forked child (a DataLoader worker) reading every record once."""
    import gc

    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the worker
        os.close(read_fd)
        gc.collect()
        before = uss_kb()
        for i in range(len(records)):
            records[i]
        os.write(write_fd, str(uss_kb() - before).encode())
        os._exit(0)
    os.close(write_fd)
    with os.fdopen(read_fd) as f:
        growth = int(f.read() or 0)
    os.waitpid(pid, 0)
    return growth


def mode_records(args) -> None:
    run_child(["--mode", "_records_one", "--num-records", str(args.num_records)])


def mode_records_one(args) -> None:
    """RSS per annotation record of the real ImageNet list reader, and a forked worker's USS growth over one pass
    (serialized records vs the same records as a list of dicts)."""
    import gc
    import pickle
    import tempfile

    from uniperceiver.data.datasets import ImageNetDataset

    n = args.num_records
    with tempfile.TemporaryDirectory() as tmp:
        meta = os.path.join(tmp, "train.txt")
        with open(meta, "w") as f:
            for i in range(n):
                wnid = f"n{1440764 + i % 1000:08d}"
                f.write(f"train/{wnid}/{wnid}_{10026 + i}.JPEG {i % 1000}\n")
        gc.collect()
        before = rss_mb()
        ds = ImageNetDataset(meta, tmp)
        gc.collect()
        after = rss_mb()
        serialized = ds.records.nbytes
        emit("bytes_per_record", (after - before) * 2**20 / n, "B", records=n, serialized_bytes_per_record=round(
            serialized / n, 1))
        emit("worker_uss_growth_pct", 100 * _worker_pass_uss_growth(ds.records) * 1024 / serialized, "%", records=n,
             measure="a forked worker's USS growth over one pass / serialized records")
        dicts = list(ds.records)
        del ds
        gc.collect()
        emit("worker_uss_growth_pct_dicts", 100 * _worker_pass_uss_growth(dicts) * 1024 / serialized, "%",
             records=n, measure="the same with the records as a list of dicts (the former layout)",
             pickled_bytes=len(pickle.dumps(dicts[:1000])) * n // 1000)


def _loader_samples_per_s(stream, batches: int, warmup: int) -> float:
    for _ in range(warmup):
        stream.next()
    start = time.perf_counter()
    for _ in range(batches):
        stream.next()
    return batches * stream.batch_size / (time.perf_counter() - start)


def video_decode_ms(tmp: str, frames: int = 320, size: int = 112, clips: int = 12, gop: int = 60) -> None:
    """decode_ms_per_clip of a generated H.264 clip: decoding from frame 0 (before) vs seeking (after), for
    training clips (random offsets) and the 4 evaluation views of one video (one open), interleaved rounds."""
    import av
    import numpy as np

    from uniperceiver.data.datasets.video import clip_indices, decode_clips

    path = os.path.join(tmp, "long.mp4")
    with av.open(path, mode="w") as container:
        stream = container.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = size, size, "yuv420p"
        stream.codec_context.gop_size = gop  # a key frame every 2 s (x264's default: every 250 frames)
        rng = np.random.default_rng(0)
        for i in range(frames):
            img = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    offsets = [(i + 0.5) / clips for i in range(clips)]
    train = [[functools.partial(clip_indices, frames_per_clip=8, stride=4, offset=o)] for o in offsets]
    views = [[functools.partial(clip_indices, frames_per_clip=8, stride=4, view=v, num_views=4) for v in range(4)]]
    # before: one open and a decode from frame 0 per clip (each evaluation view was its own sample);
    # after: seeking, and the views of a video from one open
    for label, jobs, per in (("train", train, 1), ("eval_4_views", views, 4)):
        times = {False: [], True: []}
        for _ in range(3):
            for seek in (False, True):
                start = time.perf_counter()
                for picks in jobs:
                    if seek:
                        decode_clips(path, picks, seek=True)
                    else:
                        for pick in picks:
                            decode_clips(path, [pick], seek=False)
                times[seek].append(1000 * (time.perf_counter() - start) / (len(jobs) * per))
        before, after = statistics.median(times[False]), statistics.median(times[True])
        common = dict(clips=label, frames=frames, size=size, gop=gop, rounds=3)
        emit("decode_ms_per_clip", before, "ms", decode="from frame 0 (before)", **common)
        emit("decode_ms_per_clip", after, "ms", decode="seek (after)", ratio=round(after / before, 3), **common)


def mode_data(args) -> None:
    """decode_ms_per_clip of a long generated video (before / after seeking), then samples/s of each task's
    training loader (the config's NUM_WORKERS): tar shards written from the same training split vs the loose
    files, 3 interleaved rounds (median), for the tasks shards can hold."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        video_decode_ms(tmp)

    sys.path.insert(0, os.path.join(REPO, "tools"))
    from make_shards import training_records, write_shards

    from uniperceiver.data.demo import prepare_data_root
    from uniperceiver.data.multitask import TaskStream
    from uniperceiver.tasks import build_tasks

    cfg = make_cfg(args)
    prepare_data_root(cfg)
    tasks = build_tasks(cfg)
    with tempfile.TemporaryDirectory() as tmp:
        for name, task in tasks.items():
            if args.task and name != args.task:
                continue
            tcfg = cfg.task(name)
            try:
                kind, records = training_records(cfg, name)
            except Exception as err:  # noqa: BLE001 - tasks shards cannot hold are reported and skipped
                emit(f"samples_per_s_{name}", 0.0, "samples/s", skipped=str(err).splitlines()[0])
                continue
            n, shards = write_shards(records, kind, os.path.join(tmp, name), args.shard_size)
            pattern = os.path.join(tmp, name, f"{{00000..{shards - 1:05d}}}.tar")
            shard_cfg = make_cfg(args, [f"TASKS.{name}.DATASETS.FORMAT", "webdataset",
                                        f"TASKS.{name}.DATASETS.TRAIN", pattern])
            shard_task = build_tasks(shard_cfg)[name]
            workers, batch = tcfg.DATALOADER.NUM_WORKERS, tcfg.DATALOADER.TRAIN_BATCH_SIZE
            results = {"files": [], "webdataset": []}
            datasets = {"files": task.build_dataset("train"), "webdataset": shard_task.build_dataset("train")}
            for _ in range(args.rounds):
                for fmt in ("files", "webdataset"):
                    stream = TaskStream(name, datasets[fmt], batch, task.collate, workers, seed=0, rank=0,
                                        world_size=1, weight=1.0)
                    results[fmt].append(_loader_samples_per_s(stream, args.iters, args.warmup))
                    stream.reset(0)
            files, tars = statistics.median(results["files"]), statistics.median(results["webdataset"])
            common = dict(task=name, workers=workers, batch=batch, samples=n, shards=shards, rounds=args.rounds)
            emit(f"samples_per_s_{name}", files, "samples/s", format="files", **common)
            emit(f"samples_per_s_{name}", tars, "samples/s", format="webdataset", ratio=round(tars / files, 3),
                 measure="webdataset / files, median of interleaved rounds", **common)


MODES = {"reference": mode_reference, "train_step": mode_train_step, "loop": mode_loop,
         "eval_retrieval": mode_eval_retrieval, "_train_step_one": mode_train_step_one,
         "_eval_retrieval_one": mode_eval_retrieval_one}
MODES.update(records=mode_records, _records_one=mode_records_one, data=mode_data)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mode", required=True, choices=sorted(MODES))
    p.add_argument("--config-file", default="", help="default: Tiny (loop mode: the 7-task Tiny config)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--img-size", type=int, default=0, help="MODEL.IMG_INPUT_SIZE (0: the config's)")
    p.add_argument("--iters", type=int, default=10, help="timed repetitions (per side in reference mode)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--rounds", type=int, default=3, help="loop mode: interleaved rounds of loop / bare steps; data mode: "
                   "interleaved rounds of shards / files")
    p.add_argument("--num-workers", default="0", help="loop mode: DATALOADER.NUM_WORKERS of every task (an int), "
                                                       "or 'config' for the config's own")
    p.add_argument("--block", type=int, default=0, help="loop mode: loop and bare steps alternate in blocks of this "
                   "many steps (0: 1 step without data workers, a whole round with them)")
    p.add_argument("--cache-images", action="store_true", help="loop mode: keep decoded images in memory")
    p.add_argument("--preload", action="store_true",
                   help="loop mode: draw and collate all the run's batches before it starts, so the loop's data "
                        "loading costs nothing: the overhead left is the rest of the framework (plus the noise)")
    p.add_argument("--activation-checkpointing", type=on_off, default=[False], help="on / off / off,on")
    p.add_argument("--compile", type=compile_list, default=["off"],
                   help="MODEL.COMPILE: off / blocks / model (on = model), comma-separated: e.g. off,blocks,model")
    p.add_argument("--amp", type=amp_list, default=["fp32"], help="bf16 / fp32 / fp32,bf16")
    p.add_argument("--peak-tflops", type=float, default=H100_BF16_DENSE_TFLOPS,
                   help="accelerator peak for MFU (default: H100 SXM dense bf16)")
    p.add_argument("--task", default="", help="train_step: time this task's real losses instead of the image path")
    p.add_argument("--candidates", type=lambda s: [int(x) for x in s.split(",")], default=[1000, 25000])
    p.add_argument("--num-candidates", type=int, default=1000, help=argparse.SUPPRESS)
    p.add_argument("--num-queries", type=int, default=100, help="eval_retrieval: images")
    p.add_argument("--num-records", type=int, default=1_000_000, help="records: annotation lines")
    p.add_argument("--shard-size", type=int, default=100, help="data: samples per tar shard")
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    p.add_argument("--device", default="", help="default: cuda when available, else cpu")
    p.add_argument("--malloc", choices=("fixed", "default"), default="fixed",
                   help="memory children: 'fixed' glibc mmap threshold (MALLOC_MMAP_THRESHOLD_, see FIXED_MALLOC) "
                        "or glibc's default dynamic one")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    args = p.parse_args(argv)
    if not args.config_file:
        args.config_file = SEVEN_TASKS if args.mode == "loop" else DEFAULT_CONFIG
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    MODES[args.mode](args)


if __name__ == "__main__":
    main()
