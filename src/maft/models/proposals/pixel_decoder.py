"""Multi-scale pixel decoder of the proposal generator (docs/method.md §2.1), pure PyTorch.

Stands in for Mask2Former's MSDeformAttn encoder (a compiled op): the 1/8, 1/16 and 1/32
feature maps are projected to `hidden_dim`, flattened into one token sequence with sine position
and level embeddings, and refined by `enc_layers` standard transformer encoder layers (full
attention through `scaled_dot_product_attention`). An FPN step adds the 1/4 backbone map to the
upsampled 1/8 output and a 1×1 conv gives the mask features.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from maft.models.proposals.layers import FFN, Attention, group_norm, sine_position_embedding


class EncoderLayer(nn.Module):
    """Post-norm transformer encoder layer with positions added to queries and keys."""

    def __init__(self, dim: int, num_heads: int, dim_feedforward: int, dropout: float) -> None:
        super().__init__()
        self.attn = Attention(dim, num_heads, dropout)
        self.dropout = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(dim)
        self.ffn = FFN(dim, dim_feedforward, dropout)

    def forward(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """Tokens x and positions pos [B, L, dim] -> [B, L, dim]."""
        qk = x + pos
        x = self.norm(x + self.dropout(self.attn(qk, qk, x)))
        return self.ffn(x)


def conv_gn(in_ch: int, out_ch: int, kernel: int, relu: bool = False) -> nn.Sequential:
    """Conv (no bias) + GroupNorm (+ ReLU), Xavier-initialised as in Mask2Former."""
    conv = nn.Conv2d(in_ch, out_ch, kernel, padding=kernel // 2, bias=False)
    nn.init.xavier_uniform_(conv.weight)
    layers: list[nn.Module] = [conv, group_norm(out_ch)]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class PixelDecoder(nn.Module):
    """Backbone maps res2..res5 -> (mask features [B, mask_dim, H/4, W/4], [1/32, 1/16, 1/8])."""

    def __init__(
        self,
        in_channels: list[int],
        *,
        hidden_dim: int = 256,
        mask_dim: int = 256,
        enc_layers: int = 6,
        nheads: int = 8,
        dim_feedforward: int = 1024,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if len(in_channels) != 4:
            raise ValueError(f"PixelDecoder needs 4 input channel counts, got {in_channels}")
        self.hidden_dim = hidden_dim
        # res3, res4, res5 -> hidden
        self.input_proj = nn.ModuleList(conv_gn(c, hidden_dim, 1) for c in in_channels[1:])
        self.level_embed = nn.Parameter(torch.randn(3, hidden_dim) * 0.02)
        self.layers = nn.ModuleList(
            EncoderLayer(hidden_dim, nheads, dim_feedforward, dropout) for _ in range(enc_layers)
        )
        self.lateral = conv_gn(in_channels[0], hidden_dim, 1)
        self.output = conv_gn(hidden_dim, hidden_dim, 3, relu=True)
        self.mask_proj = nn.Conv2d(hidden_dim, mask_dim, 1)
        nn.init.xavier_uniform_(self.mask_proj.weight)
        nn.init.zeros_(self.mask_proj.bias)

    def encode(self, maps: list[torch.Tensor]) -> list[torch.Tensor]:
        """Joint self-attention over the tokens of all maps [B, d, h_l, w_l] (same shapes out)."""
        tokens, pos, shapes = [], [], []
        for level, x in enumerate(maps):
            b, d, h, w = x.shape
            shapes.append((h, w))
            tokens.append(x.flatten(2).transpose(1, 2))  # [B, h*w, d]
            p = sine_position_embedding(b, h, w, d, x.device, x.dtype).flatten(2).transpose(1, 2)
            pos.append(p + self.level_embed[level].to(x.dtype))  # [B, h*w, d]
        x, p = torch.cat(tokens, dim=1), torch.cat(pos, dim=1)  # [B, L, d]
        for layer in self.layers:
            x = layer(x, p)
        out = []
        for chunk, (h, w) in zip(x.split([h * w for h, w in shapes], dim=1), shapes):
            out.append(chunk.transpose(1, 2).reshape(chunk.shape[0], -1, h, w))  # [B, d, h, w]
        return out

    def forward(self, features: dict[str, torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Returns mask features [B, mask_dim, H/4, W/4] and maps at 1/32, 1/16, 1/8 (in order)."""
        maps = [proj(features[k]) for proj, k in zip(self.input_proj, ("res3", "res4", "res5"))]
        res3, res4, res5 = self.encode(maps)
        res2 = self.lateral(features["res2"])
        up = F.interpolate(res3, size=res2.shape[-2:], mode="bilinear", align_corners=False)
        fused = self.output(res2 + up)
        return self.mask_proj(fused), [res5, res4, res3]


__all__ = ["PixelDecoder"]
