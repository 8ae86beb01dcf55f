"""Preemption: on SIGUSR1 / SIGTERM finish the current step, write a checkpoint, requeue the Slurm job, exit 0.
Interruption: on SIGINT (Ctrl-C) finish the current step, write a checkpoint, exit 130, never requeue; a second
SIGINT while the first is handled exits at once (130, nothing more written).

Slurm sends SIGTERM before a preemption or at the time limit (``KillWait`` seconds before SIGKILL), and SIGUSR1
when asked to (``sbatch --signal=USR1@120``, ``SRUN_ARGS="--signal=USR1@120" sh run.sh ...``,
``scancel --signal=USR1 JOBID``).  Every rank installs the handler; a signal only sets a flag.  After each step
the flag is reduced over ranks (MAX), so all ranks stop at the same iteration even when only one was signalled,
then they write ``model_<iter>.pth`` together (the normal, collective checkpoint with data-loader and RNG
state, so ``--resume`` continues exactly), rank 0 runs ``scontrol requeue $SLURM_JOB_ID`` when under a Slurm
batch job, and the processes exit with status 0 (:class:`TrainingPreempted` is a ``SystemExit(0)``).
Under submitit (``SUBMITIT_EXECUTOR`` set) the hook does not requeue: ``tools/submit.py`` catches
:class:`TrainingPreempted` and hands over to submitit's checkpoint protocol, which requeues.

Exit codes: 0 after SIGTERM / SIGUSR1 / SIGUSR2 (:class:`TrainingPreempted`), 130 after SIGINT
(:class:`TrainingInterrupted`).  A signal during the last step: SIGTERM lets the run finish normally; SIGINT
exits 130 after the final checkpoint and before the final evaluation, which ``--resume`` then runs.

Launchers: each training process must receive the signal.  That is the case for ``srun`` (run.sh: one task per
GPU, Slurm signals all tasks), for a signal sent to the whole process group, and for ``main.py --num-gpus N``,
whose spawning parent forwards the signals to its workers (:func:`join_forwarding_signals`); a ``torchrun``
agent does not forward SIGUSR1.
"""
from __future__ import annotations

import logging
import os
import signal
import subprocess
from typing import Any, Dict, Optional, Sequence

from uniperceiver.utils import comm

from .train_loop import HookBase

logger = logging.getLogger(__name__)

# SIGUSR2 is submitit's preemption / timeout signal (tools/submit.py).
DEFAULT_SIGNALS = (signal.SIGUSR1, signal.SIGUSR2, signal.SIGTERM)
INTERRUPT_EXIT_CODE = 130  # 128 + SIGINT, what a shell reports for a Ctrl-C'd program


# Ctrl-Cs seen by watch_setup_interrupts' handler before the training loop installs its own.
_setup_interrupts = 0


def watch_setup_interrupts() -> None:
    """From now until :class:`PreemptionHandler` takes over: SIGINT raises ``KeyboardInterrupt`` as Python's
    default handler does, and is counted.  Python drops an exception raised inside a finalizer (``__del__``, a
    weakref or GC callback: "Exception ignored in ..."), so a Ctrl-C landing there during set-up would be lost;
    the count lets the training loop honour it after its first step (checkpoint, exit 130)."""
    def on_sigint(signum, frame) -> None:
        global _setup_interrupts
        _setup_interrupts += 1
        raise KeyboardInterrupt

    try:
        signal.signal(signal.SIGINT, on_sigint)
    except ValueError:  # not the main thread: Python's own handler stays
        pass


class TrainingPreempted(SystemExit):
    """Raised (with exit status 0) after the preemption checkpoint is written."""

    def __init__(self, iteration: int, checkpoint: Optional[str]) -> None:
        super().__init__(0)
        self.iteration = iteration
        self.checkpoint = checkpoint


class TrainingInterrupted(SystemExit):
    """Raised (with exit status 130) after the checkpoint of a SIGINT is written.  Not a TrainingPreempted: it
    is never requeued (tools/submit.py hands only preemptions to submitit)."""

    def __init__(self, iteration: int, checkpoint: Optional[str]) -> None:
        super().__init__(INTERRUPT_EXIT_CODE)
        self.iteration = iteration
        self.checkpoint = checkpoint


def requeue_slurm_job(env: Optional[Dict[str, str]] = None) -> bool:
    """``scontrol requeue $SLURM_JOB_ID`` for a batch job (interactive srun allocations cannot be requeued).
    Returns whether Slurm accepted it."""
    env = dict(os.environ) if env is None else env
    job = env.get("SLURM_JOB_ID")  # for an array task, its own job id
    if not job:
        return False
    try:
        out = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as e:
        logger.warning("scontrol requeue %s failed: %s", job, e)
        return False
    if out.returncode != 0:
        logger.warning("scontrol requeue %s failed: %s", job, (out.stderr or out.stdout).strip())
        return False
    logger.info("Requeued Slurm job %s", job)
    return True


class PreemptionHandler(HookBase):
    """See the module docstring.  ``checkpointer`` is the run's Checkpointer; ``requeue`` (default: not under
    submitit) runs ``scontrol requeue`` from rank 0 under a Slurm job; ``interrupt`` handles SIGINT too."""

    def __init__(self, checkpointer, signals: Sequence[int] = DEFAULT_SIGNALS, requeue: Optional[bool] = None,
                 file_prefix: str = "model", interrupt: bool = True) -> None:
        self.checkpointer = checkpointer
        self.signals = tuple(signals) + ((signal.SIGINT,) if interrupt and signal.SIGINT not in signals else ())
        self.requeue = "SUBMITIT_EXECUTOR" not in os.environ if requeue is None else requeue
        self.file_prefix = file_prefix
        self.received: Optional[int] = None
        self._previous: Dict[int, Any] = {}

    def _on_signal(self, signum, frame) -> None:
        # logging from a signal handler can deadlock on the handler's lock: write directly
        if self.received is None:
            self.received = signum
            more = "; Ctrl-C again to exit at once" if signum == signal.SIGINT else ""
            os.write(2, f"[rank {comm.get_rank()}] received {signal.Signals(signum).name}: stopping after this "
                        f"step with a checkpoint{more}\n".encode())
        elif signum == signal.SIGINT:  # a second Ctrl-C: the user does not want to wait for the checkpoint
            os.write(2, f"[rank {comm.get_rank()}] received SIGINT again: exiting now without a checkpoint "
                        f"(the previous checkpoint is intact)\n".encode())
            os._exit(INTERRUPT_EXIT_CODE)

    def before_train(self) -> None:
        global _setup_interrupts
        for sig in self.signals:
            try:
                self._previous[sig] = signal.signal(sig, self._on_signal)
            except ValueError:  # not the main thread: signals cannot be handled here
                logger.warning("Preemption handler not installed (not in the main thread)")
                self._previous.clear()
                return
        if signal.SIGINT in self.signals and _setup_interrupts:  # a Ctrl-C during set-up that a finalizer swallowed
            _setup_interrupts = 0
            self._on_signal(signal.SIGINT, None)

    def after_train(self) -> None:
        for sig, handler in self._previous.items():
            if sig == signal.SIGINT and self.received == signal.SIGINT:
                continue  # stopping on a Ctrl-C: another one while the process ends still exits at once
            signal.signal(sig, handler)
        self._previous.clear()

    def _received_on_any_rank(self) -> int:
        """0: no signal on any rank; 1: a preemption signal; 2: SIGINT (wins: no requeue) — one reduction."""
        mine = 0 if self.received is None else (2 if self.received == signal.SIGINT else 1)
        return int(comm.reduce_int(mine, "max"))

    def after_step(self) -> None:
        got = self._received_on_any_rank()
        if not got:
            return
        interrupted = got == 2
        it = self.trainer.iter
        if it >= self.trainer.max_iter - 1:
            if not interrupted:
                return  # the last step: the final checkpoint is written anyway and the run ends normally
            path = None  # PeriodicCheckpointer (before this hook) has just written model_final
        else:
            path = self.checkpointer.save(f"{self.file_prefix}_{it:07d}", iteration=it)
        comm.synchronize()
        name = signal.Signals(self.received).name if self.received else "a signal on another rank"
        if interrupted:
            logger.info("Interrupted by %s at iteration %d; checkpoint %s; exit code %d (continue with --resume)",
                        name, it, path or "written", INTERRUPT_EXIT_CODE)
            raise TrainingInterrupted(it, path)
        logger.info("Preempted by %s at iteration %d; checkpoint %s", name, it, path or "(written by rank 0)")
        if self.requeue and comm.is_main_process():
            requeue_slurm_job()
        raise TrainingPreempted(it, path)


def join_forwarding_signals(context, signals: Sequence[int] = DEFAULT_SIGNALS) -> None:
    """Wait for the workers of a ``torch.multiprocessing`` context (``start_processes(..., join=False)``) while
    forwarding preemption signals to them: the spawning parent does not train, its workers checkpoint and exit 0.
    Raises what ``context.join()`` raises when a worker fails."""
    def forward(signum, frame) -> None:
        for proc in context.processes:
            if proc.is_alive():
                try:
                    os.kill(proc.pid, signum)
                except ProcessLookupError:
                    pass

    def forward_interrupt(signum, frame) -> None:
        # A Ctrl-C in the terminal reaches the whole foreground process group, the workers included: forward
        # only a SIGINT sent to this process alone (a forwarded copy would count as the worker's second Ctrl-C).
        if not _foreground_group():
            forward(signum, frame)

    previous = {sig: signal.signal(sig, forward) for sig in signals}
    if signal.SIGINT not in previous:
        previous[signal.SIGINT] = signal.signal(signal.SIGINT, forward_interrupt)
    try:
        while not context.join():
            pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _foreground_group() -> bool:
    """Whether this process's group is the foreground group of its controlling terminal (a Ctrl-C there goes to
    every process of the group)."""
    try:
        with open("/dev/tty", "rb") as tty:
            return os.tcgetpgrp(tty.fileno()) == os.getpgrp()
    except OSError:
        return False
