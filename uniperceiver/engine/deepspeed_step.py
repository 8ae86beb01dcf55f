"""DeepSpeed (ZeRO stage 1/2/3) behind the :class:`~uniperceiver.engine.step.StepEngine` interface.

The trainer calls, per optimizer step of ``k = SOLVER.ACCUM_ITER`` micro-batches::

    with engine.micro_step(sync): forward; engine.backward(loss / k, sync)      # k times
    engine.step()                                                               # once

which maps onto DeepSpeed's "set the accumulation boundary yourself" protocol: ``micro_step(sync)`` sets
``set_gradient_accumulation_boundary(sync)`` before the forward (ZeRO reduces at the boundary),
``backward`` is ``engine.backward(loss, scale_wrt_gas=False)`` (the loop already divided by k), and ``step``
is one ``engine.step()`` at the boundary.  ``gradient_accumulation_steps`` in the DeepSpeed config is
``SOLVER.ACCUM_ITER``, so DeepSpeed's own bookkeeping (samples, throughput) agrees with ours.

The optimizer is the torch optimizer built by ``uniperceiver.solver.build_optimizer`` (DeepSpeed wraps it,
keeping its ``param_groups``, so the LR-schedule hook keeps working); naming an optimizer in the DeepSpeed
config would compile fused ops for nothing.  Precision: ``SOLVER.AMP`` bf16 -> DeepSpeed ``bf16`` (bf16
weights, fp32 master copy), fp16 -> DeepSpeed ``fp16`` with dynamic loss scaling (CUDA only).  Gradient
clipping is DeepSpeed's ``gradient_clipping = SOLVER.GRAD_CLIP``.

Checkpoints: :meth:`state_dict` is collective and writes DeepSpeed's sharded checkpoint
(``<OUTPUT_DIR>/deepspeed/<tag>/``: model + ZeRO optimizer shards, one per rank); the returned dict, stored
in our ``model_*.pth``, names the tag, and :meth:`load_state_dict` loads it back.
``tools/convert_checkpoint.py`` consolidates the shards into a plain ``{"model": ...}`` file.
Our own ``"model"`` entry is the full fp32 model (gathered from the ZeRO partitions by :class:`ZeroModelView`,
which also writes loaded ``MODEL.WEIGHTS`` into DeepSpeed's fp32 master copy); ``"optimizer"`` is empty.

On a machine without CUDA, ``DS_ACCELERATOR=cpu`` is set before DeepSpeed is imported (gloo + CPU ops).
"""
from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
import re
import shutil
import sys
from typing import Any, ContextManager, Dict, List, NamedTuple

import torch
import torch.distributed as dist
import torch.nn as nn

from uniperceiver.config import ConfigError
from uniperceiver.utils import comm
from uniperceiver.utils.deepspeed import import_deepspeed  # noqa: F401  (also re-exported here)

from .step import StepEngine

logger = logging.getLogger(__name__)

_TAG = re.compile(r"^iter_(\d+)$")


def _merge(base: Dict[str, Any], extra: Dict[str, Any]) -> Dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def build_deepspeed_config(cfg, world_size: int) -> Dict[str, Any]:
    """The DeepSpeed config implied by ``cfg.SOLVER``; ``SOLVER.DEEPSPEED.CONFIG`` (a JSON file) is merged
    under it, i.e. its keys win, except those that must agree with our loop (accumulation, batch size)."""
    solver = cfg.SOLVER
    stage = int(solver.DEEPSPEED.ZERO_STAGE)
    if stage not in (0, 1, 2, 3):
        raise ConfigError(f"SOLVER.DEEPSPEED.ZERO_STAGE must be 0, 1, 2 or 3, got {stage}")
    accum = max(1, int(solver.ACCUM_ITER))
    ds: Dict[str, Any] = {
        # We feed the data ourselves; the micro-batch size only enters DeepSpeed's throughput reports.
        "train_micro_batch_size_per_gpu": 1,
        "gradient_accumulation_steps": accum,
        "gradient_clipping": float(solver.GRAD_CLIP) if solver.GRAD_CLIP > 0 else 0.0,
        "zero_optimization": {"stage": stage},
        "steps_per_print": 10 ** 9,
        "wall_clock_breakdown": False,
        "zero_allow_untested_optimizer": True,
    }
    if solver.AMP.ENABLED:
        if solver.AMP.DTYPE == "bf16":
            ds["bf16"] = {"enabled": True}
        elif solver.AMP.DTYPE == "fp16":
            if not torch.cuda.is_available():
                raise ConfigError("SOLVER.AMP.DTYPE fp16 with DeepSpeed needs CUDA; use bf16 on CPU")
            ds["fp16"] = {"enabled": True, "loss_scale": 0, "initial_scale_power": 16}
        else:
            raise ConfigError(f"SOLVER.AMP.DTYPE must be bf16 or fp16, got {solver.AMP.DTYPE!r}")
    if solver.DEEPSPEED.CONFIG:
        path = solver.DEEPSPEED.CONFIG
        try:
            with open(path) as f:
                user = json.load(f)
        except (OSError, ValueError) as e:
            raise ConfigError(f"SOLVER.DEEPSPEED.CONFIG {path}: {e}") from None
        if "optimizer" in user or "scheduler" in user:
            raise ConfigError(f"SOLVER.DEEPSPEED.CONFIG {path}: 'optimizer' / 'scheduler' come from SOLVER and "
                              f"LR_SCHEDULER; remove them from the JSON")
        ds = _merge(ds, user)
        ds["gradient_accumulation_steps"] = accum
        ds["train_micro_batch_size_per_gpu"] = 1
        ds.pop("train_batch_size", None)
    ds["train_batch_size"] = ds["train_micro_batch_size_per_gpu"] * accum * world_size
    return ds


class DeepSpeedStepEngine(StepEngine):
    """``deepspeed.initialize(model, optimizer, config)`` driven through the StepEngine methods."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, ds_config: Dict[str, Any], *,
                 checkpoint_dir: str, keep_checkpoints: int = 2):
        deepspeed = import_deepspeed()
        self.ds_config = ds_config
        with _scalar_safe_broadcast():
            self.engine, self.optimizer, _, _ = deepspeed.initialize(model=model, optimizer=optimizer,
                                                                     config=ds_config, dist_init_required=None)
        self.model = self.engine  # forward goes through the engine (ZeRO-3 gathers parameters there)
        self.module = model
        self.stage = int(ds_config["zero_optimization"]["stage"])
        if self.stage == 3:
            _register_container_parameters(model)
        self.clip = float(ds_config.get("gradient_clipping", 0.0))
        self.checkpoint_dir = checkpoint_dir
        self.keep_checkpoints = max(1, int(keep_checkpoints))
        self._steps = 0  # optimizer steps taken (or skipped) through this object: names checkpoint tags
        bf16 = ds_config.get("bf16", {}).get("enabled", False)
        fp16 = ds_config.get("fp16", {}).get("enabled", False)
        self._autocast_dtype = torch.bfloat16 if bf16 else (torch.float16 if fp16 else None)
        self.device_type = self.engine.device.type if isinstance(self.engine.device, torch.device) else \
            torch.device(self.engine.device).type
        logger.info("DeepSpeed ZeRO stage %d, gradient_accumulation_steps %d, %s", self.stage,
                    ds_config["gradient_accumulation_steps"],
                    "bf16" if bf16 else ("fp16" if fp16 else "fp32"))

    @classmethod
    def from_config(cls, cfg, model: nn.Module, optimizer: torch.optim.Optimizer) -> "DeepSpeedStepEngine":
        from uniperceiver.config.validate import same_task_every_step

        if comm.get_world_size() > 1 and not same_task_every_step(cfg):
            raise ConfigError(
                f"DeepSpeed with several tasks needs DATALOADER.STRATEGY synced (got {cfg.DATALOADER.STRATEGY!r}): "
                f"ZeRO reduces gradients in buckets filled in the order they become ready (stage 3 also gathers "
                f"each module's parameters as it runs), and ranks training different tasks produce them in "
                f"different orders and for different parameters")
        ds_config = build_deepspeed_config(cfg, comm.get_world_size())
        if cfg.MOE.MOE and int(ds_config["zero_optimization"]["stage"]) == 3:
            raise ConfigError("MOE.MOE with DeepSpeed ZeRO stage 3 is not supported (use stage 1 or 2): ZeRO-3 "
                              "re-gathers a module's parameters for its gradients only through its own linear "
                              "layers, not through the experts' batched weights; DeepSpeed's MoE refuses stage 3 too")
        return cls(model, optimizer, ds_config, checkpoint_dir=os.path.join(cfg.OUTPUT_DIR, "deepspeed"),
                   keep_checkpoints=max(2, int(cfg.SOLVER.CHECKPOINT_MAX_SAVE) + 1)
                   if cfg.SOLVER.CHECKPOINT_MAX_SAVE > 0 else 10 ** 9)

    # ------------------------------------------------------------------------------------- the step
    def autocast(self) -> ContextManager:
        # DeepSpeed casts the weights to bf16 / fp16; autocast casts the (fp32) inputs to match.
        if self._autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self._autocast_dtype)

    def micro_step(self, sync: bool) -> ContextManager:
        self.engine.set_gradient_accumulation_boundary(bool(sync))
        return contextlib.nullcontext()

    def backward(self, loss: torch.Tensor, sync: bool = True) -> None:
        self.engine.backward(loss, scale_wrt_gas=False)

    def step(self) -> Dict[str, float]:
        self.engine.set_gradient_accumulation_boundary(True)
        self.engine.step()
        self._steps += 1
        stats: Dict[str, float] = {}
        norm = self.engine.get_global_grad_norm()
        if self.clip > 0 and norm is not None:
            stats["grad_norm"] = float(norm)
        if self.ds_config.get("fp16", {}).get("enabled", False):
            stats["loss_scale"] = float(self.optimizer.cur_scale)
        return stats

    def skip_step(self) -> None:
        # Gradients of this step were already reduced into ZeRO's buffers at the boundary backward; a step
        # without an update is DeepSpeed's overflow path, which we cannot trigger from outside.  Drop what we
        # can reach (param grads and stage 1/2 partition buffers) and count the step.
        self.engine.zero_grad()
        zero_opt = self.optimizer
        if hasattr(zero_opt, "averaged_gradients"):
            for key in list(zero_opt.averaged_gradients):
                zero_opt.averaged_gradients[key] = None
        if hasattr(zero_opt, "zero_grad"):
            zero_opt.zero_grad(set_to_none=True)
        self._steps += 1

    # ------------------------------------------------------------------------------------ checkpoints
    def checkpoint_targets(self, model: nn.Module, optimizer: torch.optim.Optimizer):
        """The Checkpointer saves the full fp32 model through :class:`ZeroModelView` and no optimizer state
        (ZeRO's optimizer shards are in the DeepSpeed checkpoint that :meth:`state_dict` writes)."""
        return ZeroModelView(self.module, self.stage), _StateInDeepSpeedCheckpoint()

    def module_state_dict(self) -> Dict[str, torch.Tensor]:
        """Full model state (fp32 master weights, on CPU) on every rank.  Collective."""
        return ZeroModelView(self.module, self.stage).state_dict()

    def state_dict(self) -> Dict[str, Any]:
        """Collective: every rank writes its shards to ``checkpoint_dir/iter_<steps>``."""
        tag = f"iter_{self._steps:07d}"
        self.engine.save_checkpoint(self.checkpoint_dir, tag=tag, client_state={"steps": self._steps})
        comm.synchronize()
        self._prune(keep_tag=tag)
        return {"deepspeed_tag": tag, "deepspeed_dir": os.path.basename(self.checkpoint_dir), "steps": self._steps}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        tag = state.get("deepspeed_tag")
        if not tag:
            logger.warning("checkpoint has no DeepSpeed tag; DeepSpeed state starts fresh")
            return
        if not os.path.isdir(os.path.join(self.checkpoint_dir, tag)):
            raise ConfigError(f"DeepSpeed checkpoint {os.path.join(self.checkpoint_dir, tag)} is missing "
                              f"(the .pth file refers to it)")
        path, client = self.engine.load_checkpoint(self.checkpoint_dir, tag=tag, load_optimizer_states=True,
                                                   load_lr_scheduler_states=False)
        if path is None:
            raise ConfigError(f"DeepSpeed could not load {self.checkpoint_dir}/{tag}")
        self._steps = int(client.get("steps", state.get("steps", 0)))
        logger.info("Loaded DeepSpeed checkpoint %s", path)

    def _prune(self, keep_tag: str) -> None:
        if not comm.is_main_process() or not os.path.isdir(self.checkpoint_dir):
            return
        tags = sorted(d for d in os.listdir(self.checkpoint_dir) if _TAG.match(d))
        for tag in tags[: max(0, len(tags) - self.keep_checkpoints)]:
            if tag != keep_tag:
                shutil.rmtree(os.path.join(self.checkpoint_dir, tag), ignore_errors=True)


def _register_container_parameters(model: nn.Module) -> None:
    """ZeRO-3 gathers a module's own parameters when that module is called.  A ``ParameterDict`` /
    ``ParameterList`` (the predictor's logit scales) is never called: its parameters are registered with the
    module that holds it, which gathers them in its own calls."""
    from deepspeed.runtime.zero.partition_parameters import register_external_parameter

    for parent in model.modules():
        for child in parent.children():
            if isinstance(child, (nn.ParameterDict, nn.ParameterList)):
                for param in child.parameters():
                    register_external_parameter(parent, param)


@contextlib.contextmanager
def _scalar_safe_broadcast():
    """DeepSpeed's initial parameter broadcasts (``DeepSpeedEngine._broadcast_model``; under ZeRO-3
    ``zero.Init._zero_init_param``) take byte views ``p.data.view(torch.uint8)``, which 0-dim parameters (the
    model's logit scales) cannot give; during ``deepspeed.initialize`` the same broadcasts run over flat views."""
    from deepspeed import comm as dist
    from deepspeed.moe.utils import is_moe_param
    from deepspeed.runtime.engine import DeepSpeedEngine
    from deepspeed.runtime.zero.partition_parameters import Init, ZeroParamStatus
    from deepspeed.utils import groups

    def broadcast_model(engine) -> None:
        if engine.dist_backend is None:
            return
        for _, p in engine.module.named_parameters():
            if (hasattr(p, "ds_status") and p.ds_status is not ZeroParamStatus.AVAILABLE) or hasattr(p, "ds_optim_param"):
                continue  # not replicated
            data = p.data.reshape(-1).view(torch.uint8)
            if is_moe_param(p):
                dist.broadcast(data, groups._get_expert_broadcast_src_rank(p.group_name),
                               group=engine.expert_data_parallel_group[p.group_name])
            else:
                dist.broadcast(data, groups._get_broadcast_src_rank(), group=engine.seq_data_parallel_group)

    def zero_init_param(init, param) -> None:
        init._convert_to_deepspeed_param(param)
        group = init.get_partition_dp_group(param)
        src = 0 if dist.get_world_group() == group else dist.get_global_rank(group, 0)
        dist.broadcast(param.data.reshape(-1).view(torch.uint8), src, group)
        param.partition()

    originals = DeepSpeedEngine._broadcast_model, Init._zero_init_param
    DeepSpeedEngine._broadcast_model, Init._zero_init_param = broadcast_model, zero_init_param
    try:
        yield
    finally:
        DeepSpeedEngine._broadcast_model, Init._zero_init_param = originals


class _StateInDeepSpeedCheckpoint:
    """Stands for the optimizer in our checkpoints: its (sharded) state is saved by DeepSpeed."""

    def state_dict(self) -> Dict[str, Any]:
        return {}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        pass


class ZeroModelView:
    """The model as the Checkpointer sees it under DeepSpeed: ``state_dict()`` is the FULL fp32 state (master
    weights gathered from the ZeRO partitions; under ZeRO-3 the partitioned parameters too) and
    ``load_state_dict()`` writes both the working (bf16 / fp32) parameters and DeepSpeed's fp32 master copy,
    so ``MODEL.WEIGHTS`` loaded after ``deepspeed.initialize`` really trains from those weights.
    With expert parallelism the state holds every expert under its global id (gathered from the expert-parallel
    group; DeepSpeed's own expert files use the same ids) and loading keeps this rank's.
    Both are collective: every rank calls them (the Checkpointer does)."""

    def __init__(self, module: nn.Module, stage: int) -> None:
        self._module = module
        self._stage = int(stage)

    def __getattr__(self, name: str):
        if name == "module" or name.startswith("_"):  # the Checkpointer unwraps ``.module``: we are the model
            raise AttributeError(name)
        return getattr(self._module, name)

    def _gathered(self, modifier_rank=None) -> ContextManager:
        if self._stage != 3:
            return contextlib.nullcontext()
        deepspeed = import_deepspeed()
        return deepspeed.zero.GatheredParameters(list(self._module.parameters()), modifier_rank=modifier_rank)

    def state_dict(self) -> Dict[str, torch.Tensor]:
        from deepspeed.utils import safe_get_full_fp32_param

        with self._gathered():
            state = {k: v.detach().cpu().clone() for k, v in self._module.state_dict().items()}
        for name, param in self._module.named_parameters(remove_duplicate=False):
            full = safe_get_full_fp32_param(param)  # collective; None for frozen parameters
            if full is not None and name in state:
                state[name] = full.detach().float().cpu().reshape(state[name].shape).clone()
        state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
        return _experts_to_global(state, _expert_parallel_layers(self._module))

    def load_state_dict(self, state: Dict[str, torch.Tensor], strict: bool = True):
        from deepspeed.utils import safe_set_full_fp32_param

        state = _experts_to_local(state, _expert_parallel_layers(self._module))
        with self._gathered(modifier_rank=0):
            result = self._module.load_state_dict(state, strict=strict)
        for name, param in self._module.named_parameters(remove_duplicate=False):
            if name not in state or not param.requires_grad:
                continue
            value = state[name].detach().float().to(param.device)
            if hasattr(param, "ds_tensor"):
                _set_zero3_master(param, value)
            else:
                safe_set_full_fp32_param(param, value)
        return result


class _ExpertShard(NamedTuple):
    prefix: str  # "<MoE module>.deepspeed_moe.experts.deepspeed_experts."
    num_local: int
    first: int  # global id of this rank's first expert
    in_first_group: bool  # this rank's expert-parallel group holds rank 0: one copy of every expert


def _expert_parallel_layers(module: nn.Module) -> List[_ExpertShard]:
    """The DeepSpeed-MoE layers whose experts are split over an expert-parallel group (``MOE.EP_SIZE`` > 1):
    each rank holds ``num_local`` of them, numbered from 0 in its parameter names."""
    if "deepspeed.moe.layer" not in sys.modules:
        return []
    from deepspeed.moe.layer import MoE

    shards = []
    for name, m in module.named_modules():
        if isinstance(m, MoE) and m.ep_size > 1:
            group = m.deepspeed_moe.ep_group
            shards.append(_ExpertShard(f"{name}.deepspeed_moe.experts.deepspeed_experts.", m.num_local_experts,
                                       dist.get_rank(group) * m.num_local_experts,
                                       0 in dist.get_process_group_ranks(group)))
    return shards


def _split_expert_key(key: str, shards: List[_ExpertShard]):
    for shard in shards:
        if key.startswith(shard.prefix):
            expert, rest = key[len(shard.prefix):].split(".", 1)
            return shard, int(expert), rest
    return None, None, None


def _experts_to_global(state: Dict[str, torch.Tensor], shards: List[_ExpertShard]) -> Dict[str, torch.Tensor]:
    """Rename this rank's experts to their global ids and gather every expert, so the state is the whole
    model (as with ``MOE.EP_SIZE 1``; loadable with any expert parallelism).  Collective."""
    if not shards:
        return state
    mine, out = {}, {}
    for key, value in state.items():
        shard, local, rest = _split_expert_key(key, shards)
        if shard is None:
            out[key] = value
        elif shard.in_first_group:
            mine[f"{shard.prefix}{shard.first + local}.{rest}"] = value
    for part in comm.all_gather(mine):
        out.update(part)
    return out


def _experts_to_local(state: Dict[str, torch.Tensor], shards: List[_ExpertShard]) -> Dict[str, torch.Tensor]:
    """The inverse of :func:`_experts_to_global` for this rank: its experts renamed to local ids, the others
    dropped."""
    if not shards:
        return state
    out = {}
    for key, value in state.items():
        shard, expert, rest = _split_expert_key(key, shards)
        if shard is None:
            out[key] = value
        elif shard.first <= expert < shard.first + shard.num_local:
            out[f"{shard.prefix}{expert - shard.first}.{rest}"] = value
    return out


def _set_zero3_master(param: torch.Tensor, value: torch.Tensor) -> None:
    """This rank's slice of ``value`` into the ZeRO-3 fp32 partition of ``param``.  (DeepSpeed's
    ``safe_set_full_fp32_param`` fails on parameters smaller than the world size: their partitions are padded.)"""
    from deepspeed.utils import safe_set_local_fp32_param

    n = param.ds_tensor.numel()
    flat = value.flatten()
    padded = torch.zeros(n * comm.get_world_size(), dtype=flat.dtype, device=flat.device)
    padded[: flat.numel()] = flat
    safe_set_local_fp32_param(param, padded.narrow(0, n * comm.get_rank(), n))
