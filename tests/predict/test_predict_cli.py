"""``maft.predict`` writes only where asked, never overwrites, and survives a bad image."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from maft.errors import ConfigError, DatasetFileError
from maft.predict_run import run_predict_cli

ROOT = Path(__file__).resolve().parents[2]


def _images(folder: Path, bad: bool = False) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        Image.fromarray(rng.integers(0, 255, (40, 70, 3), dtype=np.uint8)).save(
            folder / f"{name}.png"
        )
    if bad:
        (folder / "c.png").write_bytes(b"not a png")
    return folder


def _cfg(ckpt: Path, images: Path, out: Path, **extra) -> dict:
    return {
        "ckpt_path": str(ckpt),
        "image": str(images),
        "vocabulary": ["sky", "cat"],
        "output_dir": str(out),
        "device": "cpu",
        "top_k": 2,
        **extra,
    }


def test_cli_with_output_dir_creates_nothing_else(maft_ckpt: Path, tmp_path: Path) -> None:
    images = _images(tmp_path / "in")
    work = tmp_path / "cwd"
    work.mkdir()
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    cmd = [
        sys.executable,
        "-m",
        "maft.predict",
        f"ckpt_path={maft_ckpt}",
        f"image={images}",
        "vocabulary=[sky,cat]",
        f"output_dir={out}",
        "device=cpu",
    ]
    run = subprocess.run(cmd, cwd=work, capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert sorted(p.name for p in out.iterdir()) == sorted(
        f"{s}{x}" for s in ("a", "b") for x in ("_label.png", "_overlay.png", ".json")
    )
    assert list(work.iterdir()) == []  # no outputs/, no .hydra, no log file in the working folder
    again = subprocess.run(cmd, cwd=work, capture_output=True, text=True, env=env, timeout=300)
    assert again.returncode == 2 and "refusing to overwrite" in again.stderr
    assert list(work.iterdir()) == []


def test_failure_before_work_creates_nothing(maft_ckpt: Path, tmp_path: Path) -> None:
    images = _images(tmp_path / "in")
    out = tmp_path / "never"
    with pytest.raises(Exception):  # noqa: B017 - a missing checkpoint, whatever its error class
        run_predict_cli(_cfg(tmp_path / "missing.ckpt", images, out))
    assert not out.exists()


def test_unwritable_output_is_caught_before_any_work(maft_ckpt: Path, tmp_path: Path) -> None:
    images = _images(tmp_path / "in")
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(ConfigError, match="not writable"):
        run_predict_cli(_cfg(tmp_path / "missing.ckpt", images, blocker / "sub"))


def test_overwrite_true_replaces(maft_ckpt: Path, tmp_path: Path) -> None:
    images = _images(tmp_path / "in")
    out = tmp_path / "out"
    run_predict_cli(_cfg(maft_ckpt, images, out))
    with pytest.raises(ConfigError, match="refusing to overwrite"):
        run_predict_cli(_cfg(maft_ckpt, images, out))
    assert run_predict_cli(_cfg(maft_ckpt, images, out, overwrite=True))["num_images"] == 2


def test_folder_goes_on_past_an_unreadable_image(maft_ckpt: Path, tmp_path: Path) -> None:
    images = _images(tmp_path / "in", bad=True)
    out = tmp_path / "out"
    with pytest.raises(DatasetFileError, match=r"1 of 3 image\(s\)") as err:
        run_predict_cli(_cfg(maft_ckpt, images, out))
    assert "c.png" in str(err.value)
    assert (out / "a_overlay.png").is_file() and (out / "b.json").is_file()
    assert not (out / "c.json").exists()
