"""Metric-test fixtures: an independent float64 NumPy reference, computed pixel by pixel."""

from __future__ import annotations

import math

import numpy as np
import pytest


def reference_metrics(
    preds: np.ndarray, target: np.ndarray, num_classes: int, ignore: int, seen, rule: str
) -> dict:
    """Count TP/GT/Pred with a Python loop over pixels, reduce in float64 (docs/method.md §7)."""
    tp = np.zeros(num_classes, np.float64)
    gt = np.zeros(num_classes, np.float64)
    pr = np.zeros(num_classes, np.float64)
    for p, t in zip(preds.reshape(-1).tolist(), target.reshape(-1).tolist()):
        if t == ignore:
            continue
        gt[t] += 1
        pr[p] += 1
        if p == t:
            tp[t] += 1
    ious = []
    for c in range(num_classes):
        counted = (gt[c] + pr[c] > 0) if rule == "gt_or_pred" else gt[c] > 0
        ious.append(tp[c] / (gt[c] + pr[c] - tp[c]) if counted else math.nan)
    ious = np.array(ious)

    def mean(idx):
        vals = [ious[c] for c in idx if not math.isnan(ious[c])]
        return 100.0 * sum(vals) / len(vals) if vals else math.nan

    total = gt.sum()
    out = {
        "miou": mean(range(num_classes)),
        "pacc": 100.0 * tp.sum() / total,
        "macc": 100.0 * np.mean([tp[c] / gt[c] for c in range(num_classes) if gt[c] > 0]),
        "fwiou": 100.0 * sum(ious[c] * gt[c] / total for c in range(num_classes) if gt[c] > 0),
        "iou_per_class": list(100.0 * ious),
    }
    if seen is not None:
        s = mean([c for c in range(num_classes) if seen[c]])
        u = mean([c for c in range(num_classes) if not seen[c]])
        out.update(miou_seen=s, miou_unseen=u, hiou=2 * s * u / (s + u) if s + u > 0 else 0.0)
    return out


@pytest.fixture
def reference():
    """The pixel-loop reference as a fixture (tests never import it from maft)."""
    return reference_metrics
