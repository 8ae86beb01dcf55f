"""Published Uni-Perceiver configs: numbers and tags, the converter, print_config, counterparts in configs/."""
import pytest

from uniperceiver.config import ConfigError, setup_cfg
from uniperceiver.config.config import arithmetic


def _write(path, text):
    path.write_text(text)
    return str(path)


def test_exponent_floats_and_fraction_tag(tmp_path):
    f = _write(tmp_path / "n.yaml", 'MODEL:\n  LAYER_SCALE_INIT: 1e-3\n'
               '  POSEMBED_SCALE: !!python/object/apply:eval ["(160 + 0) / 224"]\n'
               'SOLVER: {EPS: 1e-8, BETAS: [0.9, 9.99e-1]}\n')
    cfg = setup_cfg(f)
    assert cfg.MODEL.LAYER_SCALE_INIT == 1e-3 and cfg.SOLVER.EPS == 1e-8
    assert cfg.MODEL.POSEMBED_SCALE == pytest.approx(160 / 224)
    assert tuple(cfg.SOLVER.BETAS) == (0.9, 0.999)


@pytest.mark.parametrize("expr", ["__import__('os').system('true')", "2 ** 10", "x / 2", "[1][0]", "1 / 0"])
def test_arithmetic_refuses_everything_else(expr):
    with pytest.raises(ValueError):
        arithmetic(expr)


def test_other_tags_refused_with_file_and_line(tmp_path):
    marker = tmp_path / "marker"
    f = _write(tmp_path / "evil.yaml",
               f'SOLVER:\n  EPS: 1e-6\n  BASE_LR: !!python/object/apply:os.system ["touch {marker}"]\n')
    with pytest.raises(ConfigError, match=r"evil\.yaml: invalid YAML: line 3.*os\.system") as e:
        setup_cfg(f)
    assert "\n" not in str(e.value) and not marker.exists()
    g = _write(tmp_path / "evil2.yaml", 'MODEL:\n  POSEMBED_SCALE: !!python/object/apply:eval ["open(\'x\')"]\n')
    with pytest.raises(ConfigError, match=r"evil2\.yaml: invalid YAML: line 2"):
        setup_cfg(g)


# ------------------------------------------------------------------------------------- the published files
import glob  # noqa: E402
import os  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

import yaml  # noqa: E402

from uniperceiver.config import get_cfg  # noqa: E402
from uniperceiver.config.published import PUBLISHED_KEY_MAP, convert_published, is_published_file  # noqa: E402
from uniperceiver.config.validate import validate_cfg  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The published repo's configs/ folder (github fundamentalvision/Uni-Perceiver @ a8c9e37); the tests that need
# it skip without it.
PUBLISHED_ROOT = os.environ.get("UNIPERCEIVER_PUBLISHED_CONFIGS", "/work/ref/Uni-Perceiver/configs")
PUBLISHED = sorted(glob.glob(os.path.join(PUBLISHED_ROOT, "**", "*.yaml"), recursive=True))
needs_published = pytest.mark.skipif(not PUBLISHED, reason=f"published configs not at {PUBLISHED_ROOT}")
OURS = os.path.join(REPO, "configs")


@needs_published
def test_all_published_files_map():
    assert len(PUBLISHED) == 99
    for path in PUBLISHED:
        assert is_published_file(path), path
        data, report = convert_published(path)
        cfg = get_cfg()
        cfg.merge_from_dict(data, source=path)
        cfg.finalize()
        assert report.entries and all(status in ("mapped", "dropped") for _, status, _ in report.entries)


def test_counterparts_load():
    """Every counterpart of a published config path in our configs/ loads as our format (no conversion)."""
    paths = [p for p in glob.glob(os.path.join(OURS, "BERT_*", "**", "*.yaml"), recursive=True)
             if open(p).readline().startswith("# Converted by tools/convert_config.py")]
    assert len(paths) == 95  # the 99 published files less the 4 base_model_* (model-only; ours are hand-written)
    for path in paths:
        assert not is_published_file(path), path
        cfg = setup_cfg(path)
        if len(cfg.TASKS):  # GLUE base.yaml holds only the shared settings
            validate_cfg(cfg)


def _published_task(path, name):
    from uniperceiver.config.published import load_published_chain

    raw = load_published_chain(path)
    return raw, next(t for t in raw["TASKS"] if t["NAME"] == name)


@needs_published
@pytest.mark.parametrize("stage", ["stage1", "stage2"])
def test_16task_recipe_through_print_config(stage):
    rel = f"BERT_L12_H768_experiments/16tasks_training_basedense_{stage}_64gpu.yaml"
    r = subprocess.run([sys.executable, os.path.join(REPO, "tools", "print_config.py"), "--config-file",
                        os.path.join(OURS, rel)], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "PYTHONPATH": REPO})
    assert r.returncode == 0, r.stderr
    ours = yaml.safe_load(r.stdout)
    raw, _ = _published_task(os.path.join(PUBLISHED_ROOT, rel), "mscoco_caption")
    s, m = raw["SOLVER"], raw["MODEL"]
    assert ours["SOLVER"]["MAX_ITER"] == s["MAX_ITER"] and ours["SOLVER"]["BASE_LR"] == pytest.approx(s["BASE_LR"])
    assert ours["SOLVER"]["WEIGHT_DECAY"] == pytest.approx(s["WEIGHT_DECAY"])
    assert ours["SOLVER"]["EPS"] == pytest.approx(float(s["EPS"])) and ours["SOLVER"]["BETAS"] == s["BETAS"]
    assert ours["SOLVER"]["GRAD_CLIP"] == pytest.approx(s["GRAD_CLIP"])
    assert ours["SOLVER"]["AMP"] == {"ENABLED": True, "DTYPE": "fp16"} or "ENABLED" in ours["SOLVER"]["AMP"]
    assert ours["LR_SCHEDULER"]["WARMUP"] == raw["LR_SCHEDULER"]["WARMUP"]
    assert ours["LR_SCHEDULER"]["MIN_LR"] == pytest.approx(raw["LR_SCHEDULER"]["MIN_LR"])
    assert ours["LR_SCHEDULER"]["WARMUP_FACTOR"] == 0.0
    assert ours["MODEL"]["IMG_INPUT_SIZE"] == m["IMG_INPUT_SIZE"]
    assert ours["MODEL"]["BERT"]["HIDDEN_SIZE"] == 768 and ours["MODEL"]["BERT"]["NUM_HIDDEN_LAYERS"] == 12
    assert ours["MODEL"]["BERT"]["DROP_PATH_PROB"] == pytest.approx(m["BERT"]["DROP_PATH_PROB"])
    assert ours["MODEL"]["BERT"]["DROP_PATH_PROB_FIXED"] is True
    if "POSEMBED_SCALE" in m:
        assert ours["MODEL"]["POSEMBED_SCALE"] == pytest.approx(160 / 224)
    assert len(ours["TASKS"]) == len(raw["TASKS"]) == 16
    for task in raw["TASKS"]:
        mine = next(t for t in ours["TASKS"] if t["NAME"] == task["NAME"])
        d = task["DATALOADER"]
        assert mine["DATALOADER"]["TRAIN_BATCH_SIZE"] == d["TRAIN_BATCH_SIZE"], task["NAME"]
        assert mine["DATALOADER"]["SAMPLING_WEIGHT"] == pytest.approx(d.get("SAMPLING_WEIGHT", 1.0)), task["NAME"]
        assert mine["LOSSES"]["LOSS_WEIGHT"] == pytest.approx(task["LOSSES"].get("LOSS_WEIGHT", 1.0)), task["NAME"]
        assert mine["DATASETS"]["TASK_TYPE"] == task["DATASETS"]["TASK_TYPE"]
        if "MAX_SEQ_LEN" in task.get("MODEL", {}):
            assert mine["MODEL"]["MAX_SEQ_LEN"] == task["MODEL"]["MAX_SEQ_LEN"]
        if "DECODE_STRATEGY" in task:
            assert mine["DECODE_STRATEGY"]["NAME"] == "beam"
            assert mine["DECODE_STRATEGY"]["BEAM_SIZE"] == task["DECODE_STRATEGY"]["BEAM_SIZE"]


def test_converter_reports_and_refuses(tmp_path):
    pub = _write(tmp_path / "p.yaml", "ENGINE: {NAME: UnifiedTrainer}\nSOLVER: {NAME: LAMB, EPS: 1e-6}\n"
                 "DATALOADER: {S3_PATH: 's3://x'}\n"
                 "MODEL: {POSEMBED_SCALE: !!python/object/apply:eval ['160/224']}\n"
                 "TASKS:\n  - NAME: coco\n    DATASETS: {TRAIN: ImageTextPairDataset, TASK_TYPE: caption}\n"
                 "    LOSSES: {NAMES: ['LabelSmoothingCrossEntropy', 'Accuracy'], LABELSMOOTHING: 0.2}\n")
    out = tmp_path / "ours.yaml"
    tool = os.path.join(REPO, "tools", "convert_config.py")
    env = {**os.environ, "PYTHONPATH": REPO}
    r = subprocess.run([sys.executable, tool, pub, str(out)], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "DATALOADER.S3_PATH: dropped storage backend" in r.stdout
    assert "SOLVER.NAME: mapped -> SOLVER.OPTIMIZER = 'Lamb'" in r.stdout
    cfg = setup_cfg(str(out))
    assert cfg.SOLVER.OPTIMIZER == "Lamb" and cfg.SOLVER.EPS == 1e-6 and cfg.SOLVER.BETAS == (0.9, 0.999)
    assert cfg.MODEL.POSEMBED_SCALE == pytest.approx(160 / 224) and cfg.SEED == -1
    task = cfg.task("coco")
    assert task.DATASETS.TASK_TYPE == "image_caption" and task.LOSSES.LABELSMOOTHING == pytest.approx(0.2)
    assert task.DATALOADER.TRAIN_BATCH_SIZE == 64  # the published default of a task that does not set it
    # the published file itself loads the same way (main.py / setup_cfg convert it), CLI keys are ours
    direct = setup_cfg(pub, ["SOLVER.MAX_ITER", "2"])
    assert direct.SOLVER.OPTIMIZER == "Lamb" and direct.SOLVER.MAX_ITER == 2 and direct.published_report()
    # a key that changes the model and cannot be mapped: one line naming file, key and what to do
    bad = _write(tmp_path / "bad.yaml",
                 "ENGINE: {NAME: UnifiedTrainer}\nMODEL: {BERT: {NORMALIZE_DECISION: BERTPost}}\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: published key MODEL\.BERT\.NORMALIZE_DECISION = 'BERTPost'"):
        setup_cfg(bad)
    unknown = _write(tmp_path / "unknown.yaml", "ENGINE: {NAME: UnifiedTrainer}\nSOLVER: {NEW_THING: 1}\n")
    r = subprocess.run([sys.executable, tool, unknown, str(tmp_path / "o.yaml")], capture_output=True, text=True,
                       env=env, timeout=120)
    assert r.returncode == 2 and "SOLVER.NEW_THING" in r.stderr and "PUBLISHED_KEY_MAP" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_print_config_stdout_is_yaml_and_errors_exit_2(tmp_path):
    tool = os.path.join(REPO, "tools", "print_config.py")
    env = {**os.environ, "PYTHONPATH": REPO}
    cfg_file = os.path.join(OURS, "quick_schedules", "instant.yaml")
    r = subprocess.run([sys.executable, tool, "--config-file", cfg_file, "SOLVER.MAX_ITER", "2",
                        "LR_SCHEDULER.WARMUP", "5"], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    data = yaml.safe_load(r.stdout)
    assert data["SOLVER"]["MAX_ITER"] == 2 and data["TASKS"] and "DATALOADER" in data["TASKS"][0]
    assert "warming up for the whole run" in r.stderr and "warming up" not in r.stdout  # logs go to stderr
    r = subprocess.run([sys.executable, tool, "--config-file", cfg_file, "SOLVER.MAX_ITR", "2"],
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 2 and r.stdout == "" and len(r.stderr.strip().splitlines()) == 1
    assert "SOLVER.MAX_ITER" in r.stderr  # the closest valid name


def test_warmup_longer_than_run_warms_up_whole_run(caplog):
    from uniperceiver.solver.lr_scheduler import build_lr_multiplier

    cfg = setup_cfg(os.path.join(OURS, "quick_schedules", "instant.yaml"),
                    ["SOLVER.MAX_ITER", "2", "LR_SCHEDULER.WARMUP", "20"])
    with caplog.at_level("WARNING"):
        validate_cfg(cfg)
    assert sum("warming up for the whole run" in r.message for r in caplog.records) <= 1
    mult = build_lr_multiplier("WarmupCosine", 2, 1e-3, warmup=20, warmup_factor=0.0)
    assert mult(0.0) == pytest.approx(0.0) and mult(0.5) == pytest.approx(0.5)


def test_validate_names_and_solver_lists_agree():
    from uniperceiver.config import validate
    from uniperceiver.solver import build, lr_scheduler

    assert validate.LR_SCHEDULES == lr_scheduler.SCHEDULES and validate.OPTIMIZERS == build.OPTIMIZERS
    instant = os.path.join(OURS, "quick_schedules", "instant.yaml")
    for key, value in (("SOLVER.OPTIMIZER", "SGD"), ("LR_SCHEDULER.NAME", "StepLR"), ("SOLVER.AMP.DTYPE", "fp8"),
                       ("MODEL.BERT.HIDDEN_ACT", "relu"), ("MODEL.PROMPT.FC_WEIGHT", "1.5")):
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):  # refused before any model is built
            validate_cfg(setup_cfg(instant, [key, value]))


def test_lamb_optimizer():
    import torch
    from timm.optim import Lamb

    from uniperceiver.solver.build import build_optimizer

    cfg = setup_cfg("", ["SOLVER.OPTIMIZER", "Lamb"])
    model = torch.nn.Sequential(torch.nn.Embedding(5, 4), torch.nn.Linear(4, 2))
    opt = build_optimizer(cfg, model)
    assert isinstance(opt, Lamb)
    cfg = setup_cfg("", ["SOLVER.WEIGHT_DECAY_EMBEDDING", "0.05"])
    decays = {n: g["weight_decay"] for g in build_optimizer(cfg, model).param_groups for n in g["param_names"]}
    assert decays["0.weight"] == 0.05 and decays["1.weight"] == cfg.SOLVER.WEIGHT_DECAY and decays["1.bias"] == 0.0


def test_published_checkpoint_name_reads_ours(tmp_path):
    from uniperceiver.config import published_weights_name

    folder = tmp_path / "stage1"
    folder.mkdir()
    name = str(folder / "model_Epoch_200000_Iter_0199999.pth")
    with pytest.raises(ConfigError, match="model_0199999.pth"):
        published_weights_name(name)
    (folder / "model_final.pth").write_bytes(b"x")
    assert published_weights_name(name) == str(folder / "model_final.pth")
    (folder / "model_0199999.pth").write_bytes(b"x")
    assert published_weights_name(name) == str(folder / "model_0199999.pth")
    assert setup_cfg("", ["MODEL.WEIGHTS", name]).MODEL.WEIGHTS == str(folder / "model_0199999.pth")


def test_key_map_covers_every_published_key():
    """Every rule names a key of our tree (Map) -- a typo would silently drop a value."""
    ours = get_cfg()
    for key, rule in PUBLISHED_KEY_MAP.items():
        target = getattr(rule, "key", None)
        if target and type(rule).__name__ == "Map":
            node = ours
            for part in target.split("."):
                assert part in node, (key, target)
                node = node[part]


# Keys read in a way the syntax-tree walk below cannot see, each with where it is read.
UNSEEN_READS = {
    "DATASETS.TRAIN": "getattr(task_cfg.DATASETS, split.upper()) in data/datasets/__init__.py",
    "DATASETS.VAL": "getattr(task_cfg.DATASETS, split.upper()) in data/datasets/__init__.py",
    "DATASETS.TEST": "getattr(task_cfg.DATASETS, split.upper()) in data/datasets/__init__.py",
    "LR_SCHEDULER.NAME": "s.NAME with s = cfg.LR_SCHEDULER in solver/build.py",
    "SHARED_TARGETS.NAME": "node.NAME over cfg.SHARED_TARGETS in data/target_sets.py",
    "DECODE_STRATEGY.NAME": "beam17 (issue 17/18) reads it in modeling/decoding.py",
}


def test_every_default_key_is_read_by_code():
    """Each leaf key of defaults.py is read: an attribute access ``.<PARENT>.<KEY>`` (or ``.<KEY>`` for a top-level
    or unambiguous name, ``["<KEY>"]``, ``getattr(x, "<KEY>")``) somewhere in main.py, uniperceiver/ or tools/
    other than the config tree and the published-key table themselves."""
    import ast
    import collections
    import pathlib

    from uniperceiver.config.defaults import _SHARED_TARGET

    def leaves(node, prefix=""):
        for k, v in node.items():
            if isinstance(v, dict):
                yield from leaves(v, prefix + k + ".")
            else:
                yield prefix + k

    keys = list(leaves(get_cfg())) + ["SHARED_TARGETS." + k for k in leaves(_SHARED_TARGET)]
    count = collections.Counter(k.split(".")[-1] for k in keys)
    attrs, pairs = set(), set()
    root = pathlib.Path(REPO)
    skip = {root / "uniperceiver" / "config" / "defaults.py", root / "uniperceiver" / "config" / "published.py"}
    for path in [root / "main.py", *(root / "uniperceiver").rglob("*.py"), *(root / "tools").rglob("*.py")]:
        if path in skip:
            continue
        for n in ast.walk(ast.parse(path.read_text())):
            if isinstance(n, ast.Attribute):
                attrs.add(n.attr)
                if isinstance(n.value, ast.Attribute):
                    pairs.add((n.value.attr, n.attr))
            elif isinstance(n, ast.Subscript) and isinstance(n.slice, ast.Constant):
                attrs.add(n.slice.value)
            elif (isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id in ("getattr", "hasattr")
                  and len(n.args) > 1 and isinstance(n.args[1], ast.Constant)):
                attrs.add(n.args[1].value)
    unread = []
    for key in keys:
        parts = key.split(".")
        if key in UNSEEN_READS:
            continue
        if (len(parts) == 1 or count[parts[-1]] == 1) and parts[-1] in attrs:
            continue
        if len(parts) > 1 and (parts[-2], parts[-1]) in pairs:
            continue
        unread.append(key)
    assert not unread, f"keys in defaults.py that no code reads: {unread}"


PUBLISHED_TINY = """\
# published format (keys, tags, dataset classes and names as in the published repo) on the demo data
_BASE_: base.yaml
ENGINE: {NAME: UnifiedTrainer}
find_unused_parameters: true
SHARED_TARGETS:
  - NAME: ImageNet1k
    SHARED_TARGETS_CFG: {FILE_PATH: imagenet/classnames.txt, DISTRIBUTED: False}
TASKS:
  - NAME: imagenet
    DATASETS: {TRAIN: ImageNetDataset, VAL: ImageNetDataset, TASK_TYPE: image_classification,
               DATASET_NAME: ImageNet1k, TARGET_SET: [ImageNet1k]}
    DATALOADER: {TRAIN_BATCH_SIZE: 4, TEST_BATCH_SIZE: 50, NUM_WORKERS: 0, FEATS_FOLDER: imagenet,
                 ANNO_FOLDER: imagenet/meta, S3_PATH: 'cluster2:s3://imagenet', SAMPLING_WEIGHT: 2.5,
                 MIXUP: 0.8, CUTMIX: 1.0, MIXUP_PROB: 1.0, MIXUP_SWITCH_PROB: 0.5, MIXUP_MODE: batch,
                 MIXUP_LABEL_SMOOTHING: 0.1}
    MODEL: {MAX_SEQ_LEN: -1, LABELS_NUM: 10, TEMP_NAME: logit_scale_img_cls}
    LOSSES: {NAMES: ['SoftTargetCrossEntropy', 'Accuracy'], LOSS_WEIGHT: 1.0, REDUCTION: mean}
    INFERENCE: {NAME: ImageNetEvaler, ID_KEY: image_id, VALUE: cls_logits, GENERATION_MODE: False}
MODEL:
  IMG_INPUT_SIZE: 32
  PATCH_SIZE: 8
  POSEMBED_SCALE: !!python/object/apply:eval ["160/224"]
  LAYER_SCALE: True
  LAYER_SCALE_INIT: 1e-3
  BERT: {NORMALIZE_DECISION: BERTPre, DROP_PATH_PROB: 0.1, DROP_PATH_PROB_FIXED: True}
SOLVER: {NAME: LAMB, MAX_ITER: 150000, EVAL_PERIOD: 500000, CHECKPOINT_PERIOD: 5000, BASE_LR: 0.001,
         EPS: 1e-6, BETAS: [0.9, 0.95], AMP_FP16: True, WEIGHT_DECAY_EMBEDDING: 0.0}
LR_SCHEDULER: {NAME: WarmupCosine, WARMUP: 5000, MIN_LR: 0.000001}
"""
PUBLISHED_TINY_BASE = """\
MODEL:
  VOCAB_SIZE: 49411
  META_ARCHITECTURE: 'MultiTaskTransformerEncoder'
  ENCODER: 'UnifiedBertEncoder_v3'
  ENCODER_DIM: 192
  TOKEN_EMBED: {NAME: TokenBaseEmbedding, DIM: 192, USE_NORM: True, POSITION: NNEmbeddingEncoding,
                POSITION_MAX_LEN: 64, TYPE_VOCAB_SIZE: 2}
  BERT: {HIDDEN_SIZE: 192, NUM_ATTENTION_HEADS: 3, INTERMEDIATE_SIZE: 768, NUM_HIDDEN_LAYERS: 1,
         HIDDEN_DROPOUT_PROB: 0., ATTENTION_PROBS_DROPOUT_PROB: 0., FFN_DROPOUT_PROB: 0., INTERMEDIATE_DROP: 0.}
"""


@pytest.mark.slow
def test_main_runs_a_published_config(tmp_path):
    """main.py trains 2 steps from a published-format file: converted, summarised, config.yaml written, CLI keys
    ours, the published warm-up shortened to the run, LAMB, fp16 -> fp32 on CPU, the demo-data line."""
    from conftest import run_main

    (tmp_path / "base.yaml").write_text(PUBLISHED_TINY_BASE)
    cfg_file = tmp_path / "7tasks_like.yaml"
    cfg_file.write_text(PUBLISHED_TINY)
    out = tmp_path / "out"
    proc = run_main(["--config-file", cfg_file, "SOLVER.MAX_ITER", "2", "SOLVER.WRITE_PERIOD", "1",
                     "OUTPUT_DIR", out], env={"DATA_PATH": ""}, timeout=900)
    log = proc.stdout + proc.stderr
    assert "converted onto our tree" in log and "S3_PATH" in log
    assert log.count("warming up for the whole run") == 1
    assert log.count("SOLVER.AMP.DTYPE fp16 needs CUDA") == 1
    assert log.count("DATA_PATH is not set: using the built-in demo data in") == 1
    saved = setup_cfg(str(out / "config.yaml"))
    assert not is_published_file(str(out / "config.yaml"))
    assert saved.SOLVER.OPTIMIZER == "Lamb" and saved.SOLVER.MAX_ITER == 2 and saved.SOLVER.EPS == 1e-6
    assert saved.LR_SCHEDULER.WARMUP == 5000 and saved.LR_SCHEDULER.WARMUP_FACTOR == 0.0
    assert saved.MODEL.BERT.DROP_PATH_PROB_FIXED and saved.MODEL.POSEMBED_SCALE == pytest.approx(160 / 224)
    task = saved.task("imagenet")
    assert task.LOSSES.LABELSMOOTHING == pytest.approx(0.1) and task.DATALOADER.SAMPLING_WEIGHT == 2.5
    assert (out / "model_final.pth").exists()


def test_malformed_published_file_names_file_and_line(tmp_path):
    _write(tmp_path / "base.yaml", "MODEL:\n  ENCODER_DIM: 192\n  BERT: {HIDDEN_SIZE: 192\n")
    child = _write(tmp_path / "child.yaml", "_BASE_: base.yaml\nENGINE: {NAME: UnifiedTrainer}\n")
    with pytest.raises(ConfigError, match=r"base\.yaml: invalid YAML: line \d+") as e:
        setup_cfg(child)
    assert "\n" not in str(e.value)
