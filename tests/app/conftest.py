"""Fixtures for the web app tests: a tiny MaftTask checkpoint, its Predictor, small images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

TRAIN_NAMES = ["sky", "grass", "tree", "road"]
TRAIN_SEEN = [True, True, True, False]  # "road" has no training labels

TINY_CLIP = {
    "name": "maft-tiny",
    "embed_dim": 32,
    "pretrained": None,
    "quick_gelu": None,
    "start_layer": 1,
    "input_size": 32,
}
TINY_GENERATOR = {
    "backbone": "test_resnet.r160_in1k",
    "pretrained_backbone": False,
    "backbone_weights": None,
    "freeze_bn": False,
    "hidden_dim": 32,
    "num_queries": 8,
    "dec_layers": 2,
    "nheads": 2,
    "dim_feedforward": 64,
    "enc_layers": 1,
    "enc_dim_feedforward": 64,
    "mask_dim": 32,
    "clip_dim": 32,
    "context_interaction": False,
}


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """Tiny models run fastest on one thread (thread sync dominates on a shared 2-core machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def save_checkpoint(task: torch.nn.Module, path: Path) -> Path:
    """Save ``task`` as Lightning does (state_dict + hyper_parameters)."""
    import lightning as L

    torch.save(
        {
            "state_dict": task.state_dict(),
            "hyper_parameters": dict(task.hparams),
            "pytorch-lightning_version": L.__version__,
            "epoch": 0,
            "global_step": 0,
        },
        path,
    )
    return path


@pytest.fixture(scope="session")
def app_ckpt(tmp_path_factory) -> Path:
    """A random-weight MaftTask checkpoint whose fine-tuned tower differs from the frozen one."""
    from maft.data.vocabulary import Vocabulary
    from maft.tasks.maft_task import MaftTask

    torch.manual_seed(0)
    vocab = Vocabulary.from_names(TRAIN_NAMES, seen=TRAIN_SEEN)
    task = MaftTask(
        vocabulary=vocab.to_dict(), clip=dict(TINY_CLIP), generator=dict(TINY_GENERATOR)
    )
    with torch.no_grad():  # as after fine-tuning: MAFT differs from frozen CLIP
        for _, p in task.trainable_parameters():
            p.add_(0.05 * torch.randn_like(p))
    return save_checkpoint(task, tmp_path_factory.mktemp("app_ckpt") / "maft.ckpt")


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
