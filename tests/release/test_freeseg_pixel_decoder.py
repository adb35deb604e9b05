"""The released generator's deformable-attention pixel decoder against the official golden run.

Parity and key tests read shared/reference/golden/release (skipped locally when absent); the
attention-core and train/eval tests need no golden data.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from release_helpers import assert_close_rel

from maft.models.proposals.freeseg.ms_deform_attn import MSDeformAttn, ms_deform_attn_core
from maft.models.proposals.freeseg.pixel_decoder import MSDeformAttnPixelDecoder

PREFIX = "sem_seg_head.pixel_decoder."
DEV_CHANNELS = {"res2": 32, "res3": 64, "res4": 128, "res5": 256}
RELEASED_CHANNELS = {"res2": 256, "res3": 512, "res4": 1024, "res5": 2048}


def _dev_decoder() -> MSDeformAttnPixelDecoder:
    """maft_dev's sizes: CONVS_DIM 32, MASK_DIM 32, 2 encoder layers, 8 heads, 4 points."""
    return MSDeformAttnPixelDecoder(DEV_CHANNELS, conv_dim=32, mask_dim=32, enc_layers=2)


def test_pixel_decoder_matches_golden(maft_dev: dict, golden_generator) -> None:
    decoder = golden_generator.sem_seg_head.pixel_decoder  # sizes from the golden config
    out = maft_dev["outputs"]
    features = {f"res{i}": out[f"backbone_res{i}"] for i in range(2, 6)}
    with torch.no_grad():
        mask_features, multi_scale = decoder(features)
    assert len(multi_scale) == 3
    assert_close_rel(mask_features, out["pd_mask_features"], 1e-4, "pd_mask_features")
    assert_close_rel(
        multi_scale[0], out["pd_transformer_encoder_features"], 1e-4, "encoder features"
    )
    for i in range(3):
        name = f"pd_multi_scale_features_{i}"
        assert_close_rel(multi_scale[i], out[name], 1e-4, name)


def test_released_size_keys_and_shapes(release_dir: Path) -> None:
    expected = {}
    for line in (release_dir / "fullsize_keys_freeseg.txt").read_text().splitlines():
        name, shape, dtype = line.split("\t")
        if name.startswith(PREFIX):
            expected[name[len(PREFIX) :]] = (shape, dtype)
    assert expected, "no pixel-decoder keys in the released key list"
    decoder = MSDeformAttnPixelDecoder(RELEASED_CHANNELS)
    actual = {
        k: (str(list(v.shape)).replace(" ", ""), str(v.dtype).removeprefix("torch."))
        for k, v in decoder.state_dict().items()
    }
    expected = {k: (s.replace(" ", ""), d) for k, (s, d) in expected.items()}
    assert sorted(actual) == sorted(expected)
    assert actual == expected


def _bilinear_zero_pad(img: torch.Tensor, x: float, y: float) -> torch.Tensor:
    """img [C, H, W] read at normalised (x, y), pixel centres at (j + 0.5) / W, zeros outside."""
    _, h, w = img.shape
    px, py = x * w - 0.5, y * h - 0.5
    x0, y0 = math.floor(px), math.floor(py)
    out = torch.zeros(img.shape[0], dtype=img.dtype)
    for yy in (y0, y0 + 1):
        for xx in (x0, x0 + 1):
            if 0 <= yy < h and 0 <= xx < w:
                wt = (1 - abs(px - xx)) * (1 - abs(py - yy))
                out += wt * img[:, yy, xx]
    return out


def _slow_core(value, shapes, locations, weights) -> torch.Tensor:
    """Per-query, per-head, per-level, per-point loop in float64: [B, Lq, heads * d_head]."""
    b, _, heads, d_head = value.shape
    _, lq, _, levels, points, _ = locations.shape
    value, locations, weights = value.double(), locations.double(), weights.double()
    starts = [0]
    for h, w in shapes:
        starts.append(starts[-1] + h * w)
    out = torch.zeros(b, lq, heads, d_head, dtype=torch.float64)
    for n in range(b):
        for q in range(lq):
            for m in range(heads):
                for lvl, (h, w) in enumerate(shapes):
                    # token k of the level is pixel (k // W, k % W)
                    img = value[n, starts[lvl] : starts[lvl + 1], m].T.reshape(d_head, h, w)
                    for p in range(points):
                        x, y = locations[n, q, m, lvl, p].tolist()
                        sample = _bilinear_zero_pad(img, x, y)
                        out[n, q, m] += weights[n, q, m, lvl, p] * sample
    return out.reshape(b, lq, heads * d_head)


def test_ms_deform_attn_core_matches_slow_reference() -> None:
    g = torch.Generator().manual_seed(0)
    shapes = [(3, 4), (2, 3)]
    b, lq, heads, d_head, levels, points = 2, 5, 2, 3, 2, 2
    value = torch.randn(b, sum(h * w for h, w in shapes), heads, d_head, generator=g)
    # random points in and around the maps, then hand-picked ones: an exact pixel centre, the map
    # border (half a pixel beyond the outer centres: the edge pixel at half weight), a corner,
    # one pixel beyond a centre (the end of the support: zero) and far outside (zero)
    locations = torch.rand(b, lq, heads, levels, points, 2, generator=g) * 1.6 - 0.3
    h0, w0 = shapes[0]
    h1, w1 = shapes[1]
    locations[0, 0, 0, 0, 0] = torch.tensor([0.5 / w0, 0.5 / h0])  # centre of pixel (0, 0)
    locations[0, 0, 0, 0, 1] = torch.tensor([0.0, 1.0])  # bottom-left corner of the map
    locations[0, 1, 1, 0, 0] = torch.tensor([1.0, 0.5])  # right border
    locations[0, 1, 1, 0, 1] = torch.tensor([0.0, 0.5 / h0])  # left border at row 0
    locations[1, 2, 0, 1, 0] = torch.tensor([-0.7, 0.3])  # far outside
    locations[1, 2, 0, 1, 1] = torch.tensor([0.4, 1.9])  # far outside
    locations[1, 3, 1, 1, 0] = torch.tensor([-0.5 / w1, 0.5 / h1])  # one pixel left of (0, 0)
    locations[1, 3, 1, 1, 1] = torch.tensor([1.0 + 0.25 / w1, 0.5])  # a quarter pixel outside
    weights = torch.rand(b, lq, heads, levels * points, generator=g).softmax(-1)
    weights = weights.view(b, lq, heads, levels, points)

    expected = _slow_core(value, shapes, locations, weights)
    actual = ms_deform_attn_core(value, torch.tensor(shapes), locations, weights)
    assert actual.shape == (b, lq, heads * d_head)
    assert actual.dtype == torch.float32
    assert torch.allclose(actual.double(), expected, atol=1e-5, rtol=0)

    # the reference really sees zero padding: a query whose points are all outside reads zero
    outside = torch.full((1, 1, heads, levels, points, 2), -0.6)
    zero = ms_deform_attn_core(value[:1], torch.tensor(shapes), outside, weights[:1, :1])
    assert torch.equal(zero, torch.zeros_like(zero))
    # ... and the slow reference itself pads with zeros at the border
    ones = torch.ones(1, 2, 2, dtype=torch.float64)
    assert float(_bilinear_zero_pad(ones, 0.0, 0.25)) == pytest.approx(0.5)
    assert float(_bilinear_zero_pad(ones, 0.0, 0.0)) == pytest.approx(0.25)
    assert float(_bilinear_zero_pad(ones, -0.25, 0.25)) == 0.0

    # bf16 values are computed in float32 and handed back in bf16
    low = ms_deform_attn_core(value.bfloat16(), torch.tensor(shapes), locations, weights)
    assert low.dtype == torch.bfloat16
    assert torch.allclose(low.double(), expected, atol=5e-2, rtol=0)


def test_ms_deform_attn_init() -> None:
    attn = MSDeformAttn(d_model=32, n_levels=3, n_heads=8, n_points=4)
    bias = attn.sampling_offsets.bias.view(8, 3, 4, 2)
    assert torch.count_nonzero(attn.sampling_offsets.weight) == 0
    assert torch.count_nonzero(attn.attention_weights.weight) == 0
    assert torch.count_nonzero(attn.attention_weights.bias) == 0
    # head 1 of 8 points at 45 degrees: direction (1, 1) after the max-norm scaling
    assert torch.allclose(bias[1, 2, 0], torch.tensor([1.0, 1.0]))
    assert torch.allclose(bias[2, 0, 3], torch.tensor([0.0, 4.0]), atol=1e-6)
    assert torch.allclose(
        bias[0, 1], torch.tensor([[1.0, 0.0], [2.0, 0.0], [3.0, 0.0], [4.0, 0.0]])
    )
    assert torch.equal(bias[:, 0], bias[:, 2])  # same for every level


def _tiny_inputs(b: int = 2) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    sizes = {"res2": (8, 16, 20), "res3": (12, 8, 10), "res4": (16, 4, 5), "res5": (24, 2, 3)}
    return {k: torch.randn(b, c, h, w, generator=g) for k, (c, h, w) in sizes.items()}


def _tiny_decoder() -> MSDeformAttnPixelDecoder:
    torch.manual_seed(0)
    channels = {"res2": 8, "res3": 12, "res4": 16, "res5": 24}
    return MSDeformAttnPixelDecoder(
        channels, conv_dim=32, mask_dim=16, enc_layers=2, nheads=4, n_points=2, dim_feedforward=48
    )


def test_train_mode_dropout_and_gradients() -> None:
    decoder = _tiny_decoder()
    features = _tiny_inputs()
    decoder.eval()
    with torch.no_grad():
        eval_a = decoder(features)
        eval_b = decoder(features)
    assert eval_a[0].shape == (2, 16, 16, 20)
    assert [m.shape for m in eval_a[1]] == [(2, 32, 2, 3), (2, 32, 4, 5), (2, 32, 8, 10)]
    assert torch.equal(eval_a[0], eval_b[0])
    assert all(torch.equal(x, y) for x, y in zip(eval_a[1], eval_b[1]))

    decoder.train()
    with torch.no_grad():
        train_out = decoder(features)
    assert not torch.allclose(train_out[0], eval_a[0])
    assert not torch.allclose(train_out[1][0], eval_a[1][0])

    # At the Deformable-DETR init the query path (offsets, attention weights) has zero weights,
    # so level_embed would get an exactly zero gradient; move them off zero first.
    with torch.no_grad():
        for name, p in decoder.named_parameters():
            if name.endswith(("sampling_offsets.weight", "attention_weights.weight")):
                p.normal_(0.0, 0.1)
    mask_features, multi_scale = decoder(features)
    loss = mask_features.square().mean() + sum(m.square().mean() for m in multi_scale)
    loss.backward()
    for name, p in decoder.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name
