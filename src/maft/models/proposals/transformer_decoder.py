"""Mask2Former masked-attention decoder with CLIP-space class embeddings (docs/method.md §2.1).

Each layer cross-attends (round robin over 1/32, 1/16, 1/8) only to pixels inside the mask the
previous prediction gives (sigmoid >= 0.5 after bilinear resize; a query whose mask is empty
attends everywhere), then self-attends, then applies an FFN. Predictions are made before the
first layer and after each layer: `dec_layers + 1` (class embedding, mask logits) pairs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from maft.models.proposals.layers import FFN, MLP, Attention, sine_position_embedding


def attention_mask_from_logits(mask_logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Boolean attend-mask [B, 1, N, h*w] from mask logits [B, N, H', W'] (True = may attend).

    Pixels with sigmoid >= 0.5 after bilinear resizing are allowed; rows with no allowed pixel
    fall back to full attention (Mask2Former).
    """
    resized = F.interpolate(mask_logits, size=size, mode="bilinear", align_corners=False)
    allowed = (resized.sigmoid() >= 0.5).flatten(2)  # [B, N, h*w]
    empty = ~allowed.any(dim=-1, keepdim=True)  # [B, N, 1]
    return (allowed | empty).unsqueeze(1).detach()  # [B, 1, N, h*w]


class DecoderLayer(nn.Module):
    """Masked cross-attention -> self-attention -> FFN, each post-norm (Mask2Former order)."""

    def __init__(self, dim: int, num_heads: int, dim_feedforward: int) -> None:
        super().__init__()
        self.cross_attn = Attention(dim, num_heads)
        self.cross_norm = nn.LayerNorm(dim)
        self.self_attn = Attention(dim, num_heads)
        self.self_norm = nn.LayerNorm(dim)
        self.ffn = FFN(dim, dim_feedforward)

    def forward(
        self,
        tgt: torch.Tensor,
        query_pos: torch.Tensor,
        memory: torch.Tensor,
        pos: torch.Tensor,
        attn_mask: torch.Tensor,
    ) -> torch.Tensor:
        """Queries tgt/query_pos [B, N, d], memory/pos [B, hw, d], attn_mask [B, 1, N, hw]."""
        tgt = self.cross_norm(
            tgt + self.cross_attn(tgt + query_pos, memory + pos, memory, attn_mask)
        )
        q = tgt + query_pos
        tgt = self.self_norm(tgt + self.self_attn(q, q, tgt))
        return self.ffn(tgt)


class MaskedAttentionDecoder(nn.Module):
    """N learnable queries -> per layer (class embedding [B, N, D], mask logits [B, N, h, w])."""

    def __init__(
        self,
        *,
        hidden_dim: int = 256,
        num_queries: int = 100,
        dec_layers: int = 9,
        nheads: int = 8,
        dim_feedforward: int = 2048,
        mask_dim: int = 256,
        clip_dim: int = 512,
        num_levels: int = 3,
    ) -> None:
        super().__init__()
        self.num_levels = num_levels
        self.query_feat = nn.Embedding(num_queries, hidden_dim)
        self.query_embed = nn.Embedding(num_queries, hidden_dim)
        self.level_embed = nn.Embedding(num_levels, hidden_dim)
        self.layers = nn.ModuleList(
            DecoderLayer(hidden_dim, nheads, dim_feedforward) for _ in range(dec_layers)
        )
        self.decoder_norm = nn.LayerNorm(hidden_dim)
        self.mask_embed = MLP(hidden_dim, hidden_dim, mask_dim, 3)
        # 2-layer MLP to the CLIP joint space (hidden 1024 for hidden_dim 256)
        self.class_embed = MLP(hidden_dim, 4 * hidden_dim, clip_dim, 2)

    def predict(
        self, tgt: torch.Tensor, mask_features: torch.Tensor, target_size: tuple[int, int]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Heads on queries [B, N, d] -> class emb [B, N, D], masks [B, N, H, W], attend-mask."""
        out = self.decoder_norm(tgt)
        class_emb = self.class_embed(out)
        mask_logits = torch.einsum("bnc,bchw->bnhw", self.mask_embed(out), mask_features)
        return class_emb, mask_logits, attention_mask_from_logits(mask_logits, target_size)

    def _memory(self, maps: list[torch.Tensor]) -> tuple[list, list, list]:
        """Flatten each level [B, d, h, w] to tokens [B, hw, d] with its sine+level positions."""
        memory, pos, sizes = [], [], []
        for level, x in enumerate(maps):
            b, d, h, w = x.shape
            sizes.append((h, w))
            p = sine_position_embedding(b, h, w, d, x.device, x.dtype).flatten(2).transpose(1, 2)
            pos.append(p)  # [B, hw, d]
            memory.append(x.flatten(2).transpose(1, 2) + self.level_embed.weight[level])
        return memory, pos, sizes

    def forward(
        self, maps: list[torch.Tensor], mask_features: torch.Tensor
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """maps: pixel-decoder outputs (1/32, 1/16, 1/8); returns dec_layers + 1 predictions."""
        if len(maps) != self.num_levels:
            raise ValueError(f"expected {self.num_levels} feature maps, got {len(maps)}")
        memory, pos, sizes = self._memory(maps)
        batch = mask_features.shape[0]
        query_pos = self.query_embed.weight[None].expand(batch, -1, -1)  # [B, N, d]
        tgt = self.query_feat.weight[None].expand(batch, -1, -1)  # [B, N, d]
        class_emb, mask_logits, attn_mask = self.predict(tgt, mask_features, sizes[0])
        predictions = [(class_emb, mask_logits)]
        for i, layer in enumerate(self.layers):
            level = i % self.num_levels
            tgt = layer(tgt, query_pos, memory[level], pos[level], attn_mask)
            next_size = sizes[(i + 1) % self.num_levels]
            class_emb, mask_logits, attn_mask = self.predict(tgt, mask_features, next_size)
            predictions.append((class_emb, mask_logits))
        return predictions


__all__ = ["MaskedAttentionDecoder", "DecoderLayer", "attention_mask_from_logits"]
