"""Mask2Former's ``MSDeformAttnPixelDecoder`` as the released FreeSeg/MAFT generator uses it.

A deformable-attention encoder over res5, res4, res3 (post-norm, no padding mask), then one FPN
step onto res2 and a 1x1 conv to ``mask_features``. Parameter names equal the official ones
without the ``sem_seg_head.pixel_decoder.`` prefix, so a released state dict loads strictly.
See docs/release.md.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from .layers import ConvNorm, c2_xavier_fill, sine_position_embedding
from .ms_deform_attn import MSDeformAttn

# Encoder levels, coarsest first: the order of input_proj, level_embed and the outputs.
_ENCODER_FEATURES = ("res5", "res4", "res3")


class MSDeformAttnEncoderLayer(nn.Module):
    """Post-norm encoder layer: deformable self-attention, then a ReLU FFN, each with residual."""

    def __init__(
        self,
        d_model: int = 256,
        d_ffn: int = 1024,
        dropout: float = 0.1,
        n_levels: int = 3,
        n_heads: int = 8,
        n_points: int = 4,
    ) -> None:
        super().__init__()
        self.self_attn = MSDeformAttn(d_model, n_levels, n_heads, n_points)
        self.dropout1 = nn.Dropout(dropout)
        self.norm1 = nn.LayerNorm(d_model)
        self.linear1 = nn.Linear(d_model, d_ffn)
        self.dropout2 = nn.Dropout(dropout)
        self.linear2 = nn.Linear(d_ffn, d_model)
        self.dropout3 = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(d_model)

    def forward(
        self,
        src: torch.Tensor,
        pos: torch.Tensor,
        reference_points: torch.Tensor,
        spatial_shapes: torch.Tensor,
    ) -> torch.Tensor:
        """src, pos [B, L, d]; reference_points [B, L, levels, 2] -> [B, L, d]."""
        attn = self.self_attn(src + pos, reference_points, src, spatial_shapes)
        src = self.norm1(src + self.dropout1(attn))
        ffn = self.linear2(self.dropout2(F.relu(self.linear1(src))))
        return self.norm2(src + self.dropout3(ffn))


class MSDeformAttnEncoder(nn.Module):
    """A stack of ``num_layers`` encoder layers sharing one set of reference points."""

    def __init__(self, num_layers: int, **layer_kwargs) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            MSDeformAttnEncoderLayer(**layer_kwargs) for _ in range(num_layers)
        )

    @staticmethod
    def reference_points(
        shapes: list[tuple[int, int]], batch: int, n_levels: int, device: torch.device
    ) -> torch.Tensor:
        """Pixel centres ((j + 0.5) / W, (i + 0.5) / H) of every level -> [B, sum(HW), levels, 2].

        No padding mask, so all valid ratios are 1 and one point serves every level.
        """
        points = []
        for h, w in shapes:
            ys = (torch.arange(h, dtype=torch.float32, device=device) + 0.5) / h  # [H]
            xs = (torch.arange(w, dtype=torch.float32, device=device) + 0.5) / w  # [W]
            grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")  # [H, W] each
            points.append(torch.stack((grid_x.reshape(-1), grid_y.reshape(-1)), dim=-1))
        ref = torch.cat(points, dim=0)  # [sum(HW), 2] as (x, y)
        return ref[None, :, None, :].expand(batch, -1, n_levels, 2)  # [B, sum(HW), levels, 2]

    def forward(
        self, src: torch.Tensor, pos: torch.Tensor, spatial_shapes: torch.Tensor
    ) -> torch.Tensor:
        """src, pos [B, sum(HW), d]; spatial_shapes [levels, 2] (H, W) -> [B, sum(HW), d]."""
        shapes = [(int(h), int(w)) for h, w in spatial_shapes.tolist()]
        ref = self.reference_points(shapes, src.shape[0], len(shapes), src.device)
        for layer in self.layers:
            src = layer(src, pos, ref, spatial_shapes)
        return src


class MSDeformAttnTransformerEncoderOnly(nn.Module):
    """Level embeddings plus the encoder; flattens the maps in and splits them back out."""

    def __init__(
        self,
        d_model: int = 256,
        nhead: int = 8,
        num_encoder_layers: int = 6,
        dim_feedforward: int = 1024,
        dropout: float = 0.1,
        num_feature_levels: int = 3,
        enc_n_points: int = 4,
    ) -> None:
        super().__init__()
        self.encoder = MSDeformAttnEncoder(
            num_encoder_layers,
            d_model=d_model,
            d_ffn=dim_feedforward,
            dropout=dropout,
            n_levels=num_feature_levels,
            n_heads=nhead,
            n_points=enc_n_points,
        )
        self.level_embed = nn.Parameter(torch.empty(num_feature_levels, d_model))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Xavier on every matrix, then the deformable-attention init, then normal level embeds."""
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
        for m in self.modules():
            if isinstance(m, MSDeformAttn):
                m.reset_parameters()
        nn.init.normal_(self.level_embed)

    def forward(
        self, srcs: list[torch.Tensor], pos_embeds: list[torch.Tensor]
    ) -> list[torch.Tensor]:
        """Maps [B, d, H_l, W_l] and their positions -> encoded maps of the same shapes."""
        shapes = [(x.shape[2], x.shape[3]) for x in srcs]
        src_flat = torch.cat([x.flatten(2).transpose(1, 2) for x in srcs], dim=1)  # [B, L, d]
        pos_flat = torch.cat(
            [
                p.flatten(2).transpose(1, 2) + self.level_embed[lvl].view(1, 1, -1)
                for lvl, p in enumerate(pos_embeds)
            ],
            dim=1,
        )  # [B, L, d]
        spatial_shapes = torch.as_tensor(shapes, dtype=torch.long, device=src_flat.device)
        memory = self.encoder(src_flat, pos_flat, spatial_shapes)  # [B, L, d]
        b, _, d = memory.shape
        chunks = memory.split([h * w for h, w in shapes], dim=1)
        # [B, H*W, d] -> [B, d, H, W]
        return [c.transpose(1, 2).reshape(b, d, h, w) for c, (h, w) in zip(chunks, shapes)]


class MSDeformAttnPixelDecoder(nn.Module):
    """Released pixel decoder: deformable encoder on res5..res3, FPN step to res2, mask features."""

    def __init__(
        self,
        in_channels: Mapping[str, int],
        *,
        conv_dim: int = 256,
        mask_dim: int = 256,
        enc_layers: int = 6,
        nheads: int = 8,
        n_points: int = 4,
        dim_feedforward: int = 1024,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.conv_dim = conv_dim
        self.input_proj = nn.ModuleList(
            nn.Sequential(nn.Conv2d(in_channels[f], conv_dim, 1), nn.GroupNorm(32, conv_dim))
            for f in _ENCODER_FEATURES
        )
        for proj in self.input_proj:
            nn.init.xavier_uniform_(proj[0].weight, gain=1)
            nn.init.zeros_(proj[0].bias)
        self.transformer = MSDeformAttnTransformerEncoderOnly(
            d_model=conv_dim,
            nhead=nheads,
            num_encoder_layers=enc_layers,
            dim_feedforward=dim_feedforward,
            dropout=dropout,
            num_feature_levels=len(_ENCODER_FEATURES),
            enc_n_points=n_points,
        )
        self.mask_features = nn.Conv2d(conv_dim, mask_dim, 1)
        c2_xavier_fill(self.mask_features)
        self.adapter_1 = ConvNorm(
            in_channels["res2"], conv_dim, 1, bias=False, norm=nn.GroupNorm(32, conv_dim)
        )
        self.layer_1 = ConvNorm(
            conv_dim,
            conv_dim,
            3,
            padding=1,
            bias=False,
            norm=nn.GroupNorm(32, conv_dim),
            activation=True,
        )
        c2_xavier_fill(self.adapter_1)
        c2_xavier_fill(self.layer_1)

    def forward(
        self, features: Mapping[str, torch.Tensor]
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Backbone maps res2..res5 -> (mask_features [B, mask_dim, H/4, W/4], [res5, res4, res3
        level maps [B, conv_dim, H_l, W_l]]); the first level map is the encoder's output."""
        dtype = self.mask_features.weight.dtype  # float32 unless the module itself was cast
        srcs, pos = [], []
        for proj, f in zip(self.input_proj, _ENCODER_FEATURES):
            x = features[f].to(dtype)
            srcs.append(proj(x))
            pos.append(sine_position_embedding(x, self.conv_dim // 2))
        multi_scale = self.transformer(srcs, pos)  # order res5, res4, res3
        res2 = features["res2"].to(dtype)
        y = self.adapter_1(res2) + F.interpolate(
            multi_scale[-1], size=res2.shape[-2:], mode="bilinear", align_corners=False
        )
        mask_features = self.mask_features(self.layer_1(y))
        return mask_features, multi_scale


__all__ = ["MSDeformAttnPixelDecoder"]
