"""Point sampling, targets and the set criterion against direct float64 computations."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from maft.errors import LabelValueError
from maft.losses.matcher import HungarianMatcher
from maft.losses.point_sampling import pixel_center_coords, point_sample, uncertain_point_coords
from maft.losses.set_criterion import SetCriterion, dice_loss, sigmoid_ce_loss, targets_from_label
from maft_testing import bilinear_ref


def test_point_sample_at_pixel_centres_is_exact() -> None:
    x = torch.randn(2, 3, 5, 7)
    coords = pixel_center_coords(5, 7)[None].expand(2, -1, -1)
    out = point_sample(x, coords)  # [2, 3, 35]
    torch.testing.assert_close(out, x.flatten(2), atol=1e-6, rtol=0)


def test_point_sample_equals_bilinear_upsampling_reference() -> None:
    x = torch.randn(1, 1, 4, 3, dtype=torch.float64)
    coords = pixel_center_coords(8, 6)[None].double()
    out = point_sample(x, coords)[0, 0].view(8, 6).numpy()
    np.testing.assert_allclose(out, bilinear_ref(x[0, 0].numpy(), 8, 6), atol=1e-6)  # f32 coords


def test_uncertain_points_pick_the_most_uncertain_candidates() -> None:
    # logits = 20 (x - 0.3): uncertainty -|logit| is largest near the line x = 0.3
    xs = (torch.arange(32) + 0.5) / 32
    logits = (20 * (xs - 0.3)).expand(2, 1, 16, 32).contiguous()
    torch.manual_seed(5)
    coords = uncertain_point_coords(logits, 20, oversample_ratio=3.0, importance_sample_ratio=0.75)
    torch.manual_seed(5)
    candidates = torch.rand(2, 60, 2)  # the same first draw the sampler makes
    assert coords.shape == (2, 20, 2)
    assert float(coords.min()) >= 0 and float(coords.max()) <= 1
    for r in range(2):
        unc = -(point_sample(logits[r : r + 1], candidates[r : r + 1])[0, 0]).abs()
        expected = candidates[r][unc.argsort(descending=True)[:15]]
        got = {tuple(c) for c in coords[r, :15].tolist()}
        assert got == {tuple(c) for c in expected.tolist()}


def test_bce_and_dice_match_hand_computation() -> None:
    logits = torch.tensor([[0.0, math.log(3.0), -math.log(3.0), 2.0]])
    targets = torch.tensor([[1.0, 1.0, 0.0, 0.0]])
    p = [0.5, 0.75, 0.25, 1 / (1 + math.exp(-2.0))]
    bce = -(math.log(p[0]) + math.log(p[1]) + math.log(1 - p[2]) + math.log(1 - p[3])) / 4
    dice = 1 - (2 * (p[0] + p[1]) + 1) / (sum(p) + 2 + 1)
    assert sigmoid_ce_loss(logits, targets, 1.0).item() == pytest.approx(bce, rel=1e-6)
    assert dice_loss(logits, targets, 1.0).item() == pytest.approx(dice, rel=1e-6)
    assert sigmoid_ce_loss(logits, targets, 2.0).item() == pytest.approx(bce / 2, rel=1e-6)


def test_targets_from_label_with_class_map_and_ignore() -> None:
    label = torch.tensor([[0, 0, 2, 255], [3, 3, 2, 255], [0, 1, 1, 2]])
    class_map = torch.tensor([0, -1, 1, -1])  # classes 1 and 3 unseen
    t = targets_from_label(label, 255, class_map)
    assert t["labels"].tolist() == [0, 1]
    assert t["masks"].dtype == torch.float32
    assert t["masks"][0].tolist() == [[1, 1, 0, 0], [0, 0, 0, 0], [1, 0, 0, 0]]
    assert t["masks"][1].tolist() == [[0, 0, 1, 0], [0, 0, 1, 0], [0, 0, 0, 1]]
    plain = targets_from_label(label, 255)
    assert plain["labels"].tolist() == [0, 1, 2, 3]
    assert int(plain["masks"].sum()) == 10
    with pytest.raises(LabelValueError, match="outside"):
        targets_from_label(torch.tensor([[0, 7]]), 255, class_map)
    empty = targets_from_label(torch.full((2, 2), 255), 255, class_map)
    assert empty["labels"].numel() == 0 and empty["masks"].shape == (0, 2, 2)


def _pair_losses(logit: np.ndarray, sig: np.ndarray, tgt: np.ndarray) -> tuple[float, float]:
    """Mean BCE (stable form) and dice of one prediction/target pair over all pixels."""
    bce = np.mean(np.logaddexp(0, logit) - logit * tgt)
    dice = 1 - (2 * (sig * tgt).sum() + 1) / (sig.sum() + tgt.sum() + 1)
    return bce, dice


def _reference_losses(class_logits, mask_logits, targets, eos=0.1):
    """Dense float64 set loss: brute-force matching, weighted CE, mean BCE and dice per mask."""
    num_classes = class_logits.shape[-1] - 1
    up = F.interpolate(mask_logits.double(), size=targets[0]["masks"].shape[-2:], mode="bilinear")
    ce_num = ce_den = bce = dice = 0.0
    num_masks = max(sum(len(t["labels"]) for t in targets), 1)
    for b, t in enumerate(targets):
        prob = class_logits[b].double().softmax(-1).numpy()
        sig = up[b].sigmoid().flatten(1).numpy()  # [N, P]
        logit = up[b].flatten(1).numpy()
        tgt = t["masks"].double().flatten(1).numpy()  # [K, P]
        n, k = sig.shape[0], tgt.shape[0]

        def pair(q, j, logit=logit, sig=sig, tgt=tgt):
            return _pair_losses(logit[q], sig[q], tgt[j])

        best, best_perm = math.inf, ()
        for perm in itertools.permutations(range(n), k):
            cost = sum(
                -2 * prob[q, t["labels"][j]] + 5 * pair(q, j)[0] + 5 * pair(q, j)[1]
                for j, q in enumerate(perm)
            )
            if cost < best:
                best, best_perm = cost, perm
        target_class = [num_classes] * n
        for j, q in enumerate(best_perm):
            target_class[q] = int(t["labels"][j])
            b_, d_ = pair(q, j)
            bce, dice = bce + b_, dice + d_
        logp = class_logits[b].double().log_softmax(-1).numpy()
        for q in range(n):
            w = eos if target_class[q] == num_classes else 1.0
            ce_num += -w * logp[q, target_class[q]]
            ce_den += w
    return ce_num / ce_den, bce / num_masks, dice / num_masks


def _random_case(batch=2, n=4, c=3, h=4, w=4, scale=2):
    class_logits = torch.randn(batch, n, c + 1) * 3
    mask_logits = torch.randn(batch, n, h, w) * 2
    targets = []
    for k in (2, 3)[:batch]:
        label = torch.randint(0, c, (h * scale, w * scale))
        label[0, 0] = 255
        t = targets_from_label(label, 255)
        targets.append({"labels": t["labels"][:k], "masks": t["masks"][:k]})
    return class_logits, mask_logits, targets


def test_dense_set_criterion_equals_reference() -> None:
    class_logits, mask_logits, targets = _random_case()
    matcher = HungarianMatcher(num_points=None)
    crit = SetCriterion(3, matcher, num_points=None, deep_supervision=False)
    out = crit({"class_logits": class_logits, "mask_logits": mask_logits}, targets)
    ce, bce, dice = _reference_losses(class_logits, mask_logits, targets)
    assert out["loss_ce"].item() == pytest.approx(ce, rel=1e-5)
    assert out["loss_mask"].item() == pytest.approx(bce, rel=1e-5)
    assert out["loss_dice"].item() == pytest.approx(dice, rel=1e-5)
    assert out["loss"].item() == pytest.approx(ce + 20 * bce + 5 * dice, rel=1e-5)


def test_deep_supervision_sums_every_layer() -> None:
    class_logits, mask_logits, targets = _random_case()
    aux_cls, aux_mask, _ = _random_case()
    outputs = {
        "class_logits": class_logits,
        "mask_logits": mask_logits,
        "aux_outputs": [{"class_logits": aux_cls, "mask_logits": aux_mask}],
    }
    crit = SetCriterion(3, HungarianMatcher(num_points=None), num_points=None)
    out = crit(outputs, targets)
    assert {"loss_ce_0", "loss_mask_0", "loss_dice_0"} <= set(out)
    total = 0.0
    for cls, mask in ((class_logits, mask_logits), (aux_cls, aux_mask)):
        ce, bce, dice = _reference_losses(cls, mask, targets)
        total += ce + 20 * bce + 5 * dice
    assert out["loss"].item() == pytest.approx(total, rel=1e-5)


def test_sampled_loss_approximates_dense_loss() -> None:
    class_logits, mask_logits, targets = _random_case()
    outputs = {"class_logits": class_logits, "mask_logits": mask_logits}
    dense = SetCriterion(3, HungarianMatcher(num_points=None), num_points=None)(outputs, targets)
    crit = SetCriterion(
        3, HungarianMatcher(num_points=None), num_points=20000, importance_sample_ratio=0.0
    )
    sampled = crit(outputs, targets)
    assert sampled["loss_ce"].item() == pytest.approx(dense["loss_ce"].item(), rel=1e-6)
    assert sampled["loss_mask"].item() == pytest.approx(dense["loss_mask"].item(), rel=0.03)
    assert sampled["loss_dice"].item() == pytest.approx(dense["loss_dice"].item(), rel=0.03)


def test_empty_targets_give_no_object_ce_and_zero_mask_loss() -> None:
    class_logits = torch.randn(1, 3, 3, requires_grad=True)
    mask_logits = torch.randn(1, 3, 4, 4, requires_grad=True)
    targets = [{"labels": torch.zeros(0, dtype=torch.int64), "masks": torch.zeros(0, 8, 8)}]
    crit = SetCriterion(2, HungarianMatcher(num_points=16), num_points=16)
    out = crit({"class_logits": class_logits, "mask_logits": mask_logits}, targets)
    expected = -class_logits.detach().log_softmax(-1)[0, :, 2].mean()
    assert out["loss_ce"].item() == pytest.approx(expected.item(), rel=1e-6)
    assert out["loss_mask"].item() == 0 and out["loss_dice"].item() == 0
    out["loss"].backward()
    assert mask_logits.grad is not None and torch.isfinite(class_logits.grad).all()
