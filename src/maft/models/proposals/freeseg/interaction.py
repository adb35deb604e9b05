"""Text -> pixel interaction of the released FreeSeg/MAFT generator (see docs/release.md).

One shared block refines the three multi-scale maps (in the order given) and then the mask
features: every pixel is a query that attends to the C+1 text embeddings (class rows plus the
non-object row). The released code keeps the *normalised* pixels as the residual,
``out = LN_q(x) + gamma * attn(LN_q(x), text)``, and re-normalises the text cumulatively: the
text is passed through ``LN_k`` before each application and the normalised text is carried on,
so the i-th map sees ``LN_k`` applied i+1 times and the mask features 4 times.

Key names follow the official checkpoint (``gamma``, ``layer_norm_q_1``, ``layer_norm_k_1``,
``attn.{q,k,v,out}_proj``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class TextCrossAttention(nn.Module):
    """Multi-head attention of ``dim``-wide pixel queries over ``text_dim``-wide text tokens."""

    def __init__(
        self, dim: int, text_dim: int, embed_dim: int, num_heads: int, dropout: float = 0.1
    ) -> None:
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        self.scale = self.head_dim**-0.5
        self.dropout = dropout
        self.q_proj = nn.Linear(dim, embed_dim)
        self.k_proj = nn.Linear(text_dim, embed_dim)
        self.v_proj = nn.Linear(text_dim, embed_dim)
        self.out_proj = nn.Linear(embed_dim, dim)

    def forward(self, query: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """query [B, N, dim], text [B, T, text_dim] -> [B, N, dim] (softmax over the T tokens)."""
        b, n, _ = query.shape
        t = text.shape[1]
        q = self.q_proj(query) * self.scale  # scaled after the projection, bias included
        q = q.view(b, n, self.num_heads, self.head_dim).transpose(1, 2)  # [B, h, N, hd]
        k = self.k_proj(text).view(b, t, self.num_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(text).view(b, t, self.num_heads, self.head_dim).transpose(1, 2)
        attn = (q @ k.transpose(-2, -1)).softmax(dim=-1)  # [B, h, N, T]
        attn = F.dropout(attn, p=self.dropout, training=self.training)
        out = (attn @ v).transpose(1, 2).reshape(b, n, -1)  # [B, N, embed_dim]
        return self.out_proj(out)


class ContextInteraction(nn.Module):
    """Shared text -> pixel block applied to the multi-scale maps, then to the mask features."""

    def __init__(
        self,
        dim: int = 256,
        text_dim: int = 512,
        embed_dim: int = 2048,
        num_heads: int = 8,
        dropout: float = 0.1,
        layer_scale_init: float = 0.1,
    ) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), float(layer_scale_init)))
        self.layer_norm_q_1 = nn.LayerNorm(dim)
        self.layer_norm_k_1 = nn.LayerNorm(text_dim)
        self.attn = TextCrossAttention(dim, text_dim, embed_dim, num_heads, dropout)

    def _refine(self, x: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """One map x [B, dim, h, w] with normalised text [B, T, text_dim] -> [B, dim, h, w]."""
        b, d, h, w = x.shape
        tokens = self.layer_norm_q_1(x.flatten(2).transpose(1, 2))  # [B, hw, dim]
        out = tokens + self.gamma * self.attn(tokens, text)  # residual is the normalised map
        return out.transpose(1, 2).reshape(b, d, h, w)

    def forward(
        self,
        mask_features: torch.Tensor,
        multi_scale_features: list[torch.Tensor],
        text: torch.Tensor,
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Refine the maps in order, then the mask features; text [C+1, D] or [B, C+1, D]."""
        b = mask_features.shape[0]
        text = text.to(mask_features.dtype)
        if text.dim() == 2:
            text = text[None].expand(b, -1, -1)  # [B, C+1, text_dim]
        maps = []
        for x in multi_scale_features:
            text = self.layer_norm_k_1(text)  # cumulative: carried to the next application
            maps.append(self._refine(x, text))
        text = self.layer_norm_k_1(text)
        return self._refine(mask_features, text), maps


__all__ = ["ContextInteraction", "TextCrossAttention"]
