"""MaskFormer-style loss (FreeSeg's stage 1) against independent float64 computations.

Focal mask loss and cost, matching on the prediction grid with nearest-resized targets, the loss
on full-resolution masks, CE with the no-object weight, the aux-count rule and the config keys.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from maft.config import compose
from maft.errors import ConfigError
from maft.losses.matcher import HungarianMatcher, pairwise_dice_cost, pairwise_focal_cost
from maft.losses.point_sampling import pixel_center_coords, point_sample
from maft.losses.set_criterion import (
    SetCriterion,
    dice_loss,
    sigmoid_ce_loss,
    sigmoid_focal_loss,
    targets_from_label,
)
from maft.tasks.proposal_task import CRITERION_DEFAULTS, ProposalTask
from maft_testing import bilinear_ref

# FreeSeg's values: matcher costs 1 / 20 / 5, loss weights 1 / 20 / 5, no-object 0.1.
FREESEG = {"cost_class": 1.0, "cost_mask": 20.0, "cost_dice": 5.0}
MASKFORMER = {"mask_loss": "focal", "num_points": None, "match_resolution": "prediction"}


def _focal_np(logit: np.ndarray, tgt: np.ndarray, alpha: float = 0.25, gamma: float = 2.0):
    """Element-wise focal loss in float64: α(1−p)^γ(−log p) at t=1, (1−α)p^γ(−log(1−p)) at t=0."""
    p = 1 / (1 + np.exp(-logit))
    neg_log_p, neg_log_1mp = np.logaddexp(0, -logit), np.logaddexp(0, logit)
    a_pos, a_neg = (alpha, 1 - alpha) if alpha >= 0 else (1.0, 1.0)
    return tgt * a_pos * (1 - p) ** gamma * neg_log_p + (1 - tgt) * a_neg * p**gamma * neg_log_1mp


def _dice_np(logit: np.ndarray, tgt: np.ndarray) -> float:
    """Dice loss 1 − (2|p∩t| + 1)/(|p| + |t| + 1) of one mask pair in float64."""
    p = 1 / (1 + np.exp(-logit))
    return 1 - (2 * (p * tgt).sum() + 1) / (p.sum() + tgt.sum() + 1)


def _nearest_np(mask: np.ndarray, h: int, w: int) -> np.ndarray:
    """Nearest resize [H, W] -> [h, w] picking source pixel floor(i·H/h) (integer ratios)."""
    big_h, big_w = mask.shape
    rows = [(i * big_h) // h for i in range(h)]
    cols = [(j * big_w) // w for j in range(w)]
    return mask[np.ix_(rows, cols)]


def _maskformer_cost(class_logits, mask_logits, labels, masks, wc=1.0, wm=20.0, wd=5.0):
    """FreeSeg's matching cost [N, K] in float64: targets nearest-resized to the prediction grid."""
    prob = class_logits.double().softmax(-1).numpy()
    h, w = mask_logits.shape[-2:]
    logit = mask_logits.double().flatten(1).numpy()
    tgt = np.stack([_nearest_np(m, h, w).ravel() for m in masks.double().numpy()])
    cost = np.zeros((logit.shape[0], tgt.shape[0]))
    for q, j in itertools.product(range(logit.shape[0]), range(tgt.shape[0])):
        focal = _focal_np(logit[q], tgt[j]).mean()
        cost[q, j] = -wc * prob[q, labels[j]] + wm * focal + wd * _dice_np(logit[q], tgt[j])
    return cost


def _brute_force(cost: np.ndarray) -> tuple[float, tuple[int, ...]]:
    """Minimum total cost over all injective target -> query assignments (perm[j] = query)."""
    n, k = cost.shape
    best, best_perm = math.inf, ()
    for perm in itertools.permutations(range(n), k):
        total = sum(cost[q, j] for j, q in enumerate(perm))
        if total < best:
            best, best_perm = total, perm
    return best, best_perm


def test_focal_loss_matches_float64_formula() -> None:
    torch.manual_seed(1)
    logits = torch.randn(3, 7, dtype=torch.float64) * 3
    targets = (torch.rand(3, 7) > 0.5).double()
    expected = _focal_np(logits.numpy(), targets.numpy()).mean(1).sum() / 2.5
    got = sigmoid_focal_loss(logits, targets, 2.5)
    assert got.item() == pytest.approx(expected, rel=1e-12)
    # α < 0 and γ = 0 reduce it to the plain BCE of the Mask2Former loss
    bce = sigmoid_focal_loss(logits, targets, 2.5, alpha=-1.0, gamma=0.0)
    assert bce.item() == pytest.approx(sigmoid_ce_loss(logits, targets, 2.5).item(), rel=1e-12)


def test_focal_cost_matches_float64_formula() -> None:
    torch.manual_seed(2)
    logits = torch.randn(4, 9, dtype=torch.float64) * 3
    targets = (torch.rand(3, 9) > 0.4).double()
    cost = pairwise_focal_cost(logits, targets).numpy()
    for q, j in itertools.product(range(4), range(3)):
        ref = _focal_np(logits[q].numpy(), targets[j].numpy()).mean()
        assert cost[q, j] == pytest.approx(ref, rel=1e-12)
        # the cost of a pair is the loss of that pair (one mask, num_masks 1)
        loss = sigmoid_focal_loss(logits[q : q + 1], targets[j : j + 1], 1.0)
        assert cost[q, j] == pytest.approx(loss.item(), rel=1e-12)


@pytest.mark.parametrize(
    ("n", "k", "scale"), [(1, 1, 2), (2, 1, 3), (3, 2, 2), (3, 3, 4), (4, 2, 2), (4, 4, 3)]
)
def test_prediction_grid_matcher_equals_brute_force(n: int, k: int, scale: int) -> None:
    torch.manual_seed(10 * n + k)
    class_logits = torch.randn(1, n, 4) * 2
    mask_logits = torch.randn(1, n, 3, 4) * 2
    labels = torch.randint(0, 3, (k,))
    masks = (torch.rand(k, 3 * scale, 4 * scale) > 0.5).float()
    matcher = HungarianMatcher(
        **FREESEG, num_points=None, mask_cost="focal", match_resolution="prediction"
    )
    outputs = {"class_logits": class_logits, "mask_logits": mask_logits}
    rows, cols = matcher(outputs, [{"labels": labels, "masks": masks}])[0]
    cost = _maskformer_cost(class_logits[0], mask_logits[0], labels, masks)
    got = matcher.cost_matrix(class_logits[0], mask_logits[0], {"labels": labels, "masks": masks})
    np.testing.assert_allclose(got.double().numpy(), cost, rtol=1e-5, atol=1e-5)
    best, best_perm = _brute_force(cost)
    assert len(rows) == k and len(set(rows.tolist())) == k
    assert float(cost[rows.numpy(), cols.numpy()].sum()) == pytest.approx(best, rel=1e-6)
    assert {(int(q), int(j)) for q, j in zip(rows, cols)} == {
        (q, j) for j, q in enumerate(best_perm)
    }


def test_prediction_grid_uses_the_nearest_target_pixel() -> None:
    # a target that is 1 only off the nearest-neighbour grid (odd rows/cols) vanishes at 2x2
    mask = torch.zeros(1, 4, 4)
    mask[0, 1::2, 1::2] = 1
    logits = torch.full((1, 1, 2, 2), -4.0)
    dense = HungarianMatcher(
        **FREESEG, num_points=None, mask_cost="focal", match_resolution="prediction"
    )
    cost = dense.cost_matrix(
        torch.zeros(1, 3), logits[0], {"labels": torch.tensor([0]), "masks": mask}
    )
    empty = torch.zeros(1, 4)
    ref = (
        FREESEG["cost_class"] * -1 / 3
        + FREESEG["cost_mask"] * pairwise_focal_cost(logits[0].flatten(1), empty)
        + FREESEG["cost_dice"] * pairwise_dice_cost(logits[0].flatten(1), empty)
    )
    torch.testing.assert_close(cost, ref)


def _case(batch_k=(2, 3), n=4, c=3, h=3, w=4, scale=2, seed=0):
    """Random logits and per-class targets at `scale` x the prediction size (first k classes)."""
    g = torch.Generator().manual_seed(seed)
    class_logits = torch.randn(len(batch_k), n, c + 1, generator=g) * 3
    mask_logits = torch.randn(len(batch_k), n, h, w, generator=g) * 2
    targets = []
    for k in batch_k:
        label = torch.randint(0, c, (h * scale, w * scale), generator=g)
        label[0, 0] = 255
        t = targets_from_label(label, 255)
        targets.append({"labels": t["labels"][:k], "masks": t["masks"][:k]})
    return class_logits, mask_logits, targets


def _maskformer_reference(class_logits, mask_logits, targets, eos=0.1):
    """FreeSeg's loss in float64: brute-force matching, weighted CE, focal + dice at full size."""
    num_classes = class_logits.shape[-1] - 1
    num_masks = max(sum(len(t["labels"]) for t in targets), 1)
    ce_num = ce_den = focal = dice = 0.0
    for b, t in enumerate(targets):
        big_h, big_w = t["masks"].shape[-2:]
        _, perm = _brute_force(
            _maskformer_cost(class_logits[b], mask_logits[b], t["labels"], t["masks"])
        )
        target_class = [num_classes] * class_logits.shape[1]
        for j, q in enumerate(perm):
            target_class[q] = int(t["labels"][j])
            up = bilinear_ref(mask_logits[b, q].double().numpy(), big_h, big_w).ravel()
            tgt = t["masks"][j].double().numpy().ravel()
            focal += _focal_np(up, tgt).mean()
            dice += _dice_np(up, tgt)
        logp = class_logits[b].double().log_softmax(-1).numpy()
        for q, cls in enumerate(target_class):
            weight = eos if cls == num_classes else 1.0
            ce_num += -weight * logp[q, cls]
            ce_den += weight
    return ce_num / ce_den, focal / num_masks, dice / num_masks


def _maskformer_criterion(num_classes: int = 3, **kwargs) -> SetCriterion:
    matcher = HungarianMatcher(
        **FREESEG, num_points=None, mask_cost="focal", match_resolution="prediction"
    )
    return SetCriterion(num_classes, matcher, mask_loss="focal", num_points=None, **kwargs)


def test_maskformer_criterion_equals_float64_reference() -> None:
    class_logits, mask_logits, targets = _case()
    crit = _maskformer_criterion(deep_supervision=False)
    out = crit({"class_logits": class_logits, "mask_logits": mask_logits}, targets)
    ce, focal, dice = _maskformer_reference(class_logits, mask_logits, targets)
    assert out["loss_ce"].item() == pytest.approx(ce, rel=1e-5)
    assert out["loss_mask"].item() == pytest.approx(focal, rel=1e-5)
    assert out["loss_dice"].item() == pytest.approx(dice, rel=1e-5)
    assert out["loss"].item() == pytest.approx(ce + 20 * focal + 5 * dice, rel=1e-5)


def test_full_resolution_loss_is_the_point_formula_on_every_pixel() -> None:
    _, mask_logits, targets = _case(batch_k=(3,), scale=3)
    indices = [(torch.tensor([2, 0, 3]), torch.tensor([0, 1, 2]))]
    crit = _maskformer_criterion()
    focal, dice = crit.loss_masks(mask_logits, targets, indices, 2.0)
    big_h, big_w = targets[0]["masks"].shape[-2:]
    coords = pixel_center_coords(big_h, big_w)[None].expand(3, -1, -1)  # [M, H*W, 2]
    logits = point_sample(mask_logits[0, indices[0][0], None], coords)[:, 0]  # [M, H*W]
    labels = targets[0]["masks"][indices[0][1]].flatten(1)  # [M, H*W]
    assert focal.item() == pytest.approx(sigmoid_focal_loss(logits, labels, 2.0).item(), rel=1e-5)
    assert dice.item() == pytest.approx(dice_loss(logits, labels, 2.0).item(), rel=1e-5)


def test_ce_uses_the_no_object_weight() -> None:
    class_logits = torch.randn(2, 4, 4, dtype=torch.float64)
    targets = [{"labels": torch.tensor([1])}, {"labels": torch.tensor([0, 2])}]
    indices = [(torch.tensor([3]), torch.tensor([0])), (torch.tensor([0, 1]), torch.tensor([1, 0]))]
    crit = _maskformer_criterion(eos_coef=0.1)
    got = crit.loss_labels(class_logits, targets, indices)
    cls = [[3, 3, 3, 1], [2, 0, 3, 3]]  # matched classes, no-object (3) elsewhere
    logp = class_logits.log_softmax(-1).numpy()
    num = sum(
        -(0.1 if c == 3 else 1.0) * logp[b, q, c] for b in range(2) for q, c in enumerate(cls[b])
    )
    den = sum(0.1 if c == 3 else 1.0 for row in cls for c in row)
    assert got.item() == pytest.approx(num / den, rel=1e-6)


def _with_aux(num_aux: int) -> tuple[dict, list[dict]]:
    class_logits, mask_logits, targets = _case(seed=0)
    aux = []
    for i in range(num_aux):
        cls, masks, _ = _case(seed=i + 1)
        aux.append({"class_logits": cls, "mask_logits": masks})
    return {"class_logits": class_logits, "mask_logits": mask_logits, "aux_outputs": aux}, targets


def test_aux_loss_layers_minus_one_is_freesegs_weight_dict() -> None:
    dec_layers = 3  # a decoder of 3 layers gives 3 aux predictions
    outputs, targets = _with_aux(dec_layers)
    every = _maskformer_criterion()(outputs, targets)
    assert {f"loss_dice_{i}" for i in range(dec_layers)} <= set(every)
    # FreeSeg: weight_dict holds aux keys _0 .. _{dec_layers-2}; the other losses are popped
    weight_dict = {"loss_ce": 1.0, "loss_mask": 20.0, "loss_dice": 5.0}
    for i in range(dec_layers - 1):
        weight_dict |= {f"{k}_{i}": v for k, v in list(weight_dict.items())[:3]}
    kept = {k: v for k, v in every.items() if k in weight_dict}
    assert set(every) - set(kept) == {"loss", "loss_ce_2", "loss_mask_2", "loss_dice_2"}
    official = sum(weight_dict[k] * v.item() for k, v in kept.items())
    for n in (-1, dec_layers - 1):
        out = _maskformer_criterion(aux_loss_layers=n)(outputs, targets)
        assert set(out) == set(kept) | {"loss"}
        assert out["loss"].item() == pytest.approx(official, rel=1e-6)
        for k in kept:
            assert out[k].item() == pytest.approx(kept[k].item(), rel=1e-6)
    assert set(_maskformer_criterion(aux_loss_layers=0)(outputs, targets)) == {
        "loss",
        "loss_ce",
        "loss_mask",
        "loss_dice",
    }
    assert "loss_ce_2" in _maskformer_criterion(aux_loss_layers=None)(outputs, targets)


#: Mask2Former's loss (point-sampled BCE, costs 2/5/5, every aux prediction).
MASK2FORMER = {
    **CRITERION_DEFAULTS,
    "cost_class": 2.0,
    "cost_mask": 5.0,
    "mask_loss": "bce",
    "num_points": 12544,
    "match_resolution": "target",
    "aux_loss_layers": None,
}


def test_task_builds_both_styles_and_rejects_bad_values() -> None:
    freeseg = dict(CRITERION_DEFAULTS)  # the schema's default: FreeSeg's loss
    crit = ProposalTask._build_criterion(freeseg, 3)
    assert (crit.mask_loss, crit.num_points, crit.aux_loss_layers) == ("focal", None, -1)
    assert (crit.matcher.mask_cost, crit.matcher.match_resolution) == ("focal", "prediction")
    assert (crit.matcher.cost_class, crit.matcher.cost_mask, crit.matcher.cost_dice) == (1, 20, 5)
    assert crit.weights == {"loss_ce": 1.0, "loss_mask": 20.0, "loss_dice": 5.0}
    old = ProposalTask._build_criterion(MASK2FORMER, 3)
    assert (old.mask_loss, old.num_points, old.aux_loss_layers) == ("bce", 12544, None)
    assert (old.matcher.mask_cost, old.matcher.num_points) == ("bce", 12544)
    bad = [
        ({"mask_loss": "dice"}, "mask_loss"),
        ({"match_resolution": "full"}, "match_resolution"),
        ({"num_points": 0}, "num_points"),
        ({"num_points": 1.5}, "num_points"),
        ({"num_points": True}, "num_points"),
        ({"aux_loss_layers": "all"}, "aux_loss_layers"),
        ({"aux_loss_layers": True}, "aux_loss_layers"),
        ({"cost_class": 0, "cost_mask": 0, "cost_dice": 0}, "cost_class"),
        ({"eos_coef": -0.1}, "eos_coef"),
    ]
    for override, name in bad:
        with pytest.raises(ConfigError, match=name):
            ProposalTask._build_criterion({**CRITERION_DEFAULTS, **override}, 3)


def test_configs_set_freeseg_for_real_runs_and_pin_mask2former_for_the_world() -> None:
    maft = compose([]).model.proposal_train.criterion
    assert {k: maft[k] for k in (*FREESEG, *MASKFORMER)} == {**FREESEG, **MASKFORMER}
    assert (maft.class_weight, maft.mask_weight, maft.dice_weight, maft.eos_coef) == (1, 20, 5, 0.1)
    assert maft.deep_supervision is True and maft.aux_loss_layers == -1
    world = compose(["experiment=world"]).model.proposal_train.criterion
    assert OmegaConf.to_container(world) == {**MASK2FORMER, "num_points": 1024}
