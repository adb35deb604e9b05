"""Merge baselines (docs/method.md §2.3) against direct per-proposal multiply-and-crop loops."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import roi_align

from maft.models.clip.factory import ClipNormalization
from maft.models.clip.merge import classify_merged, merge_subimages, tight_boxes, valid_proposals

BIG = 10.0  # logit: sigmoid(±10) is far from the 0.5 threshold
MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)


def _logits(masks: np.ndarray) -> torch.Tensor:
    """Binary ``[B, N, H, W]`` numpy masks → ±BIG logits."""
    return torch.from_numpy(np.where(masks, BIG, -BIG)).float()


def _shapes(b: int = 2, n: int = 4, h: int = 16, w: int = 16) -> np.ndarray:
    """Proposal 0: an L-shape with a square 7×7 box; 1: empty; 2: one row; 3: a random blob."""
    rng = np.random.default_rng(0)
    m = np.zeros((b, n, h, w), dtype=bool)
    m[:, 0, 3:10, 2:4] = True  # rows 3..9, cols 2..3
    m[:, 0, 8:10, 2:9] = True  # cols up to 8 → box x 2..8, y 3..9 (6 × 6 without +1)
    m[:, 2, 5, 1:12] = True  # a single row: zero-area ZegFormer box → whole image
    m[:, 3] = rng.random((b, h, w)) > 0.6
    return m


def _box_loop(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return None
    return int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())


def test_tight_boxes_and_validity_vs_loop() -> None:
    m = _shapes()
    boxes = tight_boxes(torch.from_numpy(m))
    valid = valid_proposals(_logits(m), (16, 16))
    for b in range(2):
        for q in range(4):
            ref = _box_loop(m[b, q])
            assert bool(valid[b, q]) == (ref is not None)
            assert tuple(boxes[b, q].tolist()) == (ref or (0, 0, 0, 0))


def test_mask_mode_vs_loop() -> None:
    images = torch.randn(2, 3, 16, 16)
    logits = torch.randn(2, 3, 8, 8) * 3
    sub, valid = merge_subimages(images, logits, "mask", size=12)
    assert sub.shape == (6, 3, 12, 12) and valid.shape == (2, 3)
    for b in range(2):
        small = F.interpolate(images[b : b + 1], size=(12, 12), mode="bilinear")[0]
        for q in range(3):
            keep = F.interpolate(logits[b : b + 1, q : q + 1], size=(12, 12), mode="bilinear")
            expected = small * (keep[0, 0].sigmoid() > 0.5)
            torch.testing.assert_close(sub[b * 3 + q], expected, rtol=0, atol=0)


@pytest.mark.parametrize("mode", ["crop", "mask_crop"])
def test_zegformer_crop_at_box_size_is_a_slice(mode: str) -> None:
    """With size == box side, roi_align(aligned=True) samples exact pixels: a plain slice."""
    m = _shapes()
    images = torch.randn(2, 3, 16, 16)
    sub, _ = merge_subimages(images, _logits(m), mode, size=6)
    sub = sub.view(2, 4, 3, 6, 6)
    keep = torch.from_numpy(m[:, 0])[:, None].float()  # [B, 1, H, W]
    source = images * keep if mode == "mask_crop" else images
    torch.testing.assert_close(sub[:, 0], source[:, :, 3:9, 2:8], rtol=0, atol=0)


def test_zegformer_degenerate_boxes_take_the_whole_image() -> None:
    m = _shapes()
    images = torch.randn(2, 3, 16, 16)
    sub, valid = merge_subimages(images, _logits(m), "crop", size=16)
    sub = sub.view(2, 4, 3, 16, 16)
    assert valid[:, 1].logical_not().all() and valid[:, 2].all()
    torch.testing.assert_close(sub[:, 1], images, rtol=0, atol=0)  # empty
    torch.testing.assert_close(sub[:, 2], images, rtol=0, atol=0)  # one row: zero area
    masked, _ = merge_subimages(images, _logits(m), "mask_crop", size=16)
    row = torch.from_numpy(m[:, 2])[:, None].float()
    torch.testing.assert_close(masked.view(2, 4, 3, 16, 16)[:, 2], images * row, rtol=0, atol=0)


@pytest.mark.parametrize("mode", ["crop", "mask_crop"])
def test_zegformer_224_vs_per_proposal_roi_align(mode: str) -> None:
    m = _shapes()
    images = torch.randn(2, 3, 16, 16)
    sub, _ = merge_subimages(images, _logits(m), mode, size=224)
    assert sub.shape == (8, 3, 224, 224)
    for b in range(2):
        for q in range(4):
            box = _box_loop(m[b, q])
            if box is None or (box[2] - box[0]) * (box[3] - box[1]) == 0:
                box = (0, 0, 16, 16)
            src = images[b : b + 1]
            if mode == "mask_crop":
                src = src * torch.from_numpy(m[b, q]).float()
            ref = roi_align(src, [torch.tensor([box], dtype=torch.float32)], 224, aligned=True)
            torch.testing.assert_close(sub[b * 4 + q], ref[0], rtol=0, atol=1e-6)


def test_zsseg_mean_fill_crop_plus_one() -> None:
    """Raw 0–255 image, crop (x0..x1+1), fill outside with 255·μ, normalise: fill becomes 0."""
    norm = ClipNormalization(mean=MEAN, std=STD, image_size=224)
    rng = np.random.default_rng(1)
    raw = torch.from_numpy(rng.integers(0, 256, size=(2, 3, 16, 16)).astype(np.float32))
    m = _shapes()
    sub, valid = merge_subimages(norm.normalize(raw), _logits(m), "mask_crop", 7, "zsseg")
    sub = sub.view(2, 4, 3, 7, 7)
    fill = torch.tensor(MEAN).view(3, 1, 1) * 255.0
    for b in range(2):
        crop = raw[b, :, 3:10, 2:9]  # box (2, 3, 8 + 1, 9 + 1): 7 × 7, bicubic at same size
        keep = torch.from_numpy(m[b, 0, 3:10, 2:9])
        expected = norm.normalize(torch.where(keep, crop, fill)[None])[0]
        torch.testing.assert_close(sub[b, 0], expected, atol=1e-5, rtol=0)
    assert torch.equal(sub[:, 1], torch.zeros_like(sub[:, 1])) and not valid[:, 1].any()


def test_zsseg_bicubic_resize_vs_loop() -> None:
    images = torch.randn(1, 3, 16, 16)
    m = _shapes(b=1)
    sub, _ = merge_subimages(images, _logits(m), "mask_crop", 20, "zsseg")
    for q in (0, 2, 3):
        x0, y0, x1, y1 = _box_loop(m[0, q])
        region = (
            images[:, :, y0 : y1 + 1, x0 : x1 + 1]
            * torch.from_numpy(m[0, q, y0 : y1 + 1, x0 : x1 + 1]).float()
        )
        ref = F.interpolate(region, size=(20, 20), mode="bicubic", align_corners=False)[0]
        torch.testing.assert_close(sub[q], ref, rtol=0, atol=0)


def test_low_resolution_masks_are_upsampled() -> None:
    images = torch.randn(1, 3, 16, 16)
    logits = torch.full((1, 1, 4, 4), -BIG)
    logits[0, 0, 1, 1] = BIG
    up = F.interpolate(logits, size=(16, 16), mode="bilinear").sigmoid() > 0.5
    sub, valid = merge_subimages(images, logits, "mask_crop", size=16)
    box = _box_loop(up[0, 0].numpy())
    ref = roi_align(images * up[0, 0], [torch.tensor([box], dtype=torch.float32)], 16, aligned=True)
    torch.testing.assert_close(sub, ref, rtol=0, atol=1e-6)
    assert valid.all()


def test_classify_merged_chunks_equal_one_pass(tiny_clip) -> None:
    images = torch.randn(2, 3, 24, 24)
    logits = torch.randn(2, 5, 6, 6) * 3
    with torch.no_grad():
        out = classify_merged(tiny_clip, images, logits, "mask_crop", chunk_size=2)
        sub, _ = merge_subimages(images, logits, "mask_crop", size=32)
        ref = tiny_clip.encode_image(sub).view(2, 5, -1)
        via_visual = classify_merged(tiny_clip.visual, images, logits, "mask_crop", chunk_size=5)
    assert out.shape == (2, 5, 32)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(via_visual, ref, atol=1e-5, rtol=1e-5)


def test_bad_arguments() -> None:
    images, logits = torch.randn(1, 3, 8, 8), torch.randn(1, 2, 8, 8)
    with pytest.raises(ValueError, match="mode"):
        merge_subimages(images, logits, "blur")
    with pytest.raises(ValueError, match="zsseg"):
        merge_subimages(images, logits, "crop", variant="zsseg")
    with pytest.raises(ValueError, match="mask_logits"):
        merge_subimages(images, torch.randn(2, 2, 8, 8), "crop")
