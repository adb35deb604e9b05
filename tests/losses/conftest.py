"""Fixtures for the loss tests: seeded global RNG and a seeded CPU generator."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture
def gen() -> torch.Generator:
    """A seeded CPU generator so every random case is reproducible."""
    return torch.Generator().manual_seed(0)
