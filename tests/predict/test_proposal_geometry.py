"""Proposal masks follow the segmenter's mask_align_corners, as its scores do (§a.5)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from maft.models.segmenter import SegmenterOutput, cells_inside, proposal_masks

CANVAS, CELLS = (64, 64), 16
VALID, ORIG = (48, 56), (40, 70)  # padded bottom / right, resized back to another size


def _output(logits: torch.Tensor, align_corners: bool) -> SegmenterOutput:
    """A one-image output holding ``logits`` [1, N, h, w] and the geometry above."""
    empty = torch.zeros(1, logits.shape[1], 2)
    return SegmenterOutput(
        scores=[],
        labels=[],
        mask_logits=logits,
        proposal_probs=empty,
        clip_probs=empty,
        ensembled=empty,
        valid=torch.ones(1, logits.shape[1], dtype=torch.bool),
        canvas_size=CANVAS,
        valid_size=torch.tensor([VALID]),
        orig_size=torch.tensor([ORIG]),
        mask_align_corners=align_corners,
    )


def _direct(logits: torch.Tensor, align_corners: bool) -> torch.Tensor:
    """Canvas upsampling with ``align_corners``, crop, detectron2 resize to ORIG, sigmoid."""
    canvas = F.interpolate(logits, size=CANVAS, mode="bilinear", align_corners=align_corners)
    crop = canvas[..., : VALID[0], : VALID[1]]  # [1, N, 48, 56]
    return F.interpolate(crop, size=ORIG, mode="bilinear", align_corners=False)[0].sigmoid()


@pytest.mark.parametrize("align_corners", [True, False])
def test_full_size_masks_match_a_direct_interpolation(align_corners: bool) -> None:
    logits = torch.randn(1, 3, CELLS, CELLS, generator=torch.Generator().manual_seed(0)) * 4
    got = proposal_masks(_output(logits, align_corners))
    assert got.shape == (3, *ORIG)
    torch.testing.assert_close(got, _direct(logits, align_corners), rtol=0, atol=1e-6)
    other = _direct(logits, not align_corners)
    assert (got - other).abs().max() > 1e-2  # the two conventions differ visibly


@pytest.mark.parametrize("align_corners", [True, False])
def test_grid_cells_inside_follow_the_interpolation(align_corners: bool) -> None:
    """A row-index ramp upsampled by F.interpolate gives each canvas row's cell coordinate; the
    cells before the coordinate of the valid region's edge are the ones inside."""
    ramp = torch.arange(CELLS, dtype=torch.float64).view(1, 1, CELLS, 1)
    coord = F.interpolate(ramp, size=(CANVAS[0], 1), mode="bilinear", align_corners=align_corners)
    edge = float(coord[0, 0, VALID[0] - 1, 0] + coord[0, 0, VALID[0], 0]) / 2  # at row 47.5
    expected = sum(1 for i in range(CELLS) if i < edge)
    assert cells_inside(VALID[0], CANVAS[0], CELLS, align_corners) == expected
    logits = torch.zeros(1, 2, CELLS, CELLS)
    low = proposal_masks(_output(logits, align_corners), full_size=False)
    assert low.shape == (2, expected, cells_inside(VALID[1], CANVAS[1], CELLS, align_corners))


def test_segmenter_output_carries_its_setting(predictor, rgb) -> None:
    """The segmenter's own mask_align_corners reaches proposal_masks."""
    out, info = predictor.run(rgb, ["sky", "cat"])
    assert out.mask_align_corners is True  # MAFT / FreeSeg convention
    batch = info["batch"]
    segmenter = copy.copy(predictor.segmenter())
    segmenter.mask_align_corners = False
    text = predictor.task.text_embeddings(info["vocab"])
    with torch.no_grad():
        flat = segmenter(batch["image"], text, None, batch["valid_size"], batch["orig_size"])
    assert flat.mask_align_corners is False
    vh, vw = (int(v) for v in batch["valid_size"][0])
    for output, ac in ((out, True), (flat, False)):
        canvas = F.interpolate(
            output.mask_logits.float(),
            size=tuple(batch["image"].shape[-2:]),
            mode="bilinear",
            align_corners=ac,
        )[..., :vh, :vw]
        ref = F.interpolate(canvas, size=rgb.shape[:2], mode="bilinear", align_corners=False)
        torch.testing.assert_close(proposal_masks(output), ref[0].sigmoid(), rtol=0, atol=1e-6)
