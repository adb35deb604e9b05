"""Fixtures for the proposal generator, its losses and ProposalTask (tiny, CPU, offline)."""

from __future__ import annotations

import pytest
import torch

TINY_GENERATOR = {
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


@pytest.fixture
def tiny_generator_kwargs() -> dict:
    """Keyword arguments of a tiny MaskProposalGenerator (timm test_resnet, hidden 32)."""
    return dict(TINY_GENERATOR)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
