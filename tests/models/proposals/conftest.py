"""Fixtures for the proposal generator tests (tiny, CPU, offline; seeded)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
