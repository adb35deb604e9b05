"""IP-CLIP: one ViT pass classifying all proposals with mask-restricted class tokens.

The encoder wraps an open_clip ``VisionTransformer`` (no copy of its weights). Blocks before
``start_layer`` run unchanged on ``[CLS; patches]``. At ``start_layer`` the CLS state is copied so
the sequence becomes ``[cls_0 … cls_{N-1}; patches]`` (the original CLS is proposal ``N-1``), and
every later block runs one batched attention with an additive mask: proposal ``i`` sees itself and
the patches where its mask, resized to the patch grid, is ≥ 0.5; patches see only patches
(docs/method.md §3, in particular §3.3 and §3.4).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from open_clip.transformer import (
    PatchDropout,
    QuickGELU,
    ResidualAttentionBlock,
    VisionTransformer,
)
from torch import nn
from torch.utils.checkpoint import checkpoint

from maft.errors import CheckpointError

MASK_THRESHOLD = 0.5  # resized soft mask ≥ 0.5 → allowed (§3.4)


def proposal_attention_mask(masks: torch.Tensor, grid_hw: tuple[int, int]) -> torch.Tensor:
    """Which patches each proposal may attend to (§3.4).

    Args:
        masks: ``[B, N, h, w]`` soft masks in [0, 1] at any resolution.
        grid_hw: the ViT patch grid ``(gh, gw)``.

    Returns:
        bool ``[B, N, gh*gw]``: bilinear resize (``align_corners=False``, float32) then ≥ 0.5.
    """
    if masks.ndim != 4:
        raise ValueError(f"masks must be [B, N, h, w], got shape {tuple(masks.shape)}")
    with torch.autocast(masks.device.type, enabled=False):
        small = F.interpolate(
            masks.float(), size=tuple(grid_hw), mode="bilinear", align_corners=False
        )  # [B, N, gh, gw]
    return (small >= MASK_THRESHOLD).flatten(2)  # [B, N, gh*gw]


def _attention_allow(allow: torch.Tensor) -> torch.Tensor:
    """Full ``[B, 1, N+hw, N+hw]`` bool matrix over ``[proposals; patches]`` (True = attend)."""
    b, n, hw = allow.shape
    length = n + hw
    full = torch.zeros(b, length, length, dtype=torch.bool, device=allow.device)
    full[:, :n, :n] = torch.eye(n, dtype=torch.bool, device=allow.device)  # self only
    full[:, :n, n:] = allow  # proposal → its patches
    full[:, n:, n:] = True  # patch → patches (never proposals)
    return full.unsqueeze(1)  # [B, 1, L, L], shared by all heads


class IPClipEncoder(nn.Module):
    """IP-CLIP image encoder over an open_clip ``VisionTransformer`` (docs/method.md §3).

    ``enc(images)`` → ``[B, D]`` plain CLIP embedding; ``enc(images, masks)`` → ``[B, N, D]``
    per-proposal embeddings (not L2-normalised). Images are CLIP-normalised ``[B, 3, H, W]`` with
    any ``H, W`` (the grid is ``H // patch × W // patch``); masks are ``[B, N, h, w]`` in [0, 1].
    """

    def __init__(self, visual: VisionTransformer, start_layer: int) -> None:
        super().__init__()
        _check_supported(visual)
        depth = len(visual.transformer.resblocks)
        if not 0 <= start_layer <= depth:
            raise ValueError(f"start_layer must be in [0, {depth}], got {start_layer}")
        self.visual = visual
        self.start_layer = int(start_layer)

    @classmethod
    def from_open_clip(cls, visual: VisionTransformer, start_layer: int) -> IPClipEncoder:
        """Wrap (not copy) the visual tower of a loaded open_clip model."""
        return cls(visual, start_layer)

    @classmethod
    def from_openai_state_dict(
        cls,
        state_dict: Mapping[str, torch.Tensor],
        heads: int,
        start_layer: int,
        *,
        quick_gelu: bool = True,
    ) -> IPClipEncoder:
        """Build from OpenAI-layout visual weights (``visual.*`` keys, or the same keys bare).

        ``heads`` is required: it cannot be read from the weights. OpenAI towers use QuickGELU.
        """
        visual = build_openai_visual(state_dict, heads, quick_gelu=quick_gelu)
        return cls(visual, start_layer)

    @property
    def depth(self) -> int:
        """Number of transformer blocks."""
        return len(self.visual.transformer.resblocks)

    @property
    def image_size(self) -> int:
        """Native (pretraining) input side in pixels; other sizes resize the positional grid."""
        return int(self.visual.image_size[0])

    @property
    def patch_size(self) -> int:
        """Patch side in pixels."""
        return int(self.visual.patch_size[0])

    @property
    def output_dim(self) -> int:
        """Joint embedding size ``D``."""
        return int(self.visual.proj.shape[1])

    def grid_hw(self, height: int, width: int) -> tuple[int, int]:
        """Patch grid of an ``height × width`` input (conv floor, as the official code)."""
        return height // self.patch_size, width // self.patch_size

    def _pos_embed(self, gh: int, gw: int) -> torch.Tensor:
        """Positional table for a ``gh × gw`` grid: CLS kept, grid resized bicubic (§3.2)."""
        pos = self.visual.positional_embedding  # [1 + g0h*g0w, d]
        g0h, g0w = self.visual.grid_size
        if (gh, gw) == (g0h, g0w):
            return pos
        grid = pos[1:].reshape(1, g0h, g0w, -1).permute(0, 3, 1, 2)  # [1, d, g0h, g0w]
        grid = F.interpolate(grid, size=(gh, gw), mode="bicubic", align_corners=True)
        grid = grid.permute(0, 2, 3, 1).reshape(gh * gw, -1)  # [gh*gw, d]
        return torch.cat([pos[:1], grid], dim=0)

    def _embed(self, images: torch.Tensor) -> torch.Tensor:
        """Patchify, prepend CLS, add positions, ``ln_pre``: ``[B, 1 + gh*gw, d]``."""
        v = self.visual
        x = v.conv1(images)  # [B, d, gh, gw]
        gh, gw = x.shape[-2:]
        x = x.flatten(2).transpose(1, 2)  # [B, gh*gw, d]
        cls = v.class_embedding.to(x.dtype).view(1, 1, -1).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1) + self._pos_embed(gh, gw).to(x.dtype)
        return v.ln_pre(x)

    def _plain_block(self, block: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """Run an unmodified open_clip block on batch-first ``x``."""
        if not self.visual.transformer.batch_first:
            return block(x.transpose(0, 1)).transpose(0, 1)
        return block(x)

    def _masked_block(
        self, block: ResidualAttentionBlock, x: torch.Tensor, allow: torch.Tensor
    ) -> torch.Tensor:
        """Block with the proposal attention mask: one SDPA call, additive mask for all heads."""
        attn = block.attn
        b, length, d = x.shape
        heads = attn.num_heads
        qkv = F.linear(block.ln_1(x), attn.in_proj_weight, attn.in_proj_bias)  # [B, L, 3d]
        qkv = qkv.view(b, length, 3, heads, d // heads).permute(2, 0, 3, 1, 4)  # [3, B, h, L, hd]
        q, k, v = qkv.unbind(0)
        bias = torch.zeros(allow.shape, dtype=q.dtype, device=q.device)
        bias.masked_fill_(~allow, float("-inf"))  # [B, 1, L, L] additive
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)  # [B, h, L, hd]
        out = attn.out_proj(out.transpose(1, 2).reshape(b, length, d))  # [B, L, d]
        x = x + block.ls_1(out)
        return x + block.ls_2(block.mlp(block.ln_2(x)))

    def _run(self, fn, *args: torch.Tensor) -> torch.Tensor:
        if self.visual.transformer.grad_checkpointing and torch.is_grad_enabled():
            return checkpoint(fn, *args, use_reentrant=False)
        return fn(*args)

    def _head(self, tokens: torch.Tensor) -> torch.Tensor:
        """``ln_post`` then ``proj`` (§3.5)."""
        return self.visual.ln_post(tokens) @ self.visual.proj

    def forward(self, images: torch.Tensor, masks: torch.Tensor | None = None) -> torch.Tensor:
        """Plain ``[B, D]`` embedding, or ``[B, N, D]`` proposal embeddings when ``masks`` given."""
        _check_inputs(images, masks)
        x = self._embed(images)  # [B, 1 + hw, d]
        gh, gw = self.grid_hw(images.shape[-2], images.shape[-1])
        blocks = self.visual.transformer.resblocks
        if masks is None:
            for block in blocks:
                x = self._run(lambda t, blk=block: self._plain_block(blk, t), x)
            return self._head(x[:, 0])  # [B, D]
        b, n = masks.shape[:2]
        if n == 0:
            return x.new_zeros(b, 0, self.output_dim)
        for block in blocks[: self.start_layer]:
            x = self._run(lambda t, blk=block: self._plain_block(blk, t), x)
        if self.start_layer == self.depth:
            return self._head(x[:, :1]).repeat(1, n, 1)  # no masked block: all are the CLS
        allow = _attention_allow(proposal_attention_mask(masks, (gh, gw)))  # [B, 1, L, L]
        x = torch.cat([x[:, :1].expand(b, n - 1, -1), x], dim=1)  # [B, N + hw, d]
        for block in blocks[self.start_layer :]:
            x = self._run(lambda t, blk=block: self._masked_block(blk, t, allow), x)
        return self._head(x[:, :n])  # [B, N, D]


def _check_supported(visual: nn.Module) -> None:
    """Raise for open_clip vision towers whose pooling or blocks IP-CLIP cannot reproduce."""
    if not isinstance(visual, VisionTransformer):
        raise TypeError(
            f"IP-CLIP needs an open_clip VisionTransformer, got {type(visual).__name__}"
        )
    problems = []
    if visual.attn_pool is not None:
        problems.append("attentional pooling")
    if visual.pool_type != "tok":
        problems.append(f"pool_type={visual.pool_type!r} (needs 'tok')")
    if visual.proj is None:
        problems.append("no output projection (pruned head)")
    if isinstance(visual.patch_dropout, PatchDropout) and visual.patch_dropout.prob > 0:
        problems.append("patch dropout (breaks the patch grid)")
    for i, block in enumerate(visual.transformer.resblocks):
        if type(block) is not ResidualAttentionBlock or hasattr(block, "ln_1_kv"):
            problems.append(f"block {i} is {type(block).__name__} (needs ResidualAttentionBlock)")
            break
        attn = block.attn
        if not attn._qkv_same_embed_dim or attn.bias_k is not None or attn.dropout > 0:
            problems.append(f"block {i} attention has kdim/vdim, bias_k or dropout")
            break
    if problems:
        raise ValueError("unsupported vision tower for IP-CLIP: " + "; ".join(problems))


def _check_inputs(images: torch.Tensor, masks: torch.Tensor | None) -> None:
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be [B, 3, H, W], got shape {tuple(images.shape)}")
    if masks is None:
        return
    if masks.ndim != 4 or masks.shape[0] != images.shape[0]:
        raise ValueError(
            f"masks must be [B, N, h, w] with B={images.shape[0]}, got shape {tuple(masks.shape)}"
        )
    if torch.isnan(masks).any():
        raise ValueError("masks contain NaN; pass sigmoid probabilities in [0, 1]")


def build_openai_visual(
    state_dict: Mapping[str, torch.Tensor], heads: int, *, quick_gelu: bool = True
) -> VisionTransformer:
    """An open_clip ``VisionTransformer`` shaped like, and loaded from, OpenAI visual weights."""
    sd = {k[len("visual.") :]: v for k, v in state_dict.items() if k.startswith("visual.")}
    sd = sd or dict(state_dict)
    for key in (
        "conv1.weight",
        "positional_embedding",
        "proj",
        "transformer.resblocks.0.ln_1.weight",
    ):
        if key not in sd:
            raise CheckpointError(f"OpenAI visual state dict lacks 'visual.{key}' ({len(sd)} keys)")
    width, _, patch, _ = sd["conv1.weight"].shape
    if width % heads:
        raise ValueError(f"width {width} is not divisible by heads={heads}")
    grid = round((sd["positional_embedding"].shape[0] - 1) ** 0.5)
    layers = len({k.split(".")[2] for k in sd if k.startswith("transformer.resblocks.")})
    mlp_width = sd["transformer.resblocks.0.mlp.c_fc.weight"].shape[0]
    visual = VisionTransformer(
        image_size=grid * patch,
        patch_size=patch,
        width=width,
        layers=layers,
        heads=heads,
        mlp_ratio=mlp_width / width,
        output_dim=sd["proj"].shape[1],
        act_layer=QuickGELU if quick_gelu else nn.GELU,
    )
    expected = visual.state_dict()
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    if missing or unexpected:
        raise CheckpointError(
            f"OpenAI visual state dict does not match: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}"
        )
    visual.load_state_dict(sd, strict=True)
    return visual


__all__ = ["IPClipEncoder", "build_openai_visual", "proposal_attention_mask", "MASK_THRESHOLD"]
