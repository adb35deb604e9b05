"""Set criterion for the proposal generator: Mask2Former's, or MaskFormer's as FreeSeg trains.

After Hungarian matching: CE over C+1 classes (no-object weight `eos_coef`) + a mask loss + dice,
each mask term summed over matched masks and divided by the (all-reduced, >= 1) target count, on
the final prediction and (deep supervision) on intermediate decoder predictions.

* Mask2Former (defaults): sigmoid BCE on `num_points` 12 544 importance-sampled points
  (oversample 3, ratio 0.75); weights CE 1, BCE 20, dice 5; every aux prediction counts.
* MaskFormer (FreeSeg's mask_former_model.py): `mask_loss` "focal" (α 0.25, γ 2) and
  `num_points` None, i.e. predictions bilinearly upsampled (align_corners False) to the target
  size and every pixel used; `aux_loss_layers` -1 keeps FreeSeg's aux weights `_0` …
  `_{DEC_LAYERS-2}`, which drop the last of its DEC_LAYERS aux predictions.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from maft.errors import LabelValueError
from maft.losses.matcher import MASK_LOSSES, HungarianMatcher
from maft.losses.point_sampling import point_sample, uncertain_point_coords


def targets_from_label(
    label: torch.Tensor, ignore_index: int, class_map: torch.Tensor | None = None
) -> dict[str, torch.Tensor]:
    """One binary mask per class present in `label` [H, W] (ignore excluded) -> {labels, masks}.

    `class_map` [C_full] maps benchmark ids to training ids (e.g. the seen-only index space);
    entries < 0 mark classes treated as ignore. Labels are sorted by training id.
    """
    label = label.long()
    valid = label != ignore_index
    if class_map is not None:
        class_map = class_map.to(label.device)
        bad = valid & ((label < 0) | (label >= class_map.numel()))
        if bad.any():
            raise LabelValueError(
                f"label holds value {int(label[bad][0])} outside [0, {class_map.numel()}) that is "
                f"not the ignore value {ignore_index}; check the dataset's ignore value and classes"
            )
        mapped = torch.full_like(label, -1)
        mapped[valid] = class_map[label[valid]]
        label, valid = mapped, mapped >= 0
    classes = torch.unique(label[valid])  # [K] sorted
    masks = label[None] == classes[:, None, None]  # [K, H, W]
    return {"labels": classes.long(), "masks": masks.float()}


def sigmoid_ce_loss(logits: torch.Tensor, targets: torch.Tensor, num_masks: float) -> torch.Tensor:
    """Mean BCE over points [M, P], summed over masks and divided by num_masks."""
    loss = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    return loss.mean(1).sum() / num_masks


def sigmoid_focal_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    num_masks: float,
    alpha: float = 0.25,
    gamma: float = 2.0,
) -> torch.Tensor:
    """Focal loss α_t (1−p_t)^γ · BCE (RetinaNet), mean over points [M, P], summed / num_masks.

    p_t = p·t + (1−p)(1−t), α_t = α·t + (1−α)(1−t) (α < 0: no α weighting), as MaskFormer's loss.
    """
    prob = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")  # [M, P]
    p_t = prob * targets + (1 - prob) * (1 - targets)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    return loss.mean(1).sum() / num_masks


def dice_loss(logits: torch.Tensor, targets: torch.Tensor, num_masks: float) -> torch.Tensor:
    """Dice loss 1 - (2·|p∩t| + 1)/(|p| + |t| + 1) per mask [M, P], summed / num_masks."""
    probs = logits.sigmoid()
    numerator = 2 * (probs * targets).sum(-1)
    denominator = probs.sum(-1) + targets.sum(-1)
    return (1 - (numerator + 1) / (denominator + 1)).sum() / num_masks


class SetCriterion(nn.Module):
    """Hungarian-matched CE + mask loss (BCE or focal) + dice with deep supervision.

    `forward` returns the unweighted terms (`loss_ce`, `loss_mask`, `loss_dice`, and
    `loss_ce_{i}` … for each aux prediction i that counts) and `loss`, the weighted sum of them.
    `aux_loss_layers` n keeps the aux predictions `aux_outputs[:n]` (negative n: all but the last
    |n|; None: all), so FreeSeg's range(DEC_LAYERS - 1) aux weights over DEC_LAYERS aux
    predictions are n = -1.
    """

    def __init__(
        self,
        num_classes: int,
        matcher: HungarianMatcher,
        *,
        class_weight: float = 1.0,
        mask_weight: float = 20.0,
        dice_weight: float = 5.0,
        eos_coef: float = 0.1,
        num_points: int | None = 12544,
        oversample_ratio: float = 3.0,
        importance_sample_ratio: float = 0.75,
        deep_supervision: bool = True,
        mask_loss: str = "bce",
        aux_loss_layers: int | None = None,
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
    ) -> None:
        super().__init__()
        if mask_loss not in MASK_LOSSES:
            raise ValueError(f"SetCriterion: mask_loss {mask_loss!r} not in {MASK_LOSSES}")
        if aux_loss_layers is not None and (
            isinstance(aux_loss_layers, bool) or not isinstance(aux_loss_layers, int)
        ):
            raise ValueError(
                f"SetCriterion: aux_loss_layers must be an int or None, got {aux_loss_layers!r}"
            )
        self.num_classes = num_classes
        self.matcher = matcher
        self.weights = {"loss_ce": class_weight, "loss_mask": mask_weight, "loss_dice": dice_weight}
        self.num_points = num_points
        self.oversample_ratio = oversample_ratio
        self.importance_sample_ratio = importance_sample_ratio
        self.deep_supervision = deep_supervision
        self.mask_loss = mask_loss
        self.aux_loss_layers = aux_loss_layers
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma
        empty_weight = torch.ones(num_classes + 1)
        empty_weight[-1] = eos_coef
        self.register_buffer("empty_weight", empty_weight, persistent=False)

    def loss_labels(
        self, class_logits: torch.Tensor, targets: list[dict], indices: list[tuple]
    ) -> torch.Tensor:
        """Weighted CE over C+1 classes [B, N, C+1]; unmatched queries target no-object (C)."""
        if class_logits.shape[-1] != self.num_classes + 1:
            raise ValueError(
                f"SetCriterion: class_logits have {class_logits.shape[-1]} columns, expected "
                f"num_classes + 1 = {self.num_classes + 1}"
            )
        target_classes = torch.full(
            class_logits.shape[:2], self.num_classes, dtype=torch.int64, device=class_logits.device
        )
        for b, (src, tgt) in enumerate(indices):
            target_classes[b, src.to(class_logits.device)] = targets[b]["labels"][tgt]
        return F.cross_entropy(
            class_logits.float().transpose(1, 2), target_classes, self.empty_weight
        )

    def _point_coords(self, src: torch.Tensor) -> torch.Tensor:
        """Loss points [M, P, 2] importance-sampled on src logits [M, h, w] (num_points set)."""
        return uncertain_point_coords(
            src[:, None], self.num_points, self.oversample_ratio, self.importance_sample_ratio
        )

    def _mask_pairs(
        self, src: torch.Tensor, tgt: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Matched logits [M, h, w] and targets [M, H, W] on the loss points -> [M, P], [M, P].

        num_points None: predictions bilinearly upsampled (align_corners False) to the target
        size, every pixel (MaskFormer); otherwise importance-sampled points (Mask2Former).
        """
        if self.num_points is None:
            up = F.interpolate(
                src[:, None], size=tgt.shape[-2:], mode="bilinear", align_corners=False
            )  # [M, 1, H, W]
            return up.flatten(1), tgt.flatten(1)  # [M, H*W]
        with torch.no_grad():
            coords = self._point_coords(src)
            point_labels = point_sample(tgt[:, None], coords)[:, 0]  # [M, P]
        point_logits = point_sample(src[:, None], coords)[:, 0]  # [M, P]
        return point_logits, point_labels

    def loss_masks(
        self, mask_logits: torch.Tensor, targets: list[dict], indices: list[tuple], num_masks: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mask loss (BCE or focal) and dice of matched masks; mask_logits [B, N, h, w]."""
        src = torch.cat([mask_logits[b, s] for b, (s, _) in enumerate(indices)])  # [M, h, w]
        if src.shape[0] == 0:
            zero = mask_logits.sum() * 0.0
            return zero, zero
        tgt = torch.cat([targets[b]["masks"][t] for b, (_, t) in enumerate(indices)])  # [M, H, W]
        logits, labels = self._mask_pairs(src.float(), tgt.to(src.device).float())
        if self.mask_loss == "focal":
            loss_mask = sigmoid_focal_loss(
                logits, labels, num_masks, self.focal_alpha, self.focal_gamma
            )
        else:
            loss_mask = sigmoid_ce_loss(logits, labels, num_masks)
        return loss_mask, dice_loss(logits, labels, num_masks)

    def _num_masks(self, targets: list[dict], device: torch.device) -> float:
        """Average number of target masks per process (at least 1), for loss normalisation."""
        count = torch.tensor(float(sum(len(t["labels"]) for t in targets)), device=device)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(count)
            count = count / dist.get_world_size()
        return max(float(count.item()), 1.0)

    def layer_losses(
        self, outputs: dict[str, torch.Tensor], targets: list[dict], num_masks: float
    ) -> dict[str, torch.Tensor]:
        """Match one prediction layer and compute its unweighted CE, BCE and dice."""
        indices = self.matcher(outputs, targets)
        loss_mask, loss_dice = self.loss_masks(outputs["mask_logits"], targets, indices, num_masks)
        return {
            "loss_ce": self.loss_labels(outputs["class_logits"], targets, indices),
            "loss_mask": loss_mask,
            "loss_dice": loss_dice,
        }

    def forward(self, outputs: dict, targets: list[dict]) -> dict[str, torch.Tensor]:
        """All loss terms for the final prediction and the aux predictions that count."""
        num_masks = self._num_masks(targets, outputs["mask_logits"].device)
        losses = self.layer_losses(outputs, targets, num_masks)
        for i, aux in enumerate(self.counted_aux_outputs(outputs)):
            layer = self.layer_losses(aux, targets, num_masks)
            losses.update({f"{k}_{i}": v for k, v in layer.items()})
        losses["loss"] = sum(self._weight(k) * v for k, v in losses.items())
        return losses

    def counted_aux_outputs(self, outputs: dict) -> list[dict]:
        """The aux predictions whose losses count: none without deep supervision, else aux[:n]."""
        if not self.deep_supervision:
            return []
        aux = list(outputs.get("aux_outputs", []))
        return aux if self.aux_loss_layers is None else aux[: self.aux_loss_layers]

    def _weight(self, key: str) -> float:
        """Weight of a loss term; `loss_ce_3` (aux layer 3) shares the weight of `loss_ce`."""
        base, _, suffix = key.rpartition("_")
        return self.weights[base if suffix.isdigit() else key]


__all__ = [
    "SetCriterion",
    "dice_loss",
    "sigmoid_ce_loss",
    "sigmoid_focal_loss",
    "targets_from_label",
]
