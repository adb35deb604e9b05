"""IP-CLIP: golden vectors of the official forward, an independent float64 loop, properties."""

from __future__ import annotations

import copy
import math

import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F
from open_clip.transformer import VisionTransformer

from maft.errors import CheckpointError
from maft.models.clip.ip_clip import IPClipEncoder, proposal_attention_mask

TOL = {"atol": 1e-5, "rtol": 1e-5}


# ----------------------------------------------------------------------------- golden file


@pytest.fixture(scope="module")
def golden_encoder(golden: dict) -> IPClipEncoder:
    meta = golden["meta"]
    enc = IPClipEncoder.from_openai_state_dict(
        golden["state_dict"], heads=meta["heads"], start_layer=meta["start_layers"]
    )
    return enc.eval()


def test_golden_224(golden: dict, golden_encoder: IPClipEncoder) -> None:
    with torch.no_grad():
        emb = golden_encoder(golden["img224"], golden["masks224"])
        plain = golden_encoder(golden["img224"])
    emb_norm = F.normalize(emb, dim=-1)
    logits = 100.0 * emb_norm @ golden["text_features"].t()
    torch.testing.assert_close(emb, golden["emb224"], **TOL)
    torch.testing.assert_close(emb_norm, golden["emb224_norm"], **TOL)
    torch.testing.assert_close(logits, golden["logits224"], atol=1e-3, rtol=1e-5)  # ×100 scale
    torch.testing.assert_close(logits[..., :-1].softmax(-1), golden["Ac224"], **TOL)
    torch.testing.assert_close(plain, golden["plain224"], **TOL)
    torch.testing.assert_close(F.normalize(plain, dim=-1), golden["plain224_norm"], **TOL)
    allow = proposal_attention_mask(golden["masks224"], (14, 14))
    assert torch.equal(allow, golden["allow224"])


def test_golden_float64(golden: dict, golden_encoder: IPClipEncoder) -> None:
    enc64 = copy.deepcopy(golden_encoder).double()
    with torch.no_grad():
        emb = enc64(golden["img224"].double(), golden["masks224"].double())
    assert emb.dtype == torch.float64
    torch.testing.assert_close(emb, golden["emb224"].double(), **TOL)


def test_golden_special_proposals(golden: dict, golden_encoder: IPClipEncoder) -> None:
    """Image 0: q1 empty, q2 tiny-miss, q5 uniform 0.49 all act as empty; q0 full == q4 (0.51)."""
    with torch.no_grad():
        emb = golden_encoder(golden["img224"][:1], golden["masks224"][:1])[0]
    assert torch.isfinite(emb).all()
    torch.testing.assert_close(emb[2], emb[1], rtol=0, atol=0)
    torch.testing.assert_close(emb[5], emb[1], rtol=0, atol=0)
    torch.testing.assert_close(emb[4], emb[0], rtol=0, atol=0)


def test_openai_state_dict_wrong_keys(golden: dict) -> None:
    sd = dict(golden["state_dict"])
    sd["visual.extra"] = torch.zeros(1)
    with pytest.raises(CheckpointError, match="visual.extra|extra"):
        IPClipEncoder.from_openai_state_dict(sd, heads=4, start_layer=2)
    with pytest.raises(CheckpointError, match="conv1"):
        bare = {"visual.proj": torch.zeros(2, 2)}
        IPClipEncoder.from_openai_state_dict(bare, heads=1, start_layer=0)


# ------------------------------------------------------------------ independent reference


def _bilinear_np(mask: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """Bilinear resize with half-pixel centres (align_corners=False), float64, by loops."""
    in_h, in_w = mask.shape

    def taps(out: int, size: int) -> list[tuple[int, int, float]]:
        res = []
        for i in range(out):
            src = max((i + 0.5) * size / out - 0.5, 0.0)
            i0 = int(math.floor(src))
            i1 = min(i0 + 1, size - 1)
            res.append((i0, i1, src - i0))
        return res

    out = np.zeros((out_h, out_w))
    for y, (y0, y1, ly) in enumerate(taps(out_h, in_h)):
        for x, (x0, x1, lx) in enumerate(taps(out_w, in_w)):
            top = (1 - lx) * mask[y0, x0] + lx * mask[y0, x1]
            bottom = (1 - lx) * mask[y1, x0] + lx * mask[y1, x1]
            out[y, x] = (1 - ly) * top + ly * bottom
    return out


def _attend(block, x: torch.Tensor, keys_of: list[list[int]]) -> torch.Tensor:
    """Pre-LN block where token i attends only to the token indices keys_of[i] (explicit loops)."""
    attn = block.attn
    d = x.shape[-1]
    heads = attn.num_heads
    hd = d // heads
    h = block.ln_1(x)
    q, k, v = (h @ attn.in_proj_weight.t() + attn.in_proj_bias).split(d, dim=-1)
    out = torch.zeros_like(x)
    for i, keys in enumerate(keys_of):
        for head in range(heads):
            sl = slice(head * hd, (head + 1) * hd)
            scores = torch.stack([q[i, sl] @ k[j, sl] for j in keys]) / math.sqrt(hd)
            weights = torch.softmax(scores, dim=0)
            out[i, sl] = sum(w * v[j, sl] for w, j in zip(weights, keys))
    x = x + attn.out_proj(out)
    return x + block.mlp(block.ln_2(x))


def _reference(visual: VisionTransformer, image: torch.Tensor, masks: torch.Tensor, start: int):
    """IP-CLIP of docs/method.md §3 for one image, float64, written without the encoder's code."""
    v = copy.deepcopy(visual).double()
    p = v.patch_size[0]
    gh, gw = image.shape[-2] // p, image.shape[-1] // p
    tokens = v.conv1(image[None].double())[0].flatten(1).t()  # [hw, d]
    pos = v.positional_embedding
    g0 = v.grid_size[0]
    grid = pos[1:].reshape(1, g0, g0, -1).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=(gh, gw), mode="bicubic", align_corners=True)
    pos = torch.cat([pos[:1], grid[0].flatten(1).t()])
    x = v.ln_pre(torch.cat([v.class_embedding[None], tokens]) + pos)  # [1 + hw, d]
    hw = gh * gw
    n = masks.shape[0]
    blocks = v.transformer.resblocks
    with torch.no_grad():
        for block in blocks[:start]:
            x = _attend(block, x, [list(range(1 + hw))] * (1 + hw))
        if start == len(blocks):
            return (v.ln_post(x[:1]) @ v.proj).repeat(n, 1)
        allowed = [
            np.flatnonzero(_bilinear_np(m.double().numpy(), gh, gw).reshape(-1) >= 0.5)
            for m in masks
        ]
        x = torch.cat([x[:1].repeat(n - 1, 1), x])  # [N + hw, d]
        keys = [[i] + [n + int(j) for j in allowed[i]] for i in range(n)]
        keys += [list(range(n, n + hw))] * hw
        for block in blocks[start:]:
            x = _attend(block, x, keys)
        return v.ln_post(x[:n]) @ v.proj


def _random_masks(b: int, n: int, h: int, w: int) -> torch.Tensor:
    masks = torch.rand(b, n, h, w)
    masks[:, 0] = 0.0  # empty
    masks[:, 1] = 1.0  # full
    return masks


def test_matches_independent_loop_non_square(tiny_clip: open_clip.CLIP) -> None:
    """40×56 input (grid 5×7, positional table resized from 4×4), masks 13×11."""
    enc = IPClipEncoder.from_open_clip(tiny_clip.visual, start_layer=1)
    images = torch.randn(2, 3, 40, 56)
    masks = _random_masks(2, 5, 13, 11)
    with torch.no_grad():
        out = enc(images, masks)
    assert out.shape == (2, 5, 32)
    for b in range(2):
        ref = _reference(tiny_clip.visual, images[b], masks[b], start=1)
        torch.testing.assert_close(out[b].double(), ref, **TOL)


def test_attention_mask_matches_numpy_bilinear() -> None:
    masks = torch.rand(2, 3, 9, 13)
    masks[0, 0] = 0.5  # exactly 0.5 is allowed
    allow = proposal_attention_mask(masks, (4, 6))
    assert allow.shape == (2, 3, 24) and allow.dtype == torch.bool
    for b in range(2):
        for n in range(3):
            ref = _bilinear_np(masks[b, n].double().numpy(), 4, 6).reshape(-1) >= 0.5
            assert np.array_equal(allow[b, n].numpy(), ref)
    assert allow[0, 0].all()


# ------------------------------------------------------------------------------ properties


def test_no_masked_block_equals_encode_image(tiny_clip: open_clip.CLIP) -> None:
    enc = IPClipEncoder.from_open_clip(tiny_clip.visual, start_layer=2)
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = tiny_clip.encode_image(images)
        out = enc(images, _random_masks(2, 4, 8, 8))
        plain = enc(images)
    for n in range(4):
        torch.testing.assert_close(out[:, n], ref, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(plain, ref, atol=1e-6, rtol=1e-6)


def test_plain_path_ignores_start_layer_and_full_mask_differs(tiny_clip: open_clip.CLIP) -> None:
    """Two masked blocks: in block 0 patches lose the CLS, so block 1's CLS row sees new patches."""
    enc = IPClipEncoder.from_open_clip(tiny_clip.visual, start_layer=0)
    images = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        ref = tiny_clip.encode_image(images)
        torch.testing.assert_close(enc(images), ref, atol=1e-6, rtol=1e-6)
        full = enc(images, torch.ones(1, 1, 4, 4))[:, 0]
    assert (full - ref).abs().max() > 1e-3  # patches stop seeing the CLS from start_layer on


def test_empty_mask_equals_all_zero_and_is_finite(tiny_clip: open_clip.CLIP) -> None:
    enc = IPClipEncoder.from_open_clip(tiny_clip.visual, start_layer=1)
    images = torch.randn(1, 3, 32, 32)
    masks = torch.rand(1, 3, 16, 16)
    masks[0, 0] = 0.0
    masks[0, 1] = 0.3  # never reaches 0.5: acts as empty
    with torch.no_grad():
        out = enc(images, masks)[0]
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out[1], out[0], rtol=0, atol=0)
    assert (out[2] - out[0]).abs().max() > 1e-4


def test_batched_equals_one_at_a_time(tiny_clip: open_clip.CLIP) -> None:
    enc = IPClipEncoder.from_open_clip(tiny_clip.visual, start_layer=1)
    images = torch.randn(2, 3, 32, 48)
    masks = _random_masks(2, 6, 10, 10)
    with torch.no_grad():
        batched = enc(images, masks)
        for b in range(2):
            for n in range(6):
                single = enc(images[b : b + 1], masks[b : b + 1, n : n + 1])[0, 0]
                torch.testing.assert_close(batched[b, n], single, **TOL)


def test_permuting_proposals_permutes_outputs(tiny_clip: open_clip.CLIP) -> None:
    enc = IPClipEncoder.from_open_clip(tiny_clip.visual, start_layer=1)
    images = torch.randn(2, 3, 32, 32)
    masks = _random_masks(2, 7, 12, 12)
    perm = torch.randperm(7)
    with torch.no_grad():
        out = enc(images, masks)
        permuted = enc(images, masks[:, perm])
    torch.testing.assert_close(permuted, out[:, perm], **TOL)


def test_float64_agrees_with_float32(tiny_clip: open_clip.CLIP) -> None:
    enc = IPClipEncoder.from_open_clip(tiny_clip.visual, start_layer=1)
    images, masks = torch.randn(1, 3, 32, 32), _random_masks(1, 4, 8, 8)
    with torch.no_grad():
        out32 = enc(images, masks)
        enc64 = copy.deepcopy(enc).double()
        out64 = enc64(images.double(), masks.double())
    assert out64.dtype == torch.float64
    torch.testing.assert_close(out32.double(), out64, **TOL)


def test_gradients_flow_and_checkpointing_matches(tiny_clip: open_clip.CLIP) -> None:
    enc = IPClipEncoder.from_open_clip(tiny_clip.visual, start_layer=1).train()
    images, masks = torch.randn(2, 3, 32, 32), _random_masks(2, 3, 8, 8)
    enc(images, masks).square().sum().backward()
    blocks = enc.visual.transformer.resblocks
    grads = {
        "in_proj (plain block)": blocks[0].attn.in_proj_weight.grad,
        "in_proj (masked block)": blocks[1].attn.in_proj_weight.grad,
        "ln_1 (masked block)": blocks[1].ln_1.weight.grad,
        "ln_post": enc.visual.ln_post.weight.grad,
        "conv1": enc.visual.conv1.weight.grad,
    }
    for name, grad in grads.items():
        assert grad is not None and grad.abs().sum() > 0, name
    ref = blocks[1].attn.in_proj_weight.grad.clone()
    enc.zero_grad()
    enc.visual.set_grad_checkpointing(True)
    enc(images, masks).square().sum().backward()
    torch.testing.assert_close(blocks[1].attn.in_proj_weight.grad, ref, **TOL)


def test_bf16_autocast(tiny_clip: open_clip.CLIP) -> None:
    enc = IPClipEncoder.from_open_clip(tiny_clip.visual, start_layer=1)
    images, masks = torch.randn(2, 3, 32, 32), _random_masks(2, 4, 8, 8)
    with torch.no_grad():
        ref = enc(images, masks)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = enc(images, masks)
            plain = enc(images)
    assert torch.isfinite(out).all() and torch.isfinite(plain).all()
    cos = F.cosine_similarity(out.float(), ref, dim=-1)
    assert cos.min() > 0.99


def test_attributes_share_weights(tiny_clip: open_clip.CLIP) -> None:
    enc = IPClipEncoder.from_open_clip(tiny_clip.visual, start_layer=1)
    assert enc.visual is tiny_clip.visual
    assert (enc.start_layer, enc.image_size, enc.patch_size, enc.depth) == (1, 32, 8, 2)
    assert enc.output_dim == 32
    assert enc.grid_hw(40, 56) == (5, 7)


def test_edge_cases(tiny_clip: open_clip.CLIP) -> None:
    enc = IPClipEncoder.from_open_clip(tiny_clip.visual, start_layer=1)
    images = torch.randn(2, 3, 32, 32)
    assert enc(images, torch.zeros(2, 0, 8, 8)).shape == (2, 0, 32)
    masks = torch.rand(2, 2, 8, 8)
    masks[1, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        enc(images, masks)
    with pytest.raises(ValueError, match="masks must be"):
        enc(images, torch.rand(3, 2, 8, 8))
    with pytest.raises(ValueError, match="start_layer"):
        IPClipEncoder.from_open_clip(tiny_clip.visual, start_layer=3)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"attentional_pool": True}, "attentional pooling"),
        ({"pool_type": "avg"}, "pool_type"),
        ({"patch_dropout": 0.5}, "patch dropout"),
        ({"qk_norm": True}, "ResidualAttentionBlock"),
    ],
)
def test_unsupported_towers_raise(kwargs: dict, match: str) -> None:
    visual = VisionTransformer(
        image_size=16,
        patch_size=8,
        width=32,
        layers=1,
        heads=2,
        mlp_ratio=2.0,
        output_dim=8,
        **kwargs,
    )
    with pytest.raises(ValueError, match=match):
        IPClipEncoder.from_open_clip(visual, start_layer=0)
