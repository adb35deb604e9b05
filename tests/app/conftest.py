"""Fixtures for the web app tests: a tiny MaftTask checkpoint, its Predictor, small images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from maft_testing import TINY_CLIP, TINY_GENERATOR, TRAIN_NAMES, TRAIN_SEEN  # noqa: F401
from maft_testing import lightning_checkpoint as save_checkpoint  # noqa: F401


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """Tiny models run fastest on one thread (thread sync dominates on a shared 2-core machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def app_ckpt(maft_ckpt: Path) -> Path:
    """The shared tiny MaftTask checkpoint (its fine-tuned tower differs from the frozen one)."""
    return maft_ckpt


@pytest.fixture(scope="session")
def predictor(app_ckpt):
    """A CPU Predictor of the tiny checkpoint at a small test size (short side 32)."""
    from maft.predictor import Predictor

    return Predictor.from_checkpoint(app_ckpt, device="cpu", short_side=32)


def structured_image(h: int = 40, w: int = 70, seed: int = 0) -> np.ndarray:
    """A seeded non-square uint8 image with a few flat regions."""
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    img[: h // 2, : w // 2] = (200, 30, 30)
    img[h // 2 :, w // 2 :] = (30, 200, 60)
    return img


@pytest.fixture
def rgb() -> np.ndarray:
    """A seeded uint8 image [40, 70, 3]."""
    return structured_image()


@pytest.fixture
def image_file(tmp_path, rgb) -> Path:
    """``rgb`` as a PNG file."""
    path = tmp_path / "photo.png"
    Image.fromarray(rgb).save(path)
    return path
