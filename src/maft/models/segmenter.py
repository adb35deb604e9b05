"""ZeroShotSegmenter: image -> proposals -> CLIP scores A^c -> ensemble -> per-pixel classes.

One pure ``nn.Module`` for evaluation, prediction and visualisation (spec §a.1-§a.5, §b.1, §d.3):

1. the proposal generator gives mask logits ``[B, N, H/4, W/4]`` and ``A^p`` (void dropped after
   the softmax, §a.1) over the current vocabulary's text embeddings;
2. the mask logits are upsampled (bilinear, ``align_corners=True``) to the padded canvas and
   squashed with a sigmoid: soft masks ``M`` (§b.1);
3. ``A^c`` comes from IP-CLIP on the canvas resized to ``input_size`` (§b.1) or from one of the
   merge operations (frozen-CLIP baselines, §a.2); ``A^c = softmax(100 <e, T>)`` over the C classes;
4. ``Â = ensemble(A^p, A^c)`` (§a.4), ``O = Â^T M`` cropped to the valid region and resized back to
   the original image size (§a.5); argmax gives the label map.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from maft.models.clip.factory import ClipNormalization
from maft.models.clip.ip_clip import IPClipEncoder
from maft.models.clip.merge import classify_merged
from maft.models.clip.text import TextClassifier
from maft.models.ensemble import ensemble_scores
from maft.models.inference import postprocess_to_original, semantic_scores, valid_proposals
from maft.models.proposals.generator import MaskProposalGenerator, proposal_scores

CLASSIFIERS = ("ip_clip", "mask", "crop", "mask_crop")


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


class ZeroShotSegmenter(nn.Module):
    """Proposal generator + CLIP classifier + λ-ensemble (inference of MAFT and the baselines)."""

    def __init__(
        self,
        generator: MaskProposalGenerator,
        text: TextClassifier,
        visual: nn.Module,
        norm: ClipNormalization,
        *,
        start_layer: int,
        input_size: int,
        classifier: str = "ip_clip",
        merge_variant: str = "zegformer",
        lambda_: float = 0.0,
        form: str = "code",
        drop_invalid: bool = False,
        merge_chunk: int = 64,
        mask_align_corners: bool = True,
    ) -> None:
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
        self.mask_align_corners = mask_align_corners  # MAFT/FreeSeg upsample with True (§a.1)

    def clip_embeddings(
        self, images: torch.Tensor, soft_masks: torch.Tensor, mask_logits_canvas: torch.Tensor
    ) -> torch.Tensor:
        """Per-proposal CLIP image embeddings ``[B, N, D]`` (not normalised)."""
        x = self.norm.normalize(images.float())  # [B, 3, H, W] CLIP-normalised canvas
        if self.classifier == "ip_clip":
            size = (self.input_size, self.input_size)
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
            return self.ip_clip(x, soft_masks)
        return classify_merged(
            self.visual,
            x,
            mask_logits_canvas,
            mode=self.classifier,
            size=self.norm.image_size,
            variant=self.merge_variant,
            chunk_size=self.merge_chunk,
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
        out = self.generator(images.float(), text_emb)
        mask_logits = out["mask_logits"]  # [B, N, H/4, W/4]
        a_p = proposal_scores(out["class_logits"])  # [B, N, C]
        logits_canvas = F.interpolate(
            mask_logits, size=(h, w), mode="bilinear", align_corners=self.mask_align_corners
        )  # [B, N, H, W]
        soft = logits_canvas.sigmoid()  # [B, N, H, W]
        emb = self.clip_embeddings(images, soft, logits_canvas)  # [B, N, D]
        a_c = self.text.logits(emb.float(), text_emb).softmax(dim=-1)  # [B, N, C]
        valid = valid_proposals(logits_canvas)  # [B, N]
        seen_mask = None if seen is None else seen.to(a_c.device)
        a_hat = ensemble_scores(a_p, a_c, seen_mask, self.lambda_, form=self.form, valid=valid)
        keep = valid if self.drop_invalid else None  # zsseg drops empty proposals; MAFT keeps all
        o = semantic_scores(
            a_hat, mask_logits, (h, w), valid=keep, align_corners=self.mask_align_corners
        )  # [B, C, H, W]
        if valid_size is None:
            valid_size = torch.tensor([[h, w]] * b)
        if orig_size is None:
            orig_size = valid_size
        scores = [
            postprocess_to_original(
                o[i], tuple(valid_size[i].tolist()), tuple(orig_size[i].tolist())
            )
            for i in range(b)
        ]
        labels = [s.argmax(dim=0) for s in scores]
        return SegmenterOutput(scores, labels, mask_logits, a_p, a_c, a_hat, valid)
