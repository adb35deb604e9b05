"""Official FreeSeg / MAFT release checkpoints: settings, key mapping, checks (docs/release.md).

A release file is a detectron2 checkpoint ``{"model": state_dict, ...}``. Its settings come from
an official detectron2 yaml when one is given (``read_official_config``; every key we rely on is
checked and an unsupported value is a ``ConfigError`` naming the key), else from the released
defaults with every size read from the tensor shapes (``settings_from_state_dict``).

Key groups and where they go (``map_release_state_dict``):

======================================  ====================================================
official key                             maft (MaftTask state dict)
======================================  ====================================================
``backbone.*``, ``sem_seg_head.*``       ``generator.backbone.*``, ``generator.sem_seg_head.*``
``clip_adapter.non_object_embedding``    ``generator.void_embedding``
``clip_adapter.clip_model.*`` (text)     ``clip_model.*`` (the frozen text tower)
``IPCLIP.*`` (MAFT)                      ``clip_model.visual.*`` (the fine-tuned IP-CLIP tower)
``clip_adapter.clip_model.visual.*``     ``teacher_visual.*`` (the frozen tower: frozen rows;
                                         FreeSeg files: also ``clip_model.visual.*``)
``T.*``                                  ignored: the distillation teacher, a copy of the
                                         frozen tower (checked equal, else a warning)
``criterion.empty_weight``               ignored: a loss buffer (its size = training classes + 1)
``clip_adapter.pixel_mean/std``          ignored: CLIP normalisation constants (checked)
======================================  ====================================================
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from maft.checkpoints import check_keys, identify_checkpoint, read_checkpoint, wrong_kind
from maft.errors import CheckpointError, ConfigError
from maft.models.clip.factory import config_name, openai_clip_config

log = logging.getLogger(__name__)

#: Official IP-CLIP settings: ``build_clip_model`` always runs with its default start layer 8 (the
#: config's START_LAYERS lands in another argument) and the canvas is resized to 480x480.
START_LAYER = 8
INPUT_SIZE = 480
CLIP_MEAN = (122.7709383, 116.7460125, 104.09373615)
CLIP_STD = (68.5005327, 66.6321579, 70.323163)
META_ARCHITECTURES = {"MAFT": "maft", "OpenVocabulary": "freeseg"}
IGNORED_PREFIXES = {
    "T.": "distillation teacher (a copy of the frozen CLIP image tower; training only)",
    "criterion.empty_weight": "loss buffer of the set criterion (training only)",
    "clip_adapter.pixel_mean": "CLIP normalisation constant (fixed by the CLIP preprocessing)",
    "clip_adapter.pixel_std": "CLIP normalisation constant (fixed by the CLIP preprocessing)",
}
_TEXT_ROOT = "clip_adapter.clip_model."
_VISUAL_ROOT = "clip_adapter.clip_model.visual."


@dataclass
class ReleaseSettings:
    """Everything needed to rebuild a released model as maft tasks."""

    kind: str  # "maft" (MAFT_Vit*.pt) or "freeseg" (freeseg_model.pt)
    generator: dict[str, Any]  # FreeSegGenerator kwargs, with "arch": "freeseg"
    clip_arch: dict[str, Any]  # open_clip architecture config read from the weights
    clip_name: str
    num_train_classes: int | None
    min_size_test: int = 640
    max_size_test: int = 2560
    lambda_: float = 0.0
    mask_threshold: float = 0.5
    source: str = "released defaults"
    notes: list[str] = field(default_factory=list)

    def clip_hparams(self) -> dict[str, Any]:
        """The ``clip`` hyperparameters of a MaftTask running this release."""
        return {
            "name": self.clip_name,
            "arch": self.clip_arch,
            "pretrained": None,
            "quick_gelu": True,
            "start_layer": START_LAYER,
            "input_size": INPUT_SIZE,
            "embed_dim": int(self.clip_arch["embed_dim"]),
        }


# ------------------------------------------------------------------------------------- reading
def read_release_file(path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict of a detectron2 release file (``{"model": state_dict}`` or a bare dict)."""
    obj = read_checkpoint(path, what="release checkpoint", mmap=True)
    hint = "a detectron2 checkpoint with 'backbone.*' and 'sem_seg_head.*' keys under 'model'"
    error = wrong_kind(path, obj, ["release"], hint)
    if error is not None:
        raise error
    sd = obj.get("model", obj)
    return {k: v for k, v in sd.items() if isinstance(v, torch.Tensor)}


def is_release_file(path: str | Path) -> bool:
    """True when ``path`` holds an official release checkpoint (not a Lightning checkpoint)."""
    try:
        return identify_checkpoint(path) == "release"
    except CheckpointError:  # missing or unreadable: not a release file
        return False


def read_official_config(path: str | Path) -> dict[str, Any]:
    """Load an official (resolved) detectron2 yaml as nested dicts."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"official config not found: {path}")
    try:
        cfg = yaml.safe_load(path.read_text("utf-8"))
    except yaml.YAMLError as err:
        raise ConfigError(f"cannot parse official config {path}: {err}") from None
    if not isinstance(cfg, dict) or "MODEL" not in cfg:
        raise ConfigError(f"{path} is not a detectron2 config (no MODEL section)")
    if "_BASE_" in cfg:
        raise ConfigError(
            f"{path} has a _BASE_ key: give the resolved config (the config.yaml detectron2 "
            "writes into its output folder), not a partial one"
        )
    return cfg


def _get(cfg: Mapping[str, Any], dotted: str, default: Any = None) -> Any:
    node: Any = cfg
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return default
        node = node[part]
    return node


def _require(cfg: Mapping[str, Any], dotted: str, allowed: Any, source: str) -> None:
    """ConfigError naming ``dotted`` when its value is present and not among ``allowed``."""
    value = _get(cfg, dotted)
    ok = value in allowed if isinstance(allowed, (list, tuple, set)) else value == allowed
    if value is not None and not ok:
        raise ConfigError(
            f"{source}: unsupported {dotted} = {value!r} (maft reproduces the released model: "
            f"{allowed!r})"
        )


def _check_supported(cfg: Mapping[str, Any], source: str) -> None:
    """Refuse settings the released architecture does not use, naming the key."""
    _require(cfg, "MODEL.META_ARCHITECTURE", list(META_ARCHITECTURES), source)
    _require(cfg, "MODEL.BACKBONE.NAME", "build_resnet_deeplab_backbone", source)
    _require(cfg, "MODEL.RESNETS.STEM_TYPE", "deeplab", source)
    _require(cfg, "MODEL.RESNETS.NORM", "FrozenBN", source)
    _require(cfg, "MODEL.RESNETS.DEPTH", [50, 101, 152], source)
    deform = _get(cfg, "MODEL.RESNETS.DEFORM_ON_PER_STAGE") or []
    if any(deform):
        raise ConfigError(f"{source}: unsupported MODEL.RESNETS.DEFORM_ON_PER_STAGE = {deform}")
    _require(cfg, "MODEL.SEM_SEG_HEAD.NAME", "MaskFormerInteractionHead", source)
    _require(cfg, "MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME", "MSDeformAttnPixelDecoder", source)
    _require(cfg, "MODEL.SEM_SEG_HEAD.NORM", "GN", source)
    _require(cfg, "MODEL.SEM_SEG_HEAD.COMMON_STRIDE", 4, source)
    _require(
        cfg,
        "MODEL.SEM_SEG_HEAD.DEFORMABLE_TRANSFORMER_ENCODER_IN_FEATURES",
        [["res3", "res4", "res5"]],
        source,
    )
    _require(cfg, "MODEL.SEM_SEG_HEAD.IN_FEATURES", [["res2", "res3", "res4", "res5"]], source)
    _require(
        cfg,
        "MODEL.MASK_FORMER.TRANSFORMER_DECODER_NAME",
        "MultiScaleMaskedTransformerDecoder",
        source,
    )
    _require(cfg, "MODEL.MASK_FORMER.TRANSFORMER_IN_FEATURE", "multi_scale_pixel_decoder", source)
    _require(cfg, "MODEL.MASK_FORMER.PRE_NORM", False, source)
    _require(cfg, "MODEL.MASK_FORMER.SIZE_DIVISIBILITY", [0, 32], source)
    _require(cfg, "INPUT.FORMAT", "RGB", source)
    _require(cfg, "TEST.AUG.ENABLED", False, source)
    _require(cfg, "TEST.SLIDING_WINDOW", False, source)
    _require(cfg, "TEST.DENSE_CRF", False, source)
    _require(cfg, "MODEL.MASK_FORMER.TEST.SEM_SEG_POSTPROCESSING_BEFORE_INFERENCE", False, source)
    _require(cfg, "MODEL.CLIP_ADAPTER.CLIP_ENSEMBLE", True, source)
    for key, expected in (
        ("MODEL.PIXEL_MEAN", None),
        ("MODEL.CLIP_PIXEL_MEAN", CLIP_MEAN),
        ("MODEL.CLIP_PIXEL_STD", CLIP_STD),
    ):
        value = _get(cfg, key)
        if expected is not None and value is not None and not _close(value, expected):
            raise ConfigError(f"{source}: unsupported {key} = {value} (released: {expected})")


def _close(a: Any, b: Any) -> bool:
    return len(a) == len(b) and all(abs(float(x) - float(y)) < 1e-4 for x, y in zip(a, b))


# ------------------------------------------------------------------------------------- settings
def _count(sd: Mapping[str, torch.Tensor], prefix: str) -> int:
    """Number of distinct ``prefix<i>.`` indices among the keys."""
    idx = {k[len(prefix) :].split(".")[0] for k in sd if k.startswith(prefix)}
    return len([i for i in idx if i.isdigit()])


def _shape(sd: Mapping[str, torch.Tensor], key: str, dim: int) -> int:
    if key not in sd:
        raise CheckpointError(f"release state dict has no key {key!r}")
    return int(sd[key].shape[dim])


def generator_from_state_dict(sd: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """FreeSegGenerator kwargs with every size read from the release tensors (heads: 8)."""
    depths = {6: 50, 23: 101, 36: 152}
    res4 = _count(sd, "backbone.res4.")
    if res4 not in depths:
        raise CheckpointError(f"release backbone has {res4} res4 blocks; expected one of {depths}")
    pd, pr = "sem_seg_head.pixel_decoder.", "sem_seg_head.predictor."
    heads, levels = 8, 3
    attn_w = _shape(sd, pd + "transformer.encoder.layers.0.self_attn.attention_weights.weight", 0)
    interaction = any(k.startswith("sem_seg_head.interaction.") for k in sd)
    conv_dim = _shape(sd, pd + "input_proj.0.0.weight", 0)
    hidden = _shape(sd, pr + "query_feat.weight", 1)
    kwargs: dict[str, Any] = {
        "arch": "freeseg",
        "depth": depths[res4],
        "stem_out_channels": _shape(sd, "backbone.stem.conv3.weight", 0),
        "res2_out_channels": _shape(sd, "backbone.res2.0.conv3.weight", 0),
        "width_per_group": _shape(sd, "backbone.res2.0.conv1.weight", 0),
        "conv_dim": conv_dim,
        "mask_dim": _shape(sd, pd + "mask_features.weight", 0),
        "enc_layers": _count(sd, pd + "transformer.encoder.layers."),
        "enc_nheads": heads,
        "enc_points": attn_w // (heads * levels),
        "enc_dim_feedforward": _shape(sd, pd + "transformer.encoder.layers.0.linear1.weight", 0),
        "interaction": interaction,
        "hidden_dim": hidden,
        "num_queries": _shape(sd, pr + "query_feat.weight", 0),
        "nheads": 8,
        "dim_feedforward": _shape(sd, pr + "transformer_ffn_layers.0.linear1.weight", 0),
        "dec_layers": _count(sd, pr + "transformer_ffn_layers."),
        "embed_hidden_dim": _shape(sd, pr + "class_embed.layers.0.weight", 0),
        "embed_layers": _count(sd, pr + "class_embed.layers."),
        "enforce_input_project": conv_dim == hidden
        and any(k.startswith(pr + "input_proj.") for k in sd),
        "clip_dim": _shape(sd, "clip_adapter.non_object_embedding", 1),
    }
    if interaction:
        kwargs["interaction_dim"] = _shape(sd, "sem_seg_head.interaction.attn.q_proj.weight", 0)
        kwargs["interaction_heads"] = 8
    return kwargs


def generator_from_config(cfg: Mapping[str, Any], source: str) -> dict[str, Any]:
    """FreeSegGenerator kwargs from an official resolved config (sizes, heads, dilations)."""
    _check_supported(cfg, source)
    r, h, m = "MODEL.RESNETS.", "MODEL.SEM_SEG_HEAD.", "MODEL.MASK_FORMER."
    mean = _get(cfg, "MODEL.PIXEL_MEAN", [123.675, 116.28, 103.53])
    std = _get(cfg, "MODEL.PIXEL_STD", [58.395, 57.12, 57.375])
    return {
        "arch": "freeseg",
        "depth": int(_get(cfg, r + "DEPTH", 101)),
        "stem_out_channels": int(_get(cfg, r + "STEM_OUT_CHANNELS", 128)),
        "res2_out_channels": int(_get(cfg, r + "RES2_OUT_CHANNELS", 256)),
        "width_per_group": int(_get(cfg, r + "WIDTH_PER_GROUP", 64)),
        "num_groups": int(_get(cfg, r + "NUM_GROUPS", 1)),
        "stride_in_1x1": bool(_get(cfg, r + "STRIDE_IN_1X1", False)),
        "res4_dilation": int(_get(cfg, r + "RES4_DILATION", 1)),
        "res5_dilation": int(_get(cfg, r + "RES5_DILATION", 1)),
        "res5_multi_grid": [int(x) for x in _get(cfg, r + "RES5_MULTI_GRID", [1, 2, 4])],
        "freeze_at": int(_get(cfg, "MODEL.BACKBONE.FREEZE_AT", 0)),
        "conv_dim": int(_get(cfg, h + "CONVS_DIM", 256)),
        "mask_dim": int(_get(cfg, h + "MASK_DIM", 256)),
        "enc_layers": int(_get(cfg, h + "TRANSFORMER_ENC_LAYERS", 6)),
        "enc_nheads": int(_get(cfg, m + "NHEADS", 8)),
        "enc_points": 4,
        "enc_dim_feedforward": 1024,
        "enc_dropout": float(_get(cfg, m + "DROPOUT", 0.1)),
        "interaction": True,
        "interaction_dim": int(_get(cfg, h + "EMBED_DIM", 2048)),
        "interaction_heads": int(_get(cfg, h + "NUM_HEADS", 8)),
        "hidden_dim": int(_get(cfg, m + "HIDDEN_DIM", 256)),
        "num_queries": int(_get(cfg, m + "NUM_OBJECT_QUERIES", 100)),
        "nheads": int(_get(cfg, m + "NHEADS", 8)),
        "dim_feedforward": int(_get(cfg, m + "DIM_FEEDFORWARD", 2048)),
        "dec_layers": int(_get(cfg, m + "DEC_LAYERS", 10)),
        "embed_hidden_dim": int(_get(cfg, h + "EMBED_HIDDEN_DIM", 1024)),
        "embed_layers": int(_get(cfg, h + "EMBED_LAYERS", 2)),
        "enforce_input_project": bool(_get(cfg, m + "ENFORCE_INPUT_PROJ", False)),
        "clip_dim": int(_get(cfg, h + "EMBEDDING_DIM", 512)),
        "pixel_mean": [float(x) for x in mean],
        "pixel_std": [float(x) for x in std],
    }


def clip_state_dict(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The full CLIP of the release (``clip_adapter.clip_model.*``) in OpenAI / open_clip keys."""
    out = {k[len(_TEXT_ROOT) :]: v for k, v in sd.items() if k.startswith(_TEXT_ROOT)}
    if "token_embedding.weight" not in out or "visual.conv1.weight" not in out:
        raise CheckpointError(
            "release state dict has no complete 'clip_adapter.clip_model.*' CLIP (text and visual)"
        )
    return out


def release_settings(
    sd: Mapping[str, torch.Tensor], config: str | Path | Mapping[str, Any] | None = None
) -> ReleaseSettings:
    """Settings of a release state dict: from ``config`` when given, else released defaults."""
    clip_arch = openai_clip_config(clip_state_dict(sd))
    kind = "maft" if any(k.startswith("IPCLIP.") for k in sd) else "freeseg"
    empty = sd.get("criterion.empty_weight")
    num_train = int(empty.numel()) - 1 if empty is not None else None
    notes: list[str] = []
    if config is None:
        gen = generator_from_state_dict(sd)
        return ReleaseSettings(kind, gen, clip_arch, config_name(clip_arch), num_train, notes=notes)
    source = str(config) if not isinstance(config, Mapping) else "<config>"
    cfg = read_official_config(config) if not isinstance(config, Mapping) else dict(config)
    gen = generator_from_config(cfg, source)
    meta = META_ARCHITECTURES[_get(cfg, "MODEL.META_ARCHITECTURE", "MAFT")]
    if meta != kind:
        raise ConfigError(
            f"{source}: MODEL.META_ARCHITECTURE says {meta!r} but the weights are a {kind!r} "
            f"release ({'with' if kind == 'maft' else 'without'} IPCLIP.* keys)"
        )
    start = _get(cfg, "MODEL.START_LAYERS")
    if start is not None and int(start) != START_LAYER:
        notes.append(
            f"MODEL.START_LAYERS={start} ignored: the official IP-CLIP always starts at block "
            f"{START_LAYER} (the value reaches another argument of build_clip_model)"
        )
    lam = _get(cfg, "MODEL.CLIP_ADAPTER.CLIP_ENSEMBLE_WEIGHT", 0.0)
    return ReleaseSettings(
        kind,
        gen,
        clip_arch,
        config_name(clip_arch),
        num_train,
        min_size_test=int(_get(cfg, "INPUT.MIN_SIZE_TEST", 640)),
        max_size_test=int(_get(cfg, "INPUT.MAX_SIZE_TEST", 2560)),
        lambda_=float(lam),
        mask_threshold=float(_get(cfg, "MODEL.CLIP_ADAPTER.MASK_THR", 0.5)),
        source=source,
        notes=notes,
    )


# ------------------------------------------------------------------------------------- mapping
@dataclass
class ReleaseMapping:
    """A release state dict renamed to MaftTask keys, with what was ignored and why."""

    state_dict: dict[str, torch.Tensor]
    ignored: dict[str, str]  # official key -> reason


def map_release_state_dict(
    sd: Mapping[str, torch.Tensor], kind: str, source: str = "<release>"
) -> ReleaseMapping:
    """Rename every official key to its MaftTask key (see the module table); nothing is dropped
    silently: a key outside the known groups is a ``CheckpointError``."""
    out: dict[str, torch.Tensor] = {}
    ignored: dict[str, str] = {}
    unknown: list[str] = []
    for key, value in sd.items():
        reason = next((r for p, r in IGNORED_PREFIXES.items() if key.startswith(p)), None)
        if reason is not None:
            ignored[key] = reason
        elif key.startswith(("backbone.", "sem_seg_head.")):
            out["generator." + key] = value
        elif key == "clip_adapter.non_object_embedding":
            out["generator.void_embedding"] = value
        elif key.startswith(_VISUAL_ROOT):
            rest = key[len(_VISUAL_ROOT) :]
            out["teacher_visual." + rest] = value
            if kind == "freeseg":
                out["clip_model.visual." + rest] = value
        elif key.startswith(_TEXT_ROOT):
            out["clip_model." + key[len(_TEXT_ROOT) :]] = value
        elif key.startswith("IPCLIP.") and kind == "maft":
            out["clip_model.visual." + key[len("IPCLIP.") :]] = value
        else:
            unknown.append(key)
    if unknown:
        raise CheckpointError(
            f"{source}: unexpected keys outside the released model's groups: {unknown[:8]}"
            + (f" (+{len(unknown) - 8} more)" if len(unknown) > 8 else "")
        )
    _check_copies(sd, source)
    return ReleaseMapping(out, ignored)


def _check_copies(sd: Mapping[str, torch.Tensor], source: str) -> None:
    """Warn when the teacher ``T.*`` differs from the frozen tower it is meant to copy."""
    teacher = {k[2:]: v for k, v in sd.items() if k.startswith("T.")}
    differ = [
        k
        for k, v in teacher.items()
        if _VISUAL_ROOT + k in sd
        and (v.shape != sd[_VISUAL_ROOT + k].shape or not torch.equal(v, sd[_VISUAL_ROOT + k]))
    ]
    if differ:
        log.warning(
            "%s: the distillation teacher T.* differs from clip_adapter.clip_model.visual.* in %d "
            "tensors (first: %s); the frozen rows use clip_adapter.clip_model.visual",
            source,
            len(differ),
            differ[0],
        )
    for key, expected in (
        ("clip_adapter.pixel_mean", CLIP_MEAN),
        ("clip_adapter.pixel_std", CLIP_STD),
    ):
        if key in sd and not _close(sd[key].flatten().tolist(), expected):
            raise CheckpointError(f"{source}: {key} = {sd[key].flatten().tolist()} != {expected}")


#: Missing, unexpected and mis-shaped keys in one CheckpointError naming the file.
check_task_keys = check_keys


__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "IGNORED_PREFIXES",
    "INPUT_SIZE",
    "START_LAYER",
    "ReleaseMapping",
    "ReleaseSettings",
    "check_task_keys",
    "clip_state_dict",
    "generator_from_config",
    "generator_from_state_dict",
    "is_release_file",
    "map_release_state_dict",
    "read_official_config",
    "read_release_file",
    "release_settings",
]
