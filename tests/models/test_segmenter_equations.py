"""ZeroShotSegmenter's outputs against a direct float64 computation of the spec's equations.

Spec §a.1 (``A^p``: softmax over C + void, void dropped), §b.1 (soft masks: bilinear,
``align_corners=True``, sigmoid; the CLIP canvas zero outside the image and stretched to the
IP-CLIP size), §a.3 (``A^c = softmax`` over the C classes of ``100 cos``), §a.4 (code-form
ensemble with λ ≠ 0 and a seen mask, ``A^c = 1`` for proposals whose binary mask is empty inside
the image), §a.5 (``O = Âᵀ M``, cropped to the image and resized back to the original size).

The segmenter runs over the tiny task's modules; the reference calls ``IPClipEncoder`` directly on
a float64 copy of the visual tower. The reference's ensemble and semantic-score equations are
themselves checked against the official code's λ = 0.8 golden run (golden/release/freeseg_dev).
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from maft.data.vocabulary import Vocabulary
from maft.models.clip.ip_clip import IPClipEncoder
from maft.models.segmenter import SegmenterOutput, ZeroShotSegmenter
from maft_testing import TINY_CLIP, bilinear_ref

NAMES = ["sky", "water", "grass", "tree", "road"]
SEEN = [True, False, True, True, False]
CANVAS = 64
VALID = torch.tensor([[64, 64], [48, 56]])  # image 1 is padded bottom/right
ORIG = torch.tensor([[64, 64], [40, 70]])  # and resized back to another size
LAMBDA = 0.7  # != 0 (ensemble on) and != 0.5 (A^p / A^c roles distinguishable)
TOL_PROB = 1e-5  # float32 segmenter vs float64 reference (observed: about 1e-6)


def _golden_release() -> Path | None:
    """golden/release beside the checkout (or under MAFT_GOLDEN_DIR), if present."""
    env = os.environ.get("MAFT_GOLDEN_DIR")
    candidates = [Path(env) / "release"] if env else []
    candidates.append(Path(__file__).resolve().parents[3] / "shared/reference/golden/release")
    for d in candidates:
        if (d / "freeseg_dev" / "outputs_freeseg_only.pt").is_file():
            return d
    return None


# ---------------------------------------------------------------------- reference equations
def ref_ensemble(
    a_p: torch.Tensor, a_c: torch.Tensor, valid: torch.Tensor, seen: torch.Tensor | None, lam: float
) -> torch.Tensor:
    """Code-form ensemble §a.4 for [B, N, C] scores; λ = 0 is pure A^c."""
    if lam == 0:
        return a_c
    a_c = torch.where(valid[..., None], a_c, torch.ones_like(a_c))  # map back invalid proposals
    seen_b = torch.zeros(a_c.shape[-1], dtype=torch.bool) if seen is None else seen.bool()
    seen_branch = a_p**lam * a_c ** (1 - lam)
    unseen_branch = a_p ** (1 - lam) * a_c**lam
    return torch.where(seen_b, seen_branch, unseen_branch)


def ref_scores(a_hat: torch.Tensor, soft: torch.Tensor) -> torch.Tensor:
    """O[b, c] = Σ_q Â[b, q, c] · M[b, q] (§a.5): [B, N, C] x [B, N, H, W] -> [B, C, H, W]."""
    return (a_hat[..., None, None] * soft[:, :, None]).sum(dim=1)


def reference(
    seg_parts: dict, images: torch.Tensor, text: torch.Tensor, seen: torch.Tensor | None, lam: float
) -> dict[str, Any]:
    """Every SegmenterOutput field, computed from the spec's equations in float64."""
    gen, visual, norm = seg_parts["generator"], seg_parts["visual"], seg_parts["norm"]
    b, _, h, w = images.shape
    c = text.shape[0]
    with torch.no_grad():
        out = gen(images.float(), text.float(), VALID)
    mask_logits, class_logits = out["mask_logits"], out["class_logits"]
    a_p = class_logits.double().softmax(dim=-1)[..., :c]  # void column last, dropped after
    logits = F.interpolate(mask_logits.double(), size=(h, w), mode="bilinear", align_corners=True)
    soft = logits.sigmoid()  # [B, N, H, W]
    mean = torch.tensor(norm.mean, dtype=torch.float64).view(1, 3, 1, 1)
    std = torch.tensor(norm.std, dtype=torch.float64).view(1, 3, 1, 1)
    x = (images.double() / 255.0 - mean) / std
    inside = torch.zeros(b, 1, h, w, dtype=torch.float64)
    for i, (vh, vw) in enumerate(VALID.tolist()):
        inside[i, :, :vh, :vw] = 1.0
    size = int(TINY_CLIP["input_size"])
    x = F.interpolate(x * inside, size=(size, size), mode="bilinear", align_corners=False)
    enc = IPClipEncoder(copy.deepcopy(visual).double(), start_layer=int(TINY_CLIP["start_layer"]))
    with torch.no_grad():
        emb = enc(x, soft)  # [B, N, D]
    cos = F.normalize(emb, dim=-1) @ text.double().t()  # [B, N, C]
    a_c = (100.0 * cos).softmax(dim=-1)  # over the C classes
    boxes = VALID.tolist()
    valid = torch.stack(
        [(soft[i, :, :vh, :vw] > 0.5).flatten(1).any(1) for i, (vh, vw) in enumerate(boxes)]
    )  # [B, N]
    a_hat = ref_ensemble(a_p, a_c, valid, seen, lam)
    o = ref_scores(a_hat, soft)  # [B, C, H, W]
    scores = []
    for i in range(b):
        (vh, vw), (oh, ow) = VALID[i].tolist(), ORIG[i].tolist()
        crop = o[i, :, :vh, :vw].numpy()
        scores.append(torch.from_numpy(np.stack([bilinear_ref(ch, oh, ow) for ch in crop])))
    return {
        "mask_logits": mask_logits,
        "soft": soft,
        "proposal_probs": a_p,
        "clip_probs": a_c,
        "valid": valid,
        "ensembled": a_hat,
        "scores": scores,
    }


# ---------------------------------------------------------------------- fixtures
class EmptyingGenerator(torch.nn.Module):
    """The tiny generator with two proposals made empty, so the map-back A^c = 1 is exercised.

    Proposal 0 is empty everywhere; proposal 1 of image 1 fires only on the padding (outside the
    valid box), so it is invalid although its mask on the whole canvas is not empty.
    """

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(
        self, images: torch.Tensor, text_emb: torch.Tensor, valid_size: torch.Tensor | None = None
    ) -> dict:
        out = dict(self.inner(images, text_emb, valid_size))
        logits = out["mask_logits"].clone()  # [B, N, H/4, W/4]
        logits[:, 0] = -10.0
        logits[1, 1] = 10.0
        logits[1, 1, :12, :14] = -10.0  # the valid box 48x56 at 1/4 resolution
        out["mask_logits"] = logits
        return out


@pytest.fixture(scope="module")
def parts(tiny_task: torch.nn.Module) -> dict:
    """The tiny task's generator, text classifier, student visual tower and normalisation."""
    vocab = Vocabulary.from_names(NAMES, seen=SEEN)
    return {
        "generator": EmptyingGenerator(tiny_task.generator),
        "text": tiny_task.text,
        "visual": tiny_task.clip_model.visual,
        "norm": tiny_task.norm,
        "vocab": vocab,
        "text_emb": tiny_task.text_embeddings(vocab),
    }


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    """Two padded 0-255 canvases; image 1's padding is grey (its valid box is smaller)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (2, 3, CANVAS, CANVAS), dtype=torch.uint8, generator=g)
    x[1, :, 48:, :] = 128
    x[1, :, :, 56:] = 128
    return x


def _segment(
    parts: dict, images: torch.Tensor, seen: torch.Tensor | None, lam: float
) -> SegmenterOutput:
    """Run a ZeroShotSegmenter built over the tiny parts (code-form ensemble, weight ``lam``)."""
    seg = ZeroShotSegmenter(
        parts["generator"],
        parts["text"],
        parts["visual"],
        parts["norm"],
        start_layer=int(TINY_CLIP["start_layer"]),
        input_size=int(TINY_CLIP["input_size"]),
        classifier="ip_clip",
        merge_variant="zegformer",
        lambda_=lam,
        form="code",
        drop_invalid=False,
        mask_align_corners=True,
    )
    return seg(images, parts["text_emb"], seen, VALID, ORIG)


def _close(actual: torch.Tensor, expected: torch.Tensor, atol: float, name: str) -> None:
    assert actual.shape == expected.shape, f"{name}: {tuple(actual.shape)} != {expected.shape}"
    err = float((actual.double() - expected.double()).abs().max())
    assert err <= atol, f"{name}: max abs error {err:.3e} > {atol:g}"


CASES = {"seen_mask": (True, LAMBDA), "no_seen_mask": (False, LAMBDA), "lambda0": (True, 0.0)}


# ---------------------------------------------------------------------- tests
@pytest.mark.parametrize("case", sorted(CASES))
def test_segmenter_matches_spec_equations(parts: dict, images: torch.Tensor, case: str) -> None:
    """A^p, A^c (softmax over classes), Â (λ-ensemble), valid flags, O and labels vs the spec."""
    with_seen, lam = CASES[case]
    seen = parts["vocab"].seen if with_seen else None
    out = _segment(parts, images, seen, lam)
    ref = reference(parts, images, parts["text_emb"], seen, lam)
    assert isinstance(out, SegmenterOutput)
    assert torch.equal(out.mask_logits, ref["mask_logits"])
    _close(out.proposal_probs, ref["proposal_probs"], TOL_PROB, "proposal_probs")
    _close(out.clip_probs, ref["clip_probs"], TOL_PROB, "clip_probs")
    assert torch.equal(out.valid.cpu(), ref["valid"])
    _close(out.ensembled, ref["ensembled"], TOL_PROB, "ensembled")
    for i, (got, exp) in enumerate(zip(out.scores, ref["scores"])):
        assert got.shape == tuple([len(NAMES), *ORIG[i].tolist()])
        _close(got, exp, TOL_PROB * 8, f"scores[{i}]")  # a sum over N = 8 proposals
        assert torch.equal(out.labels[i], got.argmax(dim=0))


def test_setup_is_sensitive(parts: dict, images: torch.Tensor) -> None:
    """Guards of the equation test: no decision sits on a threshold; every term matters."""
    ref = reference(parts, images, parts["text_emb"], parts["vocab"].seen, LAMBDA)
    soft = ref["soft"]
    gh = int(TINY_CLIP["input_size"]) // 8  # the tiny ViT's patch grid (patch 8)
    grid = F.interpolate(soft.float(), size=(gh, gh), mode="bilinear", align_corners=False)
    assert float((grid - 0.5).abs().min()) > 1e-5  # IP-CLIP attention: far from 0.5
    binary = (soft > 0.5).float()
    hard = F.interpolate(binary, size=(gh, gh), mode="bilinear", align_corners=False)
    assert bool(((grid >= 0.5) != (hard >= 0.5)).any())  # binarised masks attend elsewhere
    valid = ref["valid"]
    assert not bool(valid[:, 0].any()) and not bool(valid[1, 1])  # map-back exercised
    assert bool((soft[1, 1] > 0.5).any()) and bool(valid[0, 1])  # invalid only inside the box
    a_p, a_c = ref["proposal_probs"], ref["clip_probs"]
    assert float((a_p - a_c).abs().max()) > 1e-2  # swapping A^p and A^c shows
    assert float((a_c.sum(-1) - 1).abs().max()) < 1e-9  # rows of A^c sum to 1 (over classes)
    assert float((a_c.sum(1) - 1).abs().max()) > 1e-2  # but not columns (over proposals)


def test_reference_equations_reproduce_official_lambda_run() -> None:
    """The reference ensemble and O = Âᵀ M give the official λ = 0.8 scores (with/without flags)."""
    root = _golden_release()
    if root is None:
        pytest.skip("golden/release not found beside the checkout (or MAFT_GOLDEN_DIR)")
    maft = torch.load(root / "maft_dev" / "outputs.pt", weights_only=False)
    freeseg = torch.load(root / "freeseg_dev" / "outputs_freeseg_only.pt", weights_only=False)
    inputs = torch.load(root / "freeseg_dev" / "inputs.pt", weights_only=False)
    c = len(inputs["class_names"])
    a_p = freeseg["pred_logits_sim"].double().softmax(-1)[..., :c]  # [1, Q, C]
    a_c = freeseg["clip_cls"].double()[..., :c].softmax(-1)  # void dropped before the softmax
    _close(a_p[0], freeseg["A_p"], 1e-5, "golden A_p")
    _close(a_c[0], freeseg["A_c"], 1e-5, "golden A_c")
    h, w = int(inputs["height"]), int(inputs["width"])
    logits = F.interpolate(
        maft["pred_masks"].double(), size=(h, w), mode="bilinear", align_corners=True
    )
    _close(logits[0], maft["mask_pred_upsampled_logits"], 1e-4, "upsampled mask logits")
    soft = logits.sigmoid()
    valid = (soft > 0.5).flatten(2).any(-1)  # [1, Q]
    assert torch.equal(valid[0], maft["valid_flag"].bool())
    assert not bool(valid.all())  # the map-back of an invalid proposal is exercised
    seen = torch.tensor([bool(s) for s in inputs["seen_flags"]])
    for flags, s in (("with", seen), ("without", None)):
        gold = freeseg["extra_lambda_runs"][f"lambda_0.8_{flags}_trainable_flag"]
        o = ref_scores(ref_ensemble(a_p, a_c, valid, s, 0.8), soft)[0]
        scale = float(gold["sem_seg_scores"].abs().max())
        _close(o, gold["sem_seg_scores"], 1e-5 * scale, f"λ=0.8 {flags} flags")
