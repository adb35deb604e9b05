"""Point sampling for the Mask2Former losses (docs/method.md §6.1), no compiled ops.

Coordinates are normalised to [0, 1] with (x, y) order, the pixel-centre convention of
`F.grid_sample(align_corners=False)`: pixel (i, j) of an H×W map sits at ((j + 0.5)/W, (i + 0.5)/H).
Sampling replicates the border (Mask2Former pads with zeros, which pulls logits and targets within
half a pixel of the image edge towards 0); with border padding, sampling every pixel centre of an
H×W grid equals `F.interpolate(size=(H, W), mode="bilinear", align_corners=False)`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F


def point_sample(inputs: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """Bilinearly sample `inputs` [B, C, H, W] at `coords` [B, P, 2] in [0, 1] -> [B, C, P]."""
    grid = (2.0 * coords - 1.0).unsqueeze(2)  # [B, P, 1, 2] in [-1, 1]
    out = F.grid_sample(
        inputs, grid.to(inputs.dtype), mode="bilinear", padding_mode="border", align_corners=False
    )
    return out.squeeze(3)  # [B, C, P]


def pixel_center_coords(
    height: int, width: int, device: torch.device | None = None
) -> torch.Tensor:
    """All pixel centres of an H×W grid, row-major, as [H*W, 2] (x, y) coordinates in [0, 1]."""
    ys = (torch.arange(height, device=device, dtype=torch.float32) + 0.5) / height
    xs = (torch.arange(width, device=device, dtype=torch.float32) + 0.5) / width
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([grid_x.reshape(-1), grid_y.reshape(-1)], dim=1)  # [H*W, 2]


def logit_uncertainty(logits: torch.Tensor) -> torch.Tensor:
    """Uncertainty of a mask logit: -|logit| (highest at the decision boundary logit = 0)."""
    return -logits.abs()


def uncertain_point_coords(
    logits: torch.Tensor,
    num_points: int,
    oversample_ratio: float = 3.0,
    importance_sample_ratio: float = 0.75,
    uncertainty_fn: Callable[[torch.Tensor], torch.Tensor] = logit_uncertainty,
) -> torch.Tensor:
    """Importance-sample point coordinates (PointRend/Mask2Former scheme) for logits [R, 1, H, W].

    Draws `num_points * oversample_ratio` random points, keeps the `importance_sample_ratio`
    share with the highest uncertainty and fills the rest with fresh uniform points.

    Returns:
        coords [R, num_points, 2] in [0, 1].
    """
    if oversample_ratio < 1:
        raise ValueError(f"oversample_ratio must be >= 1, got {oversample_ratio}")
    if not 0 <= importance_sample_ratio <= 1:
        raise ValueError(
            f"importance_sample_ratio must be in [0, 1], got {importance_sample_ratio}"
        )
    num_masks = logits.shape[0]
    num_sampled = int(num_points * oversample_ratio)
    coords = torch.rand(num_masks, num_sampled, 2, device=logits.device)  # [R, S, 2]
    uncertainty = uncertainty_fn(point_sample(logits, coords))[:, 0]  # [R, S]
    num_uncertain = int(importance_sample_ratio * num_points)
    num_random = num_points - num_uncertain
    idx = uncertainty.topk(num_uncertain, dim=1).indices  # [R, U]
    chosen = torch.gather(coords, 1, idx.unsqueeze(-1).expand(-1, -1, 2))  # [R, U, 2]
    if num_random > 0:
        fresh = torch.rand(num_masks, num_random, 2, device=logits.device)
        chosen = torch.cat([chosen, fresh], dim=1)  # [R, P, 2]
    return chosen


__all__ = ["point_sample", "pixel_center_coords", "logit_uncertainty", "uncertain_point_coords"]
