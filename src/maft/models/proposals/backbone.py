"""timm `features_only` backbone of the proposal generator (docs/method.md §2.1: ResNet, FrozenBN).

Returns the stride-4/8/16/32 feature maps of any timm model that provides them. Pretrained
weights come from ``backbone_weights`` (a local file), else timm's local caches, else timm's own
download (machines with network); if none works the error says how to get them — a real-scale run
never silently trains from a random ResNet.
"""

from __future__ import annotations

import os
from pathlib import Path

import timm
import torch
from timm.layers import freeze_batch_norm_2d
from torch import nn

from maft.errors import ConfigError
from maft.offline import hf_hub_url, require_download

STRIDES = (4, 8, 16, 32)


def _cached_timm_weights(name: str) -> str | None:
    """Path of already-downloaded timm weights for `name` (HF hub or torch hub cache), else None."""
    try:
        cfg = timm.models.get_pretrained_cfg(name)
    except RuntimeError:
        cfg = None
    if cfg is None:
        return None
    if cfg.hf_hub_id:
        from huggingface_hub import try_to_load_from_cache

        for filename in ("model.safetensors", "pytorch_model.bin"):
            hit = try_to_load_from_cache(cfg.hf_hub_id, filename)
            if isinstance(hit, str):
                return hit
    if cfg.url:
        hit = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(cfg.url)
        if hit.is_file():
            return str(hit)
    return None


def _pretrained_overlay(name: str, weights: str | None) -> dict[str, str]:
    """timm `pretrained_cfg_overlay` pointing at a local weights file; ConfigError if none."""
    path = weights or _cached_timm_weights(name)
    if path is None or not Path(path).is_file():
        raise ConfigError(
            f"pretrained_backbone=True but no local weights for timm model '{name}' "
            f"(looked at backbone_weights={weights!r} and the HF/torch hub caches). Download them "
            f"once with `timm.create_model('{name}', pretrained=True)` on a machine with network, "
            "or pass backbone_weights=<file>, or set pretrained_backbone=false."
        )
    return {"file": str(path)}


def _timm_source(name: str) -> str:
    """Where timm would download the weights of ``name`` from (the HF hub when it has an id)."""
    try:
        cfg = timm.models.get_pretrained_cfg(name)
    except RuntimeError:
        cfg = None
    if cfg is not None and not cfg.hf_hub_id and cfg.url:
        return str(cfg.url)
    hub_id = f"/{cfg.hf_hub_id}" if cfg is not None and cfg.hf_hub_id else ""
    return hf_hub_url() + hub_id


def check_backbone_available(name: str, pretrained: bool, weights: str | None) -> None:
    """Raise WeightsUnavailableError now for timm weights neither cached nor reachable."""
    if not pretrained or weights or _cached_timm_weights(name) is not None:
        return
    require_download(
        f"the pretrained weights of the timm backbone model.proposals.backbone={name}",
        _timm_source(name),
        "Offline, give a local file with model.proposals.backbone_weights=<file>, or set "
        "model.proposals.pretrained_backbone=false (random init), or train on a CPU with no "
        "download at all: experiment=folder_cpu data.root=<your folder>",
    )


def _download(name: str) -> nn.Module:
    """Let timm fetch the pretrained weights (network); a clear ConfigError when it cannot."""
    check_backbone_available(name, True, None)
    try:
        return timm.create_model(name, pretrained=True, features_only=True)
    except Exception as err:  # noqa: BLE001 - offline, unknown tag, hub error: one clear message
        raise ConfigError(
            f"pretrained_backbone=True but timm could not get weights for '{name}' ({err}). "
            f"Download them once with `timm.create_model('{name}', pretrained=True)` on a machine "
            "with network, or pass backbone_weights=<file>, or set pretrained_backbone=false."
        ) from err


class TimmBackbone(nn.Module):
    """Multi-scale CNN features {"res2": 1/4, "res3": 1/8, "res4": 1/16, "res5": 1/32}."""

    def __init__(
        self,
        name: str = "resnet50",
        *,
        pretrained: bool = False,
        weights: str | None = None,
        freeze_bn: bool = True,
    ) -> None:
        super().__init__()
        kwargs = {}
        if pretrained and not weights and _cached_timm_weights(name) is None:
            body = _download(name)
        else:
            if pretrained or weights:
                kwargs["pretrained_cfg_overlay"] = _pretrained_overlay(name, weights)
            body = timm.create_model(name, pretrained=bool(kwargs), features_only=True, **kwargs)
        reductions = body.feature_info.reduction()
        missing = [s for s in STRIDES if s not in reductions]
        if missing:
            raise ConfigError(
                f"backbone '{name}' has feature strides {reductions}; the proposal generator "
                f"needs {list(STRIDES)} (missing {missing}). Pick a CNN such as resnet50."
            )
        # the deepest feature of each stride
        self.picks = [max(i for i, r in enumerate(reductions) if r == s) for s in STRIDES]
        self.body = freeze_batch_norm_2d(body) if freeze_bn else body
        self.channels = [body.feature_info.channels()[i] for i in self.picks]

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Normalised images [B, 3, H, W] -> feature maps keyed res2..res5 (strides 4..32)."""
        feats = self.body(x)
        return {f"res{i + 2}": feats[j] for i, j in enumerate(self.picks)}


__all__ = ["TimmBackbone", "STRIDES", "check_backbone_available"]
