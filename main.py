"""Train or evaluate uniperceiver.

One process (CPU or one GPU):
    python main.py --config-file configs/quick_schedules/instant.yaml OUTPUT_DIR work_dirs/instant
N local processes, spawned:
    python main.py --num-gpus 2 --config-file CFG OUTPUT_DIR work_dirs/exp
torchrun / torch.distributed.launch (single or multi node):
    torchrun --nproc_per_node 8 main.py --config-file CFG OUTPUT_DIR work_dirs/exp
    python -m torch.distributed.launch --nproc_per_node=8 --master_port=26511 \
        main.py --num-gpus 8 --config-file CFG SOLVER.ACCUM_ITER 2 OUTPUT_DIR work_dirs/exp
Slurm (srun sets SLURM_PROCID / SLURM_NTASKS): sh run.sh CFG JOBNAME GPUS PARTITION
Resume from OUTPUT_DIR/last_checkpoint: add --resume.  Evaluate only: add --eval-only.
Overrides: KEY VALUE pairs after the flags, incl. one task's keys: TASKS.<NAME>.DATALOADER.TRAIN_BATCH_SIZE 32.
Exit codes (docs/reliability.md): 0 finished, or SIGTERM / SIGUSR1 / SIGUSR2 after a checkpoint; 130 SIGINT after
a checkpoint; 2 anything found before the first step (config, data, checkpoint, OUTPUT_DIR unusable or locked);
1 a failure during the run.  Each failure is one line "error: ..." on stderr, its traceback in OUTPUT_DIR/log.txt.
"""
import errno
import logging
import os
import sys

from uniperceiver.checkpoint import CheckpointWriteError
from uniperceiver.config import ConfigError, setup_cfg
from uniperceiver.config.validate import validate_cfg
from uniperceiver.data.datasets import TooManyBadSamples
from uniperceiver.engine import NonFiniteLossError, default_argument_parser, default_setup, launch, train
from uniperceiver.engine.defaults import lock_output_dir, run_is_finished
from uniperceiver.engine.preemption import INTERRUPT_EXIT_CODE, watch_setup_interrupts
from uniperceiver.tasks import validate_tasks
from uniperceiver.utils.paths import demo_data_root


def setup(args):
    """The frozen config, with OUTPUT_DIR locked for this job (rank 0; --eval-only too, as it writes config.yaml,
    log.txt and results there), and the lock; config None when ``--resume`` finds a finished run (nothing is
    written then)."""
    cfg = setup_cfg(args.config_file, args.opts)
    lock = lock_output_dir(cfg)  # before anything is written into OUTPUT_DIR
    if args.resume and not args.eval_only and run_is_finished(cfg):
        print(f"{cfg.OUTPUT_DIR}: training already reached SOLVER.MAX_ITER {cfg.SOLVER.MAX_ITER} and its final "
              f"evaluation is written; nothing to do")
        return None, lock
    default_setup(cfg, args)
    log = logging.getLogger("uniperceiver")
    if cfg.published_report() is not None:
        log.info("%s", cfg.published_report().summary())
    if not cfg.DATA_PATH and not os.environ.get("DATA_PATH"):
        log.info("DATA_PATH is not set: using the built-in demo data in %s (generated on first use)",
                 demo_data_root(cfg))
    return cfg, lock


def main(args):
    """The job of one process (every worker runs it).  An expected failure becomes one line on stderr and an
    exit code here, in the worker, so that spawned workers report it as cleanly as a single process."""
    lock = None
    watch_setup_interrupts()
    try:
        cfg, lock = setup(args)
        if cfg is None:
            return 0
        if args.eval_only:
            from uniperceiver.engine.evaluate import run_eval_only

            return run_eval_only(cfg, args)
        from uniperceiver.engine.eval_hook import build_eval_hook  # None when SOLVER.EVAL_PERIOD is 0

        return train(cfg, resume=args.resume, eval_hook_factory=build_eval_hook)
    except KeyboardInterrupt:  # outside the training loop (whose SIGINT handler checkpoints and exits 130)
        _traceback_to_log("interrupted by SIGINT")
        print("error: interrupted by SIGINT outside the training steps (set-up or evaluation); checkpoints "
              "already written are intact, continue with --resume", file=sys.stderr)
        return INTERRUPT_EXIT_CODE
    except Exception as e:
        code = _report_failure(e, args.debug)
        if code is None:
            raise
        return code
    finally:
        if lock is not None:
            lock.release()


def run(argv=None) -> int:
    parser = default_argument_parser(__doc__)
    parser.add_argument("--deepspeed", metavar="JSON", default="",
                        help="train with DeepSpeed: SOLVER.DEEPSPEED.ENABLED True SOLVER.DEEPSPEED.CONFIG JSON")
    args = parser.parse_args(argv)
    if args.deepspeed:  # before the user's KEY VALUE pairs, which may still override
        args.opts = ["SOLVER.DEEPSPEED.ENABLED", "True", "SOLVER.DEEPSPEED.CONFIG", args.deepspeed, *args.opts]
    try:
        cfg = setup_cfg(args.config_file, args.opts)
        validate_cfg(cfg)  # fail fast, before any process is spawned
        validate_tasks(cfg)
    except Exception as e:
        code = _report_failure(e, args.debug)
        if code is None:
            raise
        return code
    result = launch(main, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
                    dist_url=args.dist_url, args=(args,), local_rank_arg=args.local_rank)
    return result if isinstance(result, int) else 0


def _report_failure(err: Exception, debug: bool):
    """Exit code of an expected failure, after its one line on stderr (the traceback goes to log.txt):
    2 for a user error (config, command line, checkpoint mismatch, OUTPUT_DIR unusable or locked), 1 for a
    training fault (non-finite loss, too many bad samples, a checkpoint or metrics write that failed: disk
    full).  None for anything else, and with ``--debug``: the caller re-raises."""
    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT) and not debug:
        _traceback_to_log("write failed")
        where = f" writing {err.filename}" if err.filename else ""
        print(f"error: {err.strerror}{where}; checkpoints already written are intact: free space, then continue "
              f"with --resume", file=sys.stderr)
        return 1
    if debug or not isinstance(err, (ConfigError, NonFiniteLossError, TooManyBadSamples, CheckpointWriteError)):
        return None
    user_error = isinstance(err, ConfigError)
    _traceback_to_log("user error" if user_error else "training stopped")
    print(f"error: {err if user_error else _fault_message(err)}", file=sys.stderr)
    return 2 if user_error else 1


def _traceback_to_log(what: str) -> None:
    """The exception being handled, with its traceback, into log.txt only (the console gets one line)."""
    lg = logging.getLogger("uniperceiver")
    record = lg.makeRecord(lg.name, logging.ERROR, __file__, 0, what, (), sys.exc_info())
    for handler in lg.handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


def _fault_message(err: Exception) -> str:
    """The error's own one-line message (a DataLoader worker re-raises with its traceback in the message: the
    original message is that traceback's last line)."""
    lines = [line for line in str(err).strip().splitlines() if line.strip()]
    if len(lines) > 1 and lines[-1].split(":", 1)[0].endswith(type(err).__name__):
        return lines[-1].split(":", 1)[1].strip()
    return " ".join(lines) or type(err).__name__


if __name__ == "__main__":
    sys.exit(run())
