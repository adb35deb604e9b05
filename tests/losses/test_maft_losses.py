"""L_ma, L_dis and MAFT loss (docs/method.md §5.2-§5.4) vs slow per-class, per-proposal loops."""

from __future__ import annotations

import pytest
import torch

from maft.errors import LabelValueError
from maft.losses.maft_losses import (
    DIS_WEIGHT_CODE,
    DIS_WEIGHT_PAPER,
    maft_loss,
    mask_aware_loss,
    minmax_normalise,
    self_distillation_loss,
    soft_iou_targets,
)


def loop_mask_aware_loss(probs, masks, label, ignore, class_map=None) -> torch.Tensor:
    """Reference: Python loops over images, GT classes and proposals, float64 sums."""
    terms = []
    for b in range(label.shape[0]):
        cols = {}
        for v in sorted(set(label[b].reshape(-1).tolist()) - {ignore}):
            col = v if class_map is None else int(class_map[v])
            if col >= 0:
                cols.setdefault(col, []).append(v)
        for col, ids in cols.items():
            g = torch.zeros(label.shape[1:], dtype=torch.float64)
            for v in ids:
                g[label[b] == v] = 1.0
            ious = []
            for n in range(masks.shape[1]):
                m = masks[b, n].double()
                inter = (g * m).sum().item()
                ious.append(inter / (g.sum().item() + m.sum().item() - inter + 1e-7))
            lo, hi = min(ious), max(ious)
            for n in range(masks.shape[1]):
                t = (ious[n] - lo) / (hi - lo + 1e-8)
                d = abs(probs[b, n, col].item() - t)
                terms.append(0.5 * d * d if d < 1 else d - 0.5)
    return torch.tensor(sum(terms) / len(terms), dtype=torch.float64)


def _case(gen, b=3, n=5, c=6, h=7, w=9):
    probs = torch.randn(b, n, c, generator=gen, dtype=torch.float64).softmax(-1)
    masks = torch.rand(b, n, h, w, generator=gen, dtype=torch.float64)
    label = torch.randint(0, c, (b, h, w), generator=gen)
    label[torch.rand(b, h, w, generator=gen) < 0.25] = 255
    return probs, masks, label


def test_mask_aware_loss_matches_loop(gen) -> None:
    probs, masks, label = _case(gen)
    label[1, :, :] = torch.where(label[1] == 255, 255, label[1] % 2)  # fewer classes in image 1
    got = mask_aware_loss(probs, masks, label, 255)
    assert torch.allclose(got, loop_mask_aware_loss(probs, masks, label, 255), rtol=1e-10)


def test_mask_aware_loss_with_class_map_and_uint8_label(gen) -> None:
    probs, masks, label = _case(gen, c=4)
    label = torch.randint(0, 6, label.shape, generator=gen)  # 6 label ids -> 4 columns
    label[0, 0] = 255
    class_map = torch.tensor([2, -1, 0, 3, -1, 1])
    got = mask_aware_loss(probs, masks, label.to(torch.uint8), 255, class_map)
    ref = loop_mask_aware_loss(probs, masks, label, 255, class_map)
    assert torch.allclose(got, ref, rtol=1e-10)


def test_image_without_valid_class_contributes_nothing(gen) -> None:
    probs, masks, label = _case(gen, b=2)
    label[1] = 255
    got = mask_aware_loss(probs, masks, label, 255)
    alone = mask_aware_loss(probs[:1], masks[:1], label[:1], 255)
    assert torch.allclose(got, alone, rtol=1e-12)


def test_all_ignore_batch_gives_zero_connected_to_probs(gen) -> None:
    probs, masks, label = _case(gen)
    probs.requires_grad_(True)
    loss = mask_aware_loss(probs, masks, torch.full_like(label, 255), 255)
    assert loss.item() == 0.0 and loss.grad_fn is not None
    loss.backward()
    assert probs.grad is not None and torch.count_nonzero(probs.grad) == 0


def test_soft_iou_hand_count_and_minmax() -> None:
    g = torch.tensor([[[1.0, 1.0, 0.0, 0.0]]])  # [B=1, K=1, P=4]
    m = torch.tensor([[[1.0, 0.5, 0.5, 0.0], [0.0, 0.0, 1.0, 1.0]]])  # [B=1, N=2, P=4]
    iou = soft_iou_targets(g, m)
    # proposal 0: inter 1.5, union 2 + 2 - 1.5 = 2.5 -> 0.6; proposal 1: inter 0 -> 0
    assert torch.allclose(iou, torch.tensor([[[0.6, 0.0]]]), atol=1e-6)
    assert torch.allclose(minmax_normalise(iou), torch.tensor([[[1.0, 0.0]]]), atol=1e-6)
    # equal IoUs give 0 targets, not a division by zero
    assert torch.equal(minmax_normalise(torch.full((1, 3), 0.4)), torch.zeros(1, 3))


def test_gradient_flows_to_probs_only(gen) -> None:
    probs, masks, label = _case(gen)
    logits = torch.randn(probs.shape, dtype=torch.float64, generator=gen, requires_grad=True)
    masks.requires_grad_(True)
    mask_aware_loss(logits.softmax(-1), masks, label, 255).backward()
    assert logits.grad is not None and torch.count_nonzero(logits.grad) > 0
    assert masks.grad is None  # the IoU target is detached


def test_bad_inputs_raise(gen) -> None:
    probs, masks, label = _case(gen)
    with pytest.raises(LabelValueError, match=r"\[9\]"):
        mask_aware_loss(probs, masks, torch.full_like(label, 9), 255)
    with pytest.raises(LabelValueError, match="same resolution"):
        mask_aware_loss(probs, masks[..., :-1], label, 255)


def test_self_distillation_and_total(gen) -> None:
    s = torch.rand(2, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    t = torch.rand(2, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    loss = self_distillation_loss(s, t)
    d = (s - t).abs().detach()
    assert torch.allclose(loss, torch.where(d < 1, 0.5 * d**2, d - 0.5).mean())
    loss.backward()
    assert t.grad is None and s.grad is not None  # teacher detached
    assert (DIS_WEIGHT_CODE, DIS_WEIGHT_PAPER) == (0.1, 1.0)
    probs, masks, label = _case(gen)
    out = maft_loss(probs, masks, label, 255, s, t)
    assert torch.allclose(out["loss"], out["loss_ma"] + 0.1 * out["loss_dis"])
    assert torch.allclose(out["loss_dis"], self_distillation_loss(s, t))
    out1 = maft_loss(probs, masks, label, 255, s, t, dis_weight=DIS_WEIGHT_PAPER)
    assert torch.allclose(out1["loss"], out1["loss_ma"] + out1["loss_dis"])
    assert maft_loss(probs, masks, label, 255)["loss_dis"].item() == 0.0


def test_low_precision_masks_are_summed_in_float32(gen) -> None:
    probs, masks, label = _case(gen, h=16, w=16)
    half = masks.to(torch.bfloat16)
    got = mask_aware_loss(probs.float(), half, label, 255)
    ref = loop_mask_aware_loss(probs, half.double(), label, 255)
    assert got.dtype == torch.float32
    assert torch.allclose(got.double(), ref, rtol=1e-5)
