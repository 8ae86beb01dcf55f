"""The step interface between the training loop and the optimisation backend.

The loop (``Trainer.run_step``) never branches on the backend; it only does, per optimizer step::

    for i in range(k):                                   # k = SOLVER.ACCUM_ITER micro-batches
        terms = engine.forward_backward(task, batch, k, sync=i == k - 1)   # detached loss terms, on the device
    bad = engine.nonfinite(all_terms)                    # device flag: a loss term or a gradient is inf / NaN
    stats = engine.step()                                # once: unscale, clip, optimizer, scaler, zero_grad
    # or, when the step must be dropped (non-finite on some rank):  engine.skip_step()

where ``forward_backward`` is, for one micro-batch::

    with engine.micro_step(sync):                        # DDP no_sync on all but the last micro-batch
        with engine.autocast():
            losses = engine.losses(task, batch)          # one forward of engine.model per micro-batch
            losses.update(extra_losses(engine.model))    # losses the model recorded (MoE: loss_moe_aux)
        engine.backward(sum(losses.values()) / k, sync=sync)

Nothing here reads a value back to the host: losses, the non-finite flag and ``step()``'s stats stay device
tensors, so the loop's one host read per step is its skip decision (engine/train_loop.py).

A backend implements the :class:`StepEngine` methods below.  :class:`AMPStepEngine` is the plain / AMP
backend (fp32, bf16 autocast on CPU or CUDA, fp16 autocast + GradScaler on CUDA).  A DeepSpeed backend
(``engine/deepspeed_step.py``) wraps ``deepspeed.initialize`` behind the same methods.
"""
from __future__ import annotations

import contextlib
from typing import Any, ContextManager, Dict, Iterable, List, Optional

import torch
import torch.nn as nn

from uniperceiver.config import ConfigError
from uniperceiver.utils.wrappers import unwrap_model

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class TaskForward(nn.Module):
    """A task's whole loss computation as the forward of one module.

    Tasks call several model methods per step (``forward``, ``encode_targets``, ``logits``).  Under DDP only
    the wrapper's forward is seen, so parameters used by the other methods would be marked ready twice (or
    never); wrapping the task call itself makes every micro-batch exactly one DDP forward.
    """

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, task, batch):
        return task.losses(self.module, batch)


def extra_losses(model: nn.Module) -> Dict[str, torch.Tensor]:
    """Losses the model recorded during its forwards (MoE load balancing: ``loss_moe_aux``); ``{}`` if none."""
    extra = getattr(unwrap_model(model), "extra_losses", None)
    return extra() if extra is not None else {}


class StepEngine:
    """Interface.  ``model`` is what the loop calls forward on (DDP / DeepSpeed wrapper or the module)."""

    model: nn.Module

    def losses(self, task, batch) -> Dict[str, torch.Tensor]:
        """``task.losses`` of one micro-batch, run through ``model`` (one wrapper forward)."""
        return task.losses(self.model, batch)

    def extra_losses(self) -> Dict[str, torch.Tensor]:
        """Losses the model recorded since the last call (MoE: ``loss_moe_aux``); reading them clears them."""
        return extra_losses(self.model)

    def run_micro_batches(self, tasks, micro_batches, accum_negatives: bool = False):
        """Forward + backward of one optimizer step's micro-batches ``[(task_name, batch)]``; returns
        ``[(task_name, detached loss terms)]``.  ``accum_negatives`` (SOLVER.ACCUM_NEGATIVES) and every
        micro-batch of the same task: the task scores them together (``Task.accumulated_losses``) if it can."""
        k, names = len(micro_batches), {name for name, _ in micro_batches}
        if accum_negatives and k > 1 and len(names) == 1:
            name = names.pop()
            terms = tasks[name].accumulated_losses(self, [batch for _, batch in micro_batches])
            if terms is not None:
                return [(name, t) for t in terms]
        return [(name, self.forward_backward(tasks[name], batch, k, i == k - 1))
                for i, (name, batch) in enumerate(micro_batches)]

    def forward_backward(self, task, batch, k: int, sync: bool) -> Dict[str, torch.Tensor]:
        """One micro-batch of ``k``: forward (task losses + the model's extra losses) and backward of their
        sum / k.  Returns the loss terms, detached, in fp32, on the device (no host read)."""
        with self.micro_step(sync):
            with self.autocast():
                loss_dict = self.losses(task, batch)
                loss_dict.update(self.extra_losses())
            loss = sum(v.float() for v in loss_dict.values())
            self.backward(loss / k, sync=sync)
        return {name: v.detach().float() for name, v in loss_dict.items()}

    def gradients(self) -> List[torch.Tensor]:
        """The gradients this step produced (what :meth:`nonfinite` checks)."""
        return [p.grad for p in unwrap_model(self.model).parameters() if p.grad is not None]

    def nonfinite(self, loss_terms: Iterable[Dict[str, torch.Tensor]]) -> torch.Tensor:
        """A device bool: some loss term or gradient of this step is inf / NaN (gradients through
        :meth:`gradient_check`; left to the loss scaler when one is on).  No host read: the trainer reads the
        flag once, reduced over ranks."""
        values = [v for terms in loss_terms for v in terms.values()]
        check = self.gradient_check()
        if check is not None:
            values.append(check.float())
        return ~torch.stack(values).isfinite().all() if values else torch.zeros((), dtype=torch.bool)

    def gradient_check(self) -> Optional[torch.Tensor]:
        """A device scalar that is finite when every entry of :meth:`gradients` is, or None when gradients are
        not checked.  It also overflows when finite gradients are astronomically large (the slow path then
        names no parameter).  On the CPU the sum of every gradient (each read once, nothing squared: 2.4 -> 1.0
        ms for the zero-shot digits model's 7.4 M entries when they are not in cache); on a GPU the total norm
        (a few multi-tensor kernels rather than one launch per gradient)."""
        grads = self.gradients()
        if not grads:
            return None
        if grads[0].device.type == "cpu":
            return torch.stack([g.sum(dtype=torch.float32) for g in grads]).sum()
        return torch.nn.utils.get_total_norm(grads)

    def grad_norm(self) -> Optional[torch.Tensor]:
        """The total L2 norm of :meth:`gradients` (a device scalar), or None when there are none."""
        grads = self.gradients()
        return torch.nn.utils.get_total_norm(grads) if grads else None

    def first_nonfinite_gradient(self) -> Optional[str]:
        """Slow path after :meth:`nonfinite` fired: the name of the first parameter whose gradient has an inf /
        NaN entry (None when every entry is finite: the norm overflowed on huge finite gradients)."""
        for name, p in unwrap_model(self.model).named_parameters():
            if p.grad is not None and not bool(torch.isfinite(p.grad).all()):
                return name
        return None

    def autocast(self) -> ContextManager:
        """Context for forward + loss computation (mixed precision or nothing)."""
        return contextlib.nullcontext()

    def micro_step(self, sync: bool) -> ContextManager:
        """Context around forward AND backward of one micro-batch; ``sync=False`` defers gradient sync."""
        return contextlib.nullcontext()

    def backward(self, loss: torch.Tensor, sync: bool = True) -> None:
        """Backward of an already 1/k-scaled loss; ``sync`` says whether this is the last micro-batch."""
        raise NotImplementedError

    def step(self) -> Dict[str, float]:
        """Finish one optimizer step (unscale, clip, update, zero grads).  Returns stats, e.g. ``grad_norm``."""
        raise NotImplementedError

    def skip_step(self) -> None:
        """Drop the accumulated gradients without updating anything."""
        raise NotImplementedError

    def state_dict(self) -> Dict[str, Any]:
        return {}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        pass

    def checkpoint_targets(self, model: nn.Module, optimizer: torch.optim.Optimizer):
        """``(model, optimizer)`` as the Checkpointer should save them.  A backend that shards them substitutes
        views (DeepSpeed: a full-state model view; its ZeRO optimizer state lives in its own checkpoint)."""
        return model, optimizer


class AMPStepEngine(StepEngine):
    """Plain PyTorch optimisation with optional autocast (bf16 anywhere; fp16 + GradScaler on CUDA)."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, *, grad_clip: float = 0.0,
                 amp_enabled: bool = False, amp_dtype: str = "bf16", device: Optional[torch.device] = None):
        if amp_dtype not in _DTYPES:
            raise ConfigError(f"SOLVER.AMP.DTYPE must be one of {', '.join(_DTYPES)}, got {amp_dtype!r}")
        self.model = model
        self.optimizer = optimizer
        self.grad_clip = float(grad_clip)
        self.device_type = (device or next(model.parameters()).device).type
        self.amp_enabled = bool(amp_enabled)
        self.amp_dtype = _DTYPES[amp_dtype]
        use_scaler = self.amp_enabled and self.amp_dtype == torch.float16 and self.device_type == "cuda"
        if self.amp_enabled and self.amp_dtype == torch.float16 and self.device_type != "cuda":
            raise ConfigError("SOLVER.AMP.DTYPE fp16 needs CUDA; use bf16 on CPU")
        self.scaler = torch.amp.GradScaler("cuda", enabled=use_scaler)

    @classmethod
    def from_config(cls, cfg, model: nn.Module, optimizer: torch.optim.Optimizer, device=None) -> "AMPStepEngine":
        return cls(model, optimizer, grad_clip=cfg.SOLVER.GRAD_CLIP, amp_enabled=cfg.SOLVER.AMP.ENABLED,
                   amp_dtype=cfg.SOLVER.AMP.DTYPE, device=device)

    def losses(self, task, batch) -> Dict[str, torch.Tensor]:
        if isinstance(self.model, TaskForward) or isinstance(getattr(self.model, "module", None), TaskForward):
            return self.model(task, batch)
        return task.losses(self.model, batch)

    def autocast(self) -> ContextManager:
        return torch.autocast(self.device_type, dtype=self.amp_dtype, enabled=self.amp_enabled)

    def micro_step(self, sync: bool) -> ContextManager:
        if not sync and hasattr(self.model, "no_sync"):
            return self.model.no_sync()
        return contextlib.nullcontext()

    def backward(self, loss: torch.Tensor, sync: bool = True) -> None:
        self._norm = None  # gradients change: the cached norm is stale
        self.scaler.scale(loss).backward()

    def _params(self):
        for group in self.optimizer.param_groups:
            yield from (p for p in group["params"] if p.grad is not None)

    def gradients(self) -> List[torch.Tensor]:
        return [p.grad for p in self._params()]

    def gradient_check(self) -> Optional[torch.Tensor]:
        if self.scaler.is_enabled():
            return None  # fp16: the GradScaler finds inf / NaN gradients and skips the update itself
        if self.grad_clip > 0:
            return self.grad_norm()  # clipping computes the norm anyway: the check shares it
        return super().gradient_check()

    def grad_norm(self) -> Optional[torch.Tensor]:
        """Computed once per step: the non-finite check and gradient clipping share it."""
        if self.scaler.is_enabled():
            return None  # fp16: the norm of the unscaled gradients is computed in step()
        if getattr(self, "_norm", None) is None:
            self._norm = super().grad_norm()
        return self._norm

    def step(self) -> Dict[str, torch.Tensor]:
        stats: Dict[str, torch.Tensor] = {}
        if self.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)
            params = list(self._params())
            norm = self.grad_norm()
            if norm is None:  # scaler on: the norm of the unscaled gradients
                norm = torch.nn.utils.get_total_norm([p.grad for p in params])
            torch.nn.utils.clip_grads_with_norm_(params, self.grad_clip, norm)
            stats["grad_norm"] = norm.detach()
        self.scaler.step(self.optimizer)
        if self.scaler.is_enabled():
            stats["loss_scale"] = self.scaler.get_scale()
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self._norm = None
        return stats

    def skip_step(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        self._norm = None

    def state_dict(self) -> Dict[str, Any]:
        return {"scaler": self.scaler.state_dict()} if self.scaler.is_enabled() else {}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        if "scaler" in state and self.scaler.is_enabled():
            self.scaler.load_state_dict(state["scaler"])
