"""Config system: _BASE_ merging, TASKS by NAME, precedence, errors, safe YAML, config.yaml round trip."""
import pytest
import yaml

from uniperceiver.config import CfgNode, ConfigError, get_cfg, setup_cfg


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return str(path)


TASK = """
  - NAME: {name}
    DATASETS: {{TASK_TYPE: synthetic_regression}}
"""


def test_base_list_relative_paths_and_named_task_merge(tmp_path):
    write(tmp_path / "bases" / "a.yaml", "SOLVER: {BASE_LR: 0.1, MAX_ITER: 7}\nTASKS:\n" + TASK.format(name="t1")
          + "    DATALOADER: {TRAIN_BATCH_SIZE: 3, NUM_WORKERS: 2}\n")
    write(tmp_path / "bases" / "b.yaml", "SOLVER: {BASE_LR: 0.2}\nTASKS:\n" + TASK.format(name="t2"))
    child = write(tmp_path / "exp" / "child.yaml",
                  "_BASE_: [../bases/a.yaml, ../bases/b.yaml]\nTASKS:\n  - NAME: t1\n    DATALOADER: {TRAIN_BATCH_SIZE: 5}\n")
    cfg = setup_cfg(child)
    assert cfg.SOLVER.BASE_LR == 0.2  # later base wins
    assert cfg.SOLVER.MAX_ITER == 7
    assert [t.NAME for t in cfg.TASKS] == ["t1", "t2"]
    t1 = cfg.task("t1")
    assert t1.DATALOADER.TRAIN_BATCH_SIZE == 5 and t1.DATALOADER.NUM_WORKERS == 2  # merged key by key
    assert cfg.task("t2").DATALOADER.TRAIN_BATCH_SIZE == get_cfg().DATALOADER.TRAIN_BATCH_SIZE  # inherited


def test_base_cycle(tmp_path):
    write(tmp_path / "a.yaml", "_BASE_: b.yaml\n")
    b = write(tmp_path / "b.yaml", "_BASE_: a.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        setup_cfg(b)


def test_precedence(tmp_path):
    """defaults < YAML global < YAML task < CLI global < CLI task."""
    f = write(tmp_path / "c.yaml", "DATALOADER: {TRAIN_BATCH_SIZE: 10, NUM_WORKERS: 1, SAMPLING_WEIGHT: 2.0}\nTASKS:\n"
              + TASK.format(name="a") + "    DATALOADER: {TRAIN_BATCH_SIZE: 20, NUM_WORKERS: 3}\n"
              + TASK.format(name="b"))
    cfg = setup_cfg(f)
    assert cfg.task("a").DATALOADER.TRAIN_BATCH_SIZE == 20  # YAML task > YAML global
    assert cfg.task("b").DATALOADER.TRAIN_BATCH_SIZE == 10  # YAML global > defaults
    assert cfg.task("b").DATALOADER.TEST_BATCH_SIZE == get_cfg().DATALOADER.TEST_BATCH_SIZE
    cfg = setup_cfg(f, ["DATALOADER.TRAIN_BATCH_SIZE", "30", "TASKS.b.DATALOADER.TRAIN_BATCH_SIZE", "40",
                        "TASKS.a.DATALOADER.NUM_WORKERS", "0"])
    assert cfg.task("a").DATALOADER.TRAIN_BATCH_SIZE == 30  # CLI global > YAML task
    assert cfg.task("b").DATALOADER.TRAIN_BATCH_SIZE == 40  # CLI task > CLI global
    assert cfg.task("a").DATALOADER.NUM_WORKERS == 0 and cfg.task("b").DATALOADER.NUM_WORKERS == 1
    assert cfg.task("a").DATALOADER.SAMPLING_WEIGHT == 2.0
    # CLI order does not matter: a task key typed before the global one still wins
    cfg = setup_cfg(f, ["TASKS.b.DATALOADER.TRAIN_BATCH_SIZE", "40", "DATALOADER.TRAIN_BATCH_SIZE", "30"])
    assert cfg.task("b").DATALOADER.TRAIN_BATCH_SIZE == 40


def test_unknown_key_suggests_closest(tmp_path):
    with pytest.raises(ConfigError, match=r"SOLVER\.BASE_LR"):
        setup_cfg("", ["SOLVER.BASE_LRR", "0.1"])
    f = write(tmp_path / "c.yaml", "SOLVER: {MAX_ITERS: 3}\n")
    with pytest.raises(ConfigError, match=r"(?s)c\.yaml.*SOLVER\.MAX_ITERS.*SOLVER\.MAX_ITER"):
        setup_cfg(f)
    f = write(tmp_path / "t.yaml", "TASKS:\n" + TASK.format(name="cls"))
    with pytest.raises(ConfigError, match="cls"):
        setup_cfg(f, ["TASKS.clss.DATALOADER.NUM_WORKERS", "0"])


def test_wrong_type_names_key_value_and_type():
    with pytest.raises(ConfigError) as e:
        setup_cfg("", ["SOLVER.MAX_ITER", "ten"])
    msg = str(e.value)
    assert "SOLVER.MAX_ITER" in msg and "'ten'" in msg and "int" in msg


def test_fraction_and_unsafe_yaml(tmp_path):
    f = write(tmp_path / "f.yaml", "MODEL: {POSEMBED_SCALE: 160/224}\n")
    assert setup_cfg(f).MODEL.POSEMBED_SCALE == pytest.approx(160 / 224)
    assert setup_cfg("", ["MODEL.POSEMBED_SCALE", "160/224"]).MODEL.POSEMBED_SCALE == pytest.approx(160 / 224)
    bad = write(tmp_path / "bad.yaml", "SOLVER: {BASE_LR: !!python/object/apply:os.system ['echo hacked']}\n")
    with pytest.raises(ConfigError, match="bad.yaml"):
        setup_cfg(bad)


def test_config_yaml_round_trip(tmp_path):
    f = write(tmp_path / "c.yaml", "SOLVER: {BETAS: [0.9, 0.99]}\nTASKS:\n" + TASK.format(name="a")
              + "    LOSSES: {LOSS_WEIGHT: 0.5}\n")
    cfg = setup_cfg(f, ["TASKS.a.DATALOADER.TRAIN_BATCH_SIZE", "6"])
    dumped = write(tmp_path / "config.yaml", cfg.dump())
    again = setup_cfg(dumped)
    assert yaml.safe_load(again.dump()) == yaml.safe_load(cfg.dump())
    assert again.task("a").DATALOADER.TRAIN_BATCH_SIZE == 6 and again.task("a").LOSSES.LOSS_WEIGHT == 0.5


def test_frozen_and_fresh_defaults():
    cfg = setup_cfg("")
    with pytest.raises(AttributeError):
        cfg.SOLVER.BASE_LR = 1.0
    a, b = get_cfg(), get_cfg()
    a.SOLVER.BASE_LR = 5.0
    assert b.SOLVER.BASE_LR != 5.0
    assert isinstance(a, CfgNode)


def test_odd_cli_tokens():
    with pytest.raises(ConfigError, match="pairs"):
        setup_cfg("", ["SOLVER.MAX_ITER"])
