"""Release parity of the FreeSeg/MAFT text->pixel interaction and masked transformer decoder.

Golden tensors come from the official run (see conftest.py); the independent checks rebuild the
interaction from its formula in float64 and exercise the decoder's masking rule on hand-made
cases.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from release_helpers import assert_close_rel, sub_state_dict

from maft.models.proposals.freeseg.decoder import OpenVocabMaskedDecoder, unblock_full_rows
from maft.models.proposals.freeseg.interaction import ContextInteraction

INTERACTION = "sem_seg_head.interaction."
PREDICTOR = "sem_seg_head.predictor."

DEV_INTERACTION = dict(dim=32, text_dim=64, embed_dim=64, num_heads=8)
DEV_DECODER = dict(
    in_channels=32,
    hidden_dim=32,
    num_queries=100,
    nheads=8,
    dim_feedforward=64,
    dec_layers=4,
    mask_dim=32,
    embed_dim=64,
    embed_hidden_dim=48,
    embed_layers=2,
)


def _dev_interaction(maft_dev: dict) -> ContextInteraction:
    """The golden set's interaction (sizes from its config.yaml, official weights)."""
    from release_helpers import golden_kwargs

    kw = golden_kwargs(maft_dev)
    model = ContextInteraction(
        dim=kw["conv_dim"],
        text_dim=kw["clip_dim"],
        embed_dim=kw["interaction_dim"],
        num_heads=kw["interaction_heads"],
    ).eval()
    model.load_state_dict(sub_state_dict(maft_dev["state_dict"], INTERACTION), strict=True)
    return model


def _dev_decoder(maft_dev: dict) -> OpenVocabMaskedDecoder:
    """The golden set's decoder (sizes from its config.yaml, official weights)."""
    from release_helpers import golden_kwargs

    kw = golden_kwargs(maft_dev)
    model = OpenVocabMaskedDecoder(
        in_channels=kw["conv_dim"],
        hidden_dim=kw["hidden_dim"],
        num_queries=kw["num_queries"],
        nheads=kw["nheads"],
        dim_feedforward=kw["dim_feedforward"],
        dec_layers=kw["dec_layers"],
        mask_dim=kw["mask_dim"],
        embed_dim=kw["clip_dim"],
        embed_hidden_dim=kw["embed_hidden_dim"],
        embed_layers=kw["embed_layers"],
        enforce_input_project=kw["enforce_input_project"],
    ).eval()
    model.load_state_dict(sub_state_dict(maft_dev["state_dict"], PREDICTOR), strict=True)
    return model


# --------------------------------------------------------------------------- golden parity


def test_interaction_matches_golden(maft_dev: dict) -> None:
    out = maft_dev["outputs"]
    model = _dev_interaction(maft_dev)
    maps_in = [out[f"pd_multi_scale_features_{i}"] for i in range(3)]
    with torch.no_grad():
        mask_features, maps = model(out["pd_mask_features"], maps_in, out["text_features"])
    assert_close_rel(mask_features, out["mask_features"], 1e-5, "mask_features")
    assert len(maps) == 3
    for i, x in enumerate(maps):
        assert_close_rel(x, out[f"multi_scale_features_{i}"], 1e-5, f"multi_scale_features_{i}")


def test_interaction_accepts_batched_text(maft_dev: dict) -> None:
    out = maft_dev["outputs"]
    model = _dev_interaction(maft_dev)
    maps_in = [out[f"pd_multi_scale_features_{i}"] for i in range(3)]
    with torch.no_grad():
        ref_mask, ref_maps = model(out["pd_mask_features"], maps_in, out["text_features"])
        mask, maps = model(out["pd_mask_features"], maps_in, out["text_features"][None])
    torch.testing.assert_close(mask, ref_mask, rtol=0, atol=0)
    for a, b in zip(maps, ref_maps):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_decoder_matches_golden(maft_dev: dict) -> None:
    out = maft_dev["outputs"]
    near = out["near_threshold"].get(
        "decoder_attn_logits_within_1e-4_of_0 (layer, query, flat_hw, logit)", []
    )
    model = _dev_decoder(maft_dev)
    layers = model.num_layers if hasattr(model, "num_layers") else len(out["dec_attn_masks"])
    maps = [out[f"multi_scale_features_{i}"] for i in range(3)]
    with torch.no_grad():
        pred = model(maps, out["mask_features"])
    assert_close_rel(pred["pred_logits"], out["pred_logits"], 1e-4, "pred_logits")
    assert_close_rel(pred["pred_masks"], out["pred_masks"], 1e-4, "pred_masks")
    assert len(pred["aux_outputs"]) == layers
    for i, aux in enumerate(pred["aux_outputs"]):
        assert_close_rel(aux["pred_logits"], out["aux_pred_logits"][i], 1e-4, f"aux{i} logits")
        assert_close_rel(aux["pred_masks"], out["aux_pred_masks"][i], 1e-4, f"aux{i} masks")
    assert len(pred["attn_masks"]) == len(out["dec_attn_masks"]) == layers
    for i, (mask, ref) in enumerate(zip(pred["attn_masks"], out["dec_attn_masks"])):
        assert mask.dtype == torch.bool and mask.shape == ref.shape, f"attn mask {i}"
        differ = (mask != ref).nonzero().tolist()  # [[b, q, cell], ...]
        allowed = {(q, cell) for layer, q, cell, _ in near if layer == i}
        bad = [d for d in differ if (d[1], d[2]) not in allowed]
        assert not bad, f"attn mask {i}: cells {bad[:5]} differ (not within 1e-4 of the threshold)"


def test_decoder_batch_elements_are_independent(maft_dev: dict) -> None:
    """A batch of two gives each element's single run: the per-head mask layout is batch-major."""
    out = maft_dev["outputs"]
    model = _dev_decoder(maft_dev)
    gen = torch.Generator().manual_seed(0)
    maps = [out[f"multi_scale_features_{i}"] for i in range(3)]
    maps2 = [x + 0.5 * torch.randn(x.shape, generator=gen) for x in maps]
    mf, mf2 = out["mask_features"], out["mask_features"].flip(-1)
    with torch.no_grad():
        single = [model(maps, mf), model(maps2, mf2)]
        both = model([torch.cat(p) for p in zip(maps, maps2)], torch.cat([mf, mf2]))
    for b, ref in enumerate(single):
        torch.testing.assert_close(both["pred_logits"][b], ref["pred_logits"][0])
        torch.testing.assert_close(both["pred_masks"][b], ref["pred_masks"][0])
        for mask, ref_mask in zip(both["attn_masks"], ref["attn_masks"]):
            assert torch.equal(mask[b], ref_mask[0])


# --------------------------------------------------------------------------- released keys


def _released_keys(release_dir: Path, prefix: str) -> dict[str, list[int]]:
    keys = {}
    for line in (release_dir / "fullsize_keys_freeseg.txt").read_text().splitlines():
        if not line.strip():
            continue
        name, shape, _dtype = line.split("\t")
        if name.startswith(prefix):
            keys[name[len(prefix) :]] = [int(s) for s in shape.strip("[]").split(",") if s.strip()]
    return keys


def test_released_interaction_keys(release_dir: Path) -> None:
    expected = _released_keys(release_dir, INTERACTION)
    actual = {k: list(v.shape) for k, v in ContextInteraction().state_dict().items()}
    assert expected, "no interaction keys in the released key list"
    assert actual == expected


def test_released_decoder_keys(release_dir: Path) -> None:
    expected = _released_keys(release_dir, PREDICTOR)
    actual = {k: list(v.shape) for k, v in OpenVocabMaskedDecoder().state_dict().items()}
    assert expected, "no predictor keys in the released key list"
    assert actual == expected


def test_decoder_input_projection_only_when_needed() -> None:
    same = OpenVocabMaskedDecoder(**{**DEV_DECODER, "dec_layers": 1})
    assert not any(k.startswith("input_proj") for k in same.state_dict())
    wide = OpenVocabMaskedDecoder(**{**DEV_DECODER, "dec_layers": 1, "in_channels": 16})
    forced = OpenVocabMaskedDecoder(
        **{**DEV_DECODER, "dec_layers": 1, "enforce_input_project": True}
    )
    for model, c_in in ((wide, 16), (forced, 32)):
        keys = {k: tuple(v.shape) for k, v in model.state_dict().items() if "input_proj" in k}
        assert keys == {
            **{f"input_proj.{lvl}.weight": (32, c_in, 1, 1) for lvl in range(3)},
            **{f"input_proj.{lvl}.bias": (32,) for lvl in range(3)},
        }


# --------------------------------------------------------------------------- independent checks


def _reference_interaction(
    model: ContextInteraction,
    mask_features: torch.Tensor,
    maps: list[torch.Tensor],
    text: torch.Tensor,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The interaction written out in float64: per-head softmax(Q K^T / sqrt(d)) V, loops only."""
    p = {k: v.detach().double() for k, v in model.state_dict().items()}
    heads = model.attn.num_heads

    def layer_norm(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        mean = x.mean(-1, keepdim=True)
        var = ((x - mean) ** 2).mean(-1, keepdim=True)
        return (x - mean) / torch.sqrt(var + 1e-5) * w + b

    def one_map(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        b, d, h, w = x.shape
        result = torch.empty(b, d, h, w, dtype=torch.float64)
        for bi in range(b):
            pix = layer_norm(
                x[bi].double().reshape(d, h * w).T,
                p["layer_norm_q_1.weight"],
                p["layer_norm_q_1.bias"],
            )  # [hw, d]
            q = pix @ p["attn.q_proj.weight"].T + p["attn.q_proj.bias"]
            k = t @ p["attn.k_proj.weight"].T + p["attn.k_proj.bias"]
            v = t @ p["attn.v_proj.weight"].T + p["attn.v_proj.bias"]
            hd = q.shape[1] // heads
            per_head = []
            for hi in range(heads):
                sl = slice(hi * hd, (hi + 1) * hd)
                logits = q[:, sl] @ k[:, sl].T / math.sqrt(hd)  # [hw, T]
                probs = torch.exp(logits - logits.max(1, keepdim=True).values)
                probs = probs / probs.sum(1, keepdim=True)
                per_head.append(probs @ v[:, sl])
            attn = torch.cat(per_head, 1) @ p["attn.out_proj.weight"].T + p["attn.out_proj.bias"]
            result[bi] = (pix + p["gamma"] * attn).T.reshape(d, h, w)
        return result

    t = text.double()
    outs = []
    for x in maps:
        t = layer_norm(t, p["layer_norm_k_1.weight"], p["layer_norm_k_1.bias"])
        outs.append(one_map(x, t))
    t = layer_norm(t, p["layer_norm_k_1.weight"], p["layer_norm_k_1.bias"])
    return one_map(mask_features, t), outs


def test_interaction_matches_direct_formula() -> None:
    torch.manual_seed(0)
    model = ContextInteraction(dim=8, text_dim=12, embed_dim=16, num_heads=4).eval()
    with torch.no_grad():  # non-trivial LayerNorm affine terms and layer scale
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    maps = [torch.randn(2, 8, 2, 3), torch.randn(2, 8, 3, 2), torch.randn(2, 8, 1, 4)]
    mask_features = torch.randn(2, 8, 4, 4)
    text = torch.randn(5, 12)
    ref_mask, ref_maps = _reference_interaction(model, mask_features, maps, text)
    model = model.double()
    with torch.no_grad():
        mask, outs = model(mask_features.double(), [x.double() for x in maps], text.double())
    torch.testing.assert_close(mask, ref_mask, rtol=1e-10, atol=1e-10)
    for a, b in zip(outs, ref_maps):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_interaction_init_and_dropout_in_train_mode_only() -> None:
    torch.manual_seed(0)
    model = ContextInteraction(dim=8, text_dim=12, embed_dim=16, num_heads=4)
    assert torch.equal(model.gamma.detach(), torch.full((8,), 0.1))
    maps = [torch.randn(1, 8, 3, 3) for _ in range(3)]
    mask_features, text = torch.randn(1, 8, 5, 5), torch.randn(6, 12)

    def run() -> torch.Tensor:
        mask, outs = model(mask_features, maps, text)
        return torch.cat([mask.flatten()] + [x.flatten() for x in outs])

    with torch.no_grad():
        model.eval()
        ref = run()
        assert torch.equal(run(), ref)
        model.train()
        a, b = run(), run()
        assert not torch.equal(a, ref) and not torch.equal(a, b)
        model.attn.dropout = 0.0
        torch.testing.assert_close(run(), ref, rtol=0, atol=0)


def test_unblock_full_rows_hand_made() -> None:
    mask = torch.tensor(
        [
            [[True, True, True], [True, False, True], [False, False, False]],
            [[False, True, False], [True, True, True], [True, True, False]],
        ]
    )
    expected = torch.tensor(
        [
            [[False, False, False], [True, False, True], [False, False, False]],
            [[False, True, False], [False, False, False], [True, True, False]],
        ]
    )
    assert torch.equal(unblock_full_rows(mask), expected)


def _constant_mask_decoder(mask_dim: int = 4) -> OpenVocabMaskedDecoder:
    """A tiny decoder whose mask embedding is e_0 for every query: mask logits = features[:, 0]."""
    model = OpenVocabMaskedDecoder(
        in_channels=8,
        hidden_dim=8,
        num_queries=3,
        nheads=2,
        dim_feedforward=16,
        dec_layers=4,
        mask_dim=mask_dim,
        embed_dim=6,
        embed_hidden_dim=5,
        embed_layers=2,
    ).eval()
    last = model.mask_embed.layers[-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.zero_()
        last.bias[0] = 1.0
    return model


def test_decoder_fully_blocked_rows_are_reopened() -> None:
    torch.manual_seed(0)
    model = _constant_mask_decoder()
    maps = [torch.randn(1, 8, 2, 2), torch.randn(1, 8, 4, 4), torch.randn(1, 8, 8, 8)]
    mask_features = torch.randn(1, 4, 16, 16)
    mask_features[:, 0] = -5.0  # every query's mask is empty: every row would be fully blocked
    with torch.no_grad():
        pred = model(maps, mask_features)
    sizes = [4, 16, 64, 4]  # layer i reads level i % 3
    assert [tuple(m.shape) for m in pred["attn_masks"]] == [(1, 3, s) for s in sizes]
    for mask in pred["attn_masks"]:
        assert not mask.any()
    assert torch.isfinite(pred["pred_logits"]).all() and torch.isfinite(pred["pred_masks"]).all()


def test_decoder_blocks_where_the_resized_mask_is_below_half() -> None:
    torch.manual_seed(0)
    model = _constant_mask_decoder()
    maps = [torch.randn(1, 8, 2, 2), torch.randn(1, 8, 4, 4), torch.randn(1, 8, 8, 8)]
    mask_features = torch.randn(1, 4, 16, 16)
    mask_features[:, 0, :, :8] = 5.0  # left half foreground, right half background
    mask_features[:, 0, :, 8:] = -5.0
    with torch.no_grad():
        pred = model(maps, mask_features)
    for i, mask in enumerate(pred["attn_masks"]):
        side = [2, 4, 8][i % 3]
        grid = torch.zeros(side, side, dtype=torch.bool)
        grid[:, side // 2 :] = True  # blocked where the (bilinear) mask is background
        assert torch.equal(mask, grid.flatten()[None, None].expand(1, 3, -1)), f"layer {i}"
        assert not mask.requires_grad


def test_decoder_output_structure_and_train_mode_has_no_dropout() -> None:
    torch.manual_seed(0)
    model = OpenVocabMaskedDecoder(**{**DEV_DECODER, "num_queries": 7, "dec_layers": 5})
    maps = [torch.randn(2, 32, 2, 3), torch.randn(2, 32, 4, 6), torch.randn(2, 32, 8, 12)]
    mask_features = torch.randn(2, 32, 16, 24)
    model.train()
    train = model(maps, mask_features)
    model.eval()
    with torch.no_grad():
        ref = model(maps, mask_features)
    assert train["pred_logits"].shape == (2, 7, 64)
    assert train["pred_masks"].shape == (2, 7, 16, 24)
    assert len(train["aux_outputs"]) == 5 and len(train["attn_masks"]) == 5
    assert [m.shape for m in train["attn_masks"]] == [(2, 7, n) for n in (6, 24, 96, 6, 24)]
    torch.testing.assert_close(train["pred_logits"].detach(), ref["pred_logits"], rtol=0, atol=0)
    torch.testing.assert_close(train["pred_masks"].detach(), ref["pred_masks"], rtol=0, atol=0)
    assert train["pred_masks"].requires_grad
    assert not any(m.requires_grad for m in train["attn_masks"])


def test_decoder_layers_xavier_initialised() -> None:
    """Attention and FFN matrices are xavier-uniform: bounded by, and close to, sqrt(6/(in+out))."""
    torch.manual_seed(0)
    model = OpenVocabMaskedDecoder(**{**DEV_DECODER, "dim_feedforward": 512, "dec_layers": 1})
    for weight in (
        model.transformer_self_attention_layers[0].self_attn.in_proj_weight,
        model.transformer_cross_attention_layers[0].multihead_attn.in_proj_weight,
        model.transformer_cross_attention_layers[0].multihead_attn.out_proj.weight,
        model.transformer_ffn_layers[0].linear1.weight,
        model.transformer_ffn_layers[0].linear2.weight,
    ):
        fan_out, fan_in = weight.shape
        bound = math.sqrt(6.0 / (fan_in + fan_out))
        largest = float(weight.detach().abs().max())
        assert 0.9 * bound < largest <= bound
