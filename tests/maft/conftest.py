"""Fixtures for the MAFT loss / ensemble / inference tests (seeded float64 generators)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture
def gen() -> torch.Generator:
    """A seeded CPU generator so every random case is reproducible."""
    return torch.Generator().manual_seed(0)
