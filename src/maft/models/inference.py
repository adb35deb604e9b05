"""Semantic inference from per-proposal scores and soft masks (docs/method.md §4.3, §4.4).

``O[c, x, y] = Σ_q Â[q, c] · sigmoid(mask_logit_q)[x, y]``: soft masks, no softmax across
proposals, no renormalisation, no void channel. Mask logits are upsampled bilinearly with
``align_corners=True`` to the padded input canvas; the scores are then cropped to the resized
image and resized bilinearly (``align_corners=False``, detectron2 ``sem_seg_postprocess``) to the
original size before the argmax. MAFT keeps all proposals (default); zsseg / FreeSeg drop
proposals whose binary mask is empty (pass ``valid``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from maft.errors import ConfigError

MASK_THRESHOLD = 0.5  # MASK_THR / the valid flag of MAFT.semantic_inference


def zero_outside(images: torch.Tensor, valid_size: torch.Tensor | None) -> torch.Tensor:
    """Zero every pixel of ``images`` [B, C, H, W] outside each image's valid (h, w) box.

    The official test path normalises each image and then pads with zeros, so the padded border
    is 0 in normalised space whatever value the raw canvas was padded with.
    """
    if valid_size is None:
        return images
    h, w = images.shape[-2:]
    vs = torch.as_tensor(valid_size, device=images.device).view(-1, 2)  # [B, 2]
    rows = torch.arange(h, device=images.device)[None, :, None] < vs[:, 0, None, None]
    cols = torch.arange(w, device=images.device)[None, None, :] < vs[:, 1, None, None]
    keep = (rows & cols)[:, None]  # [B, 1, H, W]
    return images * keep.to(images.dtype)


def valid_proposals(mask_logits: torch.Tensor, threshold: float = MASK_THRESHOLD) -> torch.Tensor:
    """Flag proposals whose binary mask ``sigmoid(logit) > threshold`` is non-empty (§4.1).

    Args:
        mask_logits: ``[B, N, h, w]`` mask logits (at whatever resolution the caller decides;
            zsseg computes the flag on masks already resized to the test image).

    Returns:
        ``[B, N]`` bool.
    """
    return (mask_logits.sigmoid() > threshold).flatten(2).any(dim=-1)  # [B, N]


def semantic_scores(
    A: torch.Tensor,
    mask_logits: torch.Tensor,
    out_size: tuple[int, int],
    valid: torch.Tensor | None = None,
    align_corners: bool = True,
) -> torch.Tensor:
    """Per-class score maps ``O = Âᵀ · sigmoid(upsample(mask_logits))`` (§4.3).

    Args:
        A: ``[B, N, C]`` ensembled class scores Â.
        mask_logits: ``[B, N, h, w]`` proposal mask logits.
        out_size: ``(H, W)`` of the padded input canvas the logits are upsampled to.
        valid: optional ``[B, N]`` bool; proposals flagged False are dropped (zsseg). None keeps
            every proposal (MAFT).
        align_corners: the bilinear upsampling convention (MAFT/FreeSeg: True; Mask2Former: False).

    Returns:
        ``[B, C, H, W]`` scores; ``argmax`` over dim 1 gives the class map.
    """
    if A.shape[:2] != mask_logits.shape[:2]:
        raise ConfigError(
            f"Scores {tuple(A.shape)} and mask logits {tuple(mask_logits.shape)} disagree on "
            "[B, N]; both must come from the same proposals."
        )
    logits = F.interpolate(
        mask_logits.to(A.dtype), size=tuple(out_size), mode="bilinear", align_corners=align_corners
    )  # [B, N, H, W]
    masks = logits.sigmoid()
    if valid is not None:
        A = A * valid.to(device=A.device, dtype=A.dtype).unsqueeze(-1)  # [B, N, C]
    return torch.einsum("bnc,bnhw->bchw", A, masks)  # [B, C, H, W]


def postprocess_to_original(
    scores: torch.Tensor, valid_size: tuple[int, int], orig_size: tuple[int, int]
) -> torch.Tensor:
    """Crop the padded canvas to the resized image, resize to the original size (§4.4).

    detectron2 ``sem_seg_postprocess``: ``scores[:, :h, :w]`` then bilinear,
    ``align_corners=False``.

    Args:
        scores: ``[C, Hp, Wp]`` (or batched ``[B, C, Hp, Wp]``) scores on the padded canvas.
        valid_size: ``(h, w)`` of the resized image inside the canvas (top-left aligned).
        orig_size: ``(H0, W0)`` of the original image.

    Returns:
        ``[C, H0, W0]`` (or ``[B, C, H0, W0]``).
    """
    if scores.dim() not in (3, 4):
        raise ConfigError(f"Expected scores [C, H, W] or [B, C, H, W], got {tuple(scores.shape)}.")
    h, w = valid_size
    if h > scores.shape[-2] or w > scores.shape[-1] or h < 1 or w < 1:
        raise ConfigError(
            f"valid_size {tuple(valid_size)} does not fit in the canvas {tuple(scores.shape[-2:])}."
        )
    batched = scores if scores.dim() == 4 else scores.unsqueeze(0)  # [B, C, Hp, Wp]
    cropped = batched[..., :h, :w]  # [B, C, h, w]
    out = F.interpolate(cropped, size=tuple(orig_size), mode="bilinear", align_corners=False)
    return out if scores.dim() == 4 else out[0]


__all__ = [
    "MASK_THRESHOLD",
    "postprocess_to_original",
    "semantic_scores",
    "valid_proposals",
    "zero_outside",
]
