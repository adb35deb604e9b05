"""Optional text→pixel interaction (FreeSeg's ContextInteraction, docs/method.md §2.1).

Every pixel of each pixel-decoder map (the three multi-scale maps and the 1/4 mask features) is a
query that cross-attends to the C+1 text embeddings (pre-LayerNorm, attention dropout 0.1),
scaled by a learnable layer-scale γ (initialised to 0.1) and added back residually.
"""

from __future__ import annotations

import torch
from torch import nn

from maft.models.proposals.layers import Attention


class ContextInteraction(nn.Module):
    """x + γ · CrossAttn(LN(x), LN(text)) on one map [B, dim, h, w]."""

    def __init__(
        self, dim: int, text_dim: int, nheads: int, dropout: float = 0.1, init_scale: float = 0.1
    ) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.text_norm = nn.LayerNorm(text_dim)
        self.attn = Attention(dim, nheads, dropout, kv_dim=text_dim)
        self.gamma = nn.Parameter(torch.full((dim,), init_scale))

    def forward(self, x: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """x [B, dim, h, w], text [C+1, text_dim] -> [B, dim, h, w]."""
        b, d, h, w = x.shape
        tokens = x.flatten(2).transpose(1, 2)  # [B, hw, d]
        kv = self.text_norm(text.to(x.dtype))[None].expand(b, -1, -1)  # [B, C+1, text_dim]
        out = tokens + self.gamma * self.attn(self.norm(tokens), kv, kv)
        return out.transpose(1, 2).reshape(b, d, h, w)


class TextPixelInteraction(nn.Module):
    """One ContextInteraction per multi-scale map plus one for the mask features."""

    def __init__(self, hidden_dim: int, mask_dim: int, text_dim: int, nheads: int) -> None:
        super().__init__()
        self.maps = nn.ModuleList(
            ContextInteraction(hidden_dim, text_dim, nheads) for _ in range(3)
        )
        self.mask = ContextInteraction(mask_dim, text_dim, nheads)

    def forward(
        self, mask_features: torch.Tensor, maps: list[torch.Tensor], text: torch.Tensor
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Refine mask features and maps with the vocabulary (+void) text embeddings [C+1, D]."""
        maps = [block(x, text) for block, x in zip(self.maps, maps)]
        return self.mask(mask_features, text), maps


__all__ = ["ContextInteraction", "TextPixelInteraction"]
