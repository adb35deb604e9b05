"""maft: Mask-aware Fine-tuning of CLIP for zero-shot and open-vocabulary segmentation."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "Vocabulary": "maft.data.vocabulary",
    "ZeroShotSegmenter": "maft.models.segmenter",
    "Predictor": "maft.predictor",
    "MaftTask": "maft.tasks.maft_task",
}
__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    """Lazy re-exports, so `import maft` stays light (no torch/lightning until needed)."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'maft' has no attribute {name!r}")
