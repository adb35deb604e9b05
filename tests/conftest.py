"""Fixtures shared by every test folder: the tiny MaftTask and its checkpoint (built once)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from maft_testing import TINY_LITE_KWARGS, lightning_checkpoint, tiny_maft_task


@pytest.fixture(scope="session")
def tiny_task() -> torch.nn.Module:
    """A random-weight MaftTask (tiny CLIP and generator); its student differs from the teacher."""
    return tiny_maft_task()


@pytest.fixture(scope="session")
def maft_ckpt(tiny_task: torch.nn.Module, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A MaftTask checkpoint file of the tiny task."""
    return lightning_checkpoint(tiny_task, tmp_path_factory.mktemp("ckpt") / "maft.ckpt")


@pytest.fixture
def tiny_generator_kwargs() -> dict:
    """Keyword arguments of a tiny lite MaskProposalGenerator (timm test_resnet, hidden 32)."""
    return dict(TINY_LITE_KWARGS)
