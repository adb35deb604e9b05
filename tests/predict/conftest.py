"""Fixtures for the predictor / pictures tests: a tiny MaftTask checkpoint and small images."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from maft_testing import TINY_CLIP, TINY_GENERATOR, TRAIN_NAMES, TRAIN_SEEN, lightning_checkpoint  # noqa: F401,E501


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """Tiny models run fastest on one thread (thread sync dominates on a shared 2-core machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def predictor(maft_ckpt):
    """A CPU Predictor at a small test size (short side 32) for speed."""
    from maft.predictor import Predictor

    return Predictor.from_checkpoint(maft_ckpt, device="cpu", short_side=32)


@pytest.fixture
def rgb() -> np.ndarray:
    """A seeded non-square uint8 image [40, 70, 3] with some structure."""
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, size=(40, 70, 3), dtype=np.uint8)
    img[:20, :35] = (200, 30, 30)
    img[20:, 35:] = (30, 200, 60)
    return img
