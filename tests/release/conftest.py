"""Fixtures of the release-parity tests: the golden data of the official whole-model forward.

``shared/reference/golden/release/`` (beside the checkout, or ``MAFT_GOLDEN_DIR``/release) holds a
release-format checkpoint, the official resolved config, the input image and every intermediate
tensor of the official forward. The files are not copied into git: a CI run without them fails,
a local run skips.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from release_helpers import assert_close_rel, sub_state_dict  # noqa: F401 (re-export)

_HERE = Path(__file__).parent
_CANDIDATES = [
    Path(os.environ["MAFT_GOLDEN_DIR"]) / "release" if "MAFT_GOLDEN_DIR" in os.environ else None,
    _HERE.parents[1].parent / "shared" / "reference" / "golden" / "release",
]


def _release_dir() -> Path:
    for d in _CANDIDATES:
        if d is not None and (d / "maft_dev" / "weights.pth").is_file():
            return d
    msg = "golden/release not found (set MAFT_GOLDEN_DIR to shared/reference/golden)"
    if os.environ.get("CI"):
        pytest.fail(msg)
    pytest.skip(msg)


@pytest.fixture(scope="session")
def release_dir() -> Path:
    """Folder of the release golden sets (maft_dev/, freeseg_dev/, key lists, configs)."""
    return _release_dir()


@pytest.fixture(scope="session")
def maft_dev(release_dir: Path) -> dict:
    """maft_dev: ``state_dict`` (official keys), ``inputs``, ``outputs`` and the file paths."""
    d = release_dir / "maft_dev"
    ckpt = torch.load(d / "weights.pth", map_location="cpu", weights_only=True)
    return {
        "dir": d,
        "weights": d / "weights.pth",
        "config": d / "config.yaml",
        "image": d / "image.png",
        "state_dict": ckpt["model"],
        "inputs": torch.load(d / "inputs.pt", weights_only=False),
        "outputs": torch.load(d / "outputs.pt", weights_only=False),
    }


@pytest.fixture(scope="session")
def freeseg_dev(release_dir: Path, maft_dev: dict) -> dict:
    """freeseg_dev: the FreeSeg meta-architecture on maft_dev's weights (outputs that differ)."""
    d = release_dir / "freeseg_dev"
    return {
        "dir": d,
        "config": d / "config.yaml",
        "inputs": torch.load(d / "inputs.pt", weights_only=False),
        "outputs": torch.load(d / "outputs_freeseg_only.pt", weights_only=False),
    }


@pytest.fixture(scope="session")
def golden_generator(maft_dev: dict) -> torch.nn.Module:
    """maft_dev's generator at the sizes its config.yaml names, official weights, eval mode.

    Built from the config (not hard-coded sizes), so the parity tests follow any golden set.
    """
    from maft.models.proposals import build_generator
    from maft.models.release import generator_from_config, read_official_config

    kwargs = generator_from_config(read_official_config(maft_dev["config"]), "config.yaml")
    gen = build_generator(kwargs)
    sd = {
        ("void_embedding" if k == "clip_adapter.non_object_embedding" else k): v
        for k, v in maft_dev["state_dict"].items()
        if k.startswith(("backbone.", "sem_seg_head.")) or k == "clip_adapter.non_object_embedding"
    }
    gen.load_state_dict(sd, strict=True)
    return gen.eval()
