"""Data layer: benchmark layouts, readers, datasets, transforms, DataModules.

Layouts: docs/datasets.md; training data and evaluation protocol: docs/method.md §6, §7.

Exports resolve lazily so ``import maft.data.vocabulary`` (or a prepare script) does not import
lightning.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Vocabulary": "maft.data.vocabulary",
    "SemSegDataset": "maft.data.dataset",
    "folder_vocabulary": "maft.data.dataset",
    "SemSegCollate": "maft.data.collate",
    "build_train_transform": "maft.data.transforms",
    "build_test_transform": "maft.data.transforms",
    "SemSegDataModule": "maft.data.datamodule",
    "CocoStuffDataModule": "maft.data.datamodule",
    "VocDataModule": "maft.data.datamodule",
    "Ade20kDataModule": "maft.data.datamodule",
    "PascalContextDataModule": "maft.data.datamodule",
    "FolderDataModule": "maft.data.datamodule",
    "write_benchmark": "maft.data.synthetic",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'maft.data' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
