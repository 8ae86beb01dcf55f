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
    f = _write(tmp_path / "evil.yaml", f'SOLVER:\n  EPS: 1e-6\n  BASE_LR: !!python/object/apply:os.system ["touch {marker}"]\n')
    with pytest.raises(ConfigError, match=r"evil\.yaml: invalid YAML: line 3.*os\.system") as e:
        setup_cfg(f)
    assert "\n" not in str(e.value) and not marker.exists()
    g = _write(tmp_path / "evil2.yaml", 'MODEL:\n  POSEMBED_SCALE: !!python/object/apply:eval ["open(\'x\')"]\n')
    with pytest.raises(ConfigError, match=r"evil2\.yaml: invalid YAML: line 2"):
        setup_cfg(g)
