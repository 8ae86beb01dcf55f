"""The analysis / plotting / visualisation tools on tiny inputs: tools/plot_metrics.py, tools/analyze_model.py,
tools/visualize_data.py write their files."""
import json
import subprocess
import sys

from conftest import CLS, REPO, clean_env, run_main


def test_tools_write_their_files(tmp_path):
    out = tmp_path / "run"
    run_main(["--config-file", CLS, "SOLVER.MAX_ITER", "4", "SOLVER.WRITE_PERIOD", "2", "OUTPUT_DIR", out])

    def tool(*args):
        proc = subprocess.run([sys.executable] + [str(a) for a in args], cwd=REPO, env=clean_env(),
                              capture_output=True, text=True, timeout=240)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc.stdout

    tool(REPO / "tools/plot_metrics.py", out)
    assert (out / "metrics.png").stat().st_size > 1000
    stdout = tool(REPO / "tools/analyze_model.py", "--config-file", CLS, "--out", tmp_path / "a.json",
                  "MODEL.PROMPT.ENABLED", "True", "MODEL.TRAINABLE", "['prompt']")
    report = json.loads((tmp_path / "a.json").read_text())
    assert report["trainable"] < report["total"] and report["params"]["encoder"]["trainable"] > 0
    task = report["tasks"]["imagenet"]
    # 17 tokens + 10 prompts through 2 blocks of 12 * 192^2 MACs each dominate: within 20% of that
    assert 0.8 * 27 * 2 * 12 * 192 ** 2 < task["flops"] < 1.2 * (27 * 2 * 12 * 192 ** 2 + 16 * 192 * 192 + 4e5)
    assert task["activation_bytes_per_sample"] > 0 and "trainable parameters" in stdout
    tool(REPO / "tools/visualize_data.py", "--config-file", CLS, "--task", "imagenet", "--num", "4",
         "--out", tmp_path / "vis.png")
    assert (tmp_path / "vis.png").stat().st_size > 1000
