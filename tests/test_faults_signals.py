"""Fault injection, signals (real processes, real signals): exact resume after SIGKILL / SIGTERM, SIGINT
(checkpoint, exit 130, a second Ctrl-C exits at once), a run killed before its final evaluation.

tests/test_preemption.py covers SIGUSR1 -> checkpoint, exit 0, exact resume.
"""
from __future__ import annotations

import os
import signal

import pytest
import torch

from conftest import QUICK, checkpoint_weights, metric_rows, run_main, start_main, tagged_iteration, wait_for


# Two task families on the demo data with every source of randomness switched on: RandAugment + random crops in a
# data-loader worker, mixup in the main process, MLM masking / random windows in a worker, vocabulary negative
# sampling, DropPath.
MULTITASK = f"""_BASE_: [{QUICK / 'instant_classification.yaml'}, {QUICK / 'instant_mlm.yaml'}]
TASKS:
  - NAME: imagenet
    DATALOADER: {{TRAIN_BATCH_SIZE: 4, NUM_WORKERS: 1, MIXUP: 0.8, RAND_AUGMENT: rand-m9-mstd0.5-inc1}}
  - NAME: bookswiki_mlm
    DATALOADER: {{TRAIN_BATCH_SIZE: 4, NUM_WORKERS: 1}}
    MODEL: {{VOCAB_NEGATIVES: 64}}
MODEL:
  BERT: {{DROP_PATH_PROB: 0.1}}
SOLVER:
  MAX_ITER: 40
  CHECKPOINT_PERIOD: 5
  WRITE_PERIOD: 1
"""
MULTITASK_ITERS = 40


# ------------------------------------------------------------------------------------------- exact resume
@pytest.mark.slow
def test_sigkill_then_sigterm_then_resume_is_bitwise_exact(tmp_path):
    """Uninterrupted run vs. the same run SIGKILLed right after its first checkpoint, resumed, stopped
    gracefully by SIGTERM (exit 0 after a checkpoint), resumed again: bitwise equal final weights and equal
    metrics.json rows after the first resume point; 2 tasks, NUM_WORKERS 1."""
    cfg = tmp_path / "multitask.yaml"
    cfg.write_text(MULTITASK)
    ref, cut = tmp_path / "ref", tmp_path / "cut"
    run_main(["--config-file", cfg, "OUTPUT_DIR", ref], timeout=400)

    proc = start_main(["--config-file", cfg], cut)
    wait_for(lambda: (cut / "last_checkpoint").exists(), proc, "the first checkpoint")
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=60)
    first = tagged_iteration(cut)
    assert first == 4 and not (cut / "model_final.pth").exists()

    proc = start_main(["--config-file", cfg, "--resume"], cut)
    wait_for(lambda: max(metric_rows(cut)) >= first + 8 if (cut / "metrics.json").exists() else False, proc,
              "8 more steps")
    proc.send_signal(signal.SIGTERM)
    log, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, log[-3000:]
    assert "Preempted by SIGTERM" in log
    stopped = tagged_iteration(cut)
    assert first + 8 <= stopped < MULTITASK_ITERS - 1 and not (cut / "model_final.pth").exists()

    run_main(["--config-file", cfg, "--resume", "OUTPUT_DIR", cut], timeout=400)
    log = (cut / "log.txt").read_text()
    assert f"Starting training from iteration {first + 1} to {MULTITASK_ITERS}" in log
    assert f"Starting training from iteration {stopped + 1} to {MULTITASK_ITERS}" in log
    a, b = checkpoint_weights(ref / "model_final.pth"), checkpoint_weights(cut / "model_final.pth")
    assert a.keys() == b.keys()
    differing = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differing, f"{len(differing)} tensors differ, e.g. {differing[:3]}"
    ra, rb = metric_rows(ref), metric_rows(cut)
    tail = [i for i in sorted(ra) if i > first]
    assert len(tail) == MULTITASK_ITERS - first - 1
    assert [ra[i] for i in tail] == [rb[i] for i in tail]
    assert {"loss_imagenet", "loss_bookswiki_mlm"} <= {k for i in tail for k in ra[i]}
