"""Shared test helpers: the tiny MaftTask settings and a Lightning-format checkpoint writer.

Importable from every test folder (``tests/`` is on ``sys.path`` through ``tests/conftest.py``).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
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
#: Keyword arguments of a tiny lite MaskProposalGenerator (timm test_resnet, hidden 32).
TINY_LITE_KWARGS = {
    "backbone": "test_resnet",
    "hidden_dim": 32,
    "num_queries": 6,
    "dec_layers": 2,
    "nheads": 4,
    "dim_feedforward": 64,
    "enc_layers": 1,
    "enc_dim_feedforward": 64,
    "mask_dim": 32,
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


def tiny_maft_task() -> torch.nn.Module:
    """A random-weight MaftTask (tiny CLIP and generator) whose student differs from the teacher."""
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


def bilinear_ref(x: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """Half-pixel bilinear resize (align_corners False), edges clamped, as a plain float64 loop."""
    h, w = x.shape
    out = np.zeros((out_h, out_w))
    for i in range(out_h):
        for j in range(out_w):
            y = min(max((i + 0.5) * h / out_h - 0.5, 0.0), h - 1)
            xx = min(max((j + 0.5) * w / out_w - 0.5, 0.0), w - 1)
            y0, x0 = int(math.floor(y)), int(math.floor(xx))
            y1, x1 = min(y0 + 1, h - 1), min(x0 + 1, w - 1)
            dy, dx = y - y0, xx - x0
            out[i, j] = (
                x[y0, x0] * (1 - dy) * (1 - dx)
                + x[y0, x1] * (1 - dy) * dx
                + x[y1, x0] * dy * (1 - dx)
                + x[y1, x1] * dy * dx
            )
    return out


def quiet_trainer(tmp_path: Path, steps: int, **kwargs: Any) -> Any:
    """A 1-device CPU Lightning Trainer for unit tests: no logger, checkpoints, bars or summary."""
    import lightning as L

    args = {
        "accelerator": "cpu",
        "devices": 1,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "num_sanity_val_steps": 0,
        "default_root_dir": tmp_path,
    }
    return L.Trainer(max_steps=steps, **{**args, **kwargs})
