"""Hungarian matcher against brute force over all assignments (N <= 4)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from maft.losses.matcher import HungarianMatcher


def _dense_cost(class_logits, mask_logits, labels, masks, wc=2.0, wm=5.0, wd=5.0) -> np.ndarray:
    """Cost [N, K] in float64 with plain loops; predictions already at target resolution."""
    prob = class_logits.double().softmax(-1).numpy()
    logit = mask_logits.double().flatten(1).numpy()
    tgt = masks.double().flatten(1).numpy()
    cost = np.zeros((logit.shape[0], tgt.shape[0]))
    for q in range(logit.shape[0]):
        sig = 1 / (1 + np.exp(-logit[q]))
        for j in range(tgt.shape[0]):
            bce = np.mean(np.logaddexp(0, logit[q]) - logit[q] * tgt[j])
            dice = 1 - (2 * (sig * tgt[j]).sum() + 1) / (sig.sum() + tgt[j].sum() + 1)
            cost[q, j] = -wc * prob[q, labels[j]] + wm * bce + wd * dice
    return cost


@pytest.mark.parametrize(("n", "k"), [(1, 1), (2, 1), (3, 2), (3, 3), (4, 2), (4, 4)])
def test_matcher_equals_brute_force(n: int, k: int) -> None:
    torch.manual_seed(10 * n + k)
    class_logits = torch.randn(1, n, 4) * 2
    mask_logits = torch.randn(1, n, 5, 6) * 2
    labels = torch.randint(0, 3, (k,))
    masks = (torch.rand(k, 5, 6) > 0.5).float()
    target = {"labels": labels, "masks": masks}
    rows, cols = HungarianMatcher(num_points=None)(
        {"class_logits": class_logits, "mask_logits": mask_logits}, [target]
    )[0]
    cost = _dense_cost(class_logits[0], mask_logits[0], labels, masks)
    best, best_perm = math.inf, None
    for perm in itertools.permutations(range(n), k):  # perm[j] = query of target j
        total = sum(cost[q, j] for j, q in enumerate(perm))
        if total < best:
            best, best_perm = total, perm
    assert len(rows) == k and len(set(rows.tolist())) == k
    assert float(cost[rows.numpy(), cols.numpy()].sum()) == pytest.approx(best, rel=1e-6)
    assert {(int(q), int(j)) for q, j in zip(rows, cols)} == {
        (q, j) for j, q in enumerate(best_perm)
    }


def test_matcher_handles_no_targets() -> None:
    outputs = {"class_logits": torch.randn(2, 3, 4), "mask_logits": torch.randn(2, 3, 4, 4)}
    targets = [
        {"labels": torch.zeros(0, dtype=torch.int64), "masks": torch.zeros(0, 8, 8)},
        {"labels": torch.tensor([1]), "masks": torch.ones(1, 8, 8)},
    ]
    (r0, c0), (r1, c1) = HungarianMatcher(num_points=64)(outputs, targets)
    assert r0.numel() == 0 and c0.numel() == 0
    assert c1.tolist() == [0] and r1.numel() == 1


def test_sampled_matching_finds_obvious_assignment() -> None:
    # query q predicts exactly the mask of target (q + 1) % 3 with high confidence
    masks = torch.zeros(3, 16, 16)
    masks[0, :8], masks[1, 8:, :8], masks[2, 8:, 8:] = 1, 1, 1
    order = [1, 2, 0]
    mask_logits = (masks[order] * 2 - 1)[None] * 8  # [1, 3, 16, 16]
    class_logits = torch.zeros(1, 3, 4)
    outputs = {"class_logits": class_logits, "mask_logits": mask_logits}
    target = {"labels": torch.tensor([0, 1, 2]), "masks": masks}
    rows, cols = HungarianMatcher(num_points=100)(outputs, [target])[0]
    assert dict(zip(rows.tolist(), cols.tolist())) == {0: 1, 1: 2, 2: 0}
