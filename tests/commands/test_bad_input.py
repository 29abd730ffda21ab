"""Bad input: one clear line on stderr, the documented exit status, and nothing written."""

from __future__ import annotations

import errno
import os

import pytest

from trajlab.cli import main

TINY = [
    "--set",
    "data.name=synthetic",
    "--set",
    "data.pad_to=0",
    "--set",
    "data.train_subset=0",
    "--set",
    "data.test_subset=0",
    "--set",
    "model.width=4",
    "--set",
    "train.steps=4",
    "--set",
    "train.batch_size=16",
    "--set",
    "train.progress=false",
    "--set",
    "data.synthetic={n = 64, n_test = 32, num_classes = 4, channels = 1, size = 16, seed = 3}",
]


def _run(argv: list[str], capsys) -> tuple[int, str]:
    code = main(argv, environ={})
    err = capsys.readouterr().err.strip()
    return code, err


def _train(out, *overrides: str) -> list[str]:
    extra = [x for o in overrides for x in ("--set", o)]
    return ["train", "--out", str(out), *TINY, *extra]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("optim.lr=inf", "optim.lr must be a finite number"),
        ("optim.lr=nan", "optim.lr must be a finite number"),
        ("train.epochs=inf", "train.epochs must be a finite number"),
        ("train.device='bogus'", "unknown device 'bogus'"),
        ("optim.momentum=1.0", "optim.momentum must be in [0, 1)"),
        ("optim.lr=-0.1", "optim.lr must be > 0"),
        ("optim.weight_decay=-1.0", "optim.weight_decay must be >= 0"),
        ("train.batch_size=0", "train.batch_size must be > 0"),
        ("averaging.ema_decays=[1.5]", "averaging.ema_decays must lie in [0, 1)"),
        ("averaging.ema_half_life_steps=[0.0]", "averaging.ema_half_life_steps must be > 0"),
        ("averaging.two_point_gaps=[0]", "averaging.two_point_gaps must be >= 1"),
        ("record.checkpoint_every_steps=-1", "record.checkpoint_every_steps must be >= 0"),
        ("record.enabled=true", None),  # a baseline that works (checked separately below)
        ("schedule.name='sawtooth'", "schedule.name must be one of"),
        ("train.no_such_key=1", "unknown key train.no_such_key"),
    ],
)
def test_config_values_are_checked_before_anything_is_written(tmp_path, capsys, override, message) -> None:
    if message is None:
        return
    out = tmp_path / "run"
    code, err = _run(_train(out, override), capsys)
    assert code == 2, err
    assert message in err and "\n" not in err, err
    assert not out.exists()


def test_a_bad_snapshot_schedule_writes_nothing(tmp_path, capsys) -> None:
    out = tmp_path / "run"
    code, err = _run(_train(out, "record.enabled=true", "record.snapshots={every_steps = 0}"), capsys)
    assert code == 2 and "record.snapshots" in err and "\n" not in err
    assert not out.exists()


def test_paths_that_cannot_hold_a_run(tmp_path, capsys) -> None:
    a_file = tmp_path / "file"
    a_file.write_text("x")
    for out, message in (
        (a_file / "run", "is a file, not a directory"),
        (tmp_path / ("x" * 300) / "run", "longer than 255 bytes"),
        (a_file, "is a file, not a directory"),
    ):
        code, err = _run(_train(out), capsys)
        assert code == 2 and message in err and "\n" not in err, err
    assert a_file.read_text() == "x" and sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_read_only_file_system(tmp_path, capsys) -> None:
    if os.access("/sys", os.W_OK):
        pytest.skip("no read-only file system to try here")
    code, err = _run(_train("/sys/trajlab-run"), capsys)
    assert code == 2 and "not writable" in err and "\n" not in err


def test_a_huge_data_dir(tmp_path, capsys) -> None:
    code, err = _run(_train(tmp_path / "run", f"data.data_dir='{'d' * 100_000}'"), capsys)
    assert code == 2 and "data.data_dir is not a usable path" in err and len(err) < 300
    assert not (tmp_path / "run").exists()


def test_out_of_disk_space_has_its_own_exit_status(tmp_path, capsys, monkeypatch) -> None:
    from trajlab import files

    real = files.write_bytes_atomic

    def full(path, data, *, root=None):  # noqa: ANN001, ANN202
        if str(path).endswith("provenance.json"):
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(path, data, root=root)

    monkeypatch.setattr(files, "write_bytes_atomic", full)
    code, err = _run(_train(tmp_path / "run"), capsys)
    assert code == 3 and "out of disk space" in err and "\n" not in err, err


def test_runs_commands_on_a_missing_directory(tmp_path, capsys) -> None:
    for action in ("show", "verify"):
        code, err = _run(["runs", action, str(tmp_path / "nope")], capsys)
        assert code == 2 and "no such run directory" in err


def test_environment_values(capsys) -> None:
    assert main(["presets"], environ={"TRAJLAB_NUM_THREADS": "-1"}) == 2
    assert "TRAJLAB_NUM_THREADS must be >= 0" in capsys.readouterr().err


def test_debug_log_level_shows_the_traceback(tmp_path, capsys) -> None:
    code = main(["--log-level", "DEBUG", *_train(tmp_path / "run", "optim.lr=inf")], environ={})
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" in err and err.strip().endswith("got inf")
