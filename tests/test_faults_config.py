"""Fault injection, configuration and command line: every mistake is one line `error: ...`, exit 2, nothing
trained; config strings are never evaluated.

tests/test_config.py covers config parser errors at the API level.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

from conftest import CLS, INSTANT_MOE, REPO, evil_pickle, restored_loggers, run_main
from uniperceiver.config import setup_cfg


def _bad_cli_cases(tmp: Path):
    """(name, argv, text the one-line error must contain).  Files the cases need are written into ``tmp``."""
    (tmp / "a.yaml").write_text("_BASE_: b.yaml\n")
    (tmp / "b.yaml").write_text("_BASE_: a.yaml\n")
    (tmp / "evil.yaml").write_text(f'SOLVER: !!python/object/apply:os.system ["touch {tmp}/marker"]\n')
    (tmp / "broken.yaml").write_text("SOLVER: {MAX_ITER: [1,\n")
    (tmp / "model_only.yaml").write_text(f"_BASE_: {REPO}/configs/BERT_L12_H192_experiments/"
                                         "base_model_bert_l12_h192.yaml\n")
    torch.save({"model": {"head.weight": torch.zeros(3, 3)}}, tmp / "other_arch.pth")
    evil_pickle(tmp / "evil.pth", tmp / "marker")
    (tmp / "dup.yaml").write_text(f"_BASE_: {CLS}\nTASKS:\n  - NAME: imagenet\n    DATALOADER: {{TRAIN_BATCH_SIZE: 2}}\n"
                                  "  - NAME: imagenet\n    DATALOADER: {TRAIN_BATCH_SIZE: 4}\n")
    for name, train, classes in (("empty_list", "", "zero\none\n"), ("empty_classes", "a.png 0\n", "\n\n")):
        meta = tmp / name / "imagenet" / "meta"
        meta.mkdir(parents=True)
        (meta / "train.txt").write_text(train)
        (meta / "val.txt").write_text("a.png 0\n")
        (tmp / name / "imagenet" / "classnames.txt").write_text(classes)
    c = ["--config-file", CLS]
    return [
        ("unknown_key", c + ["SOLVER.MAX_ITERS", "3"], "did you mean SOLVER.MAX_ITER"),
        ("unknown_task_key", c + ["TASKS.imagenet.DATALOADER.BATCH", "3"], "TASKS.imagenet.DATALOADER.BATCH"),
        ("unknown_task_name", c + ["TASKS.nope.DATALOADER.NUM_WORKERS", "1"], "nope"),
        ("wrong_type", c + ["SOLVER.MAX_ITER", "abc"], "SOLVER.MAX_ITER"),
        ("wrong_type_bool", c + ["SOLVER.AMP.ENABLED", "maybe"], "SOLVER.AMP.ENABLED"),
        ("odd_tokens", c + ["SOLVER.MAX_ITER"], "odd number"),
        ("missing_config_file", ["SOLVER.MAX_ITER", "3"], "--config-file"),
        ("config_file_not_found", ["--config-file", str(tmp / "nope.yaml")], "nope.yaml"),
        ("model_only_config", ["--config-file", str(tmp / "model_only.yaml")], "no TASKS"),
        ("base_cycle", ["--config-file", str(tmp / "a.yaml")], "cycle"),
        ("yaml_syntax", ["--config-file", str(tmp / "broken.yaml")], "broken.yaml"),
        ("python_yaml_tag", ["--config-file", str(tmp / "evil.yaml")], "YAML tag"),
        ("missing_data_path", c + ["DATA_PATH", str(tmp / "no_data")], "annotation file not found"),
        ("unknown_task_type", c + ["TASKS.imagenet.DATASETS.TASK_TYPE", "image_nope"], "image_nope"),
        ("unknown_dataset", c + ["DATASETS.DATASET_NAME", "NotADataset"], "NotADataset"),
        ("accum_iter_negative", c + ["SOLVER.ACCUM_ITER", "-1"], "SOLVER.ACCUM_ITER"),
        ("batch_size_zero", c + ["DATALOADER.TRAIN_BATCH_SIZE", "0"], "TASKS.imagenet.DATALOADER.TRAIN_BATCH_SIZE"),
        ("task_batch_size_zero", c + ["TASKS.imagenet.DATALOADER.TEST_BATCH_SIZE", "0"], "TEST_BATCH_SIZE"),
        ("max_iter_zero", c + ["SOLVER.MAX_ITER", "0"], "SOLVER.MAX_ITER"),
        ("bad_fraction_above_1", c + ["DATALOADER.MAX_BAD_FRACTION", "2.0"], "MAX_BAD_FRACTION"),
        ("data_percentage_zero", c + ["DATALOADER.DATA_PERCENTAGE", "0.0"], "DATA_PERCENTAGE"),
        ("trainable_matches_nothing", c + ["MODEL.TRAINABLE", "['no_such_param']"], "MODEL.TRAINABLE"),
        ("weights_missing", c + ["MODEL.WEIGHTS", str(tmp / "missing.pth")], "missing.pth"),
        ("weights_other_architecture", c + ["MODEL.WEIGHTS", str(tmp / "other_arch.pth")],
         "unexpected key head.weight"),
        ("weights_pickled_object", c + ["MODEL.WEIGHTS", str(tmp / "evil.pth")], "pickled Python object"),
        ("unknown_amp_dtype", c + ["SOLVER.AMP.ENABLED", "True", "SOLVER.AMP.DTYPE", "fp8"], "SOLVER.AMP.DTYPE"),
        ("expert_parallel_independent_tasks", ["--config-file", INSTANT_MOE, "MOE.BACKEND", "deepspeed",
                                               "SOLVER.DEEPSPEED.ENABLED", "True", "MOE.EP_SIZE", "2"],
         "DATALOADER.STRATEGY = 'independent' must be 'synced' with MOE.EP_SIZE 2"),
        ("moe_zero3", ["--config-file", INSTANT_MOE, "SOLVER.DEEPSPEED.ENABLED", "True",
                       "SOLVER.DEEPSPEED.ZERO_STAGE", "3"], "MOE.MOE with DeepSpeed ZeRO stage 3 is not supported"),
        ("expert_parallel_eval_only", ["--config-file", INSTANT_MOE, "--eval-only", "MOE.BACKEND", "deepspeed",
                                       "SOLVER.DEEPSPEED.ENABLED", "True", "MOE.EP_SIZE", "2",
                                       "DATALOADER.STRATEGY", "synced"], "evaluate with MOE.EP_SIZE 1"),
        ("duplicate_task_name", ["--config-file", str(tmp / "dup.yaml")], "dup.yaml: duplicate TASKS NAME 'imagenet'"),
        ("eval_only_without_weights", c + ["--eval-only"], "--eval-only has no weights to evaluate"),
        ("empty_annotation_file", c + ["DATA_PATH", str(tmp / "empty_list")], "train.txt: empty annotation file"),
        ("empty_class_name_file", c + ["DATA_PATH", str(tmp / "empty_classes")], "classnames.txt: empty class-name"),
    ]


# the case names (the cases themselves need a tmp dir; the test checks that both lists agree)
BAD_CLI_NAMES = [
    "unknown_key", "unknown_task_key", "unknown_task_name", "wrong_type", "wrong_type_bool", "odd_tokens",
    "missing_config_file", "config_file_not_found", "model_only_config", "base_cycle", "yaml_syntax",
    "python_yaml_tag", "missing_data_path", "unknown_task_type", "unknown_dataset", "accum_iter_negative",
    "batch_size_zero", "task_batch_size_zero", "max_iter_zero", "bad_fraction_above_1", "data_percentage_zero",
    "trainable_matches_nothing", "weights_missing", "weights_other_architecture", "weights_pickled_object",
    "unknown_amp_dtype", "expert_parallel_independent_tasks", "moe_zero3", "expert_parallel_eval_only",
    "duplicate_task_name", "eval_only_without_weights", "empty_annotation_file", "empty_class_name_file"]


@pytest.mark.parametrize("case", BAD_CLI_NAMES)
def test_bad_config_or_cli_is_one_line_exit_2(tmp_path, capsys, case):
    import main

    cases = {name: (argv, expect) for name, argv, expect in _bad_cli_cases(tmp_path)}
    assert set(cases) == set(BAD_CLI_NAMES)
    argv, expect = cases[case]
    with restored_loggers():
        code = main.run([*argv, "OUTPUT_DIR", str(tmp_path / "out"), "SOLVER.CHECKPOINT_PERIOD", "1000"])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and "Traceback" not in err, err
    assert expect in err
    assert not (tmp_path / "marker").exists()  # nothing in a refused file ran
    assert not (tmp_path / "out" / "last_checkpoint").exists()  # and no training happened


def test_bad_cli_in_a_real_process_has_no_traceback_unless_debug(tmp_path):
    proc = run_main(["--config-file", CLS, "SOLVER.ACCUM_ITER", "-2", "OUTPUT_DIR", tmp_path / "o"], check=False)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        "error: invalid config: SOLVER.ACCUM_ITER = -2 must be >= 0 (<= 1: no accumulation)"]
    proc = run_main(["--config-file", CLS, "--debug", "SOLVER.ACCUM_ITER", "-2", "OUTPUT_DIR", tmp_path / "o"],
                    check=False)
    assert proc.returncode != 0 and "Traceback" in proc.stderr


def test_no_eval_or_exec_in_the_code():
    """Config strings are never evaluated: no eval / exec call anywhere in the package, main.py or tools."""
    calls = []
    for path in [REPO / "main.py", *(REPO / "uniperceiver").rglob("*.py"), *(REPO / "tools").rglob("*.py")]:
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("eval", "exec"):
                calls.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert not calls


def test_fraction_values_are_parsed_not_evaluated(tmp_path):
    marker = tmp_path / "marker"
    from uniperceiver.config import ConfigError

    with pytest.raises(ConfigError):
        setup_cfg(CLS, ["MODEL.POSEMBED_SCALE", f"__import__('os').system('touch {marker}')"])
    assert setup_cfg(CLS, ["MODEL.POSEMBED_SCALE", "160/224"]).MODEL.POSEMBED_SCALE == pytest.approx(160 / 224)
    assert not marker.exists()


def test_eval_only_with_allow_random_weights_evaluates_the_initialisation(tmp_path, capsys):
    import main

    with restored_loggers():
        results = main.run(["--config-file", CLS, "--eval-only", "--allow-random-weights", "OUTPUT_DIR",
                            str(tmp_path / "out")])
    assert results == 0 and "evaluating random weights" in (tmp_path / "out" / "log.txt").read_text()
