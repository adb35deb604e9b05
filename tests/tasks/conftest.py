"""Fixtures for task and runner tests: tiny models, a synthetic folder dataset, composed configs."""

from __future__ import annotations

from pathlib import Path

import pytest

from maft.data.synthetic import write_benchmark

TINY_DATA = [
    "data.batch_size=2",
    "data.num_workers=0",
    "data.pin_memory=false",
    "data.train_short_sides=[64]",
    "data.crop_size=64",
    "data.test_short_side=64",
    "data.color_jitter=false",
]
TINY_MODEL = [
    "model/clip=tiny",
    "model/proposals=tiny",
    "model.proposal_train.max_steps=3",
    "model.proposal_train.criterion.num_points=256",
    "model.maft.max_steps=2",
    "trainer=smoke",
    "logger=none",
    "callbacks=none",
]


@pytest.fixture(scope="session")
def folder_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny custom-folder dataset (5 classes, 'water' unseen) written in the real format."""
    root = tmp_path_factory.mktemp("data")
    return Path(write_benchmark(root, "folder", n_images=4, size=(64, 80), seed=0).root)


@pytest.fixture()
def tiny_overrides(folder_root: Path, tmp_path: Path) -> list[str]:
    """Overrides that make any experiment run on the folder dataset with tiny models."""
    return [
        "data=folder",
        f"data.root={folder_root}",
        "split=from_file",
        f"paths.cache_dir={tmp_path / 'cache'}",
        *TINY_DATA,
        *TINY_MODEL,
    ]
