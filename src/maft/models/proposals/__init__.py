"""Proposal generators (Mask2Former family), pure PyTorch.

Two architectures, chosen by the ``arch`` key of a generator config:

- ``freeseg``: the released FreeSeg/MAFT generator (R-101 DeepLab stem, deformable-attention pixel
  decoder, text->pixel interaction, masked-attention decoder); loads the official checkpoints.
- ``lite`` (default): a small Mask2Former-style generator (timm backbone, full-attention pixel
  decoder) for the built-in world, tests and small CPUs.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from maft.errors import ConfigError
from maft.models.proposals.generator import LOGIT_SCALE, MaskProposalGenerator, proposal_scores

ARCHITECTURES = ("lite", "freeseg")


def build_generator(cfg: dict[str, Any]) -> nn.Module:
    """Build a proposal generator from plain config: ``arch`` picks the class, the rest are its
    keyword arguments (a wrong key is a ConfigError naming it)."""
    kwargs = dict(cfg)
    arch = kwargs.pop("arch", "lite") or "lite"
    if arch == "freeseg":
        from maft.models.proposals.freeseg.generator import FreeSegGenerator

        cls: type[nn.Module] = FreeSegGenerator
    elif arch == "lite":
        cls = MaskProposalGenerator
    else:
        raise ConfigError(
            f"unknown proposal generator arch {arch!r}; choose one of {ARCHITECTURES}"
        )
    try:
        return cls(**kwargs)
    except TypeError as err:
        raise ConfigError(f"proposal generator ({arch}) config: {err}") from err


__all__ = [
    "ARCHITECTURES",
    "LOGIT_SCALE",
    "MaskProposalGenerator",
    "build_generator",
    "proposal_scores",
]
