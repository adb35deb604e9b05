"""The released FreeSeg proposal generator, whole: R-101 DeepLab backbone -> deformable pixel
decoder -> text->pixel interaction -> masked-attention decoder -> masks and A^p (docs/release.md).

Submodule names follow the official model, so a released state dict maps onto this module by
renaming two roots only (``backbone.*`` and ``sem_seg_head.*`` stay as they are,
``clip_adapter.non_object_embedding`` becomes ``void_embedding``). The interface is the one of
:class:`maft.models.proposals.MaskProposalGenerator`: ``forward(images, text_emb)`` returns
``mask_logits`` [B, N, H/4, W/4], ``class_logits`` [B, N, C+1] (void last) and ``aux_outputs``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from maft.models.proposals.base import LOGIT_SCALE, ProposalGeneratorBase
from maft.models.proposals.freeseg.backbone import DeepLabResNet, load_backbone_weights
from maft.models.proposals.freeseg.decoder import OpenVocabMaskedDecoder
from maft.models.proposals.freeseg.interaction import ContextInteraction
from maft.models.proposals.freeseg.pixel_decoder import MSDeformAttnPixelDecoder


class FreeSegHead(nn.Module):
    """The official ``sem_seg_head``: pixel decoder, interaction (optional) and predictor."""

    def __init__(
        self,
        pixel_decoder: MSDeformAttnPixelDecoder,
        predictor: OpenVocabMaskedDecoder,
        interaction: ContextInteraction | None,
    ) -> None:
        super().__init__()
        self.pixel_decoder = pixel_decoder
        self.predictor = predictor
        self.interaction = interaction


class FreeSegGenerator(ProposalGeneratorBase):
    """Mask proposals and CLIP-space class scores, architecture and key names as released."""

    def __init__(
        self,
        *,
        depth: int = 101,
        stem_out_channels: int = 128,
        res2_out_channels: int = 256,
        width_per_group: int = 64,
        num_groups: int = 1,
        stride_in_1x1: bool = False,
        res4_dilation: int = 1,
        res5_dilation: int = 1,
        res5_multi_grid: Sequence[int] = (1, 2, 4),
        freeze_at: int = 0,
        backbone_weights: str | None = None,
        conv_dim: int = 256,
        mask_dim: int = 256,
        enc_layers: int = 6,
        enc_nheads: int = 8,
        enc_points: int = 4,
        enc_dim_feedforward: int = 1024,
        enc_dropout: float = 0.1,
        interaction: bool = True,
        interaction_dim: int = 2048,
        interaction_heads: int = 8,
        interaction_dropout: float = 0.1,
        hidden_dim: int = 256,
        num_queries: int = 100,
        nheads: int = 8,
        dim_feedforward: int = 2048,
        dec_layers: int = 10,
        embed_hidden_dim: int = 1024,
        embed_layers: int = 2,
        enforce_input_project: bool = False,
        clip_dim: int = 512,
        pixel_mean: Sequence[float] = (123.675, 116.28, 103.53),
        pixel_std: Sequence[float] = (58.395, 57.12, 57.375),
    ) -> None:
        super().__init__()
        self.num_queries = num_queries
        self.clip_dim = clip_dim
        self.backbone = DeepLabResNet(
            depth,
            stem_out_channels=stem_out_channels,
            res2_out_channels=res2_out_channels,
            width_per_group=width_per_group,
            num_groups=num_groups,
            stride_in_1x1=stride_in_1x1,
            res4_dilation=res4_dilation,
            res5_dilation=res5_dilation,
            res5_multi_grid=tuple(res5_multi_grid),
            freeze_at=freeze_at,
        )
        if backbone_weights:
            load_backbone_weights(self.backbone, Path(backbone_weights))
        pixel_decoder = MSDeformAttnPixelDecoder(
            self.backbone.out_channels,
            conv_dim=conv_dim,
            mask_dim=mask_dim,
            enc_layers=enc_layers,
            nheads=enc_nheads,
            n_points=enc_points,
            dim_feedforward=enc_dim_feedforward,
            dropout=enc_dropout,
        )
        predictor = OpenVocabMaskedDecoder(
            in_channels=conv_dim,
            hidden_dim=hidden_dim,
            num_queries=num_queries,
            nheads=nheads,
            dim_feedforward=dim_feedforward,
            dec_layers=dec_layers,
            mask_dim=mask_dim,
            embed_dim=clip_dim,
            embed_hidden_dim=embed_hidden_dim,
            embed_layers=embed_layers,
            enforce_input_project=enforce_input_project,
        )
        context = (
            ContextInteraction(
                dim=conv_dim,
                text_dim=clip_dim,
                embed_dim=interaction_dim,
                num_heads=interaction_heads,
                dropout=interaction_dropout,
            )
            if interaction
            else None
        )
        self.sem_seg_head = FreeSegHead(pixel_decoder, predictor, context)
        self._init_head(clip_dim, pixel_mean, pixel_std)

    def features(
        self, images: torch.Tensor, vocab: torch.Tensor, valid_size: torch.Tensor | None = None
    ) -> dict[str, object]:
        """Every stage's output: backbone maps, pixel-decoder maps (before and after the
        interaction) and the decoder's predictions, for inspection and parity tests."""
        x = self.normalize(images, valid_size)
        feats = self.backbone(x)
        pd_mask, pd_maps = self.sem_seg_head.pixel_decoder(feats)
        mask_features, maps = pd_mask, pd_maps
        if self.sem_seg_head.interaction is not None:
            mask_features, maps = self.sem_seg_head.interaction(pd_mask, list(pd_maps), vocab)
        out = self.sem_seg_head.predictor(list(maps), mask_features)
        return {
            "backbone": feats,
            "pd_mask_features": pd_mask,
            "pd_multi_scale_features": pd_maps,
            "mask_features": mask_features,
            "multi_scale_features": maps,
            "predictor": out,
        }

    def forward(
        self,
        images: torch.Tensor,
        text_emb: torch.Tensor,
        valid_size: torch.Tensor | None = None,
    ) -> dict:
        """images [B, 3, H, W] 0-255 RGB, text_emb [C, D] L2-normalised -> proposals dict.

        ``valid_size`` [B, 2] (h, w of each image inside the padded canvas): pixels outside are
        zero after normalisation, as in the official test path; None keeps the whole canvas.
        Returns ``mask_logits`` [B, N, H/4, W/4], ``class_logits`` [B, N, C+1] (void last),
        ``class_embeddings`` [B, N, D] and ``aux_outputs`` (the same keys per earlier layer).
        """
        vocab = self.vocabulary(text_emb)
        out = self.features(images, vocab, valid_size)["predictor"]
        preds = [
            *out["aux_outputs"],
            {"pred_logits": out["pred_logits"], "pred_masks": out["pred_masks"]},
        ]
        predictions = [
            {
                "class_logits": self.classify(p["pred_logits"], vocab),
                "mask_logits": p["pred_masks"],
                "class_embeddings": p["pred_logits"],
            }
            for p in preds
        ]
        return {**predictions[-1], "aux_outputs": predictions[:-1]}


__all__ = ["FreeSegGenerator", "FreeSegHead", "LOGIT_SCALE"]
