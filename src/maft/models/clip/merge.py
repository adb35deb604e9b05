"""Frozen-CLIP baseline: one sub-image per proposal by mask, crop or mask & crop.

The three operations and both variants: docs/method.md §2.3.

``variant="zegformer"`` follows ZegFormer's ``mask`` / ``crop`` / ``cropmask`` styles (bilinear
resizes, tight box without +1, ``roi_align(aligned=True)``, empty or degenerate boxes → whole
image). ``variant="zsseg"`` follows zsseg / FreeSeg's mask & crop (box with +1, crop, mean fill —
0 in CLIP-normalised space — then bicubic resize with ``align_corners=False``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import roi_align

MergeMode = Literal["mask", "crop", "mask_crop"]
MergeVariant = Literal["zegformer", "zsseg"]
MODES = ("mask", "crop", "mask_crop")
VARIANTS = ("zegformer", "zsseg")


def binary_masks(
    mask_logits: torch.Tensor, size_hw: tuple[int, int], mask_threshold: float = 0.5
) -> torch.Tensor:
    """``sigmoid(logits) > threshold`` after a bilinear resize to ``size_hw``: ``[B, N, H, W]``."""
    logits = mask_logits.float()
    if tuple(logits.shape[-2:]) != tuple(size_hw):
        logits = F.interpolate(logits, size=tuple(size_hw), mode="bilinear", align_corners=False)
    return logits.sigmoid() > mask_threshold


def valid_proposals(
    mask_logits: torch.Tensor, size_hw: tuple[int, int], mask_threshold: float = 0.5
) -> torch.Tensor:
    """Proposals whose binary mask at image resolution is non-empty: bool ``[B, N]`` (§4.1)."""
    return binary_masks(mask_logits, size_hw, mask_threshold).flatten(2).any(-1)


def tight_boxes(masks: torch.Tensor) -> torch.Tensor:
    """Inclusive extents ``(x_min, y_min, x_max, y_max)`` of bool ``[B, N, H, W]``: ``[B, N, 4]``.

    Empty masks give ``(0, 0, 0, 0)``.
    """
    h, w = masks.shape[-2:]
    cols = masks.any(dim=-2).float()  # [B, N, W]
    rows = masks.any(dim=-1).float()  # [B, N, H]
    x_min = cols.argmax(-1)  # first maximum = first column holding a mask pixel
    y_min = rows.argmax(-1)
    x_max = (w - 1 - cols.flip(-1).argmax(-1)) * cols.amax(-1).long()
    y_max = (h - 1 - rows.flip(-1).argmax(-1)) * rows.amax(-1).long()
    return torch.stack([x_min, y_min, x_max, y_max], dim=-1)  # [B, N, 4]


def _zegformer_boxes(masks: torch.Tensor) -> torch.Tensor:
    """ZegFormer boxes: tight extents, no +1; zero area → the whole image ``(0, 0, W, H)``."""
    h, w = masks.shape[-2:]
    boxes = tight_boxes(masks).float()  # [B, N, 4]
    area = (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])
    whole = boxes.new_tensor([0.0, 0.0, float(w), float(h)])
    return torch.where((area == 0)[..., None], whole, boxes)


def _roi_boxes(boxes: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``[K, 4]`` boxes + their batch index → torchvision's ``[K, 5]`` format."""
    return torch.cat([index[:, None].to(boxes), boxes], dim=1)


def _zegformer(
    images: torch.Tensor,
    masks: torch.Tensor,
    mask_logits: torch.Tensor,
    mode: str,
    size: int,
    mask_threshold: float,
) -> torch.Tensor:
    b, n = masks.shape[:2]
    c = images.shape[1]
    if mode == "mask":
        small = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
        keep = binary_masks(mask_logits, (size, size), mask_threshold)  # [B, N, S, S]
        sub = small[:, None] * keep[:, :, None].to(small.dtype)  # [B, N, C, S, S]
        return sub.reshape(b * n, c, size, size)
    boxes = _zegformer_boxes(masks).reshape(b * n, 4).to(images.dtype)  # [B*N, 4]
    if mode == "crop":
        index = torch.arange(b, device=images.device).repeat_interleave(n)
        source = images
    else:
        index = torch.arange(b * n, device=images.device)
        source = (images[:, None] * masks[:, :, None].to(images.dtype)).flatten(0, 1)  # [B*N,C,H,W]
    rois = _roi_boxes(boxes, index)
    return roi_align(source, rois, output_size=size, spatial_scale=1.0, aligned=True)


def _zsseg(images: torch.Tensor, masks: torch.Tensor, size: int) -> torch.Tensor:
    """Crop to the box ``(x0, y0, x1 + 1, y1 + 1)``, zero (= mean) fill, bicubic resize."""
    b, n = masks.shape[:2]
    c = images.shape[1]
    out = images.new_zeros(b, n, c, size, size)
    boxes = tight_boxes(masks).tolist()
    valid = masks.flatten(2).any(-1).tolist()
    for i in range(b):
        for q in range(n):
            if not valid[i][q]:
                continue
            x0, y0, x1, y1 = boxes[i][q]
            crop = images[i, :, y0 : y1 + 1, x0 : x1 + 1]  # [C, h, w]
            keep = masks[i, q, y0 : y1 + 1, x0 : x1 + 1].to(images.dtype)
            region = (crop * keep)[None]  # [1, C, h, w]
            out[i, q] = F.interpolate(
                region, size=(size, size), mode="bicubic", align_corners=False
            )[0]
    return out.reshape(b * n, c, size, size)


def merge_subimages(
    images: torch.Tensor,
    mask_logits: torch.Tensor,
    mode: MergeMode,
    size: int = 224,
    variant: MergeVariant = "zegformer",
    mask_threshold: float = 0.5,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Build one CLIP input per (image, proposal) pair (§2.3).

    Args:
        images: ``[B, 3, H, W]`` CLIP-normalised images (the padded canvas).
        mask_logits: ``[B, N, h, w]`` proposal mask logits at any resolution (resized bilinearly).
        mode: ``mask`` (whole frame, outside → 0), ``crop`` (tight box) or ``mask_crop``.
        variant: ``zegformer`` (roi_align) or ``zsseg`` (mask_crop only: crop, fill, bicubic).

    Returns:
        ``[B*N, 3, size, size]`` sub-images (proposal-major within each image) and bool ``[B, N]``
        validity (non-empty binary mask at image resolution). Invalid zsseg proposals are zeros.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    if variant == "zsseg" and mode != "mask_crop":
        raise ValueError("the zsseg variant defines only mode='mask_crop'")
    if images.ndim != 4 or mask_logits.ndim != 4 or images.shape[0] != mask_logits.shape[0]:
        raise ValueError(
            f"expected images [B, 3, H, W] and mask_logits [B, N, h, w], got "
            f"{tuple(images.shape)} and {tuple(mask_logits.shape)}"
        )
    masks = binary_masks(mask_logits, images.shape[-2:], mask_threshold)  # [B, N, H, W]
    valid = masks.flatten(2).any(-1)  # [B, N]
    if variant == "zsseg":
        return _zsseg(images, masks, size), valid
    return _zegformer(images, masks, mask_logits, mode, size, mask_threshold), valid


def _image_encoder(
    visual_or_model: nn.Module,
) -> tuple[Callable[[torch.Tensor], torch.Tensor], int]:
    """The image-embedding callable of a CLIP model or visual tower, and its native input side."""
    encode = getattr(visual_or_model, "encode_image", None) or visual_or_model
    visual = getattr(visual_or_model, "visual", visual_or_model)
    side = getattr(visual, "image_size", 224)
    return encode, int(side[0] if isinstance(side, (tuple, list)) else side)


def classify_merged(
    visual_or_model: nn.Module,
    images: torch.Tensor,
    mask_logits: torch.Tensor,
    mode: MergeMode,
    chunk_size: int = 32,
    *,
    size: int | None = None,
    variant: MergeVariant = "zegformer",
    mask_threshold: float = 0.5,
) -> torch.Tensor:
    """Frozen-CLIP embeddings of every proposal's sub-image: ``[B, N, D]`` (not normalised).

    Proposals are processed ``chunk_size`` at a time (per image) to bound memory. ``size``
    defaults to the model's native input side (224 for ViT-B/16). Use ``valid_proposals`` for the
    empty-mask flags.
    """
    encode, native = _image_encoder(visual_or_model)
    size = size or native
    b, n = mask_logits.shape[:2]
    chunks = []
    for start in range(0, n, chunk_size):
        part = mask_logits[:, start : start + chunk_size]  # [B, n_c, h, w]
        sub, _ = merge_subimages(images, part, mode, size, variant, mask_threshold)
        emb = encode(sub)  # [B*n_c, D]
        chunks.append(emb.view(b, part.shape[1], -1))
    if not chunks:
        raise ValueError("classify_merged needs at least one proposal")
    return torch.cat(chunks, dim=1)  # [B, N, D]


__all__ = [
    "MODES",
    "VARIANTS",
    "binary_masks",
    "classify_merged",
    "merge_subimages",
    "tight_boxes",
    "valid_proposals",
]
