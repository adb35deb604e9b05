"""Fixtures of the built-in world tests: a tiny world written once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from maft.world import write_world


@pytest.fixture(scope="session")
def world_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 6 train + 3 val world of 32 px scenes, seed 7."""
    root = tmp_path_factory.mktemp("world")
    write_world(root, n_train=6, n_val=3, size=32, seed=7, progress=False)
    return root
