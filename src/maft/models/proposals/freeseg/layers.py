"""Building blocks shared by the released FreeSeg generator (see docs/release.md).

Module and attribute names follow the official detectron2 / Mask2Former code so that a released
state dict loads by name: a convolution carries its normalisation as ``.norm`` (keys
``conv.weight``, ``conv.norm.weight``), frozen batch norm keeps all four statistics as buffers.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from maft.models.proposals.layers import MLP  # noqa: F401 - re-exported (keys layers.N)


class FrozenBatchNorm2d(nn.Module):
    """Batch norm with fixed statistics: y = (x - mean) / sqrt(var + eps) * w + b."""

    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features) - eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, C, H, W] -> [B, C, H, W] (one fused scale and shift per channel)."""
        scale = self.weight * (self.running_var + self.eps).rsqrt()  # [C]
        shift = self.bias - self.running_mean * scale
        return x * scale.view(1, -1, 1, 1).to(x.dtype) + shift.view(1, -1, 1, 1).to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}"


class ConvNorm(nn.Conv2d):
    """``nn.Conv2d`` followed by an optional ``norm`` module and activation (detectron2 layout)."""

    def __init__(
        self,
        *args,
        norm: nn.Module | None = None,
        activation: bool = False,
        **kwargs,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.norm = norm
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Conv, then norm, then ReLU when ``activation``."""
        x = super().forward(x)
        if self.norm is not None:
            x = self.norm(x)
        return F.relu(x) if self.activation else x


def c2_xavier_fill(module: nn.Conv2d | nn.Linear) -> None:
    """Caffe2's XavierFill (kaiming uniform, a=1) with a zero bias, as Mask2Former initialises."""
    nn.init.kaiming_uniform_(module.weight, a=1)
    if module.bias is not None:
        nn.init.zeros_(module.bias)


def sine_position_embedding(x: torch.Tensor, num_pos_feats: int) -> torch.Tensor:
    """The released code's normalised 2-D sine positions for a map x [B, C, H, W] -> [B, 2F, H, W].

    Coordinates are ``i / (n + 1e-6) * 2π`` for i = 1..n (no padding mask; the DETR form, without
    the -0.5 offset of later Mask2Former versions: the golden pixel decoder matches bit for bit
    only without it), temperature 1e4; sin on even and cos on odd feature indices, interleaved;
    y features first, then x.
    """
    b, _, h, w = x.shape
    eps, scale = 1e-6, 2 * math.pi
    y = torch.arange(1, h + 1, dtype=torch.float32, device=x.device)
    xs = torch.arange(1, w + 1, dtype=torch.float32, device=x.device)
    y = y / (h + eps) * scale  # [H]
    xs = xs / (w + eps) * scale  # [W]
    dim_t = torch.arange(num_pos_feats, dtype=torch.float32, device=x.device)
    dim_t = 10000 ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / num_pos_feats)  # [F]

    def encode(pos: torch.Tensor) -> torch.Tensor:  # [L] -> [L, F]
        angles = pos[:, None] / dim_t
        return torch.stack((angles[:, 0::2].sin(), angles[:, 1::2].cos()), dim=2).flatten(1)

    pos_y = encode(y)[:, None, :].expand(h, w, num_pos_feats)  # [H, W, F]
    pos_x = encode(xs)[None, :, :].expand(h, w, num_pos_feats)  # [H, W, F]
    pos = torch.cat((pos_y, pos_x), dim=2).permute(2, 0, 1)  # [2F, H, W]
    return pos[None].expand(b, -1, -1, -1).to(x.dtype)


__all__ = ["ConvNorm", "FrozenBatchNorm2d", "MLP", "c2_xavier_fill", "sine_position_embedding"]
