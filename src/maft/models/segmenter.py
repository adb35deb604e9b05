"""ZeroShotSegmenter: image -> proposals -> CLIP scores A^c -> ensemble -> per-pixel classes.

One pure ``nn.Module`` for evaluation, prediction and visualisation (docs/method.md §1-§4):

1. the proposal generator gives mask logits ``[B, N, H/4, W/4]`` and ``A^p`` (void dropped after
   the softmax, §2.1) over the current vocabulary's text embeddings;
2. the mask logits are upsampled (bilinear, ``mask_align_corners``) to the padded canvas and
   squashed with a sigmoid: soft masks ``M`` (§3.1);
3. ``A^c`` comes from IP-CLIP on the canvas resized to ``input_size`` (§3.1) or from one of the
   merge operations (frozen-CLIP baselines, §2.3); ``A^c = softmax(100 <e, T>)`` over the C classes;
4. ``Â = ensemble(A^p, A^c)`` (§4.2), ``O = Â^T M`` cropped to the valid region and resized back to
   the original image size (§4.3, §4.4); argmax gives the label map.

The output carries its geometry (canvas, valid and original sizes, the segmenter's
``mask_align_corners``), so :func:`proposal_masks` and :func:`describe_proposals` show each
proposal's mask on the same path as the scores.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from maft.models.clip.factory import ClipNormalization
from maft.models.clip.ip_clip import IPClipEncoder
from maft.models.clip.merge import classify_merged
from maft.models.clip.text import TextClassifier
from maft.models.ensemble import ensemble_scores
from maft.models.inference import (
    postprocess_to_original,
    semantic_scores,
    valid_proposals,
    zero_outside,
)
from maft.models.proposals.generator import proposal_scores

CLASSIFIERS = ("ip_clip", "mask", "crop", "mask_crop")


def valid_in_image(logits_canvas: torch.Tensor, valid_size: torch.Tensor) -> torch.Tensor:
    """[B, N] proposals whose binary mask is non-empty inside the image (padding excluded).

    The official code flags validity on masks already cropped to the resized image, so a
    proposal that fires only on the padded border counts as empty.
    """
    flags = []
    for i in range(logits_canvas.shape[0]):
        vh, vw = (int(v) for v in valid_size[i])
        flags.append(valid_proposals(logits_canvas[i : i + 1, :, :vh, :vw]))  # [1, N]
    return torch.cat(flags, dim=0)


@dataclass
class SegmenterOutput:
    """What one forward pass gives per batch (lists hold one entry per image)."""

    scores: list[torch.Tensor]  # per image [C, H0, W0], O at the original size
    labels: list[torch.Tensor]  # per image int64 [H0, W0]
    mask_logits: torch.Tensor  # [B, N, h, w] (1/4 of the canvas)
    proposal_probs: torch.Tensor  # A^p [B, N, C]
    clip_probs: torch.Tensor  # A^c [B, N, C]
    ensembled: torch.Tensor  # Â [B, N, C]
    valid: torch.Tensor  # [B, N] bool
    canvas_size: tuple[int, int]  # (H, W) of the padded input the mask logits are upsampled to
    valid_size: torch.Tensor  # [B, 2] (h, w) of each resized image inside the canvas
    orig_size: torch.Tensor  # [B, 2] (H0, W0) of each original image
    mask_align_corners: bool  # the segmenter's bilinear convention for the mask logits


class ZeroShotSegmenter(nn.Module):
    """Proposal generator + CLIP classifier + λ-ensemble (inference of MAFT and the baselines)."""

    def __init__(
        self,
        generator: nn.Module,
        text: TextClassifier,
        visual: nn.Module,
        norm: ClipNormalization,
        *,
        start_layer: int,
        input_size: int,
        classifier: str,
        merge_variant: str,
        lambda_: float,
        form: str,
        drop_invalid: bool,
        mask_align_corners: bool,
        merge_chunk: int = 64,
    ) -> None:
        """Every setting is given by the caller (defaults: ``maft.schema.ModelCfg``).

        ``merge_chunk``: sub-images per CLIP pass of the merge baselines, over the whole batch
        (at least one proposal of every image): a bounded pass reuses its memory, whereas one
        pass of batch × proposals sub-images maps fresh pages every batch (a third of the
        world's merge row on a CPU). Only float32 rounding depends on it.
        """
        super().__init__()
        if classifier not in CLASSIFIERS:
            raise ValueError(f"classifier must be one of {CLASSIFIERS}, got {classifier!r}")
        self.generator = generator
        self.text = text
        self.visual = visual
        self.ip_clip = IPClipEncoder.from_open_clip(visual, start_layer=start_layer)
        self.norm = norm
        self.input_size = int(input_size)
        self.classifier = classifier
        self.merge_variant = merge_variant
        self.lambda_ = float(lambda_)
        self.form = form
        self.drop_invalid = drop_invalid
        self.merge_chunk = merge_chunk
        # MAFT/FreeSeg upsample with True (docs/method.md §4.3)
        self.mask_align_corners = mask_align_corners

    def stretch(self, canvas: torch.Tensor) -> torch.Tensor:
        """The whole normalised canvas [B, 3, H, W] resized to the square IP-CLIP input."""
        size = (self.input_size, self.input_size)
        return F.interpolate(canvas, size=size, mode="bilinear", align_corners=False)

    def clip_input(self, images: torch.Tensor, valid_size: torch.Tensor | None) -> torch.Tensor:
        """0-255 canvas -> the IP-CLIP input: CLIP-normalised, zero-padded, stretched."""
        return self.stretch(zero_outside(self.norm.normalize(images.float()), valid_size))

    def clip_embeddings(
        self,
        images: torch.Tensor,
        soft_masks: torch.Tensor,
        mask_logits_canvas: torch.Tensor,
        valid_size: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Per-proposal CLIP image embeddings ``[B, N, D]`` (not normalised).

        The canvas is CLIP-normalised and zero outside each image's valid box (the official
        test path pads after normalising), then resized whole to ``input_size`` for IP-CLIP.
        """
        x = zero_outside(self.norm.normalize(images.float()), valid_size)  # [B, 3, H, W]
        if self.classifier == "ip_clip":
            return self.ip_clip(self.stretch(x), soft_masks)
        return classify_merged(
            self.visual,
            x,
            mask_logits_canvas,
            mode=self.classifier,
            size=self.norm.image_size,
            variant=self.merge_variant,
            chunk_size=max(1, self.merge_chunk // x.shape[0]),  # proposals of every image
        )

    @torch.no_grad()
    def forward(
        self,
        images: torch.Tensor,
        text_emb: torch.Tensor,
        seen: torch.Tensor | None,
        valid_size: torch.Tensor | None = None,
        orig_size: torch.Tensor | None = None,
    ) -> SegmenterOutput:
        """Segment padded 0-255 ``images`` [B,3,H,W] over the classes of ``text_emb`` [C, D]."""
        b, _, h, w = images.shape
        if valid_size is None:
            valid_size = torch.tensor([[h, w]] * b)
        if orig_size is None:
            orig_size = valid_size
        out = self.generator(images.float(), text_emb, valid_size)
        mask_logits = out["mask_logits"]  # [B, N, H/4, W/4]
        a_p = proposal_scores(out["class_logits"])  # [B, N, C]
        logits_canvas = F.interpolate(
            mask_logits, size=(h, w), mode="bilinear", align_corners=self.mask_align_corners
        )  # [B, N, H, W]
        soft = logits_canvas.sigmoid()  # [B, N, H, W]
        emb = self.clip_embeddings(images, soft, logits_canvas, valid_size)  # [B, N, D]
        a_c = self.text.logits(emb.float(), text_emb).softmax(dim=-1)  # [B, N, C]
        valid = valid_in_image(logits_canvas, valid_size)  # [B, N]
        seen_mask = None if seen is None else seen.to(a_c.device)
        a_hat = ensemble_scores(a_p, a_c, seen_mask, self.lambda_, form=self.form, valid=valid)
        # zsseg / FreeSeg drop empty proposals at λ = 0 only (λ > 0 maps their A^c to 1 and keeps
        # them, as the official λ = 0.8 runs show); MAFT keeps all at any λ
        keep = valid if (self.drop_invalid and self.lambda_ == 0) else None
        o = semantic_scores(
            a_hat, mask_logits, (h, w), valid=keep, align_corners=self.mask_align_corners
        )  # [B, C, H, W]
        scores = [
            postprocess_to_original(
                o[i], tuple(valid_size[i].tolist()), tuple(orig_size[i].tolist())
            )
            for i in range(b)
        ]
        labels = [s.argmax(dim=0) for s in scores]
        return SegmenterOutput(
            scores,
            labels,
            mask_logits,
            a_p,
            a_c,
            a_hat,
            valid,
            canvas_size=(h, w),
            valid_size=torch.as_tensor(valid_size).view(-1, 2).cpu(),
            orig_size=torch.as_tensor(orig_size).view(-1, 2).cpu(),
            mask_align_corners=self.mask_align_corners,
        )


# ---------------------------------------------------------------------------------- proposals
def cells_inside(valid: int, canvas: int, cells: int, align_corners: bool) -> int:
    """How many leading cells of a ``cells``-long mask axis land inside the first ``valid`` of the
    ``canvas`` pixels it is upsampled to (at least 1), under the given bilinear convention."""
    i = torch.arange(cells, dtype=torch.float64)
    if align_corners:  # cell centres on the canvas corners' pixel centres
        pos = i * (canvas - 1) / max(cells - 1, 1)
    else:  # cells tile the canvas
        pos = (i + 0.5) * canvas / cells - 0.5
    return max(1, int((pos < valid - 0.5).sum()))  # centre nearest a valid pixel


def proposal_masks(out: SegmenterOutput, index: int = 0, full_size: bool = True) -> torch.Tensor:
    """Soft proposal masks of image ``index``: ``[N, H0, W0]``, or ``[N, rows, cols]`` (the
    mask-logit cells inside the image, ``full_size=False``).

    Same path as the scores (docs/method.md §4.3): bilinear to the canvas with the segmenter's
    ``mask_align_corners``, crop to the valid region, bilinear to the original size, sigmoid.
    """
    logits = out.mask_logits[index : index + 1].float()  # [1, N, h4, w4]
    hp, wp = out.canvas_size
    vh, vw = (int(v) for v in out.valid_size[index])
    if not full_size:
        h4, w4 = logits.shape[-2:]
        rows = cells_inside(vh, hp, h4, out.mask_align_corners)
        cols = cells_inside(vw, wp, w4, out.mask_align_corners)
        return logits[0, :, :rows, :cols].sigmoid()  # [N, rows, cols]
    canvas = F.interpolate(
        logits, size=(hp, wp), mode="bilinear", align_corners=out.mask_align_corners
    )  # [1, N, Hp, Wp]
    h0, w0 = (int(v) for v in out.orig_size[index])
    return postprocess_to_original(canvas[0], (vh, vw), (h0, w0)).sigmoid()  # [N, H0, W0]


def top_k_names(probs: torch.Tensor, names: Sequence[str], k: int) -> list[list[Any]]:
    """The ``k`` largest entries of one class distribution ``[C]`` as ``[name, probability]``."""
    vals, idx = probs.float().topk(min(k, probs.shape[-1]))
    return [[names[int(i)], round(float(v), 6)] for v, i in zip(vals, idx)]


def describe_proposals(
    out: SegmenterOutput, names: Sequence[str], top_k: int = 5, index: int = 0
) -> list[dict[str, Any]]:
    """Per proposal of image ``index``: mask area (original-size pixels, share of the image),
    validity, top-k classes of Â (``top_k``) and of A^c (``clip_top_k``)."""
    masks = proposal_masks(out, index, full_size=False)  # [N, rows, cols]
    share = (masks > 0.5).flatten(1).float().mean(1)  # [N]
    h0, w0 = (int(v) for v in out.orig_size[index])
    return [
        {
            "index": q,
            "area": int(round(float(share[q]) * h0 * w0)),
            "area_share": round(float(share[q]), 6),
            "valid": bool(out.valid[index, q]),
            "top_k": top_k_names(out.ensembled[index, q], names, top_k),
            "clip_top_k": top_k_names(out.clip_probs[index, q], names, top_k),
        }
        for q in range(masks.shape[0])
    ]
