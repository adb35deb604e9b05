"""Open-vocabulary Mask2Former proposal generator: masks and CLIP-space class scores.

See docs/method.md §2.1.

images (0–255 RGB) -> timm backbone -> pixel decoder (-> optional text interaction) ->
masked-attention decoder -> per query mask logits [B, N, H/4, W/4] and a class embedding whose
cosine ×100 with [T_1 … T_C, t_void] gives logits [B, N, C+1]; A^p = softmax(·)[..., :C].
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from maft.models.proposals.backbone import TimmBackbone
from maft.models.proposals.base import LOGIT_SCALE, ProposalGeneratorBase
from maft.models.proposals.interaction import TextPixelInteraction
from maft.models.proposals.pixel_decoder import PixelDecoder
from maft.models.proposals.transformer_decoder import MaskedAttentionDecoder


def proposal_scores(class_logits: torch.Tensor) -> torch.Tensor:
    """A^p [B, N, C]: softmax over the C+1 columns (void last), then drop void (§2.1)."""
    return class_logits.softmax(dim=-1)[..., :-1]


class MaskProposalGenerator(ProposalGeneratorBase):
    """Class-agnostic mask proposals scored against a text vocabulary plus a learned void."""

    def __init__(
        self,
        *,
        backbone: str = "resnet50",
        pretrained_backbone: bool = False,
        backbone_weights: str | None = None,
        freeze_bn: bool = True,
        hidden_dim: int = 256,
        num_queries: int = 100,
        dec_layers: int = 9,
        nheads: int = 8,
        dim_feedforward: int = 2048,
        enc_layers: int = 6,
        enc_dim_feedforward: int = 1024,
        mask_dim: int = 256,
        clip_dim: int = 512,
        context_interaction: bool = False,
        pixel_mean: Sequence[float] = (123.675, 116.28, 103.53),
        pixel_std: Sequence[float] = (58.395, 57.12, 57.375),
    ) -> None:
        super().__init__()
        self.num_queries = num_queries
        self.clip_dim = clip_dim
        self.backbone = TimmBackbone(
            backbone, pretrained=pretrained_backbone, weights=backbone_weights, freeze_bn=freeze_bn
        )
        self.pixel_decoder = PixelDecoder(
            self.backbone.channels,
            hidden_dim=hidden_dim,
            mask_dim=mask_dim,
            enc_layers=enc_layers,
            nheads=nheads,
            dim_feedforward=enc_dim_feedforward,
        )
        self.interaction = (
            TextPixelInteraction(hidden_dim, mask_dim, clip_dim, nheads)
            if context_interaction
            else None
        )
        self.decoder = MaskedAttentionDecoder(
            hidden_dim=hidden_dim,
            num_queries=num_queries,
            dec_layers=dec_layers,
            nheads=nheads,
            dim_feedforward=dim_feedforward,
            mask_dim=mask_dim,
            clip_dim=clip_dim,
        )
        self._init_head(clip_dim, pixel_mean, pixel_std)  # void embedding drawn last, as before

    def forward(
        self, images: torch.Tensor, text_emb: torch.Tensor, valid_size: torch.Tensor | None = None
    ) -> dict:
        """images [B, 3, H, W] 0–255 RGB, text_emb [C, D] L2-normalised -> proposals dict.

        ``valid_size`` [B, 2]: pixels outside each image's box are zero after normalisation
        (the official test-time padding); None keeps the whole canvas.

        Returns `mask_logits` [B, N, H/4, W/4], `class_logits` [B, N, C+1] (void last) and
        `aux_outputs`, the same two keys for each intermediate decoder prediction.
        """
        x = self.normalize(images, valid_size)
        vocab = self.vocabulary(text_emb)
        mask_features, maps = self.pixel_decoder(self.backbone(x))
        if self.interaction is not None:
            mask_features, maps = self.interaction(mask_features, maps, vocab)
        predictions = [
            {"class_logits": self.classify(emb, vocab), "mask_logits": masks}
            for emb, masks in self.decoder(maps, mask_features)
        ]
        return {**predictions[-1], "aux_outputs": predictions[:-1]}


__all__ = ["MaskProposalGenerator", "proposal_scores", "LOGIT_SCALE"]
