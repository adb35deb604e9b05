"""What every proposal generator shares: input normalisation and the CLIP-space class head.

A generator scores its class embeddings against the vocabulary's text embeddings plus one learned
non-object ("void") embedding: ``logits = 100 · cos(e_q, [T_1 … T_C, t_void])`` (docs/release.md).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from maft.models.inference import zero_outside

LOGIT_SCALE = 100.0  # fixed temperature 0.01 of the cosine logits


class ProposalGeneratorBase(nn.Module):
    """Void embedding, pixel statistics, ``vocabulary``/``classify``/``normalize`` for subclasses.

    Subclasses build their networks first and call :meth:`_init_head` last, so the void
    embedding is drawn after every other initial weight (a seeded run keeps its weights).
    """

    clip_dim: int

    def _init_head(
        self, clip_dim: int, pixel_mean: Sequence[float], pixel_std: Sequence[float]
    ) -> None:
        """Learned non-object embedding N(0, D^-1/2) (normalised before use) and pixel stats."""
        self.clip_dim = clip_dim
        self.void_embedding = nn.Parameter(torch.randn(1, clip_dim) * clip_dim**-0.5)
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(1, 3, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(1, 3, 1, 1), False)

    def vocabulary(self, text_emb: torch.Tensor) -> torch.Tensor:
        """[C, D] text embeddings -> [C+1, D] with the normalised void embedding appended last."""
        if text_emb.ndim != 2 or text_emb.shape[1] != self.clip_dim:
            raise ValueError(
                f"text_emb must be [C, {self.clip_dim}], got {tuple(text_emb.shape)}; "
                "the generator's clip_dim must equal the CLIP embedding size"
            )
        void = F.normalize(self.void_embedding, dim=-1)
        return torch.cat([text_emb.to(void.dtype), void], dim=0)

    def classify(self, class_emb: torch.Tensor, vocab: torch.Tensor) -> torch.Tensor:
        """Cosine x100 between class embeddings [B, N, D] and vocab [C+1, D] -> [B, N, C+1]."""
        return LOGIT_SCALE * F.normalize(class_emb, dim=-1) @ vocab.T

    def normalize(self, images: torch.Tensor, valid_size: torch.Tensor | None) -> torch.Tensor:
        """0-255 canvas [B, 3, H, W] -> normalised, zero outside each image's valid box."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be [B, 3, H, W], got {tuple(images.shape)}")
        h, w = images.shape[-2:]
        if h % 32 or w % 32:
            raise ValueError(f"image size {h}x{w} must be a multiple of 32 (pad the batch)")
        x = (images.float() - self.pixel_mean) / self.pixel_std
        return zero_outside(x, valid_size)


__all__ = ["LOGIT_SCALE", "ProposalGeneratorBase"]
