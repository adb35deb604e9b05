"""Fixtures for the predictor / pictures tests: a tiny MaftTask checkpoint and small images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

TRAIN_NAMES = ["sky", "grass", "tree", "road"]
TRAIN_SEEN = [True, True, True, False]  # "road" has no training labels (zero-shot split)

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


def lightning_checkpoint(task: torch.nn.Module, path: Path) -> Path:
    """Save ``task`` the way Lightning does (state_dict + hyper_parameters)."""
    import lightning as L

    ckpt = {
        "state_dict": task.state_dict(),
        "hyper_parameters": dict(task.hparams),
        "pytorch-lightning_version": L.__version__,
        "epoch": 0,
        "global_step": 0,
    }
    torch.save(ckpt, path)
    return path


@pytest.fixture(scope="session")
def tiny_task():
    """A random-weight MaftTask (tiny CLIP and generator); its student differs from the teacher."""
    from maft.data.vocabulary import Vocabulary
    from maft.tasks.maft_task import MaftTask

    torch.manual_seed(0)
    vocab = Vocabulary.from_names(TRAIN_NAMES, seen=TRAIN_SEEN)
    task = MaftTask(
        vocabulary=vocab.to_dict(), clip=dict(TINY_CLIP), generator=dict(TINY_GENERATOR)
    )
    with torch.no_grad():  # make MAFT differ from frozen CLIP, as after fine-tuning
        for _, p in task.trainable_parameters():
            p.add_(0.05 * torch.randn_like(p))
    return task.eval()


@pytest.fixture(scope="session")
def maft_ckpt(tiny_task, tmp_path_factory) -> Path:
    """A MaftTask checkpoint file of the tiny task."""
    return lightning_checkpoint(tiny_task, tmp_path_factory.mktemp("ckpt") / "maft.ckpt")


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
