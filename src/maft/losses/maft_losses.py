"""MAFT stage-2 losses: mask-aware L_ma, self-distillation L_dis and their sum.

The equations are in docs/method.md §5.2-§5.4.

``L_ma`` regresses CLIP's class probability of each GT class, per proposal, onto the min-max
normalised soft IoU between that proposal and the class's GT mask. ``L_dis`` keeps the
un-masked IP-CLIP close to the frozen CLIP. ``L = L_ma + w_dis · L_dis`` with ``w_dis = 0.1`` in
the official code (``DIS_WEIGHT_CODE``) and 1.0 in the paper (``DIS_WEIGHT_PAPER``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from maft.errors import LabelValueError

IOU_EPS = 1e-7  # MAFT.get_iou
NORM_EPS = 1e-8  # MAFT.mynorm
DIS_WEIGHT_CODE = 0.1  # cfg.MODEL.dis_weight in the official code and the released run (§5.4)
DIS_WEIGHT_PAPER = 1.0  # the paper's λ for L_dis (§8)


def _gt_columns(
    label: torch.Tensor, num_columns: int, ignore_index: int, class_map: torch.Tensor | None
) -> torch.Tensor:
    """Map a label map to columns of ``clip_probs``; -1 marks pixels that carry no GT class."""
    label = label.long()
    valid = label != ignore_index
    num_ids = num_columns if class_map is None else class_map.numel()
    bad = valid & ((label < 0) | (label >= num_ids))
    if bool(bad.any()):
        values = torch.unique(label[bad]).tolist()[:10]
        raise LabelValueError(
            f"Label map holds values {values} outside [0, {num_ids}) that are not the ignore "
            f"value {ignore_index}; check the dataset's label decoding, ignore value or class_map."
        )
    safe = torch.where(valid, label, torch.zeros_like(label))
    cols = safe if class_map is None else class_map.to(label.device).long()[safe]
    if class_map is not None and bool((cols >= num_columns).any()):
        raise LabelValueError(
            f"class_map maps label ids to columns up to {int(cols.max())}, but clip_probs has "
            f"{num_columns} columns; build class_map for the training vocabulary."
        )
    return torch.where(valid & (cols >= 0), cols, torch.full_like(cols, -1))  # [B, H, W]


def _gt_masks(cols: torch.Tensor, num_columns: int, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    """One-hot masks of the classes present in each image, packed to the batch's max count K.

    Returns ``masks`` [B, K, P], ``classes`` [B, K] (column ids, 0 where padded) and
    ``rows`` [B, K] bool (True for real GT classes).
    """
    b = cols.shape[0]
    flat = cols.reshape(b, -1)  # [B, P]
    present = torch.zeros(b, num_columns + 1, dtype=torch.bool, device=cols.device)
    present.scatter_(1, flat.clamp(min=-1) + 1, True)  # slot 0 collects pixels without a class
    present = present[:, 1:]  # [B, C]
    counts = present.sum(dim=1)  # [B]
    k = int(counts.max()) if b > 0 else 0
    rank = present.long().cumsum(dim=1) - 1  # [B, C]: position of each present class
    slot = torch.where(flat >= 0, rank.gather(1, flat.clamp(min=0)), torch.full_like(flat, k))
    masks = torch.zeros(b, k + 1, flat.shape[1], dtype=dtype, device=cols.device)
    masks.scatter_(1, slot.unsqueeze(1), 1.0)  # [B, K+1, P]; slot K = no class, dropped below
    rows = torch.arange(k, device=cols.device).unsqueeze(0) < counts.unsqueeze(1)  # [B, K]
    order = torch.arange(num_columns, device=cols.device).expand(b, -1)  # [B, C]
    classes = torch.zeros(b, k + 1, dtype=torch.long, device=cols.device)
    classes.scatter_(1, torch.where(present, rank, torch.full_like(rank, k)), order)
    return masks[:, :k], classes[:, :k], rows


def soft_iou_targets(gt_masks: torch.Tensor, proposal_masks: torch.Tensor) -> torch.Tensor:
    """Soft IoU ``Σ G·M / (Σ G + Σ M − Σ G·M + 1e-7)`` between GT and proposal masks (§5.2).

    Args:
        gt_masks: ``[B, K, P]`` binary GT masks, flattened.
        proposal_masks: ``[B, N, P]`` soft proposal masks in [0, 1], flattened.

    Returns:
        ``[B, K, N]`` IoU, computed without gradient.
    """
    with torch.no_grad():
        inter = torch.einsum("bkp,bnp->bkn", gt_masks, proposal_masks)  # [B, K, N]
        union = gt_masks.sum(-1).unsqueeze(-1) + proposal_masks.sum(-1).unsqueeze(1) - inter
        return inter / (union + IOU_EPS)


def minmax_normalise(scores: torch.Tensor) -> torch.Tensor:
    """Min-max normalise along the last (proposal) axis with eps 1e-8 (``MAFT.mynorm``, §5.2)."""
    lo = scores.min(dim=-1, keepdim=True).values
    hi = scores.max(dim=-1, keepdim=True).values
    return (scores - lo) / (hi - lo + NORM_EPS)


def mask_aware_loss(
    clip_probs: torch.Tensor,
    proposal_masks: torch.Tensor,
    label: torch.Tensor,
    ignore_index: int,
    class_map: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mask-aware loss L_ma: SmoothL1 between A^c of each GT class and normalised IoU (§5.2).

    Args:
        clip_probs: ``[B, N, C]`` IP-CLIP class probabilities A^c (differentiable).
        proposal_masks: ``[B, N, H, W]`` soft proposal masks in [0, 1] (detached internally).
        label: ``[B, H, W]`` integer label map at the same resolution; ``ignore_index`` excluded.
        ignore_index: label value carrying no class (255 for the training canvas padding too).
        class_map: optional ``[C_label]`` long map from label ids to columns of ``clip_probs``;
            -1 treats a label id as ignore.

    Returns:
        Scalar mean over all ``Σ_b K_b × N`` entries (``K_b`` = GT classes in image ``b``); a zero
        connected to ``clip_probs`` when no image holds a valid class.
    """
    b, n, c = clip_probs.shape
    if proposal_masks.shape[:2] != (b, n) or proposal_masks.shape[2:] != label.shape[1:]:
        raise LabelValueError(
            f"mask_aware_loss expects proposal_masks [B={b}, N={n}, H, W] and label [B, H, W] at "
            f"the same resolution, got {tuple(proposal_masks.shape)} and {tuple(label.shape)}; "
            "upsample the proposal masks to the label size first."
        )
    cols = _gt_columns(label, c, ignore_index, class_map)  # [B, H, W]
    work = torch.float32 if proposal_masks.dtype in (torch.float16, torch.bfloat16) else None
    masks = proposal_masks.detach().to(dtype=work or proposal_masks.dtype).flatten(2)  # [B, N, P]
    gt, classes, rows = _gt_masks(cols, c, masks.dtype)  # [B, K, P], [B, K], [B, K]
    if not bool(rows.any()):
        return clip_probs.sum() * 0.0
    target = minmax_normalise(soft_iou_targets(gt, masks))  # [B, K, N]
    pred = clip_probs.gather(2, classes.unsqueeze(1).expand(b, n, -1)).transpose(1, 2)  # [B, K, N]
    return F.smooth_l1_loss(pred[rows], target[rows].to(pred.dtype), beta=1.0)


def self_distillation_loss(
    student_probs: torch.Tensor, teacher_probs: torch.Tensor
) -> torch.Tensor:
    """Self-distillation L_dis: SmoothL1 (β = 1, mean) from un-masked IP-CLIP to frozen CLIP (§5.3).

    Args:
        student_probs: ``[B, C]`` class probabilities of IP-CLIP without masks (CLS token).
        teacher_probs: ``[B, C]`` class probabilities of the frozen original CLIP (detached here).
    """
    if student_probs.shape != teacher_probs.shape:
        raise LabelValueError(
            f"Student and teacher probabilities differ in shape: {tuple(student_probs.shape)} vs "
            f"{tuple(teacher_probs.shape)}; both must use the same training vocabulary."
        )
    return F.smooth_l1_loss(student_probs, teacher_probs.detach(), beta=1.0)


def maft_loss(
    clip_probs: torch.Tensor,
    proposal_masks: torch.Tensor,
    label: torch.Tensor,
    ignore_index: int,
    student_probs: torch.Tensor | None = None,
    teacher_probs: torch.Tensor | None = None,
    dis_weight: float = DIS_WEIGHT_CODE,
    class_map: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Total MAFT loss ``L_ma + w_dis · L_dis`` (§5.4); ``w_dis`` 0.1 (code) or 1.0 (paper).

    Without student/teacher probabilities (or with ``dis_weight == 0``) ``L_dis`` is a zero.

    Returns:
        ``{"loss", "loss_ma", "loss_dis"}`` scalars; ``loss_dis`` unweighted.
    """
    loss_ma = mask_aware_loss(clip_probs, proposal_masks, label, ignore_index, class_map)
    if student_probs is None or teacher_probs is None or dis_weight == 0:
        loss_dis = loss_ma.new_zeros(())
    else:
        loss_dis = self_distillation_loss(student_probs, teacher_probs)
    return {"loss": loss_ma + dis_weight * loss_dis, "loss_ma": loss_ma, "loss_dis": loss_dis}


__all__ = [
    "DIS_WEIGHT_CODE",
    "DIS_WEIGHT_PAPER",
    "mask_aware_loss",
    "maft_loss",
    "minmax_normalise",
    "self_distillation_loss",
    "soft_iou_targets",
]
