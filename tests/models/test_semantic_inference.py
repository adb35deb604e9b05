"""Semantic inference O = Âᵀ·sigmoid(masks), crop, resize vs loops and a hand case.

What is computed: docs/method.md §4.3, §4.4.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from maft.errors import ConfigError
from maft.models.inference import postprocess_to_original, semantic_scores, valid_proposals


def test_semantic_scores_match_loop(gen) -> None:
    A = torch.rand(2, 3, 4, generator=gen, dtype=torch.float64)
    logits = torch.randn(2, 3, 5, 6, generator=gen, dtype=torch.float64)
    got = semantic_scores(A, logits, (10, 12))
    up = F.interpolate(logits, size=(10, 12), mode="bilinear", align_corners=True).sigmoid()
    ref = torch.zeros(2, 4, 10, 12, dtype=torch.float64)
    for b in range(2):
        for c in range(4):
            for q in range(3):
                ref[b, c] += A[b, q, c] * up[b, q]
    assert got.shape == (2, 4, 10, 12)
    assert torch.allclose(got, ref, rtol=1e-12)
    # dropping invalid proposals (zsseg) = summing over the valid ones only
    valid = torch.tensor([[True, False, True], [False, False, True]])
    dropped = semantic_scores(A, logits, (10, 12), valid=valid)
    ref_drop = torch.zeros_like(ref)
    for b in range(2):
        for q in range(3):
            if valid[b, q]:
                ref_drop[b] += A[b, q][:, None, None] * up[b, q][None]
    assert torch.allclose(dropped, ref_drop, rtol=1e-12)


def test_hand_case_soft_masks_no_renormalisation() -> None:
    # two proposals, logits 0 (p = 0.5) and log(3) (p = 0.75), same size: no resampling effect
    logits = torch.stack([torch.zeros(2, 2), torch.full((2, 2), 3.0).log()])[None].double()
    A = torch.tensor([[[1.0, 0.0], [0.2, 0.4]]], dtype=torch.float64)  # [B=1, N=2, C=2]
    out = semantic_scores(A, logits, (2, 2))
    # class 0: 1·0.5 + 0.2·0.75 = 0.65; class 1: 0·0.5 + 0.4·0.75 = 0.3
    assert torch.allclose(out[0, :, 0, 0], torch.tensor([0.65, 0.3], dtype=torch.float64))
    assert out.argmax(1).eq(0).all()


def test_align_corners_true_upsampling_keeps_corner_values() -> None:
    logits = torch.tensor([[[[-2.0, 1.0], [3.0, 0.5]]]])  # [1, 1, 2, 2]
    out = semantic_scores(torch.ones(1, 1, 1), logits, (5, 7))
    corners = out[0, 0, [0, 0, -1, -1], [0, -1, 0, -1]]
    assert torch.allclose(corners, torch.tensor([-2.0, 1.0, 3.0, 0.5]).sigmoid())
    # align_corners=True: output column 1 of 7 samples input x = 1/6 -> logit -2 + 3/6 = -1.5
    # (align_corners=False would sample x = -1/14, clamped to the corner logit -2)
    assert torch.allclose(out[0, 0, 0, 1], torch.tensor(-1.5).sigmoid())


def test_valid_proposals_flags_empty_binary_masks() -> None:
    logits = torch.full((1, 3, 4, 4), -5.0)
    logits[0, 1, 2, 3] = 0.1  # one pixel above sigmoid 0.5
    logits[0, 2, 0, 0] = 0.0  # exactly 0.5 is not > 0.5
    assert valid_proposals(logits).tolist() == [[False, True, False]]
    assert valid_proposals(logits, threshold=0.4).tolist() == [[False, True, True]]


def test_postprocess_crops_then_resizes() -> None:
    scores = torch.arange(2 * 4 * 6, dtype=torch.float64).reshape(2, 4, 6)
    scores[:, 3:, :] = 1e6  # padding rows/cols must not leak into the result
    scores[:, :, 5:] = 1e6
    out = postprocess_to_original(scores, (3, 5), (6, 10))
    ref = F.interpolate(scores[None, :, :3, :5], (6, 10), mode="bilinear", align_corners=False)[0]
    assert out.shape == (2, 6, 10)
    assert torch.equal(out, ref) and out.max() < 1e6
    same = postprocess_to_original(scores, (3, 5), (3, 5))
    assert torch.equal(same, scores[:, :3, :5])
    # non-square, downscaling, batched form
    batched = postprocess_to_original(scores[None], (3, 5), (2, 3))
    assert batched.shape == (1, 2, 2, 3)
    with pytest.raises(ConfigError, match="canvas"):
        postprocess_to_original(scores, (5, 5), (6, 10))


def test_mismatched_proposals_raise() -> None:
    with pytest.raises(ConfigError, match=r"\[B, N\]"):
        semantic_scores(torch.ones(1, 3, 2), torch.zeros(1, 4, 2, 2), (4, 4))
