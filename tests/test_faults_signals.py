"""Fault injection, signals (real processes, real signals): exact resume after SIGKILL / SIGTERM, SIGINT
(checkpoint, exit 130, a second Ctrl-C exits at once), a run killed before its final evaluation.

tests/test_preemption.py covers SIGUSR1 -> checkpoint, exit 0, exact resume.
"""
from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
import torch

from conftest import (CLS, ENGINE_SMOKE, QUICK, checkpoint_weights, metric_rows, restored_loggers, run_main,
                      start_main, tagged_iteration, wait_for)


# Two task types on the demo data with every source of randomness switched on: RandAugment + random crops in a
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


# ----------------------------------------------------------------------------------------------- SIGINT
LONG = ["SOLVER.MAX_ITER", "400", "SOLVER.WRITE_PERIOD", "1", "SOLVER.CHECKPOINT_PERIOD", "1000",
        "DATALOADER.NUM_WORKERS", "1"]


def _rows(out: Path) -> int:
    path = out / "metrics.json"
    return len(path.read_text().splitlines()) if path.exists() else 0


def test_ctrl_c_checkpoints_exits_130_and_resume_continues(tmp_path):
    """SIGINT to the whole process group, as a terminal's Ctrl-C (the data-loader worker gets it too): the step
    ends, a checkpoint is written, exit 130 without a traceback; --resume continues from that checkpoint."""
    out = tmp_path / "out"
    proc = start_main(["--config-file", ENGINE_SMOKE, *LONG], out)
    wait_for(lambda: _rows(out) >= 3, proc, "3 steps")
    os.killpg(proc.pid, signal.SIGINT)
    log, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, log[-3000:]
    assert "Traceback" not in log and "Interrupted by SIGINT at iteration" in log
    it = tagged_iteration(out)
    assert 2 <= it < 399 and (out / f"model_{it:07d}.pth").exists() and not (out / "model_final.pth").exists()
    run_main(["--config-file", ENGINE_SMOKE, "--resume", *LONG, "SOLVER.MAX_ITER", str(it + 4), "OUTPUT_DIR", out])
    log = (out / "log.txt").read_text()
    assert f"Resuming from {out / f'model_{it:07d}.pth'}" in log
    assert f"Starting training from iteration {it + 1} to {it + 4}" in log and (out / "model_final.pth").exists()
    rows = [json.loads(line)["iteration"] for line in (out / "metrics.json").read_text().splitlines()]
    assert rows == sorted(set(rows)) and rows[-1] == it + 3  # every step once, none written twice


def test_second_ctrl_c_exits_at_once(monkeypatch, capfd):
    """Real SIGINTs to this process with the training hook installed: the first sets the stop flag (the step
    goes on), the second exits at once with 130, also while the process is ending after the first."""
    from uniperceiver.engine import preemption

    class Exited(Exception):
        pass

    def fake_exit(code):
        raise Exited(code)

    monkeypatch.setattr(preemption.os, "_exit", fake_exit)
    hook = preemption.PreemptionHandler(checkpointer=None)
    previous = signal.getsignal(signal.SIGINT)
    hook.before_train()
    try:
        os.kill(os.getpid(), signal.SIGINT)
        for _ in range(100):  # the python-level handler runs between bytecodes
            if hook.received is not None:
                break
        assert hook.received == signal.SIGINT
        with pytest.raises(Exited) as exited:
            os.kill(os.getpid(), signal.SIGINT)
            for _ in range(100):
                pass
        assert exited.value.args == (130,)
        hook.after_train()  # stopping after the first: SIGINT stays "exit at once" until the process ends
        with pytest.raises(Exited):
            os.kill(os.getpid(), signal.SIGINT)
            for _ in range(100):
                pass
    finally:
        hook.after_train()
        signal.signal(signal.SIGINT, previous)
    err = capfd.readouterr().err
    assert "received SIGINT: stopping after this step with a checkpoint; Ctrl-C again to exit at once" in err
    assert "received SIGINT again: exiting now without a checkpoint" in err


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_ctrl_c_swallowed_by_a_finalizer_during_set_up_is_honoured_by_the_loop(capfd):
    """Python drops a KeyboardInterrupt raised inside ``__del__`` ("Exception ignored in ..."): a Ctrl-C landing
    there during set-up would be lost.  main.py counts set-up Ctrl-Cs (watch_setup_interrupts), and the training
    loop's handler takes a counted one as received: the first step ends with a checkpoint and exit 130."""
    from uniperceiver.engine import preemption

    class Finalized:
        def __del__(self):
            os.kill(os.getpid(), signal.SIGINT)
            for _ in range(1000):  # the python-level handler runs here, inside the finalizer
                pass

    previous = signal.getsignal(signal.SIGINT)
    hook = preemption.PreemptionHandler(checkpointer=None, signals=())
    try:
        preemption.watch_setup_interrupts()
        obj = Finalized()
        del obj  # the handler ran inside __del__; its KeyboardInterrupt went to sys.unraisablehook, not here
        assert preemption._setup_interrupts == 1
        hook.before_train()
        assert hook.received == signal.SIGINT and preemption._setup_interrupts == 0
    finally:
        signal.signal(signal.SIGINT, previous)
    assert "received SIGINT: stopping after this step with a checkpoint" in capfd.readouterr().err


def test_ctrl_c_before_training_is_one_line_exit_130(tmp_path):
    """During set-up (after config.yaml: model, demo data, loaders) Ctrl-C is one line and 130."""
    out = tmp_path / "out"
    proc = start_main(["--config-file", CLS, *LONG], out)
    wait_for(lambda: (out / "config.yaml").exists(), proc, "the set-up")
    os.killpg(proc.pid, signal.SIGINT)
    log, _ = proc.communicate(timeout=120)
    if "Interrupted by SIGINT at iteration" in log:
        pytest.skip("the signal arrived after the first step (a fast machine): covered by the test above")
    assert proc.returncode == 130, log[-3000:]
    assert "error: interrupted by SIGINT" in log and "Traceback" not in log


# ------------------------------------------------------------------------------- final evaluation on resume
def test_run_stopped_before_its_final_evaluation_evaluates_on_resume(tmp_path, monkeypatch, capsys):
    """A run is finished when its final evaluation is written: stopped after its last step (model_final.pth
    written) but during the final evaluation, --resume evaluates instead of saying "nothing to do"; then a
    further --resume has nothing to do."""
    import main
    from uniperceiver.engine import eval_hook

    out = tmp_path / "out"
    args = ["--config-file", CLS, "SOLVER.MAX_ITER", "3", "SOLVER.EVAL_PERIOD", "3", "SOLVER.CHECKPOINT_PERIOD", "3",
            "LR_SCHEDULER.WARMUP", "0", "OUTPUT_DIR", str(out)]
    real = eval_hook.EvalHook.evaluate

    def killed_in_final(self, final=False):
        if final:
            raise SystemExit(137)  # what a SIGKILL during the final evaluation leaves behind
        return real(self, final)

    monkeypatch.setattr(eval_hook.EvalHook, "evaluate", killed_in_final)
    with restored_loggers(), pytest.raises(SystemExit):
        main.run(args)
    assert (out / "model_final.pth").exists() and not (out / eval_hook.FINAL_RECORD).exists()
    monkeypatch.setattr(eval_hook.EvalHook, "evaluate", real)
    with restored_loggers():
        assert main.run(["--resume", *args]) == 0
    record = json.loads((out / eval_hook.FINAL_RECORD).read_text())
    assert record["max_iter"] == 3 and 0 <= record["results"]["imagenet"]["Acc@1"] <= 100
    assert "its final evaluation was not written: evaluating now" in (out / "log.txt").read_text()
    rows = [json.loads(line) for line in (out / "metrics.json").read_text().splitlines()]
    assert rows[-1]["iteration"] == 2 and "imagenet/Acc@1" in rows[-1]
    capsys.readouterr()
    with restored_loggers():
        assert main.run(["--resume", *args]) == 0
    assert "nothing to do" in capsys.readouterr().out
