"""The released generator's DeepLab-stem ResNet: golden parity, official key names, loading."""

from __future__ import annotations

import copy
import pickle
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from release_helpers import assert_close_rel, sub_state_dict

from maft.errors import CheckpointError, ConfigError
from maft.models.proposals.freeseg.backbone import DeepLabResNet, load_backbone_weights
from maft.models.proposals.freeseg.layers import FrozenBatchNorm2d

# maft_dev's reduced sizes (config.yaml: RESNETS.DEPTH 50, STEM_OUT 16, WIDTH 8, RES2_OUT 32).
DEV = {"stem_out_channels": 16, "res2_out_channels": 32, "width_per_group": 8}


def _dev_model(**kwargs) -> DeepLabResNet:
    """A maft_dev-sized backbone (small enough to build many times)."""
    return DeepLabResNet(50, **{**DEV, **kwargs})


def _randomise_norms(model: torch.nn.Module, seed: int = 0) -> None:
    """Non-identity FrozenBN statistics, so a test that loads or compares them can fail."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, FrozenBatchNorm2d):
            n = m.num_features
            m.weight.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.copy_(torch.randn(n, generator=g) * 0.1)
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)


def test_parity_with_official_backbone(maft_dev: dict, golden_generator) -> None:
    model = golden_generator.backbone  # sizes from the golden config, official weights (strict)
    outputs = maft_dev["outputs"]
    with torch.no_grad():
        feats = model(outputs["images_normalized"])  # [1, 3, 96, 128]
    assert list(feats) == ["res2", "res3", "res4", "res5"]
    for name, value in feats.items():
        assert_close_rel(value, outputs[f"backbone_{name}"], 1e-4, f"backbone_{name}")


def test_released_keys_and_shapes(release_dir: Path) -> None:
    expected: dict[str, list[int]] = {}
    for line in (release_dir / "fullsize_keys_freeseg.txt").read_text().splitlines():
        if not line.startswith("backbone."):
            continue
        name, shape, _dtype = line.split("\t")
        expected[name[len("backbone.") :]] = [int(s) for s in shape.strip("[]").split(",") if s]
    assert len(expected) > 500  # the file parsed: R-101 has 530 backbone entries

    model = DeepLabResNet(101)
    got = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert sorted(set(got) - set(expected)) == []
    assert sorted(set(expected) - set(got)) == []
    assert got == expected
    assert model.out_channels == {"res2": 256, "res3": 512, "res4": 1024, "res5": 2048}
    assert model.out_strides == {"res2": 4, "res3": 8, "res4": 16, "res5": 32}


def test_frozen_bn_formula_float64() -> None:
    torch.manual_seed(0)
    bn = FrozenBatchNorm2d(5)
    _randomise_norms(bn)
    x = torch.randn(2, 5, 3, 4)
    w, b, mu, var = (bn.weight, bn.bias, bn.running_mean, bn.running_var)
    shape = (1, -1, 1, 1)
    ref = (x.double() - mu.double().view(shape)) / torch.sqrt(var.double().view(shape) + 1e-5)
    ref = ref * w.double().view(shape) + b.double().view(shape)
    torch.testing.assert_close(bn(x).double(), ref, rtol=1e-6, atol=1e-6)
    # A fresh FrozenBN is the identity (the from-scratch init).
    torch.testing.assert_close(FrozenBatchNorm2d(5)(x), x, rtol=0, atol=1e-6)


def test_strides_dilations_and_one_block_by_hand() -> None:
    torch.manual_seed(0)
    model = _dev_model().eval()
    _randomise_norms(model)
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        feats = model(x)
    sizes = {k: tuple(v.shape) for k, v in feats.items()}
    assert sizes == {
        "res2": (1, 32, 16, 24),
        "res3": (1, 64, 8, 12),
        "res4": (1, 128, 4, 6),
        "res5": (1, 256, 2, 3),
    }

    stem = model.stem
    assert [c.stride for c in (stem.conv1, stem.conv2, stem.conv3)] == [(2, 2), (1, 1), (1, 1)]
    assert [c.out_channels for c in (stem.conv1, stem.conv2, stem.conv3)] == [8, 8, 16]
    # res5: stride 2 in the first block's 3x3 (and shortcut), dilation = padding = 1, 2, 4.
    res5 = model.res5
    assert [b.conv2.dilation for b in res5] == [(1, 1), (2, 2), (4, 4)]
    assert [b.conv2.padding for b in res5] == [(1, 1), (2, 2), (4, 4)]
    assert [b.conv2.stride for b in res5] == [(2, 2), (1, 1), (1, 1)]
    assert res5[0].conv1.stride == (1, 1) and res5[0].shortcut.stride == (2, 2)
    assert model.res2[0].shortcut is not None and model.res2[0].conv2.stride == (1, 1)
    assert all(b.shortcut is None for stage in (model.res3, model.res5) for b in stage[1:])

    # res5.1 (dilation 2, identity shortcut) recomputed from its weights in float64.
    block = res5[1]

    def conv_bn(t: torch.Tensor, conv: torch.nn.Conv2d) -> torch.Tensor:
        y = F.conv2d(t, conv.weight.double(), None, conv.stride, conv.padding, conv.dilation)
        n = conv.norm
        scale = n.weight.double() / torch.sqrt(n.running_var.double() + 1e-5)
        shift = n.bias.double() - n.running_mean.double() * scale
        return y * scale.view(1, -1, 1, 1) + shift.view(1, -1, 1, 1)

    inp = torch.randn(1, 256, 5, 7, dtype=torch.float64)
    with torch.no_grad():
        h = conv_bn(inp, block.conv1).relu()
        h = conv_bn(h, block.conv2).relu()
        ref = (conv_bn(h, block.conv3) + inp).relu()
        out = block(inp.float())
    assert_close_rel(out, ref, 1e-5, "res5.1")

    # Dilated res4/res5 keep stride 16 / 16; stride_in_1x1 moves the stride to conv1.
    dil = _dev_model(res4_dilation=2, res5_dilation=4, stride_in_1x1=True).eval()
    with torch.no_grad():
        feats = dil(x)
    assert tuple(feats["res4"].shape[-2:]) == (8, 12) and tuple(feats["res5"].shape[-2:]) == (8, 12)
    assert dil.out_strides == {"res2": 4, "res3": 8, "res4": 8, "res5": 8}
    assert [b.conv2.dilation for b in dil.res5] == [(4, 4), (8, 8), (16, 16)]
    assert all(b.conv2.dilation == (2, 2) for b in dil.res4)
    assert dil.res3[0].conv1.stride == (2, 2) and dil.res3[0].conv2.stride == (1, 1)


def _small_weights(seed: int = 1) -> dict[str, torch.Tensor]:
    """A dev-sized state dict with random convs and non-trivial norms."""
    torch.manual_seed(seed)
    model = _dev_model()
    _randomise_norms(model, seed)
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_load_pickle_of_numpy_arrays(tmp_path: Path) -> None:
    sd = _small_weights()
    arrays = {k: v.numpy() for k, v in sd.items()}
    arrays["fc.weight"] = torch.randn(10, 256).numpy()
    arrays["fc.bias"] = torch.randn(10).numpy()
    path = tmp_path / "R-tiny.pkl"
    with path.open("wb") as f:
        pickle.dump({"model": arrays, "__author__": "test", "matching_heuristics": False}, f, 2)

    model = _dev_model()
    ignored = load_backbone_weights(model, path)
    assert ignored == ["fc.bias", "fc.weight"]
    loaded = model.state_dict()
    assert set(loaded) == set(sd)
    for k, v in sd.items():
        assert torch.equal(loaded[k], v), k

    # A missing key and a wrong shape are named in the error, with the file.
    del arrays["res3.0.conv2.norm.running_var"]
    with path.open("wb") as f:
        pickle.dump({"model": arrays}, f, 2)
    with pytest.raises(CheckpointError, match=r"res3\.0\.conv2\.norm\.running_var") as err:
        load_backbone_weights(_dev_model(), path)
    assert "R-tiny.pkl" in str(err.value)

    arrays["res3.0.conv2.norm.running_var"] = sd["res3.0.conv2.norm.running_var"].numpy()
    arrays["res4.1.conv1.weight"] = arrays["res4.1.conv1.weight"][:, :-1]
    with path.open("wb") as f:
        pickle.dump(arrays, f, 2)  # flat, not nested under "model"
    with pytest.raises(CheckpointError, match=r"res4\.1\.conv1\.weight"):
        load_backbone_weights(_dev_model(), path)


def test_load_torch_file_with_prefix(tmp_path: Path, maft_dev: dict, golden_generator) -> None:
    sd = _small_weights(seed=2)
    path = tmp_path / "tiny.pth"
    torch.save({"model": {f"backbone.{k}": v for k, v in sd.items()}}, path)
    model = _dev_model()
    assert load_backbone_weights(model, path) == []
    for k, v in model.state_dict().items():
        assert torch.equal(v, sd[k]), k

    # The released-format checkpoint itself: backbone loaded, every other part reported.
    model = copy.deepcopy(golden_generator.backbone)
    ignored = load_backbone_weights(model, maft_dev["weights"])
    official = sub_state_dict(maft_dev["state_dict"], "backbone.")
    assert len(ignored) == len(maft_dev["state_dict"]) - len(official)
    assert not any(k.startswith(("stem.", "res2.", "res5.")) for k in ignored)
    for k, v in model.state_dict().items():
        assert torch.equal(v, official[k]), k

    with pytest.raises(CheckpointError, match="not found"):
        load_backbone_weights(model, tmp_path / "absent.pkl")


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"depth": 34}, r"depth 34 .*\[50, 101, 152\]"),
        ({"depth": 101, "res4_dilation": 4}, r"res4_dilation 4 .*\[1, 2\]"),
        ({"depth": 101, "res5_dilation": 3}, r"res5_dilation 3 .*\[1, 2, 4\]"),
        ({"depth": 101, "res4_dilation": 2, "res5_dilation": 2}, r"res5_dilation 4"),
        ({"depth": 101, "res5_multi_grid": (1, 2)}, r"res5_multi_grid \[1, 2\]"),
        ({"depth": 101, "freeze_at": 6}, r"freeze_at 6"),
    ],
)
def test_bad_config_raises(kwargs: dict, pattern: str) -> None:
    with pytest.raises(ConfigError, match=pattern):
        DeepLabResNet(**kwargs)


def test_freeze_at() -> None:
    def trainable(model: DeepLabResNet) -> dict[str, bool]:
        names = ("stem", "res2", "res3", "res4", "res5")
        return {n: all(p.requires_grad for p in getattr(model, n).parameters()) for n in names}

    assert all(trainable(_dev_model()).values())
    assert trainable(_dev_model(freeze_at=1)) == {
        "stem": False,
        "res2": True,
        "res3": True,
        "res4": True,
        "res5": True,
    }
    frozen3 = _dev_model(freeze_at=3)
    assert trainable(frozen3) == {
        "stem": False,
        "res2": False,
        "res3": False,
        "res4": True,
        "res5": True,
    }
    assert not any(p.requires_grad for p in frozen3.res3.parameters())
