"""DeepLab-stem ResNet of the released FreeSeg/MAFT proposal generator (see docs/release.md).

A pure-PyTorch rewrite of detectron2's ``build_resnet_deeplab_backbone`` with FrozenBN: the
"R-101"/"R-103" network whose ``state_dict()`` keys equal the official ``backbone.*`` keys with
the prefix removed (``stem.conv1.weight``, ``res2.0.shortcut.norm.running_var``, ...), so the
released checkpoint and detectron2's ``R-103.pkl`` load by name.

Layout: a stem of three 3x3 convs (stride 2, 1, 1; each FrozenBN + ReLU) and a 3x3/2 max-pool,
then four stages of bottleneck blocks ``res2``..``res5`` returning maps at 1/4, 1/8, 1/16 and
1/32 of the input (less when res4/res5 are dilated).
"""

from __future__ import annotations

import pickle
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from maft.errors import CheckpointError, ConfigError
from maft.models.proposals.freeseg.layers import ConvNorm, FrozenBatchNorm2d

BLOCKS_PER_STAGE: dict[int, tuple[int, int, int, int]] = {
    50: (3, 4, 6, 3),
    101: (3, 4, 23, 3),
    152: (3, 8, 36, 3),
}
STAGES = ("res2", "res3", "res4", "res5")
_RES4_DILATIONS = (1, 2)
_RES5_DILATIONS = (1, 2, 4)
# Entries of a detectron2 model-zoo pickle that carry metadata, not weights.
_METADATA_KEYS = ("__author__", "matching_heuristics")
# Keys of an ImageNet classifier head, present in some pretrained files and never used here.
_CLASSIFIER_PREFIXES = ("fc.", "linear.")


def _conv(
    in_ch: int,
    out_ch: int,
    kernel: int,
    *,
    stride: int = 1,
    dilation: int = 1,
    groups: int = 1,
    relu: bool,
) -> ConvNorm:
    """Bias-free conv + FrozenBN (+ ReLU), padded to keep the size at stride 1, MSRA-initialised."""
    padding = dilation * (kernel - 1) // 2
    conv = ConvNorm(
        in_ch,
        out_ch,
        kernel_size=kernel,
        stride=stride,
        padding=padding,
        dilation=dilation,
        groups=groups,
        bias=False,
        norm=FrozenBatchNorm2d(out_ch),
        activation=relu,
    )
    # Caffe2 MSRAFill, as detectron2 initialises every ResNet conv.
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    return conv


class DeepLabStem(nn.Module):
    """Three 3x3 conv-FrozenBN-ReLU (3 -> C/2 stride 2, C/2 -> C/2, C/2 -> C), max-pool 3x3/2."""

    def __init__(self, in_channels: int = 3, out_channels: int = 128) -> None:
        super().__init__()
        half = out_channels // 2
        self.conv1 = _conv(in_channels, half, 3, stride=2, relu=True)
        self.conv2 = _conv(half, half, 3, relu=True)
        self.conv3 = _conv(half, out_channels, 3, relu=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] -> [B, C, H/4, W/4] (rounded up at each halving)."""
        x = self.conv3(self.conv2(self.conv1(x)))
        return F.max_pool2d(x, kernel_size=3, stride=2, padding=1)


class BottleneckBlock(nn.Module):
    """1x1 -> 3x3 (grouped, dilated) -> 1x1 residual block with FrozenBN; optional 1x1 shortcut."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        bottleneck_channels: int,
        *,
        stride: int = 1,
        num_groups: int = 1,
        stride_in_1x1: bool = False,
        dilation: int = 1,
    ) -> None:
        super().__init__()
        # Registered first so the state-dict order matches detectron2's (shortcut, conv1, ...).
        self.shortcut: ConvNorm | None = None
        if in_channels != out_channels:
            self.shortcut = _conv(in_channels, out_channels, 1, stride=stride, relu=False)
        stride_1x1, stride_3x3 = (stride, 1) if stride_in_1x1 else (1, stride)
        self.conv1 = _conv(in_channels, bottleneck_channels, 1, stride=stride_1x1, relu=True)
        self.conv2 = _conv(
            bottleneck_channels,
            bottleneck_channels,
            3,
            stride=stride_3x3,
            dilation=dilation,
            groups=num_groups,
            relu=True,
        )
        self.conv3 = _conv(bottleneck_channels, out_channels, 1, relu=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, C_in, H, W] -> [B, C_out, H/s, W/s]: relu(branch(x) + shortcut(x))."""
        out = self.conv3(self.conv2(self.conv1(x)))
        identity = x if self.shortcut is None else self.shortcut(x)
        return F.relu(out + identity)


def _check_config(
    depth: int,
    stem_out_channels: int,
    res2_out_channels: int,
    width_per_group: int,
    num_groups: int,
    res4_dilation: int,
    res5_dilation: int,
    res5_multi_grid: Sequence[int],
    freeze_at: int,
) -> None:
    """ConfigError for any setting detectron2's DeepLab ResNet builder would reject."""
    if depth not in BLOCKS_PER_STAGE:
        raise ConfigError(
            f"DeepLabResNet: depth {depth!r} is not supported; allowed: {sorted(BLOCKS_PER_STAGE)}"
        )
    if res4_dilation not in _RES4_DILATIONS:
        raise ConfigError(
            f"DeepLabResNet: res4_dilation {res4_dilation!r} is not supported; "
            f"allowed: {list(_RES4_DILATIONS)}"
        )
    if res5_dilation not in _RES5_DILATIONS:
        raise ConfigError(
            f"DeepLabResNet: res5_dilation {res5_dilation!r} is not supported; "
            f"allowed: {list(_RES5_DILATIONS)}"
        )
    if res4_dilation == 2 and res5_dilation != 4:
        raise ConfigError(
            f"DeepLabResNet: res4_dilation 2 requires res5_dilation 4 (got {res5_dilation}); "
            "a dilated res4 always dilates res5 further"
        )
    n_res5 = BLOCKS_PER_STAGE[depth][-1]
    grid = list(res5_multi_grid)
    if len(grid) != n_res5 or not all(isinstance(g, int) and g >= 1 for g in grid):
        raise ConfigError(
            f"DeepLabResNet: res5_multi_grid {grid!r} must be {n_res5} positive integers "
            f"(one per res5 block), e.g. [1, 2, 4]"
        )
    for name, value, minimum in (
        ("stem_out_channels", stem_out_channels, 2),
        ("res2_out_channels", res2_out_channels, 1),
        ("width_per_group", width_per_group, 1),
        ("num_groups", num_groups, 1),
    ):
        if not isinstance(value, int) or value < minimum:
            raise ConfigError(
                f"DeepLabResNet: {name} must be an integer >= {minimum}, got {value!r}"
            )
    if not isinstance(freeze_at, int) or not 0 <= freeze_at <= 5:
        raise ConfigError(
            f"DeepLabResNet: freeze_at {freeze_at!r} is not supported; allowed: 0 (nothing), "
            "1 (stem), 2..5 (stem and res2..resN)"
        )


class DeepLabResNet(nn.Module):
    """detectron2's DeepLab-stem ResNet with FrozenBN ("R-101"/"R-103"): image -> res2..res5 maps.

    ``out_channels`` gives each output's channel count, ``out_strides`` its stride w.r.t. the
    input. ``freeze_at`` follows detectron2: 0 freezes nothing (the norms are frozen anyway), 1 the
    stem, k >= 2 the stem and res2..res{k}.
    """

    def __init__(
        self,
        depth: int = 101,
        *,
        stem_out_channels: int = 128,
        res2_out_channels: int = 256,
        width_per_group: int = 64,
        num_groups: int = 1,
        stride_in_1x1: bool = False,
        res4_dilation: int = 1,
        res5_dilation: int = 1,
        res5_multi_grid: Sequence[int] = (1, 2, 4),
        freeze_at: int = 0,
    ) -> None:
        super().__init__()
        _check_config(
            depth,
            stem_out_channels,
            res2_out_channels,
            width_per_group,
            num_groups,
            res4_dilation,
            res5_dilation,
            res5_multi_grid,
            freeze_at,
        )
        self.depth = depth
        self.stem = DeepLabStem(3, stem_out_channels)

        self.out_channels: dict[str, int] = {}
        self.out_strides: dict[str, int] = {}
        in_ch, out_ch = stem_out_channels, res2_out_channels
        bottleneck = num_groups * width_per_group
        stride_so_far = 4
        for idx, name in enumerate(STAGES):
            dilation = {"res4": res4_dilation, "res5": res5_dilation}.get(name, 1)
            # detectron2 DeepLab rule: res2 and any dilated stage keep the resolution.
            first_stride = 1 if idx == 0 or dilation > 1 else 2
            n_blocks = BLOCKS_PER_STAGE[depth][idx]
            if name == "res5":
                dilations = [dilation * g for g in res5_multi_grid]
            else:
                dilations = [dilation] * n_blocks
            blocks = []
            for b in range(n_blocks):
                blocks.append(
                    BottleneckBlock(
                        in_ch,
                        out_ch,
                        bottleneck,
                        stride=first_stride if b == 0 else 1,
                        num_groups=num_groups,
                        stride_in_1x1=stride_in_1x1,
                        dilation=dilations[b],
                    )
                )
                in_ch = out_ch
            self.add_module(name, nn.Sequential(*blocks))
            stride_so_far *= first_stride
            self.out_channels[name] = out_ch
            self.out_strides[name] = stride_so_far
            out_ch *= 2
            bottleneck *= 2

        self.freeze_at = freeze_at
        self.freeze(freeze_at)

    def freeze(self, freeze_at: int) -> None:
        """Stop gradients of the stem (freeze_at >= 1) and of res2..res{freeze_at} (detectron2)."""
        if freeze_at >= 1:
            self.stem.requires_grad_(False)
        for idx, name in enumerate(STAGES, start=2):
            if freeze_at >= idx:
                getattr(self, name).requires_grad_(False)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Normalised [B, 3, H, W] -> {"res2": [B, C2, H/4, W/4], ..., "res5": [B, C5, H/32, W/32]}.

        Sizes round up at each halving; a dilated res4/res5 keeps the previous stage's size.
        """
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"DeepLabResNet expects [B, 3, H, W], got {tuple(x.shape)}")
        x = self.stem(x)
        outputs: dict[str, torch.Tensor] = {}
        for name in STAGES:
            x = getattr(self, name)(x)
            outputs[name] = x
        return outputs


def _read_weights(path: Path) -> Mapping[str, object]:
    """The name -> array mapping of a detectron2 pickle or a torch file (unwrapped from 'model')."""
    if not path.is_file():
        raise CheckpointError(f"backbone weights not found: {path}")
    try:
        if path.suffix in (".pkl", ".pickle"):
            with path.open("rb") as f:
                data = pickle.load(f, encoding="latin1")  # detectron2 writes py2-era pickles
        else:
            data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # any unreadable file is a checkpoint error here
        raise CheckpointError(f"{path}: cannot read backbone weights ({err})") from err
    for wrapper in ("model", "state_dict"):
        if isinstance(data, Mapping) and isinstance(data.get(wrapper), Mapping):
            data = data[wrapper]
            break
    if not isinstance(data, Mapping):
        raise CheckpointError(f"{path}: expected a dict of weights, got {type(data).__name__}")
    return data


def load_backbone_weights(backbone: DeepLabResNet, path: str | Path) -> list[str]:
    """Load detectron2-named weights (e.g. ``R-103.pkl``) into ``backbone``; return ignored keys.

    Accepts a pickle (``.pkl``: a dict, possibly nested under ``"model"``, of numpy arrays or
    tensors, read with ``encoding="latin1"`` as detectron2 writes them) or a torch file (``.pth``,
    ``.pt``; possibly nested under ``"model"`` or ``"state_dict"``). Pickles can run arbitrary code
    when read: only give files from a trusted source. Names must already be detectron2's (no
    Caffe2-name heuristics); an optional ``backbone.`` prefix is stripped. Every backbone key must
    be present with its exact shape, else ``CheckpointError`` names the file and the first bad
    keys. Keys that are not part of the backbone (an ImageNet ``fc.*``/``linear.*`` head, other
    model parts) are skipped and returned, sorted; metadata entries (``__author__``,
    ``matching_heuristics``) are dropped silently.
    """
    path = Path(path)
    raw = _read_weights(path)

    weights: dict[str, object] = {}
    for key, value in raw.items():
        if key in _METADATA_KEYS:
            continue
        name = key[len("backbone.") :] if key.startswith("backbone.") else key
        if name in weights:
            raise CheckpointError(f"{path}: key {name!r} appears with and without 'backbone.'")
        weights[name] = value

    expected = backbone.state_dict()
    ignored = sorted(k for k in weights if k not in expected)
    missing = [k for k in expected if k not in weights]
    if missing:
        classifier = [k for k in ignored if k.startswith(_CLASSIFIER_PREFIXES)]
        hint = f" (found classifier keys {classifier[:3]})" if classifier else ""
        raise CheckpointError(
            f"{path}: {len(missing)} backbone key(s) missing, first {missing[:5]}; "
            f"unexpected keys {ignored[:5]}{hint}"
        )

    tensors: dict[str, torch.Tensor] = {}
    mismatched: list[str] = []
    for name, target in expected.items():
        value = weights[name]
        if isinstance(value, np.ndarray):
            value = torch.from_numpy(np.ascontiguousarray(value))
        if not isinstance(value, torch.Tensor):
            mismatched.append(f"{name}: {type(value).__name__} is not an array")
            continue
        if tuple(value.shape) != tuple(target.shape):
            mismatched.append(f"{name}: {list(value.shape)} != {list(target.shape)}")
            continue
        tensors[name] = value.to(dtype=target.dtype)
    if mismatched:
        raise CheckpointError(
            f"{path}: {len(mismatched)} backbone key(s) do not match, first {mismatched[:5]}"
        )
    backbone.load_state_dict(tensors, strict=True)
    return ignored


__all__ = ["BottleneckBlock", "DeepLabResNet", "DeepLabStem", "load_backbone_weights"]
