"""Generalized zero-shot segmentation metrics as a torchmetrics ``Metric`` (docs/method.md §7).

The state is one dataset-level ``[C, C]`` int64 confusion matrix summed across processes, never
a per-image average (``torchmetrics.segmentation.MeanIoU`` averages per image, which is not the
benchmark number). ``compute()`` reduces it with
:func:`maft.metrics.functional.reduce_confusion_matrix`.
"""

from __future__ import annotations

import torch
from torchmetrics import Metric

from maft.errors import ConfigError
from maft.metrics.functional import check_rule, confusion_matrix, reduce_confusion_matrix


class ZeroShotSegMetrics(Metric):
    """mIoU / pAcc / mAcc / fwIoU and, with a split, mIoU(seen), mIoU(unseen) and hIoU (§7).

    Args:
        num_classes: ``C``, the size of the evaluation vocabulary (seen ∪ unseen).
        seen: ``[C]`` bool, True for seen classes; None for no split (cross-dataset).
        ignore_index: target value excluded from every count (255; 65535 for uint16 labels).
        rule: ``"gt_or_pred"`` (detectron2 v0.6, default) or ``"gt_present"``.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    confmat: torch.Tensor

    def __init__(
        self,
        num_classes: int,
        seen: torch.Tensor | None = None,
        ignore_index: int | None = 255,
        rule: str = "gt_or_pred",
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ConfigError(f"num_classes must be >= 1, got {num_classes}.")
        self.num_classes = int(num_classes)
        self.ignore_index = ignore_index
        self.rule = check_rule(rule)
        if seen is not None:
            seen = torch.as_tensor(seen, dtype=torch.bool).reshape(-1).cpu()
            if seen.numel() != self.num_classes:
                raise ConfigError(
                    f"`seen` has {seen.numel()} entries but num_classes is {self.num_classes}; "
                    "pass the seen mask of the same vocabulary."
                )
        self.seen = seen
        zeros = torch.zeros(self.num_classes, self.num_classes, dtype=torch.int64)
        self.add_state("confmat", default=zeros, dist_reduce_fx="sum")

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        """Add a batch of integer class maps ``preds``/``target`` (``[B, H, W]``) to the counts."""
        cm = confusion_matrix(
            preds.to(self.confmat.device), target, self.num_classes, self.ignore_index
        )
        self.confmat += cm

    def compute(self) -> dict[str, float | str | list[float]]:
        """Reduce the summed confusion matrix to a dict of percentages (plus ``rule``)."""
        return reduce_confusion_matrix(self.confmat, self.seen, self.rule)


__all__ = ["ZeroShotSegMetrics"]
