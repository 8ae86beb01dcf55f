"""tools/zeroshot_benchmark.py runs end to end and prints one well-formed JSON line (no accuracy or timing
assertions: a handful of steps learns nothing), and its honesty checks refuse a seen prompt template and a
classification task in training."""
import json
import subprocess
import sys

import pytest

from conftest import PYTHON, REPO, clean_env

sys.path.insert(0, str(REPO / "tools"))

KEYS = {"zeroshot_Acc@1", "zeroshot_Acc@5", "zeroshot_digits", "zeroshot_Acc@1_val", "i2t_R@1", "t2i_R@1",
        "template", "seed", "ema", "steps", "train_seconds", "seconds_per_step", "wall_seconds", "threads", "load_avg_1m",
        "output_dir"}


@pytest.mark.slow
def test_runs_a_few_steps_and_prints_one_json_line(tmp_path):
    proc = subprocess.run([PYTHON, str(REPO / "tools" / "zeroshot_benchmark.py"), "--iters", "3", "--threads", "1",
                           "--output-dir", str(tmp_path / "zs")],
                          cwd=REPO, env=clean_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stdout
    result = json.loads(lines[0])
    assert set(result) == KEYS
    assert result["steps"] == 3 and result["seed"] == 0 and result["zeroshot_digits"] == 400 and result["threads"] == 1
    for key in ("zeroshot_Acc@1", "zeroshot_Acc@5", "zeroshot_Acc@1_val", "i2t_R@1", "t2i_R@1"):
        assert 0.0 <= result[key] <= 100.0
    assert result["train_seconds"] > 0 and result["wall_seconds"] >= result["train_seconds"]
    assert (tmp_path / "zs" / "eval" / "inference" / "digits_zeroshot" / "results.json").is_file()


def _cfgs(*train_opts):
    import zeroshot_benchmark as zb

    from uniperceiver.config import setup_cfg

    return zb, setup_cfg(zb.TRAIN_CONFIG, list(train_opts)), setup_cfg(zb.EVAL_CONFIG, [])


def test_honesty_checks():
    zb, train_cfg, eval_cfg = _cfgs()
    assert zb.check_honest(train_cfg, eval_cfg, ["an image showing the {}."]) == ["an image showing the"]
    # a template the training captions use ("a handwritten seven, white on black") is refused
    with pytest.raises(SystemExit, match="prompt phrase 'handwritten'"):
        zb.check_honest(train_cfg, eval_cfg, ["handwritten {}"])
    zb, train_cfg, eval_cfg = _cfgs("TASKS.mnist_retrieval.DATASETS.TASK_TYPE", "image_classification")
    with pytest.raises(SystemExit, match="classification task"):
        zb.check_honest(train_cfg, eval_cfg, ["an image showing the {}."])


def test_seeds_run_once_per_seed_and_print_the_medians(tmp_path, monkeypatch, capsys):
    """--seeds 0,1,2: one run per SEED into its own folder, then a summary line of per-seed figures and medians
    (the runs themselves are stubbed here: the slow test above runs the real thing)."""
    import zeroshot_benchmark as zb

    calls = []

    def fake_run_once(args, opts, out):
        seed = int(opts[opts.index("SEED") + 1])
        calls.append((opts, out))
        line = {k: 10.0 * seed + i for i, k in enumerate(zb.SUMMARY_KEYS)}
        print(json.dumps(line))
        return dict(line, steps=7)

    monkeypatch.setattr(zb, "run_once", fake_run_once)
    summary = zb.main(["--seeds", "2,0,1", "--output-dir", str(tmp_path), "SOLVER.BASE_LR", "0.002"])
    assert [c[1] for c in calls] == [str(tmp_path / f"seed{s}") for s in (2, 0, 1)]
    assert all(c[0][:2] == ["SOLVER.BASE_LR", "0.002"] for c in calls)
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.strip()]
    assert len(lines) == 4 and lines[-1] == summary
    assert summary["seeds"] == [2, 0, 1] and summary["steps"] == 7
    assert summary["zeroshot_Acc@1"] == [20.0, 0.0, 10.0] and summary["zeroshot_Acc@1_median"] == 10.0
    assert summary["i2t_R@1"] == [21.0, 1.0, 11.0] and summary["i2t_R@1_median"] == 11.0
    with pytest.raises(SystemExit, match="--seeds 'a,b'"):
        zb.main(["--seeds", "a,b", "--output-dir", str(tmp_path)])
