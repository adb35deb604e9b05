"""Fixtures for the model tests (ensemble, inference, segmenter): a seeded generator."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture
def gen() -> torch.Generator:
    """A seeded CPU generator so every random case is reproducible."""
    return torch.Generator().manual_seed(0)
