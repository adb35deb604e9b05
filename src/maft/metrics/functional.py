"""Dataset-level semantic-segmentation metrics from a confusion matrix (docs/method.md §7).

Pure functions: label checking, confusion-matrix accumulation and the detectron2 / zsseg reduction
(mIoU, pAcc, mAcc, fwIoU, seen/unseen mIoU and hIoU). The confusion matrix is indexed
``confmat[gt, pred]`` and never holds ignore pixels.

Reduction rules for the mIoU (the rule only changes which classes enter the mean):

- ``"gt_or_pred"`` (detectron2 v0.6, which produced MAFT's published numbers): the mean runs over
  classes with ``GT + Pred > 0``; a class predicted but absent from the ground truth counts as an
  IoU of 0; classes absent from both are skipped (NaN in ``iou_per_class``). detectron2 itself
  prints NaN for the per-class IoU of a predicted-but-absent class while still counting it as 0 in
  the mean; here its entry is 0 so that ``nanmean(iou_per_class) == miou`` always holds.
- ``"gt_present"`` (detectron2 after July 2022): the mean runs over classes with ``GT > 0`` only.

Seen/unseen subsets apply the same rule restricted to the subset (zsseg
``GeneralizedSemSegEvaluator``). An empty mean (no pixel, or no class of a subset to average)
gives NaN; ``hiou`` is NaN if either side is NaN and 0 when both sides are 0.
"""

from __future__ import annotations

import math

import torch

from maft.errors import ConfigError, LabelValueError

RULES = ("gt_or_pred", "gt_present")
_MAX_SHOWN = 10  # offending values listed in an error message


def _offending_values(values: torch.Tensor) -> str:
    """Format the distinct values of a 1-D tensor for an error message (at most ``_MAX_SHOWN``)."""
    uniq = torch.unique(values).tolist()
    shown = ", ".join(str(v) for v in uniq[:_MAX_SHOWN])
    more = f" (and {len(uniq) - _MAX_SHOWN} more)" if len(uniq) > _MAX_SHOWN else ""
    return f"[{shown}]{more}"


def check_rule(rule: str) -> str:
    """Return ``rule`` if it names a known mIoU reduction rule, else raise ``ConfigError``."""
    if rule not in RULES:
        raise ConfigError(f"Unknown metric reduction rule {rule!r}; choose one of {list(RULES)}.")
    return rule


def _as_int64(x: torch.Tensor, what: str) -> torch.Tensor:
    """Cast an integer class map (uint8/uint16/int32/...) to int64; floats are refused."""
    if x.is_floating_point() or x.is_complex() or x.dtype == torch.bool:
        raise LabelValueError(
            f"{what} must be an integer class map, got dtype {x.dtype}; "
            "pass the argmax over classes (predictions) or the decoded label map (targets)."
        )
    return x.to(torch.int64)


def confusion_matrix(
    preds: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: int | None = 255
) -> torch.Tensor:
    """Count ``(gt, pred)`` pixel pairs into a ``[C, C]`` int64 matrix, ignore pixels excluded.

    Args:
        preds: predicted class ids, any integer dtype, same shape as ``target`` (``[B, H, W]``).
        target: ground-truth ids in ``[0, C)`` or ``ignore_index`` (uint16 labels are fine).
        num_classes: ``C``.
        ignore_index: target value to exclude (255, or 65535 for uint16 datasets); None: none.

    Returns:
        ``[C, C]`` int64 tensor on ``preds``' device, ``confmat[gt, pred]``.

    Raises:
        LabelValueError: shapes differ, float inputs, or values outside ``[0, C)`` (other than the
            target's ignore value); the message lists the offending values.
    """
    if preds.shape != target.shape:
        raise LabelValueError(
            f"Prediction shape {tuple(preds.shape)} differs from target shape "
            f"{tuple(target.shape)}; resize predictions to the label size before updating."
        )
    preds = _as_int64(preds, "Predictions").reshape(-1)  # [P]
    target = _as_int64(target, "Target").reshape(-1).to(preds.device)  # [P]
    keep = (
        target != ignore_index
        if ignore_index is not None
        else torch.ones_like(target, dtype=torch.bool)
    )
    bad_pred = (preds < 0) | (preds >= num_classes)
    if bool(bad_pred.any()):
        raise LabelValueError(
            f"Predictions hold values {_offending_values(preds[bad_pred])} outside [0, "
            f"{num_classes}); check that the vocabulary size matches the model's output."
        )
    bad_gt = keep & ((target < 0) | (target >= num_classes))
    if bool(bad_gt.any()):
        raise LabelValueError(
            f"Target holds values {_offending_values(target[bad_gt])} outside [0, {num_classes}) "
            f"that are not the ignore value {ignore_index}; check the dataset's label decoding "
            "and its ignore value (255 for PNG labels, 65535 for uint16 TIFF labels)."
        )
    flat = target[keep] * num_classes + preds[keep]  # [P_valid]
    counts = torch.bincount(flat, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes)  # [C_gt, C_pred]


def _mean(values: torch.Tensor) -> float:
    """Mean of a float64 tensor, NaN when empty."""
    return float(values.mean()) if values.numel() > 0 else math.nan


def harmonic_iou(miou_seen: float, miou_unseen: float) -> float:
    """hIoU = 2·S·U / (S + U) (§7.3); 0 when S + U = 0, NaN if either side is NaN."""
    if math.isnan(miou_seen) or math.isnan(miou_unseen):
        return math.nan
    total = miou_seen + miou_unseen
    return 2.0 * miou_seen * miou_unseen / total if total > 0 else 0.0


def per_class_iou(confmat: torch.Tensor, rule: str = "gt_or_pred") -> torch.Tensor:
    """Per-class IoU ``TP / (GT + Pred − TP)`` as float64 fractions, NaN where ``rule`` skips.

    ``gt_or_pred``: NaN where ``GT + Pred == 0`` (a predicted-but-absent class gives 0);
    ``gt_present``: NaN where ``GT == 0``.
    """
    check_rule(rule)
    cm = confmat.to(torch.float64)  # [C_gt, C_pred]
    tp = cm.diagonal()
    gt = cm.sum(dim=1)
    pred = cm.sum(dim=0)
    union = gt + pred - tp
    counted = union > 0 if rule == "gt_or_pred" else gt > 0
    iou = torch.full_like(tp, math.nan)
    iou[counted] = tp[counted] / union[counted]
    return iou


def reduce_confusion_matrix(
    confmat: torch.Tensor, seen: torch.Tensor | None = None, rule: str = "gt_or_pred"
) -> dict[str, float | str | list[float]]:
    """Reduce a ``[C, C]`` confusion matrix to the benchmark numbers, in percent (§7).

    Args:
        confmat: ``[C, C]`` counts, ``confmat[gt, pred]``, ignore pixels excluded.
        seen: ``[C]`` bool, True for seen classes; None for no split (cross-dataset).
        rule: ``"gt_or_pred"`` (default, detectron2 v0.6) or ``"gt_present"``.

    Returns:
        ``miou``, ``pacc``, ``macc``, ``fwiou`` (floats), ``iou_per_class`` (list, NaN where a class
        is skipped), ``rule``; with ``seen`` also ``miou_seen``, ``miou_unseen``, ``hiou``.
    """
    check_rule(rule)
    num_classes = confmat.shape[0]
    if confmat.shape != (num_classes, num_classes):
        raise ConfigError(f"Confusion matrix must be square, got shape {tuple(confmat.shape)}.")
    cm = confmat.detach().to("cpu", torch.float64)  # [C_gt, C_pred]
    tp = cm.diagonal()
    gt = cm.sum(dim=1)
    iou = per_class_iou(cm, rule)
    has_gt = gt > 0
    total = gt.sum()
    out: dict[str, float | str | list[float]] = {
        "miou": 100.0 * _mean(iou[~iou.isnan()]),
        "pacc": 100.0 * float(tp.sum() / total) if total > 0 else math.nan,
        "macc": 100.0 * _mean(tp[has_gt] / gt[has_gt]),
        "fwiou": 100.0 * float((iou[has_gt] * gt[has_gt]).sum() / total) if total > 0 else math.nan,
        "iou_per_class": (100.0 * iou).tolist(),
        "rule": rule,
    }
    if seen is not None:
        seen = seen.detach().to("cpu", torch.bool).reshape(-1)
        if seen.numel() != num_classes:
            raise ConfigError(
                f"`seen` has {seen.numel()} entries but the metric has {num_classes} classes; "
                "pass the vocabulary's seen mask (Vocabulary.seen) for the same vocabulary."
            )
        s_iou, u_iou = iou[seen], iou[~seen]
        out["miou_seen"] = 100.0 * _mean(s_iou[~s_iou.isnan()])
        out["miou_unseen"] = 100.0 * _mean(u_iou[~u_iou.isnan()])
        out["hiou"] = harmonic_iou(out["miou_seen"], out["miou_unseen"])
    return out


__all__ = [
    "RULES",
    "check_rule",
    "confusion_matrix",
    "harmonic_iou",
    "per_class_iou",
    "reduce_confusion_matrix",
]
