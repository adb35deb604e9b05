"""Import the released MAFT checkpoint (detectron2 ``.pth``) into open_clip / IPClipEncoder weights.

In the official code (``freeseg/MAFT.py``) the fine-tuned IP-CLIP tower is the attribute
``IPCLIP`` (keys ``IPCLIP.conv1.weight``, ``IPCLIP.transformer.resblocks.0…``), the frozen teacher
is ``T.`` and the original CLIP used for text sits under ``clip_adapter.clip_model.``. The visual
keys follow OpenAI's layout, which open_clip's ``VisionTransformer`` shares, so converting is a
matter of choosing the prefix and checking the key set.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from maft.checkpoints import check_keys, read_state_dict
from maft.errors import CheckpointError

OFFICIAL_VISUAL_PREFIX = "IPCLIP."
_ANCHOR = "conv1.weight"
_TEXT_ANCHOR = "token_embedding.weight"


@dataclass
class ConversionReport:
    """What a conversion took from the file and how it matched the target model."""

    source: str
    prefix: str
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    ignored: int = 0

    def summary(self) -> str:
        """Human-readable report (first keys of each list)."""
        lines = [
            f"source: {self.source}",
            f"visual prefix: {self.prefix!r}",
            f"loaded: {len(self.loaded)} keys",
            f"missing: {len(self.missing)} {self.missing[:10]}",
            f"unexpected: {len(self.unexpected)} {self.unexpected[:10]}",
            f"ignored (outside the prefix): {self.ignored} keys",
        ]
        return "\n".join(lines)


def find_visual_prefix(keys: list[str], prefix: str | None = None, source: str = "") -> str:
    """Choose the visual-tower prefix: ``prefix`` if given, else ``IPCLIP.``, else the only one.

    A candidate is any prefix ``P`` with a ``P + 'conv1.weight'`` key; among several, a unique one
    ending in ``visual.`` wins.
    """
    if prefix is not None:
        if not any(k.startswith(prefix) for k in keys):
            raise CheckpointError(f"{source}: no key starts with prefix {prefix!r}")
        return prefix
    candidates = sorted(k[: -len(_ANCHOR)] for k in keys if k.endswith(_ANCHOR))
    candidates = [c for c in candidates if c == "" or c.endswith(".")]
    if OFFICIAL_VISUAL_PREFIX in candidates:
        return OFFICIAL_VISUAL_PREFIX
    if len(candidates) == 1:
        return candidates[0]
    visual = [c for c in candidates if c.endswith("visual.")]
    if len(visual) == 1:
        return visual[0]
    raise CheckpointError(
        f"{source}: cannot tell which visual tower to import; candidate prefixes {candidates}. "
        "Pass prefix= (CLI: --prefix)."
    )


def convert_maft_state_dict(
    state_dict: Mapping[str, torch.Tensor], prefix: str | None = None, source: str = "<dict>"
) -> tuple[dict[str, torch.Tensor], ConversionReport]:
    """Extract one visual tower as an open_clip ``VisionTransformer`` state dict (bare keys)."""
    keys = list(state_dict)
    chosen = find_visual_prefix(keys, prefix, source)
    visual = {k[len(chosen) :]: v for k, v in state_dict.items() if k.startswith(chosen)}
    if _ANCHOR not in visual:
        raise CheckpointError(f"{source}: prefix {chosen!r} has no {_ANCHOR!r} key")
    report = ConversionReport(source=source, prefix=chosen, loaded=sorted(visual))
    report.ignored = len(keys) - len(visual)
    return visual, report


def text_tower_state_dict(
    state_dict: Mapping[str, torch.Tensor], source: str = "<dict>"
) -> dict[str, torch.Tensor]:
    """The CLIP text tower (open_clip keys) of the file, e.g. under ``clip_adapter.clip_model.``."""
    roots = sorted(k[: -len(_TEXT_ANCHOR)] for k in state_dict if k.endswith(_TEXT_ANCHOR))
    if len(roots) != 1:
        raise CheckpointError(f"{source}: expected one CLIP text tower, found prefixes {roots}")
    root = roots[0]
    return {
        k[len(root) :]: v
        for k, v in state_dict.items()
        if k.startswith(root) and not k[len(root) :].startswith("visual.")
    }


def check_against(
    visual_sd: Mapping[str, torch.Tensor], target: nn.Module, report: ConversionReport
) -> ConversionReport:
    """Fill ``missing`` / ``unexpected`` (and shape mismatches) against a target module's keys."""
    expected = target.state_dict()
    report.missing = [k for k in expected if k not in visual_sd]
    report.unexpected = [k for k in visual_sd if k not in expected]
    report.unexpected += [
        f"{k} (shape {tuple(v.shape)} != {tuple(expected[k].shape)})"
        for k, v in visual_sd.items()
        if k in expected and v.shape != expected[k].shape
    ]
    report.loaded = [
        k for k in visual_sd if k in expected and visual_sd[k].shape == expected[k].shape
    ]
    return report


def load_maft_visual(
    visual: nn.Module,
    path: str | Path,
    prefix: str | None = None,
    *,
    weights_only: bool = True,
) -> ConversionReport:
    """Load the MAFT IP-CLIP tower of ``path`` into an open_clip visual tower (strict)."""
    sd, _ = read_state_dict(path, weights_only=weights_only)
    visual_sd, report = convert_maft_state_dict(sd, prefix, str(path))
    check_against(visual_sd, visual, report)
    check_keys(visual.state_dict(), visual_sd, path, f"the visual tower ({report.prefix!r} keys)")
    visual.load_state_dict(visual_sd, strict=True)
    return report


__all__ = [
    "OFFICIAL_VISUAL_PREFIX",
    "ConversionReport",
    "check_against",
    "convert_maft_state_dict",
    "find_visual_prefix",
    "load_maft_visual",
    "text_tower_state_dict",
]
