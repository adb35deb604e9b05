"""Fixtures of the data-layer tests: an isolated cache folder and synthetic benchmark writers."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Keep kept-image caches out of ~/.cache."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("MAFT_CACHE_DIR", str(cache))
    return cache


@pytest.fixture
def load_script():
    """Import ``scripts/<name>.py`` as a module (the scripts are not a package)."""

    def _load(name: str) -> ModuleType:
        spec = importlib.util.spec_from_file_location(f"_script_{name}", SCRIPTS / f"{name}.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod

    return _load


def _paint(rects, shape, ignore: int) -> np.ndarray:
    out = np.full(shape, ignore, dtype=np.int64)
    for y0, x0, y1, x1, cls in rects:
        for y in range(y0, y1):
            for x in range(x0, x1):
                out[y, x] = cls
    return out


@pytest.fixture
def paint():
    """Independent expected label: paint ``(y0, x0, y1, x1, cls)`` rectangles in order."""
    return _paint
