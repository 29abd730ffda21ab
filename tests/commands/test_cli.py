"""CLI smoke tests and the bad-input contract: one clear line on stderr, exit status 2, nothing written."""

from __future__ import annotations

import pytest

from trajlab.cli import main


def _snapshot(root):
    return {p: p.read_bytes() for p in root.rglob("*") if p.is_file()} if root.exists() else None


def test_help_everywhere(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for cmd in ("train", "presets", "demo", "runs"):
        assert cmd in out
    for cmd in (["train"], ["presets"], ["demo"], ["runs"], ["runs", "show"], ["runs", "verify"]):
        with pytest.raises(SystemExit) as e:
            main([*cmd, "--help"])
        assert e.value.code == 0


def test_presets_lists_and_shows(capsys):
    assert main(["presets"]) == 0
    out = capsys.readouterr().out
    for name in (
        "fashion-resnet20",
        "mnist-cnn",
        "cifar10-resnet20",
        "cifar10-resnet18",
        "imagenet-resnet34",
    ):
        assert name in out
    assert main(["presets", "mnist-cnn"]) == 0
    assert "simple_cnn" in capsys.readouterr().out


def test_train_smoke(tmp_path, tiny_overrides, capsys):
    args = ["train", "--out", str(tmp_path / "run"), "-q"]
    for o in tiny_overrides:
        args += ["--set", o]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "run complete" in out and "test acc" in out
    assert (tmp_path / "run" / "metrics.jsonl").is_file()


def _cifar_garbage(tmp_path):
    d = tmp_path / "cifar" / "cifar-10-batches-py"
    d.mkdir(parents=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (d / name).write_bytes(b"this is not a cifar batch")
    return tmp_path / "cifar"


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--preset", "nope"], "unknown preset 'nope'"),
        (["--set", "optim.lrr=0.1"], "unknown key optim.lrr (did you mean optim.lr?)"),
        (["--set", "train.batch_size=abc"], "train.batch_size expects an integer, got 'abc'"),
        (["--set", "optim.lr=-0.1"], "optim.lr must be > 0"),
        (["--set", "optim.lr=0"], "optim.lr must be > 0"),
        (["--set", "train.batch_size=0"], "train.batch_size must be > 0"),
        (["--set", "train.batch_size=-3"], "train.batch_size must be > 0"),
        ("MISSING_DIR", "/definitely/not/here"),
        (["--set", "model.name=resnet21"], "resnet21"),
        (["--set", "train.batch_size=100000"], "larger than the training set"),
        ("CIFAR", "not"),
    ],
)
def test_bad_input_one_line_exit_2_nothing_written(tmp_path, tiny_overrides, capsys, extra, message):
    out = tmp_path / "run"
    base = ["train", "--out", str(out), "-q"]
    if extra in ("CIFAR", "MISSING_DIR"):
        data_dir = _cifar_garbage(tmp_path) if extra == "CIFAR" else "/definitely/not/here"
        extra = ["--set", "data.name=cifar10", "--set", f"data.data_dir={data_dir}"]
        overrides = [o for o in tiny_overrides if not o.startswith(("data.synthetic", "data.name"))]
    else:
        overrides = tiny_overrides
    args = base + [a for o in overrides for a in ("--set", o)] + extra
    if extra[:1] == ["--preset"]:
        args = base + extra
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("trajlab: error: ") and "\n" not in err, err
    assert message in err
    assert "Traceback" not in err
    assert not out.exists()


def test_out_dir_with_other_run_is_refused_untouched(tmp_path, tiny_overrides, capsys):
    out = tmp_path / "run"
    args = ["train", "--out", str(out), "-q"] + [a for o in tiny_overrides for a in ("--set", o)]
    assert main(args) == 0
    before = _snapshot(out)
    assert main([*args, "--set", "optim.lr=0.02"]) == 2
    assert "already holds a different run" in capsys.readouterr().err
    assert _snapshot(out) == before
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    assert main(["train", "--out", str(tmp_path / "other"), "-q"] + args[4:]) == 2
    assert "not empty and is not a trajlab run" in capsys.readouterr().err
    assert (tmp_path / "other" / "notes.txt").read_text() == "mine"


def test_resume_without_checkpoint_is_clear(tmp_path, tiny_overrides, capsys):
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), "-q"] + [a for o in tiny_overrides for a in ("--set", o)]) == 0
    assert main(["train", "--resume", str(out)]) == 2
    assert "already complete" in capsys.readouterr().err
    assert main(["train", "--resume", str(tmp_path / "nothing")]) == 2
    assert "not a trajlab run directory" in capsys.readouterr().err


def test_runs_table_over_seeds(tmp_path, tiny_overrides, capsys):
    avg = ["averaging.ema_decays=[0.9]", "averaging.bn_batches=1"]
    dirs = []
    for seed in (0, 1):
        out = tmp_path / f"s{seed}"
        args = ["train", "--out", str(out), "-q", "--set", f"train.seed={seed}"]
        assert main(args + [a for o in [*tiny_overrides, *avg] for a in ("--set", o)]) == 0
        dirs.append(str(out))
    capsys.readouterr()
    assert main(["runs", "table", *dirs, "--json"]) == 0
    import json

    table = json.loads(capsys.readouterr().out)
    assert table["steps"] == [6, 12]
    assert {"live (running BN)", "live (recalibrated BN)", "ema_0.9"} <= set(table["models"])
    cell = table["cells"]["ema_0.9"]["12"]
    assert cell["n"] == 2 and abs(cell["mean"] - sum(cell["values"]) / 2) < 1e-12
    assert main(["runs", "table", *dirs]) == 0
    assert "± " in capsys.readouterr().out
    assert main(["runs", "table", str(tmp_path / "nope")]) == 2


def test_environment_is_read_by_the_cli_and_passed_down(tmp_path, monkeypatch, capsys):
    # TRAJLAB_DATA: a dataset found only there (mnist is searched in ./data/mnist otherwise);
    # TRAJLAB_NUM_THREADS: the thread count the command runs with, whatever the run's config says.
    import json
    import sys

    import torch

    sys.path.insert(0, str(__import__("pathlib").Path(__file__).parents[1] / "data"))
    from data_testutils import tiny_idx_arrays, write_idx_split

    monkeypatch.chdir(tmp_path)
    data = tmp_path / "elsewhere" / "mnist"
    write_idx_split(data, "train", *tiny_idx_arrays(64, 0), gz=False)
    write_idx_split(data, "test", *tiny_idx_arrays(32, 1), gz=False)
    argv = [
        "train",
        "--preset",
        "mnist-cnn",
        "--out",
        str(tmp_path / "run"),
        "-q",
        "--set",
        "train.steps=2",
        "--set",
        "train.batch_size=16",
        "--set",
        "train.num_threads=2",
    ]
    threads = torch.get_num_threads()
    try:
        assert main(argv, environ={}) == 2  # not found without it
        assert "mnist not found" in capsys.readouterr().err
        env = {"TRAJLAB_DATA": str(tmp_path / "elsewhere"), "TRAJLAB_NUM_THREADS": "1"}
        assert main(argv, environ=env) == 0
        assert torch.get_num_threads() == 1
        assert json.loads((tmp_path / "run" / "config.json").read_text())["data"]["data_dir"] is None
    finally:
        torch.set_num_threads(threads)
    assert main(["presets"], environ={"TRAJLAB_NUM_THREADS": "many"}) == 2
    assert "TRAJLAB_NUM_THREADS must be a whole number" in capsys.readouterr().err


def test_help_documents_the_environment_and_exit_codes(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for name in ("TRAJLAB_NUM_THREADS", "TRAJLAB_DATA", "TRAJLAB_CPU_KERNEL", "TRAJLAB_CACHE", "CC"):
        assert name in out
    assert "exit status: 0 success, 1" in out
