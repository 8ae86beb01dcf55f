"""Observability and weight formats (docs/observability.md): LOGGER.WRITERS with Weights & Biases (offline),
the PROFILER hook, samples_per_s_<task> / max_rss_mb / max_mem_mb, and safetensors weights."""
import json
import os
from pathlib import Path

import pytest
import torch

from conftest import ENGINE_SMOKE, REPO, load_tool, run_main
from uniperceiver.checkpoint import Checkpointer, CheckpointError, load_checkpoint_file
from uniperceiver.checkpoint.safetensors_io import ALIASES_KEY, load_safetensors, read_metadata, save_safetensors
from uniperceiver.config import ConfigError, setup_cfg
from uniperceiver.utils.events import EventStorage, JSONWriter, TensorboardWriter

INSTANT_CLS = str(REPO / "configs" / "quick_schedules" / "instant_classification.yaml")
INSTANT_MOE = str(REPO / "configs" / "quick_schedules" / "instant_moe.yaml")


def _jsonl(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


# ------------------------------------------------------------------------------------------------ W&B
def read_wandb_records(path):
    """The protobuf records of an offline run's ``run-<id>.wandb`` (LevelDB log format: 32 KiB blocks of
    [crc32, length, type] chunks after a 7-byte ':W&B' header)."""
    from wandb.proto import wandb_internal_pb2

    data = Path(path).read_bytes()
    assert data[:4] == b":W&B"
    pos, buf, records, block = 7, b"", [], 32768
    while pos + 7 <= len(data):
        left = block - pos % block
        length, kind = int.from_bytes(data[pos + 4:pos + 6], "little"), data[pos + 6]
        if left < 7 or kind == 0:  # block trailer / padding
            pos += left
            continue
        buf += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL or LAST chunk
            record = wandb_internal_pb2.Record()
            record.ParseFromString(buf)
            records.append(record)
            buf = b""
    return records


def wandb_run(run_dir):
    """(run record, {step: {key: value}}) of one offline run directory."""
    run, history = None, {}
    for r in read_wandb_records(next(Path(run_dir).glob("run-*.wandb"))):
        kind = r.WhichOneof("record_type")
        if kind == "run":
            run = r.run
        elif kind == "history":
            items = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item}
            history[r.history.step.num] = {k: v for k, v in items.items() if not k.startswith("_")}
    return run, history


@pytest.mark.slow
def test_wandb_offline_run_continues_on_resume(tmp_path):
    """LOGGER.WRITERS with wandb (offline): files under OUTPUT_DIR/wandb, the full config, name and tags with
    the run; training scalars at their iterations; --resume continues the run with the id kept in the checkpoint."""
    pytest.importorskip("wandb")
    out = tmp_path / "out"
    opts = ["--config-file", ENGINE_SMOKE, "OUTPUT_DIR", out, "SOLVER.WRITE_PERIOD", "2",
            "LOGGER.WRITERS", '["json", "wandb"]', "LOGGER.WANDB.NAME", "smoke", "LOGGER.WANDB.TAGS", '["a", "b"]']
    env = {"WANDB_MODE": "offline", "WANDB_DIR": "", "WANDB_SILENT": "true"}
    run_main(opts + ["SOLVER.MAX_ITER", "6"], env=env)
    run_main(["--resume"] + opts + ["SOLVER.MAX_ITER", "10"], env=env)
    runs = sorted((out / "wandb").glob("offline-run-*"))
    assert len(runs) == 2
    (first, h1), (second, h2) = wandb_run(runs[0]), wandb_run(runs[1])
    assert first.run_id == second.run_id and runs[0].name.endswith(first.run_id)
    assert first.display_name == "smoke" and list(first.tags) == ["a", "b"] and first.project == "uniperceiver"
    config = {u.key: json.loads(u.value_json) for u in first.config.update}
    assert config["SOLVER"]["MAX_ITER"] == 6 and config["LOGGER"]["WRITERS"] == ["json", "wandb"]
    assert config["TASKS"][0]["NAME"] == "synthetic"
    assert sorted(h1) == [1, 3, 5] and sorted(h2) == [7, 9]
    metrics = {row["iteration"]: row for row in _jsonl(out / "metrics.json")}
    for step, values in {**h1, **h2}.items():
        assert {"lr", "total_loss", "samples_per_s_synthetic", "max_rss_mb"} <= set(values)
        assert values["lr"] == pytest.approx(metrics[step]["lr"], rel=1e-12)
    assert "(resumed)" in (out / "log.txt").read_text()
    assert not list(out.glob("events.out.tfevents*"))  # tensorboard was not asked for


@pytest.mark.distributed
@pytest.mark.slow
def test_two_processes_one_wandb_run(tmp_path):
    """--num-gpus 2 (gloo): one W&B run, written by rank 0; the throughput hook's gather runs on both ranks."""
    pytest.importorskip("wandb")
    out = tmp_path / "out"
    run_main(["--config-file", ENGINE_SMOKE, "--num-gpus", "2", "OUTPUT_DIR", out, "SOLVER.MAX_ITER", "4",
              "SOLVER.WRITE_PERIOD", "2", "LOGGER.WRITERS", '["json", "wandb"]'],
             env={"WANDB_MODE": "offline", "WANDB_SILENT": "true"}, timeout=400)
    (run_dir,) = (out / "wandb").glob("offline-run-*")
    _, history = wandb_run(run_dir)
    assert sorted(history) == [1, 3] and all("samples_per_s_synthetic" in v for v in history.values())
    rows = [r for r in _jsonl(out / "metrics.json") if "samples_per_s_synthetic" in r]
    assert len(rows) == 2 and "max_rss_mb" in rows[0]


def test_eval_metrics_and_lr_reach_every_writer(tmp_path, monkeypatch):
    """Whatever is put into the storage (an evaluation's "<task>/<metric>", the LR) goes to metrics.json,
    TensorBoard and W&B; W&B files go under $WANDB_DIR/wandb when it is set."""
    pytest.importorskip("wandb")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from uniperceiver.utils.events import WandbWriter

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb_dir"))
    writers = [JSONWriter(str(tmp_path / "metrics.json")), TensorboardWriter(str(tmp_path / "tb")),
               WandbWriter(project="p", config={"A": {"B": 1}}, directory=str(tmp_path / "unused"))]
    with EventStorage(0) as storage:
        for w in writers:
            w.start()
        for it in range(3):
            storage.iter = it
            storage.put_scalar("lr", 0.1 * (it + 1), smoothing_hint=False)
            if it == 2:
                storage.put_scalars(smoothing_hint=False, **{"imagenet/Acc@1": 42.5})
            for w in writers:
                w.write()
        for w in writers:
            w.close()
    rows = _jsonl(tmp_path / "metrics.json")
    assert rows[-1] == {"iteration": 2, "lr": pytest.approx(0.3), "imagenet/Acc@1": 42.5}
    tb = EventAccumulator(str(tmp_path / "tb"))
    tb.Reload()
    assert [(e.step, round(e.value, 4)) for e in tb.Scalars("imagenet/Acc@1")] == [(2, 42.5)]
    assert [e.step for e in tb.Scalars("lr")] == [0, 1, 2]
    assert not (tmp_path / "unused").exists()
    (run_dir,) = (tmp_path / "wandb_dir" / "wandb").glob("offline-run-*")
    run, history = wandb_run(run_dir)
    assert history[2] == {"lr": pytest.approx(0.3), "imagenet/Acc@1": 42.5}
    assert sorted(history) == [0, 1, 2]
    assert json.loads({u.key: u.value_json for u in run.config.update}["A"]) == {"B": 1}


def test_wandb_without_the_package_is_one_line_exit_2(tmp_path):
    hidden = tmp_path / "hide"
    hidden.mkdir()
    (hidden / "wandb.py").write_text("raise ImportError(\"No module named 'wandb'\")\n")
    proc = run_main(["--config-file", ENGINE_SMOKE, "OUTPUT_DIR", tmp_path / "out", "LOGGER.WRITERS", '["wandb"]'],
                    env={"PYTHONPATH": f"{hidden}{os.pathsep}{REPO}"}, check=False)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines()[-1] == (
        "error: LOGGER.WRITERS asks for 'wandb' but the wandb package is not installed: pip install wandb "
        "(or pip install -e '.[wandb]')")
    assert not (tmp_path / "out" / "model_final.pth").exists()


def test_wandb_that_cannot_start_is_one_line_exit_2(tmp_path):
    """Online W&B without a login: one line naming the writer and what to do, before the first step."""
    pytest.importorskip("wandb")
    out = tmp_path / "out"
    proc = run_main(["--config-file", ENGINE_SMOKE, "OUTPUT_DIR", out, "LOGGER.WRITERS", '["wandb"]'],
                    env={"WANDB_MODE": "online", "WANDB_API_KEY": "", "HOME": str(tmp_path), "NETRC": str(tmp_path / "x")},
                    check=False)
    assert proc.returncode == 2, proc.stderr[-3000:]
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith("error: LOGGER.WRITERS: the WandbWriter could not start: ") and "wandb login" in line
    assert not (out / "model_0000004.pth").exists()  # nothing trained


def test_observability_config_errors_name_the_key():
    from uniperceiver.engine.hooks import check_observability_cfg

    with pytest.raises(ConfigError, match=r"LOGGER.WRITERS .*unknown writer 'tensorbord'; did you mean 'tensorboard'"):
        check_observability_cfg(setup_cfg(ENGINE_SMOKE, ["LOGGER.WRITERS", '["json", "tensorbord"]']))
    with pytest.raises(ConfigError, match=r"PROFILER.START_ITER = 20 must be < SOLVER.MAX_ITER \(12\)"):
        check_observability_cfg(setup_cfg(ENGINE_SMOKE, ["PROFILER.ENABLED", "True", "PROFILER.START_ITER", "20"]))
    with pytest.raises(ConfigError, match=r"PROFILER.NUM_ITERS = 0 must be >= 1"):
        check_observability_cfg(setup_cfg(ENGINE_SMOKE, ["PROFILER.ENABLED", "True", "PROFILER.NUM_ITERS", "0"]))
    check_observability_cfg(setup_cfg(ENGINE_SMOKE, []))


# ------------------------------------------------------------------------ profiler, throughput, memory
def test_profiler_trace_and_throughput_metrics(tmp_path):
    """PROFILER over steps 2-3 (counted from 0): a Chrome trace with exactly those steps, input shapes and
    memory events, and the operator table; metrics.json and the console carry samples_per_s_<task> and
    max_rss_mb (max_mem_mb needs CUDA)."""
    out = tmp_path / "out"
    run_main(["--config-file", ENGINE_SMOKE, "OUTPUT_DIR", out, "SOLVER.MAX_ITER", "6", "SOLVER.WRITE_PERIOD", "3",
              "PROFILER.ENABLED", "True", "PROFILER.START_ITER", "2", "PROFILER.NUM_ITERS", "2",
              "LOGGER.WRITERS", '["json"]'])
    assert sorted(p.name for p in (out / "profiler").iterdir()) == ["key_averages.txt", "trace_2-3.json"]
    events = json.loads((out / "profiler" / "trace_2-3.json").read_text())["traceEvents"]
    names = {e.get("name", "") for e in events}
    assert sorted(n for n in names if n.startswith("ProfilerStep#")) == ["ProfilerStep#2", "ProfilerStep#3"]
    assert "[memory]" in names
    assert any(e.get("args", {}).get("Input Dims") for e in events if e.get("name") == "aten::linear")
    table = (out / "profiler" / "key_averages.txt").read_text()
    assert "steps 2-3" in table and "aten::linear" in table and "CPU Mem" in table
    rows = _jsonl(out / "metrics.json")
    assert [r["iteration"] for r in rows] == [2, 5]
    for r in rows:
        assert r["samples_per_s_synthetic"] > 0 and r["max_rss_mb"] > 100
        assert ("max_mem_mb" in r) == torch.cuda.is_available()
    log = (out / "log.txt").read_text()
    assert "samples/s: synthetic " in log and "max_rss: " in log


class _Stream:
    def __init__(self, batch_size):
        self.batch_size, self.consumed = batch_size, 0


class _Trainer:
    def __init__(self, storage, loader):
        self.storage, self.data_loader = storage, loader
        self.start_iter, self.iter, self.max_iter = 0, 0, 100


def test_throughput_monitor_counts_samples_per_task_over_step_time(monkeypatch):
    """samples_per_s_<task> = that task's samples since the last put (all ranks) / the summed step time of
    those steps (slowest rank); memory: the largest rank."""
    from uniperceiver.engine import hooks
    from uniperceiver.engine.hooks import ThroughputMonitor, loader_consumed_samples

    loader = type("Loader", (), {})()
    loader.streams = {"a": _Stream(8), "b": _Stream(2)}
    with EventStorage(0) as storage:
        trainer = _Trainer(storage, loader)
        hook = ThroughputMonitor(period=4, consumed_samples=loader_consumed_samples(loader))
        hook.trainer = trainer
        hook.before_train()
        draws = ["a", "b", "a", "a", "b", "b", "b", "b"]
        for it, task in enumerate(draws):
            trainer.iter = storage.iter = it
            loader.streams[task].consumed += 1
            storage.put_scalar("time", 0.5 if it < 4 else 0.25)
            hook.after_step()
            if it == 3:
                latest = storage.latest()
                assert latest["samples_per_s_a"][0] == pytest.approx(3 * 8 / 2.0)
                assert latest["samples_per_s_b"][0] == pytest.approx(1 * 2 / 2.0)
        latest = storage.latest()
        assert latest["samples_per_s_a"] == (0.0, 7)
        assert latest["samples_per_s_b"][0] == pytest.approx(4 * 2 / 1.0)
        assert latest["max_rss_mb"][0] > 0
        # a second rank that drew 'a' twice in a slower period, with more memory
        other = {"samples": {"a": 16, "b": 0}, "seconds": 4.0, "rss": 1e6, "cuda": None}
        monkeypatch.setattr(hooks.comm, "get_world_size", lambda: 2)
        monkeypatch.setattr(hooks.comm, "all_gather", lambda local: [local, other])
        for it in range(8, 12):
            trainer.iter = storage.iter = it
            loader.streams["b"].consumed += 1
            storage.put_scalar("time", 0.25)
            hook.after_step()
        latest = storage.latest()
        assert latest["samples_per_s_a"] == (16 / 4.0, 11)
        assert latest["samples_per_s_b"][0] == pytest.approx(4 * 2 / 4.0)
        assert latest["max_rss_mb"][0] == 1e6
        assert ("max_mem_mb" in latest) == (hooks.cuda_max_memory_mb() is not None)


# ------------------------------------------------------------------------------------------ safetensors
def test_safetensors_stores_shared_tensors_once(tmp_path):
    base = torch.arange(12.0).reshape(3, 4)
    state = {"emb.weight": base, "head.weight": base, "row": base[1], "other": torch.ones(2, dtype=torch.bfloat16),
             "count": torch.tensor(7)}
    path = str(tmp_path / "w.safetensors")
    aliases = save_safetensors(state, path)
    assert aliases == {"head.weight": "emb.weight"}
    assert json.loads(read_metadata(path)[ALIASES_KEY]) == aliases
    from safetensors import safe_open

    with safe_open(path, framework="pt") as f:
        assert sorted(f.keys()) == ["count", "emb.weight", "other", "row"]
    loaded = load_safetensors(path)
    assert sorted(loaded) == sorted(state)
    assert loaded["head.weight"] is loaded["emb.weight"]
    for k, v in state.items():
        assert loaded[k].dtype == v.dtype and torch.equal(loaded[k], v)


def _perturbed_model(cfg_file, opts=(), seed=0):
    from uniperceiver.modeling import build_model

    torch.manual_seed(seed)
    model = build_model(setup_cfg(cfg_file, list(opts)))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    return model


@pytest.mark.parametrize("cfg_file,opts", [
    (INSTANT_MOE, []),
    (INSTANT_CLS, ["MODEL.LORA.ENABLED", "True"]),
], ids=["moe", "lora"])
def test_safetensors_weights_load_like_the_pth(tmp_path, cfg_file, opts):
    """MoE and LoRA checkpoints: convert_checkpoint.py --to safetensors, then MODEL.WEIGHTS gives the same
    tensors as the .pth, with the same strictness and resize rules."""
    src = _perturbed_model(cfg_file, opts)
    pth, st = tmp_path / "model_final.pth", tmp_path / "model.safetensors"
    torch.save({"model": src.state_dict(), "iteration": 9}, pth)
    assert load_tool("convert_checkpoint").main(["--to", "safetensors", str(pth), str(st)]) == 0
    assert read_metadata(str(st))["uniperceiver.iteration"] == "9"
    # a model whose learned text position table is longer: resized by the model's rules
    resized = ["MODEL.MAX_POSITION_EMBEDDINGS", "96"]
    for extra in ([], resized):
        a, b = (_perturbed_model(cfg_file, opts + extra, seed=s) for s in (1, 2))
        report_a = Checkpointer(a, str(tmp_path)).load_weights(str(pth))
        report_b = Checkpointer(b, str(tmp_path)).load_weights(str(st))
        assert {k: sorted(v) for k, v in report_a.items()} == {k: sorted(v) for k, v in report_b.items()}
        assert (report_b["resized"] != []) == bool(extra)
        sa, sb = a.state_dict(), b.state_dict()
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
        if not extra:
            assert all(torch.equal(v, src.state_dict()[k]) for k, v in sb.items())
    # strict: a key the file lacks is an error naming it, unless ignored
    state = load_safetensors(str(st))
    dropped = next(iter(state))
    save_safetensors({k: v for k, v in state.items() if k != dropped}, str(tmp_path / "less.safetensors"))
    with pytest.raises(CheckpointError, match=f"missing key {dropped}"):
        Checkpointer(src, str(tmp_path)).load_weights(str(tmp_path / "less.safetensors"))
    Checkpointer(src, str(tmp_path)).load_weights(str(tmp_path / "less.safetensors"), ignore=[f"^{dropped}$"])


def test_convert_tool_ema_lora_and_refusals(tmp_path, capsys):
    tool = load_tool("convert_checkpoint")
    model = _perturbed_model(INSTANT_CLS, ["MODEL.LORA.ENABLED", "True"])
    state = model.state_dict()
    ema = {k: v + 1 for k, v in state.items() if v.is_floating_point()}
    pth = tmp_path / "model_final.pth"
    torch.save({"model": state, "model_ema": {"model": ema, "updates": 3}}, pth)
    # --ema: the average
    assert tool.main(["--to", "safetensors", "--ema", str(pth), str(tmp_path / "ema.safetensors")]) == 0
    loaded = load_safetensors(str(tmp_path / "ema.safetensors"))
    assert all(torch.equal(loaded[k], ema.get(k, state[k])) for k in state)
    assert read_metadata(str(tmp_path / "ema.safetensors"))["uniperceiver.weights"] == "model_ema"
    # --from lora: the merged weights, as tools/merge_lora.py writes them
    assert tool.main(["--from", "lora", "--to", "safetensors", str(pth), str(tmp_path / "merged.safetensors")]) == 0
    tool.main(["--from", "lora", str(pth), str(tmp_path / "merged.pth")])
    merged = load_checkpoint_file(str(tmp_path / "merged.pth"))["model"]
    loaded = load_safetensors(str(tmp_path / "merged.safetensors"))
    assert sorted(loaded) == sorted(merged) and not any("lora_" in k for k in loaded)
    assert all(torch.equal(loaded[k], merged[k]) for k in merged)
    assert not [p for p in tmp_path.iterdir() if p.is_dir()]  # the intermediate .pth is gone
    # refusals: no EMA in the file, a wrong suffix, resuming from a weights file
    torch.save({"model": state}, tmp_path / "plain.pth")
    with pytest.raises(SystemExit, match="has no model_ema weights"):
        tool.main(["--to", "safetensors", "--ema", str(tmp_path / "plain.pth"), str(tmp_path / "x.safetensors")])
    with pytest.raises(SystemExit, match=r"writes a \.safetensors file"):
        tool.main(["--to", "safetensors", str(pth), str(tmp_path / "x.pth")])
    with pytest.raises(CheckpointError, match="safetensors weights file: use it as MODEL.WEIGHTS"):
        load_checkpoint_file(str(tmp_path / "ema.safetensors"))


def test_eval_only_results_identical_for_pth_and_safetensors(tmp_path):
    """--eval-only with MODEL.WEIGHTS .pth and its .safetensors export: byte-identical results.json."""
    from uniperceiver.engine.evaluate import run_eval_only

    pth, st = tmp_path / "w.pth", tmp_path / "w.safetensors"
    torch.save({"model": _perturbed_model(INSTANT_CLS, seed=3).state_dict()}, pth)
    assert load_tool("convert_checkpoint").main(["--to", "safetensors", str(pth), str(st)]) == 0
    texts = []
    for name, weights in (("pth", pth), ("st", st)):
        cfg = setup_cfg(INSTANT_CLS, ["OUTPUT_DIR", str(tmp_path / name), "MODEL.WEIGHTS", str(weights),
                                      "MODEL.DEVICE", "cpu"])
        torch.manual_seed(123)  # a different init than the saved weights' (so only loading explains a match)
        run_eval_only(cfg)
        texts.append((tmp_path / name / "inference" / "imagenet" / "results.json").read_bytes())
    assert texts[0] == texts[1] and b"Acc@1" in texts[0]
