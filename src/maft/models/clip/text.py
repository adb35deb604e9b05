"""Class text embeddings (14 ViLD templates) and fixed-temperature logits (docs/method.md §2.2)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from maft.errors import VocabularyError

VILD_TEMPLATES: tuple[str, ...] = (
    "a photo of a {}.",
    "This is a photo of a {}",
    "There is a {} in the scene",
    "There is the {} in the scene",
    "a photo of a {} in the scene",
    "a photo of a small {}.",
    "a photo of a medium {}.",
    "a photo of a large {}.",
    "This is a photo of a small {}.",
    "This is a photo of a medium {}.",
    "This is a photo of a large {}.",
    "There is a small {} in the scene.",
    "There is a medium {} in the scene.",
    "There is a large {} in the scene.",
)

LOGIT_SCALE = 100.0  # fixed temperature 1/τ = 100, not CLIP's learned logit_scale (§2.2)


def _tensor_digest(h: hashlib.blake2b, name: str, t: torch.Tensor) -> None:
    flat = t.detach().to("cpu").contiguous().reshape(-1)
    h.update(f"{name}:{tuple(t.shape)}:{t.dtype};".encode())
    h.update(flat.view(torch.uint8).numpy().tobytes())


class TextClassifier(nn.Module):
    """Frozen CLIP text classifier: names → ``[C, D]`` L2-normalised template-averaged embeddings.

    Per name (whitespace-stripped, used verbatim) and template: encode, L2-normalise, average over
    templates, L2-normalise again (§2.2). Results are cached in memory per tuple of names and, with
    ``cache_dir``, on disk under a hash of the text-tower weights, the templates and the names.
    The text-tower parameters (everything outside ``visual.``) are frozen; the image tower is left
    untouched so that it can be shared with a trainable IP-CLIP encoder.
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Callable[..., torch.Tensor],
        templates: Sequence[str] = VILD_TEMPLATES,
        cache_dir: str | None = None,
        chunk_size: int = 256,
    ) -> None:
        super().__init__()
        if not templates or any("{}" not in t for t in templates):
            raise ValueError(f"every template needs one '{{}}' placeholder, got {list(templates)}")
        self.model = model
        self.tokenizer = tokenizer
        self.templates = tuple(templates)
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.chunk_size = int(chunk_size)
        self._memory: dict[tuple[str, ...], torch.Tensor] = {}
        self._weights_digest: str | None = None
        for name, p in model.named_parameters():
            if not name.startswith("visual."):
                p.requires_grad_(False)

    @property
    def device(self) -> torch.device:
        """Device of the text tower."""
        return self.model.token_embedding.weight.device

    def weights_digest(self) -> str:
        """Hex digest identifying the text-tower weights and templates (the disk-cache key)."""
        if self._weights_digest is None:
            h = hashlib.blake2b(digest_size=16)
            for name, t in self.model.state_dict().items():
                if not name.startswith("visual."):
                    _tensor_digest(h, name, t)
            h.update("\n".join(self.templates).encode())
            self._weights_digest = h.hexdigest()
        return self._weights_digest

    def _cache_file(self, names: tuple[str, ...]) -> Path:
        assert self.cache_dir is not None
        key = hashlib.blake2b(
            (self.weights_digest() + "\0" + "\n".join(names)).encode(), digest_size=16
        ).hexdigest()
        return self.cache_dir / f"text_emb_{key}.pt"

    @torch.no_grad()
    def encode(self, names: tuple[str, ...]) -> torch.Tensor:
        """Encode names with every template, uncached: ``[C, D]`` float32, L2-normalised."""
        prompts = [t.format(n) for n in names for t in self.templates]  # C*T prompts
        tokens = self.tokenizer(prompts)  # [C*T, context]
        device = self.device
        feats = []
        with torch.autocast(device.type, enabled=False):
            for start in range(0, tokens.shape[0], self.chunk_size):
                chunk = tokens[start : start + self.chunk_size].to(device)
                feats.append(self.model.encode_text(chunk).float())
        emb = torch.cat(feats).view(len(names), len(self.templates), -1)  # [C, T, D]
        emb = F.normalize(emb, dim=-1).mean(dim=1)  # [C, D]
        return F.normalize(emb, dim=-1)

    def forward(self, names: Sequence[str]) -> torch.Tensor:
        """Return ``[C, D]`` L2-normalised class embeddings for ``names`` (cached)."""
        key = tuple(str(n).strip() for n in names)
        if not key or any(not n for n in key):
            raise VocabularyError(
                f"class names must be a non-empty list of non-empty strings: {names}"
            )
        device = self.device
        if key in self._memory:
            return self._memory[key].to(device)
        emb = None
        path = self._cache_file(key) if self.cache_dir is not None else None
        if path is not None and path.is_file():
            emb = torch.load(path, map_location="cpu", weights_only=True)
        if emb is None:
            emb = self.encode(key)
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
                torch.save(emb.cpu(), path)
        emb = emb.to(device)
        self._memory[key] = emb
        return emb

    @staticmethod
    def logits(image_emb: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor:
        """``100 · ⟨normalize(image_emb), text_emb⟩``: ``[..., D]`` × ``[C, D]`` → ``[..., C]``."""
        img = F.normalize(image_emb, dim=-1)
        return LOGIT_SCALE * img @ text_emb.to(img.dtype).t()


__all__ = ["VILD_TEMPLATES", "LOGIT_SCALE", "TextClassifier"]
