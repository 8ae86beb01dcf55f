#!/usr/bin/env python
"""Submit a training run through submitit: to Slurm (one task per GPU), or locally for trying it out.

    python tools/submit.py --config-file CFG --nodes 8 --gpus-per-node 8 --partition P [KEY VALUE ...]
    python tools/submit.py --cluster local --gpus-per-node 2 --no-gpus --config-file \\
        configs/quick_schedules/instant.yaml SOLVER.MAX_ITER 20

OUTPUT_DIR defaults to work_dirs/<CONFIG without configs/ and .yaml>/<--job-name> (as in run.sh); submitit's
logs go to OUTPUT_DIR/submitit/.  Each task runs main.py's entry point with its rank taken from submitit's job
environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT).

Preemption and time limits: Slurm sends SIGUSR2 ``--signal-delay`` seconds before the end; every rank's
preemption hook (uniperceiver/engine/preemption.py) finishes the step and writes a checkpoint, then rank 0
hands over to submitit's checkpointing protocol: :meth:`TrainJob.checkpoint` returns the same job with
``--resume``, submitit requeues it, and the requeued job continues from that checkpoint.  A signal that arrives
before training starts goes straight to the protocol (nothing to save yet).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from typing import List, Optional

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _pickle_by_value() -> None:
    """tools/ is not a package: when this file is imported as a module (tests), submitit must pickle TrainJob
    by value, as it does when the file runs as a script."""
    if __name__ != "__main__":
        import cloudpickle

        cloudpickle.register_pickle_by_value(sys.modules[__name__])


class TrainJob:
    """The submitted callable: ``main.py`` with ``argv``; submitit calls :meth:`checkpoint` on preemption."""

    def __init__(self, argv: List[str]) -> None:
        self.argv = list(argv)

    def __call__(self) -> int:
        import submitit

        if REPO not in sys.path:
            sys.path.insert(0, REPO)
        job_env = submitit.JobEnvironment()
        if job_env.num_tasks > 1:
            # RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT: main.py then runs in "launcher" mode.
            submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)
        import main as entry  # the repository's main.py
        from uniperceiver.engine.preemption import TrainingPreempted

        try:
            return entry.run(self.argv)
        except TrainingPreempted:
            # The checkpoint is on disk and the training hook restored submitit's signal handlers: replay the
            # preemption signal so that submitit runs checkpoint() and requeues (rank 0; other ranks just end).
            if job_env.global_rank == 0:
                os.kill(os.getpid(), job_env._usr_sig())
                time.sleep(60)  # the handler exits the process; never reached in practice
            return 0

    def checkpoint(self, *args, **kwargs):
        import submitit

        argv = self.argv if "--resume" in self.argv else ["--resume", *self.argv]
        return submitit.helpers.DelayedSubmission(TrainJob(argv))


def default_output_dir(config_file: str, job_name: str) -> str:
    name = config_file[len("configs/"):] if config_file.startswith("configs/") else config_file
    name = name[: -len(".yaml")] if name.endswith(".yaml") else name
    return os.path.join("work_dirs", name, job_name)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--config-file", required=True, metavar="FILE")
    p.add_argument("--nodes", type=int, default=1)
    p.add_argument("--gpus-per-node", type=int, default=8, help="tasks (one per GPU) per node")
    p.add_argument("--no-gpus", action="store_true", help="request no GPUs (CPU clusters, tests): gloo")
    p.add_argument("--cpus-per-task", type=int, default=5)
    p.add_argument("--partition", default=None, help="Slurm partition")
    p.add_argument("--timeout", type=int, default=4320, help="time limit in minutes (default 3 days)")
    p.add_argument("--signal-delay", type=int, default=120, help="seconds before the limit to signal the job")
    p.add_argument("--max-requeue-on-timeout", type=int, default=10, help="timeouts before giving up")
    p.add_argument("--job-name", default="uniperceiver")
    p.add_argument("--cluster", choices=["slurm", "local"], default="slurm")
    p.add_argument("--slurm-args", default="", help='extra sbatch options, e.g. "--qos=high --account=x"')
    p.add_argument("--resume", action="store_true", help="resume from OUTPUT_DIR/last_checkpoint if there is one")
    p.add_argument("--wait", action="store_true", help="wait for the job and exit with its status")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides, as for main.py")
    return p


def main_argv(args) -> List[str]:
    argv = ["--num-gpus", str(args.nodes * args.gpus_per_node), "--config-file", args.config_file]
    if args.resume:
        argv.append("--resume")
    return argv + list(args.opts)


def output_dir(args) -> str:
    """OUTPUT_DIR from the KEY VALUE pairs, else the default (appended to ``args.opts``)."""
    opts = list(args.opts)
    for i in range(0, len(opts) - 1, 2):
        if opts[i] == "OUTPUT_DIR":
            args.opts = opts
            return opts[i + 1]
    args.opts = opts + ["OUTPUT_DIR", default_output_dir(args.config_file, args.job_name)]
    return args.opts[-1]


def submit(args):
    import submitit

    _pickle_by_value()

    out = os.path.abspath(output_dir(args))
    executor = submitit.AutoExecutor(folder=os.path.join(out, "submitit", "%j"), cluster=args.cluster,
                                     slurm_max_num_timeout=args.max_requeue_on_timeout)
    params = dict(name=args.job_name, nodes=args.nodes, tasks_per_node=args.gpus_per_node,
                  cpus_per_task=args.cpus_per_task, timeout_min=args.timeout)
    if not args.no_gpus:
        params["gpus_per_node"] = args.gpus_per_node
    if args.cluster == "slurm":
        extra = {}
        for item in args.slurm_args.split():
            key, _, value = item.lstrip("-").partition("=")
            extra[key] = value or True
        params.update(slurm_partition=args.partition, slurm_signal_delay_s=args.signal_delay,
                      slurm_additional_parameters=extra)
    executor.update_parameters(**params)
    # The job runs in the submitting directory (sbatch's default); absolute paths make that irrelevant.
    args.config_file = os.path.abspath(args.config_file)
    args.opts[args.opts.index("OUTPUT_DIR") + 1] = out
    return executor.submit(TrainJob(main_argv(args)))


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    job = submit(args)
    print(f"submitted job {job.job_id} ({args.cluster}); logs: {job.paths.folder}")
    if args.wait:
        try:
            results = job.results()  # one per task
        except Exception as e:  # submitit raises with the job's traceback
            print(f"job {job.job_id} failed: {e}", file=sys.stderr)
            return 1
        return max(int(r or 0) for r in results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
