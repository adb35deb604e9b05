"""Proposal-generator building blocks (docs/method.md §2.1): attention, MLP, sine positions."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm: 32 groups at 256 channels (Mask2Former); fewer, of >= 4 channels, when small."""
    return nn.GroupNorm(math.gcd(32, max(channels // 4, 1)), channels)


def sine_position_embedding(
    batch: int, height: int, width: int, dim: int, device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    """DETR 2-D sine position embedding (normalised, temperature 1e4) -> [B, dim, H, W]."""
    if dim % 2:
        raise ValueError(f"position embedding size must be even, got {dim}")
    half = dim // 2
    eps, scale = 1e-6, 2 * math.pi
    ys = torch.arange(1, height + 1, device=device, dtype=torch.float32) / (height + eps) * scale
    xs = torch.arange(1, width + 1, device=device, dtype=torch.float32) / (width + eps) * scale
    freq = torch.arange(half, device=device, dtype=torch.float32)
    freq = 10000 ** (2 * torch.div(freq, 2, rounding_mode="floor") / half)  # [half]

    def encode(pos: torch.Tensor) -> torch.Tensor:  # [L] -> [L, half], interleaved sin/cos
        angles = pos[:, None] / freq  # [L, half]
        return torch.stack([angles[:, 0::2].sin(), angles[:, 1::2].cos()], dim=2).flatten(1)

    pos_y = encode(ys)[:, None, :].expand(height, width, half)  # [H, W, half]
    pos_x = encode(xs)[None, :, :].expand(height, width, half)  # [H, W, half]
    pos = torch.cat([pos_y, pos_x], dim=2).permute(2, 0, 1)  # [dim, H, W]
    return pos[None].expand(batch, -1, -1, -1).to(dtype)


class Attention(nn.Module):
    """Multi-head attention over [B, L, dim] tokens via `F.scaled_dot_product_attention`.

    `attn_mask` is boolean with True = may attend, broadcastable to [B, heads, Lq, Lk].
    """

    def __init__(self, dim: int, num_heads: int, dropout: float = 0.0, kv_dim: int | None = None):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"hidden size {dim} is not divisible by {num_heads} heads")
        kv_dim = kv_dim or dim
        self.num_heads = num_heads
        self.dropout = dropout
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(kv_dim, dim)
        self.v_proj = nn.Linear(kv_dim, dim)
        self.out_proj = nn.Linear(dim, dim)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, length, dim = x.shape
        return x.view(b, length, self.num_heads, dim // self.num_heads).transpose(1, 2)

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attn_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """query [B, Lq, dim], key/value [B, Lk, kv_dim] -> [B, Lq, dim]."""
        q = self._heads(self.q_proj(query))  # [B, h, Lq, dim/h]
        k = self._heads(self.k_proj(key))  # [B, h, Lk, dim/h]
        v = self._heads(self.v_proj(value))
        p = self.dropout if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=p)
        out = out.transpose(1, 2).flatten(2)  # [B, Lq, dim]
        return self.out_proj(out)


class MLP(nn.Module):
    """Plain MLP with ReLU between `num_layers` linear layers."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, num_layers: int) -> None:
        super().__init__()
        dims = [in_dim] + [hidden_dim] * (num_layers - 1) + [out_dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[..., in_dim] -> [..., out_dim]."""
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return x


class FFN(nn.Module):
    """Post-norm feed-forward block: norm(x + W2 relu(W1 x))."""

    def __init__(self, dim: int, hidden: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(dim, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, dim)
        )
        self.dropout = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, L, dim] -> [B, L, dim]."""
        return self.norm(x + self.dropout(self.net(x)))


__all__ = ["Attention", "MLP", "FFN", "group_norm", "sine_position_embedding"]
