"""Dataset-level zero-shot segmentation metrics (docs/method.md §7): mIoU, hIoU, pAcc."""

from maft.metrics.functional import (
    RULES,
    confusion_matrix,
    harmonic_iou,
    per_class_iou,
    reduce_confusion_matrix,
)
from maft.metrics.semseg import ZeroShotSegMetrics

__all__ = [
    "RULES",
    "ZeroShotSegMetrics",
    "confusion_matrix",
    "harmonic_iou",
    "per_class_iou",
    "reduce_confusion_matrix",
]
