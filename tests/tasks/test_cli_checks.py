"""What train and eval check before any work: a writable run folder, overrides Hydra can read."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from maft.config import compose
from maft.errors import ConfigError
from maft.runner import run_eval, run_train
from maft.train import check_writable, override_quoting_error, run_folder_problem

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "HF_HUB_OFFLINE": "1"}


def _cli(module: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", module, *args]
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=ENV, timeout=300)


def _unwritable(tmp_path: Path) -> Path:
    """A run folder that cannot be created, for any user (root included): a file is in the way."""
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    return blocker / "run"


def _train_overrides(tmp_path: Path) -> list[str]:
    """A folder run whose data step would fail by name (the root does not exist)."""
    return [
        "experiment=folder_cpu",
        f"data.root={tmp_path / 'no_such_data'}",
        f"paths.cache_dir={tmp_path / 'cache'}",
        "logger=none",
    ]


def test_train_and_eval_refuse_an_unwritable_run_folder_before_the_data_step(
    tmp_path: Path,
) -> None:
    out = _unwritable(tmp_path)
    cfg = compose(_train_overrides(tmp_path), output_dir=out)
    # the data root is missing too: a DatasetLayoutError would mean the data step ran first
    with pytest.raises(ConfigError, match=r"a_file/run is not writable.*hydra\.run\.dir="):
        run_train(cfg)
    ecfg = compose(
        [*_train_overrides(tmp_path), f"ckpt_path={tmp_path / 'missing.ckpt'}"],
        config_name="eval",
        output_dir=out,
    )
    with pytest.raises(ConfigError, match="not writable"):
        run_eval(ecfg)
    assert "not writable" in run_folder_problem(out, "eval")
    with pytest.raises(ConfigError, match=r"not writable.*output_dir="):
        check_writable(out)  # the predict CLI's check is the same function


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file permissions")
def test_read_only_run_folder_is_refused(tmp_path: Path) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        for out in (ro, ro / "run"):
            cfg = compose(_train_overrides(tmp_path), output_dir=out)
            with pytest.raises(ConfigError, match="not writable"):
                run_train(cfg)
        assert list(ro.iterdir()) == []
    finally:
        ro.chmod(0o700)


def test_cli_unwritable_folders_exit_2_with_one_line(tmp_path: Path) -> None:
    out = _unwritable(tmp_path)
    named = _cli("maft.train", *_train_overrides(tmp_path), f"hydra.run.dir={out}", cwd=tmp_path)
    assert named.returncode == 2, named.stderr[-2000:]
    assert "ConfigError" in named.stderr and "is not writable" in named.stderr
    assert "Traceback" not in named.stderr
    work = tmp_path / "cwd"
    work.mkdir()
    (work / "outputs").write_text("a file where the run folders would go")
    unnamed = _cli("maft.eval", *_train_overrides(tmp_path), "ckpt_path=x.ckpt", cwd=work)
    assert unnamed.returncode == 2, unnamed.stderr[-2000:]
    assert "outputs" in unnamed.stderr and "not writable" in unnamed.stderr
    assert "Traceback" not in unnamed.stderr


@pytest.mark.parametrize(
    "argv, suggestion",
    [
        (["data.root=/data/my", "photos"], '"data.root=/data/my photos"'),
        (["data.root=/data/x(1)"], "\"data.root='/data/x(1)'\""),
        (["data.root=/data/Straße"], "\"data.root='/data/Straße'\""),
        (["-m", "data.root=/data/a&b"], "\"data.root='/data/a&b'\""),
        (["--cfg", "job", "data.root=/data/it's"], """'data.root="/data/it'"'"'s"'"""),
    ],
)
def test_override_quoting_hint(argv: list[str], suggestion: str) -> None:
    message = override_quoting_error(["experiment=folder_cpu", *argv])
    assert message is not None and "quote" in message.lower()
    assert message.endswith(suggestion)
    fixed = suggestion.replace("'\"'\"'", "'")[1:-1]  # what the shell hands over
    assert override_quoting_error(["experiment=folder_cpu", fixed]) is None


def test_readable_overrides_and_flags_pass() -> None:
    argv = ["-m", "--cfg", "job", "seed=1,2", "~logger", "data.root=/a/b c", "+x.y=[1,2]"]
    assert override_quoting_error(argv) is None
    assert override_quoting_error(["--info", "defaults", "seed=2"]) is None
    assert "+foo=<value>" in override_quoting_error(["+foo"])


@pytest.mark.parametrize("module", ["maft.train", "maft.eval"])
def test_cli_bad_override_prints_one_line_and_exits_2(module: str, tmp_path: Path) -> None:
    args = ["experiment=folder_cpu", "data=folder", "data.root=/my", "data"]  # "/my data" unquoted
    run = _cli(module, *args, cwd=tmp_path)
    assert run.returncode == 2, run.stderr[-2000:]
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("maft: error: ConfigError:")
    assert lines[0].endswith('"data.root=/my data"') and "Quote" in lines[0]
    assert list(tmp_path.iterdir()) == []  # nothing written: no outputs/ folder
