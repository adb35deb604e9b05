"""Confusion-matrix reduction (docs/method.md §7) against a pixel loop and hand counts."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from maft.errors import ConfigError, LabelValueError
from maft.metrics.functional import (
    confusion_matrix,
    harmonic_iou,
    per_class_iou,
    reduce_confusion_matrix,
)

SCALARS = ("miou", "pacc", "macc", "fwiou", "miou_seen", "miou_unseen", "hiou")


def assert_matches(got: dict, ref: dict) -> None:
    """Every scalar and per-class entry equal to the reference (NaN where the reference is NaN)."""
    for key, val in ref.items():
        if key == "iou_per_class":
            np.testing.assert_allclose(got[key], val, rtol=1e-12, atol=1e-12, equal_nan=True)
        else:
            assert got[key] == pytest.approx(val, rel=1e-12, abs=1e-12, nan_ok=True), key


@pytest.mark.parametrize("rule", ["gt_or_pred", "gt_present"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_cases_match_pixel_loop(reference, rule: str, seed: int) -> None:
    rng = np.random.default_rng(seed)
    num_classes = 7
    # classes 5 and 6 never appear in GT; class 6 is never predicted either
    target = rng.integers(0, 5, size=(2, 9, 11))
    target[rng.random(target.shape) < 0.2] = 255
    preds = rng.integers(0, 6, size=target.shape)
    seen = np.array([1, 1, 0, 1, 0, 1, 0], bool)
    cm = confusion_matrix(torch.from_numpy(preds), torch.from_numpy(target), num_classes, 255)
    got = reduce_confusion_matrix(cm, torch.from_numpy(seen), rule)
    ref = reference(preds, target, num_classes, 255, seen, rule)
    assert_matches(got, ref)
    assert got["rule"] == rule
    assert math.isnan(got["iou_per_class"][6])
    assert math.isnan(got["iou_per_class"][5]) == (rule == "gt_present")


def test_three_by_three_counted_by_hand() -> None:
    target = torch.tensor([[0, 0, 1], [0, 1, 1], [2, 2, 255]])
    preds = torch.tensor([[0, 1, 1], [0, 1, 2], [2, 0, 1]])
    cm = confusion_matrix(preds, target, 3, 255)
    # rows = GT, cols = prediction; the ignore pixel (pred 1) is not counted
    assert cm.tolist() == [[2, 1, 0], [0, 2, 1], [1, 0, 1]]
    r = reduce_confusion_matrix(cm, torch.tensor([True, True, False]))
    # IoU: class 0 = 2/(3+3-2), class 1 = 2/(3+3-2), class 2 = 1/(2+2-1)
    assert r["iou_per_class"] == pytest.approx([50.0, 50.0, 100 / 3])
    assert r["miou"] == pytest.approx((50 + 50 + 100 / 3) / 3)
    assert r["pacc"] == pytest.approx(100 * 5 / 8)
    assert r["macc"] == pytest.approx(100 * (2 / 3 + 2 / 3 + 1 / 2) / 3)
    assert r["fwiou"] == pytest.approx(100 * (3 * 0.5 + 3 * 0.5 + 2 / 3) / 8)
    assert r["miou_seen"] == pytest.approx(50.0)
    assert r["miou_unseen"] == pytest.approx(100 / 3)
    assert r["hiou"] == pytest.approx(40.0)


def test_predicted_but_absent_class_counts_zero_only_in_gt_or_pred() -> None:
    target = torch.tensor([[0, 0, 1, 1]])
    preds = torch.tensor([[0, 0, 1, 3]])  # class 3 predicted, absent in GT; class 2 nowhere
    cm = confusion_matrix(preds, target, 4, 255)
    a = reduce_confusion_matrix(cm, rule="gt_or_pred")
    b = reduce_confusion_matrix(cm, rule="gt_present")
    assert a["iou_per_class"][3] == 0.0 and math.isnan(a["iou_per_class"][2])
    assert a["miou"] == pytest.approx((100 + 50 + 0) / 3)
    assert math.isnan(b["iou_per_class"][3]) and math.isnan(b["iou_per_class"][2])
    assert b["miou"] == pytest.approx((100 + 50) / 2)
    assert a["pacc"] == b["pacc"] == pytest.approx(75.0)
    assert "hiou" not in a


def test_subset_means_use_the_rule_restricted_to_the_subset() -> None:
    # seen = {0, 1}, unseen = {2, 3}; class 3 (unseen) is predicted but absent from GT
    target = torch.tensor([[0, 1, 2, 2]])
    preds = torch.tensor([[0, 1, 2, 3]])
    cm = confusion_matrix(preds, target, 4, 255)
    seen = torch.tensor([True, True, False, False])
    a = reduce_confusion_matrix(cm, seen, "gt_or_pred")
    b = reduce_confusion_matrix(cm, seen, "gt_present")
    assert a["miou_seen"] == b["miou_seen"] == pytest.approx(100.0)
    assert a["miou_unseen"] == pytest.approx((50 + 0) / 2)
    assert b["miou_unseen"] == pytest.approx(50.0)


def test_hiou_with_one_side_zero_and_both_zero() -> None:
    target = torch.tensor([[0, 0, 1, 1]])
    preds = torch.tensor([[0, 0, 0, 0]])  # unseen class 1 never found
    r = reduce_confusion_matrix(
        confusion_matrix(preds, target, 2, 255), torch.tensor([True, False])
    )
    assert r["miou_unseen"] == 0.0 and r["miou_seen"] == pytest.approx(50.0)
    assert r["hiou"] == 0.0
    assert harmonic_iou(0.0, 0.0) == 0.0
    assert harmonic_iou(30.0, 60.0) == pytest.approx(40.0)
    assert math.isnan(harmonic_iou(math.nan, 10.0))


@pytest.mark.parametrize("dtype", [torch.uint16, torch.int32, torch.int64])
def test_ignore_65535_in_wide_integer_targets(dtype: torch.dtype) -> None:
    target = torch.tensor([[0, 65535, 1], [1, 65535, 0]]).to(dtype)
    preds = torch.tensor([[0, 1, 1], [0, 0, 0]], dtype=torch.uint8)
    cm = confusion_matrix(preds, target, 2, 65535)
    assert cm.dtype == torch.int64
    assert cm.tolist() == [[2, 0], [1, 1]]
    with pytest.raises(LabelValueError, match=r"\[65535\]"):
        confusion_matrix(preds, target, 2, 255)  # wrong ignore value for a uint16 dataset


def test_out_of_range_values_raise_naming_them() -> None:
    target = torch.tensor([[0, 1, 255, 7]])
    with pytest.raises(LabelValueError, match=r"Target holds values \[7\]"):
        confusion_matrix(torch.zeros_like(target), target, 3, 255)
    with pytest.raises(LabelValueError, match=r"Predictions hold values \[-1, 3\]"):
        confusion_matrix(torch.tensor([[0, -1, 3, 3]]), torch.tensor([[0, 1, 2, 255]]), 3, 255)
    with pytest.raises(LabelValueError, match="integer class map"):
        confusion_matrix(torch.zeros(1, 4), torch.zeros(1, 4, dtype=torch.long), 3, 255)
    with pytest.raises(LabelValueError, match="shape"):
        confusion_matrix(torch.zeros(1, 4, dtype=torch.long), torch.zeros(4, 1).long(), 3, 255)


def test_empty_and_all_ignore_give_nan_not_errors() -> None:
    target = torch.full((2, 2), 255)
    r = reduce_confusion_matrix(confusion_matrix(target * 0, target, 3, 255), torch.ones(3).bool())
    assert math.isnan(r["miou"]) and math.isnan(r["pacc"]) and math.isnan(r["miou_seen"])
    assert math.isnan(r["hiou"])


def test_bad_arguments_raise_config_errors() -> None:
    cm = torch.eye(3, dtype=torch.int64)
    with pytest.raises(ConfigError, match="gt_or_pred"):
        per_class_iou(cm, rule="mean")
    with pytest.raises(ConfigError, match="2 entries"):
        reduce_confusion_matrix(cm, torch.tensor([True, False]))
