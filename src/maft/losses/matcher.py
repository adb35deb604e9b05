"""Hungarian matching of predicted masks to ground-truth masks (Mask2Former / MaskFormer).

Cost = cost_class · (−p(class)) + cost_mask · mask cost + cost_dice · dice, solved per image with
`scipy.optimize.linear_sum_assignment`. The mask cost is the mean sigmoid BCE (Mask2Former) or
the mean sigmoid focal loss with α 0.25, γ 2 (MaskFormer, as FreeSeg trains). Where it is measured:

* `num_points` P: the same P uniformly random points for predictions and targets (Mask2Former);
* `num_points` None, `match_resolution` "target": every pixel centre of the target grid, i.e.
  predictions bilinearly upsampled (align_corners False) to the target size;
* `num_points` None, `match_resolution` "prediction": every pixel of the prediction grid with the
  targets resized to it by nearest neighbour (MaskFormer's matcher, "downsample gt masks").
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import nn

from maft.losses.point_sampling import pixel_center_coords, point_sample

MASK_LOSSES = ("bce", "focal")
MATCH_RESOLUTIONS = ("target", "prediction")


def pairwise_dice_cost(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Dice cost between every prediction [N, P] (logits) and every target [K, P] -> [N, K]."""
    probs = logits.sigmoid()
    numerator = 2 * probs @ targets.T  # [N, K]
    denominator = probs.sum(-1)[:, None] + targets.sum(-1)[None, :]  # [N, K]
    return 1 - (numerator + 1) / (denominator + 1)


def pairwise_bce_cost(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean binary cross-entropy between every prediction [N, P] and target [K, P] -> [N, K]."""
    num_points = logits.shape[1]
    pos = F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits), reduction="none")
    neg = F.binary_cross_entropy_with_logits(logits, torch.zeros_like(logits), reduction="none")
    return (pos @ targets.T + neg @ (1 - targets).T) / num_points  # [N, K]


def pairwise_focal_cost(
    logits: torch.Tensor, targets: torch.Tensor, alpha: float = 0.25, gamma: float = 2.0
) -> torch.Tensor:
    """Mean sigmoid focal loss (RetinaNet) between every prediction [N, P] and target [K, P].

    Per point: α (1−p)^γ · (−log p) where the target is 1, (1−α) p^γ · (−log(1−p)) where it
    is 0 (α < 0: no α weighting), averaged over the P points -> [N, K] (MaskFormer's matcher).
    """
    num_points = logits.shape[1]
    prob = logits.sigmoid()
    pos = (1 - prob) ** gamma * F.softplus(-logits)  # [N, P]  −log p
    neg = prob**gamma * F.softplus(logits)  # [N, P]  −log(1 − p)
    if alpha >= 0:
        pos, neg = alpha * pos, (1 - alpha) * neg
    return (pos @ targets.T + neg @ (1 - targets).T) / num_points  # [N, K]


def sample_match_points(
    pred_masks: torch.Tensor, tgt_masks: torch.Tensor, coords: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample predictions [N, h, w] and targets [K, H, W] at coords [P, 2] -> [N, P], [K, P]."""
    pred = point_sample(pred_masks[:, None], coords[None].expand(pred_masks.shape[0], -1, -1))
    tgt = point_sample(
        tgt_masks[:, None].to(pred_masks.dtype), coords[None].expand(tgt_masks.shape[0], -1, -1)
    )
    return pred[:, 0], tgt[:, 0]  # [N, P], [K, P]


def resize_targets_nearest(tgt_masks: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Targets [K, H, W] resized to `size` (h, w) by nearest neighbour (MaskFormer) -> [K, h, w]."""
    return F.interpolate(tgt_masks[:, None], size=size, mode="nearest")[:, 0]


class HungarianMatcher(nn.Module):
    """One-to-one assignment of queries to targets minimising the mask-classification cost."""

    def __init__(
        self,
        cost_class: float = 2.0,
        cost_mask: float = 5.0,
        cost_dice: float = 5.0,
        num_points: int | None = 12544,
        *,
        mask_cost: str = "bce",
        match_resolution: str = "target",
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
    ) -> None:
        super().__init__()
        if cost_class == 0 and cost_mask == 0 and cost_dice == 0:
            raise ValueError("HungarianMatcher: all costs are 0; set cost_class/mask/dice")
        if mask_cost not in MASK_LOSSES:
            raise ValueError(f"HungarianMatcher: mask_cost {mask_cost!r} not in {MASK_LOSSES}")
        if match_resolution not in MATCH_RESOLUTIONS:
            raise ValueError(
                f"HungarianMatcher: match_resolution {match_resolution!r} not in "
                f"{MATCH_RESOLUTIONS}"
            )
        self.cost_class = cost_class
        self.cost_mask = cost_mask
        self.cost_dice = cost_dice
        self.num_points = num_points
        self.mask_cost = mask_cost
        self.match_resolution = match_resolution
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma

    def _coords(self, tgt_masks: torch.Tensor) -> torch.Tensor:
        """Match points [P, 2]: uniform random, or all target pixel centres (num_points None)."""
        if self.num_points is None:
            return pixel_center_coords(*tgt_masks.shape[-2:], device=tgt_masks.device)
        return torch.rand(self.num_points, 2, device=tgt_masks.device)

    def _match_masks(
        self, mask_logits: torch.Tensor, tgt_masks: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Predictions [N, h, w] and targets [K, H, W] on the matching grid -> [N, P], [K, P]."""
        if self.num_points is None and self.match_resolution == "prediction":
            tgt = resize_targets_nearest(tgt_masks, tuple(mask_logits.shape[-2:]))  # [K, h, w]
            return mask_logits.flatten(1), tgt.flatten(1)
        return sample_match_points(mask_logits, tgt_masks, self._coords(tgt_masks))

    @torch.no_grad()
    def cost_matrix(
        self, class_logits: torch.Tensor, mask_logits: torch.Tensor, target: dict[str, torch.Tensor]
    ) -> torch.Tensor:
        """Matching cost of one image: class_logits [N, C+1], mask_logits [N, h, w] -> [N, K]."""
        labels, tgt_masks = target["labels"], target["masks"]
        prob = class_logits.float().softmax(-1)  # [N, C+1]
        cost_class = -prob[:, labels]  # [N, K]
        pred, tgt = self._match_masks(mask_logits.float(), tgt_masks.to(mask_logits.device).float())
        if self.mask_cost == "focal":
            cost_mask = pairwise_focal_cost(pred, tgt, self.focal_alpha, self.focal_gamma)
        else:
            cost_mask = pairwise_bce_cost(pred, tgt)
        return (
            self.cost_class * cost_class
            + self.cost_mask * cost_mask
            + self.cost_dice * pairwise_dice_cost(pred, tgt)
        )

    @torch.no_grad()
    def forward(
        self, outputs: dict[str, torch.Tensor], targets: list[dict[str, torch.Tensor]]
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Match per image; returns (query indices, target indices) int64 pairs, one per image."""
        indices = []
        for b, target in enumerate(targets):
            num_targets = int(target["labels"].numel())
            if num_targets == 0:
                empty = torch.zeros(0, dtype=torch.int64)
                indices.append((empty, empty.clone()))
                continue
            cost = self.cost_matrix(outputs["class_logits"][b], outputs["mask_logits"][b], target)
            rows, cols = linear_sum_assignment(cost.cpu().numpy())
            indices.append(
                (torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(cols, dtype=torch.int64))
            )
        return indices


__all__ = [
    "MASK_LOSSES",
    "MATCH_RESOLUTIONS",
    "HungarianMatcher",
    "pairwise_bce_cost",
    "pairwise_dice_cost",
    "pairwise_focal_cost",
    "resize_targets_nearest",
    "sample_match_points",
]
