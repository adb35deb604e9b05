"""Losses: stage-1 set criterion (Mask2Former / MaskFormer), MAFT's mask-aware + SD losses."""

from maft.losses.maft_losses import (
    DIS_WEIGHT_CODE,
    DIS_WEIGHT_PAPER,
    maft_loss,
    mask_aware_loss,
    minmax_normalise,
    self_distillation_loss,
    soft_iou_targets,
)
from maft.losses.matcher import HungarianMatcher
from maft.losses.point_sampling import (
    pixel_center_coords,
    point_sample,
    uncertain_point_coords,
)
from maft.losses.set_criterion import (
    SetCriterion,
    dice_loss,
    sigmoid_ce_loss,
    sigmoid_focal_loss,
    targets_from_label,
)

__all__ = [
    "DIS_WEIGHT_CODE",
    "DIS_WEIGHT_PAPER",
    "HungarianMatcher",
    "SetCriterion",
    "dice_loss",
    "maft_loss",
    "mask_aware_loss",
    "minmax_normalise",
    "pixel_center_coords",
    "point_sample",
    "self_distillation_loss",
    "sigmoid_ce_loss",
    "sigmoid_focal_loss",
    "soft_iou_targets",
    "targets_from_label",
    "uncertain_point_coords",
]
