"""Multi-scale deformable attention (Deformable DETR) in pure PyTorch, as the released code runs it.

The official run used the pure-PyTorch fallback of the compiled op (``grid_sample``, bilinear,
zero padding, ``align_corners=False``); this module is that computation written without compiled
ops, vectorised over heads and points (one ``grid_sample`` per level). See docs/release.md.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def ms_deform_attn_core(
    value: torch.Tensor,
    spatial_shapes: torch.Tensor | Sequence[tuple[int, int]],
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> torch.Tensor:
    """Bilinearly sample every level at the given points and sum them with the attention weights.

    value [B, sum(H_l * W_l), heads, d_head] (levels flattened row-major, concatenated in
    ``spatial_shapes`` order); spatial_shapes [levels, 2] as (H_l, W_l); sampling_locations
    [B, Lq, heads, levels, points, 2] as (x, y) in [0, 1] (pixel-centre convention, points outside
    read zeros); attention_weights [B, Lq, heads, levels, points] -> [B, Lq, heads * d_head].
    Computed in float32 (bf16 inputs are cast) and returned in ``value``'s dtype.
    """
    b, _, heads, d_head = value.shape
    _, lq, _, levels, points, _ = sampling_locations.shape
    shapes = [(int(h), int(w)) for h, w in spatial_shapes]
    out_dtype = value.dtype
    value = value.float()
    grids = 2 * sampling_locations.float() - 1  # [B, Lq, heads, levels, points, 2] in [-1, 1]
    value_list = value.split([h * w for h, w in shapes], dim=1)
    sampled = []
    for lvl, (h, w) in enumerate(shapes):
        # [B, H*W, heads, d_head] -> [B*heads, d_head, H, W]
        value_l = value_list[lvl].permute(0, 2, 3, 1).reshape(b * heads, d_head, h, w)
        grid_l = grids[:, :, :, lvl].transpose(1, 2).flatten(0, 1)  # [B*heads, Lq, points, 2]
        sampled.append(
            F.grid_sample(
                value_l, grid_l, mode="bilinear", padding_mode="zeros", align_corners=False
            )  # [B*heads, d_head, Lq, points]
        )
    stacked = torch.stack(sampled, dim=-2).flatten(-2)  # [B*heads, d_head, Lq, levels*points]
    weights = attention_weights.float().transpose(1, 2).reshape(b * heads, 1, lq, levels * points)
    out = (stacked * weights).sum(-1)  # [B*heads, d_head, Lq]
    out = out.view(b, heads * d_head, lq).transpose(1, 2)  # [B, Lq, heads*d_head]
    return out.contiguous().to(out_dtype)


class MSDeformAttn(nn.Module):
    """Deformable attention over ``n_levels`` maps: each query reads ``n_points`` learnt points per
    level and head around its reference point (Deformable DETR, official parameter names)."""

    def __init__(self, d_model: int = 256, n_levels: int = 4, n_heads: int = 8, n_points: int = 4):
        super().__init__()
        if d_model % n_heads != 0:
            raise ValueError(f"d_model {d_model} must be divisible by n_heads {n_heads}")
        self.d_model = d_model
        self.n_levels = n_levels
        self.n_heads = n_heads
        self.n_points = n_points
        self.sampling_offsets = nn.Linear(d_model, n_heads * n_levels * n_points * 2)
        self.attention_weights = nn.Linear(d_model, n_heads * n_levels * n_points)
        self.value_proj = nn.Linear(d_model, d_model)
        self.output_proj = nn.Linear(d_model, d_model)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Deformable DETR init: offsets start on a ring of head directions, uniform attention."""
        nn.init.zeros_(self.sampling_offsets.weight)
        thetas = torch.arange(self.n_heads, dtype=torch.float32) * (2.0 * math.pi / self.n_heads)
        grid = torch.stack((thetas.cos(), thetas.sin()), dim=-1)  # [heads, 2]
        grid = grid / grid.abs().max(dim=-1, keepdim=True).values  # max(|x|, |y|) = 1
        scale = torch.arange(1, self.n_points + 1, dtype=torch.float32)  # point index + 1
        # [heads, 1, 1, 2] * [1, 1, points, 1] -> [heads, levels, points, 2]
        grid = grid[:, None, None, :] * scale[None, None, :, None]
        grid = grid.expand(self.n_heads, self.n_levels, self.n_points, 2)
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(grid.reshape(-1))
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        nn.init.xavier_uniform_(self.value_proj.weight)
        nn.init.zeros_(self.value_proj.bias)
        nn.init.xavier_uniform_(self.output_proj.weight)
        nn.init.zeros_(self.output_proj.bias)

    def forward(
        self,
        query: torch.Tensor,
        reference_points: torch.Tensor,
        input_flatten: torch.Tensor,
        spatial_shapes: torch.Tensor,
        input_padding_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """query [B, Lq, d], reference_points [B, Lq, levels, 2] (x, y in [0, 1]), input_flatten
        [B, sum(H_l*W_l), d], spatial_shapes [levels, 2] (H, W) -> [B, Lq, d]."""
        b, lq, _ = query.shape
        _, len_in, _ = input_flatten.shape
        if int((spatial_shapes[:, 0] * spatial_shapes[:, 1]).sum()) != len_in:
            raise ValueError("spatial_shapes do not match the flattened input length")
        if reference_points.shape[-1] != 2:
            raise ValueError("reference_points must be (x, y) points, last dim 2")
        d_head = self.d_model // self.n_heads
        value = self.value_proj(input_flatten)
        if input_padding_mask is not None:  # True = padded position, reads as zero
            value = value.masked_fill(input_padding_mask[..., None], 0.0)
        value = value.view(b, len_in, self.n_heads, d_head)  # [B, Len, heads, d_head]
        offsets = self.sampling_offsets(query).view(
            b, lq, self.n_heads, self.n_levels, self.n_points, 2
        )  # [B, Lq, heads, levels, points, 2]
        weights = self.attention_weights(query).view(
            b, lq, self.n_heads, self.n_levels * self.n_points
        )  # [B, Lq, heads, levels*points]
        weights = weights.softmax(-1).view(b, lq, self.n_heads, self.n_levels, self.n_points)
        # offsets are in pixels of each level: normalise by (W_l, H_l)
        normaliser = spatial_shapes.flip(-1).to(offsets.dtype)  # [levels, 2] as (W, H)
        locations = (
            reference_points[:, :, None, :, None, :]
            + offsets / normaliser[None, None, None, :, None, :]
        )  # [B, Lq, heads, levels, points, 2]
        out = ms_deform_attn_core(value, spatial_shapes, locations, weights)  # [B, Lq, d]
        return self.output_proj(out)


__all__ = ["MSDeformAttn", "ms_deform_attn_core"]
