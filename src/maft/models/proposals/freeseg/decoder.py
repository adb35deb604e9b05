"""Masked-attention transformer decoder of the released FreeSeg/MAFT generator (docs/release.md).

Mask2Former's ``MultiScaleMaskedTransformerDecoder`` (post-norm, dropout 0) whose class head is
an embedding MLP: ``pred_logits`` holds per-query class *embeddings* (compared with text
embeddings downstream), not logits. ``dec_layers`` layers give ``dec_layers + 1`` predictions:
one before the first layer and one after each; the last is the output, the rest are auxiliary.
Layer i cross-attends to multi-scale level ``i % 3`` under the mask predicted before it.

Module names follow the official checkpoint (``transformer_{self,cross}_attention_layers``,
``transformer_ffn_layers``, ``decoder_norm``, ``query_feat``, ``query_embed``, ``level_embed``,
``input_proj``, ``class_embed``, ``mask_embed``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from maft.models.proposals.freeseg.layers import MLP, c2_xavier_fill, sine_position_embedding

NUM_LEVELS = 3


def _xavier_init(module: nn.Module) -> None:
    """Xavier-uniform on every matrix of a decoder layer, as Mask2Former initialises them."""
    for p in module.parameters():
        if p.dim() > 1:
            nn.init.xavier_uniform_(p)


class SelfAttentionLayer(nn.Module):
    """Post-norm self-attention: tgt = norm(tgt + attn(q=k=tgt+query_pos, v=tgt))."""

    def __init__(self, d_model: int, nhead: int) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, nhead, dropout=0.0)
        self.norm = nn.LayerNorm(d_model)
        _xavier_init(self)

    def forward(self, tgt: torch.Tensor, query_pos: torch.Tensor) -> torch.Tensor:
        """tgt, query_pos [Q, B, C] -> [Q, B, C]."""
        q = k = tgt + query_pos
        return self.norm(tgt + self.self_attn(q, k, value=tgt, need_weights=False)[0])


class CrossAttentionLayer(nn.Module):
    """Post-norm masked cross-attention: tgt = norm(tgt + attn(tgt+qpos, memory+pos, memory))."""

    def __init__(self, d_model: int, nhead: int) -> None:
        super().__init__()
        self.multihead_attn = nn.MultiheadAttention(d_model, nhead, dropout=0.0)
        self.norm = nn.LayerNorm(d_model)
        _xavier_init(self)

    def forward(
        self,
        tgt: torch.Tensor,
        memory: torch.Tensor,
        attn_mask: torch.Tensor | None,
        pos: torch.Tensor,
        query_pos: torch.Tensor,
    ) -> torch.Tensor:
        """tgt [Q, B, C], memory/pos [HW, B, C], attn_mask bool [B*heads, Q, HW] -> [Q, B, C]."""
        out = self.multihead_attn(
            tgt + query_pos, memory + pos, value=memory, attn_mask=attn_mask, need_weights=False
        )[0]
        return self.norm(tgt + out)


class FFNLayer(nn.Module):
    """Post-norm feed-forward: tgt = norm(tgt + linear2(relu(linear1(tgt))))."""

    def __init__(self, d_model: int, dim_feedforward: int) -> None:
        super().__init__()
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm = nn.LayerNorm(d_model)
        _xavier_init(self)

    def forward(self, tgt: torch.Tensor) -> torch.Tensor:
        """[Q, B, C] -> [Q, B, C]."""
        return self.norm(tgt + self.linear2(F.relu(self.linear1(tgt))))


def unblock_full_rows(attn_mask: torch.Tensor) -> torch.Tensor:
    """Clear rows of a bool mask [..., L] that block every key, so no query attends to nothing."""
    full = attn_mask.all(dim=-1, keepdim=True)  # [..., 1]
    return attn_mask & ~full


class OpenVocabMaskedDecoder(nn.Module):
    """Mask2Former masked-attention decoder with a class-embedding head (FreeSeg/MAFT release)."""

    def __init__(
        self,
        *,
        in_channels: int = 256,
        hidden_dim: int = 256,
        num_queries: int = 100,
        nheads: int = 8,
        dim_feedforward: int = 2048,
        dec_layers: int = 10,
        mask_dim: int = 256,
        embed_dim: int = 512,
        embed_hidden_dim: int = 1024,
        embed_layers: int = 2,
        enforce_input_project: bool = False,
    ) -> None:
        super().__init__()
        self.num_heads = nheads
        self.num_layers = dec_layers
        self.hidden_dim = hidden_dim
        self.transformer_self_attention_layers = nn.ModuleList(
            SelfAttentionLayer(hidden_dim, nheads) for _ in range(dec_layers)
        )
        self.transformer_cross_attention_layers = nn.ModuleList(
            CrossAttentionLayer(hidden_dim, nheads) for _ in range(dec_layers)
        )
        self.transformer_ffn_layers = nn.ModuleList(
            FFNLayer(hidden_dim, dim_feedforward) for _ in range(dec_layers)
        )
        self.decoder_norm = nn.LayerNorm(hidden_dim)
        self.query_feat = nn.Embedding(num_queries, hidden_dim)
        self.query_embed = nn.Embedding(num_queries, hidden_dim)
        self.level_embed = nn.Embedding(NUM_LEVELS, hidden_dim)
        self.input_proj = nn.ModuleList()
        for _ in range(NUM_LEVELS):
            if in_channels != hidden_dim or enforce_input_project:
                proj = nn.Conv2d(in_channels, hidden_dim, kernel_size=1)
                c2_xavier_fill(proj)
                self.input_proj.append(proj)
            else:
                self.input_proj.append(nn.Sequential())
        self.class_embed = MLP(hidden_dim, embed_hidden_dim, embed_dim, embed_layers)
        self.mask_embed = MLP(hidden_dim, hidden_dim, mask_dim, 3)

    def _predict(
        self, output: torch.Tensor, mask_features: torch.Tensor, target_size: tuple[int, int]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Class embeddings [B,Q,E], mask logits [B,Q,H,W] and the next blocked mask [B,Q,hw]."""
        decoder_output = self.decoder_norm(output).transpose(0, 1)  # [Q, B, C] -> [B, Q, C]
        class_embedding = self.class_embed(decoder_output)
        mask_embed = self.mask_embed(decoder_output)
        masks = torch.einsum("bqc,bchw->bqhw", mask_embed, mask_features)
        resized = F.interpolate(masks, size=target_size, mode="bilinear", align_corners=False)
        blocked = (resized.sigmoid().flatten(2) < 0.5).detach()  # [B, Q, h*w]
        return class_embedding, masks, blocked

    def forward(
        self, multi_scale_features: list[torch.Tensor], mask_features: torch.Tensor
    ) -> dict:
        """Maps in the given level order [B, C_in, h, w], mask features [B, D, H, W] -> outputs."""
        if len(multi_scale_features) != NUM_LEVELS:
            raise ValueError(f"expected {NUM_LEVELS} maps, got {len(multi_scale_features)}")
        b = mask_features.shape[0]
        src, pos, sizes = [], [], []
        for lvl, x in enumerate(multi_scale_features):
            sizes.append(tuple(x.shape[-2:]))
            p = sine_position_embedding(x, self.hidden_dim // 2).flatten(2)  # [B, C, hw]
            s = self.input_proj[lvl](x).flatten(2) + self.level_embed.weight[lvl][None, :, None]
            pos.append(p.permute(2, 0, 1))  # [hw, B, C]
            src.append(s.permute(2, 0, 1))  # [hw, B, C]

        query_pos = self.query_embed.weight[:, None].expand(-1, b, -1)  # [Q, B, C]
        output = self.query_feat.weight[:, None].expand(-1, b, -1)  # [Q, B, C]

        logits, masks, attn_masks = [], [], []
        cls, mask, blocked = self._predict(output, mask_features, sizes[0])
        logits.append(cls)
        masks.append(mask)
        for i in range(self.num_layers):
            lvl = i % NUM_LEVELS
            blocked = unblock_full_rows(blocked)
            attn_masks.append(blocked)
            # one mask shared by all heads: [B, Q, hw] -> [B*heads, Q, hw] (batch-major)
            head_mask = blocked[:, None].expand(-1, self.num_heads, -1, -1).flatten(0, 1)
            output = self.transformer_cross_attention_layers[i](
                output, src[lvl], head_mask, pos[lvl], query_pos
            )
            output = self.transformer_self_attention_layers[i](output, query_pos)
            output = self.transformer_ffn_layers[i](output)
            cls, mask, blocked = self._predict(output, mask_features, sizes[(i + 1) % NUM_LEVELS])
            logits.append(cls)
            masks.append(mask)

        return {
            "pred_logits": logits[-1],
            "pred_masks": masks[-1],
            "aux_outputs": [
                {"pred_logits": a, "pred_masks": m} for a, m in zip(logits[:-1], masks[:-1])
            ],
            "attn_masks": attn_masks,
        }


__all__ = ["OpenVocabMaskedDecoder", "unblock_full_rows"]
