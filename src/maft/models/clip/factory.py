"""Build open_clip CLIP models from a tag, a local checkpoint file or random weights.

One loader for every source (open_clip's idea): a pretrained tag only adds a download step, then the
downloaded file goes through the same file loader as a user's local checkpoint.

QuickGELU policy: OpenAI-format files (a TorchScript archive, or a state dict carrying OpenAI's
``input_resolution`` / ``context_length`` / ``vocab_size`` entries) and tags trained with QuickGELU
switch the model to QuickGELU automatically when ``quick_gelu=None``. ``quick_gelu=False`` with such
weights raises ``CheckpointError`` (GELU on QuickGELU weights silently gives wrong features).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import open_clip
import torch
from open_clip.model import resize_pos_embed
from open_clip.pretrained import (
    HF_WEIGHTS_NAME,
    _get_safe_alternatives,
    download_pretrained,
    get_pretrained_cfg,
    has_hf_hub,
)

from maft.checkpoints import check_keys, read_state_dict
from maft.errors import CheckpointError, ConfigError
from maft.offline import CLIP_REMEDY, hf_hub_url, require_download

_CONFIG_DIR = Path(__file__).parent / "model_configs"
_NAME_HINT = "Check the model name matches the weights."
_registered = False


def register_model_configs() -> list[str]:
    """Register every JSON in ``model_configs/`` with open_clip (idempotent); return their names."""
    global _registered
    if not _registered:
        open_clip.add_model_config(_CONFIG_DIR)
        _registered = True
    return sorted(p.stem for p in _CONFIG_DIR.glob("*.json"))


_runtime_config_dir: Path | None = None


def register_clip_config(name: str, cfg: dict[str, Any]) -> str:
    """Register an open_clip architecture ``cfg`` under ``name`` for this process (idempotent).

    Used for CLIPs that no registered config describes (e.g. one read from a checkpoint's shapes);
    the config travels in a task's hyperparameters, so a checkpoint rebuilds without it on disk.
    """
    global _runtime_config_dir
    register_model_configs()
    known = open_clip.get_model_config(name)
    if known is not None:
        if json.dumps(known, sort_keys=True) != json.dumps(cfg, sort_keys=True):
            raise ConfigError(f"CLIP architecture {name!r} is already registered differently")
        return name
    if _runtime_config_dir is None:
        _runtime_config_dir = Path(tempfile.mkdtemp(prefix="maft-clip-configs-"))
    (_runtime_config_dir / f"{name}.json").write_text(json.dumps(cfg), "utf-8")
    open_clip.add_model_config(_runtime_config_dir)
    return name


def openai_clip_config(sd: dict[str, torch.Tensor]) -> dict[str, Any]:
    """open_clip config of an OpenAI-layout CLIP ViT state dict, read from its shapes.

    Heads follow OpenAI's rule (width // 64) for both towers; the activation is QuickGELU.
    """
    try:
        width = sd["visual.conv1.weight"].shape[0]
        patch = sd["visual.conv1.weight"].shape[-1]
        grid = round((sd["visual.positional_embedding"].shape[0] - 1) ** 0.5)
        v_layers = len(
            {k.split(".")[3] for k in sd if k.startswith("visual.transformer.resblocks.")}
        )
        t_width = sd["ln_final.weight"].shape[0]
        t_layers = len({k.split(".")[2] for k in sd if k.startswith("transformer.resblocks.")})
        mlp = sd["visual.transformer.resblocks.0.mlp.c_fc.weight"].shape[0] / width
        cfg = {
            "embed_dim": int(sd["text_projection"].shape[1]),
            "quick_gelu": True,
            "vision_cfg": {
                "image_size": int(grid * patch),
                "layers": int(v_layers),
                "width": int(width),
                "patch_size": int(patch),
                "mlp_ratio": float(mlp),
            },
            "text_cfg": {
                "context_length": int(sd["positional_embedding"].shape[0]),
                "vocab_size": int(sd["token_embedding.weight"].shape[0]),
                "width": int(t_width),
                "heads": int(t_width // 64),
                "layers": int(t_layers),
            },
        }
    except KeyError as err:
        raise CheckpointError(f"not an OpenAI-layout CLIP ViT state dict: no key {err}") from None
    if sd["visual.proj"].shape[1] != cfg["embed_dim"]:
        raise CheckpointError("visual.proj and text_projection disagree on the embedding size")
    return cfg


def config_name(cfg: dict[str, Any], prefix: str = "official") -> str:
    """A stable registry name for an architecture config: ``<prefix>-<digest of the config>``."""
    digest = hashlib.blake2b(json.dumps(cfg, sort_keys=True).encode(), digest_size=5).hexdigest()
    return f"{prefix}-{digest}"


@dataclass(frozen=True)
class ClipNormalization:
    """CLIP input normalisation (0–1 scale mean/std) and the model's native square input size."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    image_size: int

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """Map RGB images in 0–255 ``[B, 3, H, W]`` (float or uint8) to CLIP-normalised floats."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected RGB images [B, 3, H, W], got shape {tuple(images.shape)}")
        x = images if images.is_floating_point() else images.float()
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1) * 255.0
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1) * 255.0
        return (x - mean) / std


def cached_pretrained_file(cfg: dict[str, Any]) -> str | None:
    """The local file of an open_clip tag config, when a download already put it there."""
    if cfg.get("file"):
        return str(cfg["file"]) if os.path.isfile(cfg["file"]) else None
    hub = cfg.get("hf_hub", "")
    if hub and has_hf_hub():
        from huggingface_hub import try_to_load_from_cache

        model_id, filename = os.path.split(hub)
        filename = filename or HF_WEIGHTS_NAME
        for name in (*_get_safe_alternatives(filename), filename):
            hit = try_to_load_from_cache(model_id, name)
            if isinstance(hit, str):
                return hit
    if cfg.get("url"):  # open_clip's URL cache (download_pretrained_from_url's default folder)
        hit = Path("~/.cache/clip").expanduser() / os.path.basename(cfg["url"])
        if hit.is_file():
            return str(hit)
    return None


def _download_source(cfg: dict[str, Any]) -> str:
    """Where open_clip would download a tag's file from (the HF hub when it has an entry)."""
    hub = cfg.get("hf_hub", "")
    if hub and has_hf_hub():
        return f"{hf_hub_url()}/{hub.rstrip('/')}"
    return str(cfg.get("url") or hf_hub_url())


def _cached_or_reachable(model_name: str, tag: str, cfg: dict[str, Any]) -> str | None:
    """A tag's cached file; None when it must be downloaded and can be; else raise."""
    cached = cached_pretrained_file(cfg)
    if cached is None:
        what = f"the CLIP weights of model.clip.name={model_name} pretrained={tag}"
        require_download(what, _download_source(cfg), CLIP_REMEDY)
    return cached


def check_pretrained_available(name: str, pretrained: str | None) -> None:
    """Raise WeightsUnavailableError now for a ``pretrained`` tag neither cached nor reachable."""
    if not pretrained or os.path.isfile(pretrained):
        return
    register_model_configs()
    tag_cfg = get_pretrained_cfg(name, pretrained)
    if tag_cfg:
        _cached_or_reachable(name, pretrained, tag_cfg)


def _download_pretrained(model_name: str, tag: str, cfg: dict[str, Any]) -> str:
    """Fetch the file of an open_clip pretrained tag (the only network step; tests replace it).

    A file already in the local cache is used as it is; offline, a WeightsUnavailableError says
    at once what is missing instead of open_clip's retries.
    """
    cached = _cached_or_reachable(model_name, tag, cfg)
    if cached is not None:
        return cached
    path = download_pretrained(cfg)
    if not path:
        raise CheckpointError(f"open_clip returned no file for model {model_name!r} tag {tag!r}")
    return str(path)


def _strip_to_model(sd: dict[str, torch.Tensor], model_keys: set[str]) -> dict[str, torch.Tensor]:
    """Drop a wrapper prefix (e.g. a Lightning ``clip.``) located via the unique ``logit_scale``."""
    if "logit_scale" in sd or "logit_scale" not in model_keys:
        return sd
    prefixes = {k[: -len("logit_scale")] for k in sd if k.endswith(".logit_scale")}
    if len(prefixes) != 1:
        return sd
    prefix = prefixes.pop()
    return {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}


def load_clip_state_dict(
    model: torch.nn.Module, sd: dict[str, torch.Tensor], source: str | Path
) -> None:
    """Load ``sd`` into an open_clip model strictly; raise ``CheckpointError`` naming bad keys."""
    sd = _strip_to_model(dict(sd), set(model.state_dict()))
    if "logit_scale" in sd and sd["logit_scale"].ndim != model.logit_scale.ndim:
        sd["logit_scale"] = sd["logit_scale"].reshape(model.logit_scale.shape)
    resize_pos_embed(sd, model)
    expected = model.state_dict()
    for name, _ in model.named_buffers():  # non-persistent buffers (attn_mask) saved by TorchScript
        if name not in expected:
            sd.pop(name, None)
    check_keys(expected, sd, f"checkpoint {source}", hint=_NAME_HINT)
    model.load_state_dict(sd, strict=True)


def _resolve_quick_gelu(
    requested: bool | None, weights_quick: bool, source: str, name: str
) -> bool:
    """Apply the QuickGELU policy of this module's docstring."""
    if requested is False and weights_quick:
        raise CheckpointError(
            f"{source} holds QuickGELU (OpenAI-trained) weights but quick_gelu=False was requested "
            f"for {name!r}; pass quick_gelu=None/True or use the '-quickgelu' model variant."
        )
    return bool(requested) or weights_quick


def _create(name: str, quick_gelu: bool) -> torch.nn.Module:
    register_model_configs()
    if open_clip.get_model_config(name) is None:
        raise ConfigError(
            f"unknown CLIP architecture {name!r}; known: {', '.join(open_clip.list_models()[:8])}, "
            "... (see open_clip.list_models())"
        )
    logger = logging.getLogger()
    level = logger.level
    logger.setLevel(max(level, logging.ERROR))  # silence open_clip's "initialized randomly" warning
    try:
        return open_clip.create_model(name, pretrained=None, force_quick_gelu=quick_gelu)
    finally:
        logger.setLevel(level)


def _normalization(model: torch.nn.Module) -> ClipNormalization:
    cfg = open_clip.get_model_preprocess_cfg(model)
    size = cfg.get("size", model.visual.image_size)
    size = size[0] if isinstance(size, (tuple, list)) else size
    return ClipNormalization(
        mean=tuple(float(m) for m in cfg["mean"]),
        std=tuple(float(s) for s in cfg["std"]),
        image_size=int(size),
    )


def build_clip(
    name: str,
    pretrained: str | None = None,
    *,
    quick_gelu: bool | None = None,
    device: str | torch.device = "cpu",
    model_cfg: dict[str, Any] | None = None,
) -> tuple[open_clip.CLIP, ClipNormalization]:
    """Build an open_clip model (random, tag or local file) and its input normalisation.

    Args:
        name: open_clip architecture (``ViT-B-16``, ``maft-tiny``, ...).
        pretrained: None (random weights), a path to a checkpoint file, or an open_clip tag.
        quick_gelu: None = automatic (QuickGELU for OpenAI-format files and QuickGELU tags),
            True = force QuickGELU, False = GELU (raises on QuickGELU weights).
        model_cfg: an open_clip architecture config to register under ``name`` first (for
            architectures read from a checkpoint, e.g. an official release file).
    """
    register_model_configs()
    if model_cfg is not None:
        register_clip_config(name, model_cfg)
    preprocess: dict[str, Any] = {}
    if pretrained is None:
        model = _create(name, bool(quick_gelu))
    else:
        tag_cfg = {} if os.path.isfile(pretrained) else get_pretrained_cfg(name, pretrained)
        if not tag_cfg and not os.path.isfile(pretrained):
            known = open_clip.list_pretrained_tags_by_model(name)
            raise CheckpointError(
                f"pretrained={pretrained!r} is neither an existing file nor an open_clip tag of "
                f"{name!r} (tags: {', '.join(known) or 'none'})"
            )
        path = _download_pretrained(name, pretrained, tag_cfg) if tag_cfg else pretrained
        sd, is_openai = read_state_dict(path)
        weights_quick = is_openai or bool(tag_cfg.get("quick_gelu", False))
        quick = _resolve_quick_gelu(quick_gelu, weights_quick, str(path), name)
        model = _create(name, quick)
        load_clip_state_dict(model, sd, path)
        preprocess = {k: tag_cfg[k] for k in ("mean", "std") if k in tag_cfg}
    if preprocess:
        cfg = dict(open_clip.get_model_preprocess_cfg(model))
        cfg.update(preprocess)
        open_clip.set_model_preprocess_cfg(model, cfg)
    model = model.to(device).eval()
    return model, _normalization(model)


def get_tokenizer(name: str) -> Callable[..., torch.Tensor]:
    """Return open_clip's tokenizer for architecture ``name`` (context length from its config)."""
    register_model_configs()
    if open_clip.get_model_config(name) is None:
        raise ConfigError(f"unknown CLIP architecture {name!r}; see open_clip.list_models()")
    return open_clip.get_tokenizer(name)


__all__ = [
    "ClipNormalization",
    "build_clip",
    "cached_pretrained_file",
    "check_pretrained_available",
    "config_name",
    "get_tokenizer",
    "openai_clip_config",
    "register_clip_config",
    "read_state_dict",
    "load_clip_state_dict",
    "register_model_configs",
]
