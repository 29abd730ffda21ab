import pytest

from trajlab.config import ConfigError, RunConfig, parse_override, preset_names, resolve_config

PRESETS = [
    "fashion-resnet20",
    "mnist-cnn",
    "cifar10-resnet20",
    "cifar10-resnet18",
    "imagenet-resnet34",
    "imagenet-resnet50",
]


def test_required_presets_exist_and_resolve():
    assert set(PRESETS) <= set(preset_names())
    for name in preset_names():
        cfg = resolve_config(name)
        assert cfg.preset == name
        assert RunConfig.from_dict(cfg.to_dict()) == cfg  # round trip through JSON-able dicts


def test_overrides_types_and_coercion():
    cfg = resolve_config(
        "fashion-resnet20", overrides=["optim.lr=0.05", "train.steps=7", "averaging.two_point_gaps=[10, 20]"]
    )
    assert cfg.optim.lr == 0.05 and cfg.train.steps == 7
    assert cfg.averaging.two_point_gaps == (10, 20)
    cfg = resolve_config("fashion-resnet20", overrides=["optim.lr=1"])  # int where a float is expected
    assert isinstance(cfg.optim.lr, float)
    cfg = resolve_config("fashion-resnet20", overrides=["model.name=resnet32", "data.data_dir=/tmp/x"])
    assert cfg.model.name == "resnet32" and cfg.data.data_dir == "/tmp/x"


@pytest.mark.parametrize(
    "override,message",
    [
        ("optim.lrr=0.1", "unknown key optim.lrr (did you mean optim.lr?)"),
        ("optimm.lr=0.1", "unknown key optimm"),
        ("optim.lr=abc", "optim.lr expects a number, got 'abc'"),
        ("optim.lr=-1", "optim.lr must be > 0"),
        ("optim.lr=0", "optim.lr must be > 0"),
        ("train.batch_size=0", "train.batch_size must be > 0"),
        ("train.batch_size=1.5", "train.batch_size expects an integer"),
        ("train.progress=maybe", "train.progress expects true or false"),
        ("optim", "--set expects key=value"),
    ],
)
def test_bad_overrides_have_clear_messages(override, message):
    with pytest.raises(ConfigError) as e:
        resolve_config("fashion-resnet20", overrides=[override])
    assert message in str(e.value)


def test_unknown_preset_suggests():
    with pytest.raises(ConfigError, match="did you mean fashion-resnet20"):
        resolve_config("fashion-resnet2")


def test_parse_override_values():
    assert parse_override("a.b=1") == (["a", "b"], 1)
    assert parse_override("a.b=true") == (["a", "b"], True)
    assert parse_override("a.b=[1, 2]") == (["a", "b"], [1, 2])
    assert parse_override("a.b=hello") == (["a", "b"], "hello")
    assert parse_override("a.b=null") == (["a", "b"], None)


def test_config_file_layers(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text("[optim]\nlr = 0.3\n[train]\nsteps = 5\n")
    cfg = resolve_config("mnist-cnn", f, ["train.steps=6"])
    assert cfg.optim.lr == 0.3 and cfg.train.steps == 6 and cfg.model.name == "simple_cnn"
    bad = tmp_path / "bad.toml"
    bad.write_text("[optim\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        resolve_config(None, bad)
    with pytest.raises(ConfigError, match="does not exist"):
        resolve_config(None, tmp_path / "missing.toml")
