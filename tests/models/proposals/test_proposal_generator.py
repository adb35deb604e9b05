"""MaskProposalGenerator: shapes, CLIP-space scores, masked attention, backbone loading."""

from __future__ import annotations

import subprocess
import sys

import pytest
import timm
import torch
import torch.nn.functional as F
from torchvision.ops.misc import FrozenBatchNorm2d

from maft.errors import ConfigError
from maft.models.proposals import MaskProposalGenerator, proposal_scores
from maft.models.proposals.backbone import TimmBackbone
from maft.models.proposals.layers import Attention
from maft.models.proposals.transformer_decoder import attention_mask_from_logits


def _text(c: int = 3, d: int = 16) -> torch.Tensor:
    return F.normalize(torch.randn(c, d), dim=-1)


def test_output_shapes_and_aux(tiny_generator_kwargs: dict) -> None:
    g = MaskProposalGenerator(**tiny_generator_kwargs, clip_dim=16)
    out = g(torch.rand(2, 3, 64, 96) * 255, _text())
    assert out["mask_logits"].shape == (2, 6, 16, 24)
    assert out["class_logits"].shape == (2, 6, 4)
    assert len(out["aux_outputs"]) == tiny_generator_kwargs["dec_layers"]
    for aux in out["aux_outputs"]:
        assert aux["mask_logits"].shape == (2, 6, 16, 24) and aux["class_logits"].shape == (2, 6, 4)
    assert not torch.equal(out["aux_outputs"][-1]["mask_logits"], out["mask_logits"])


def test_class_logits_are_cosine_x100_with_void_last(tiny_generator_kwargs: dict) -> None:
    g = MaskProposalGenerator(**tiny_generator_kwargs, clip_dim=16)
    text = _text()
    vocab = g.vocabulary(text)
    void = g.void_embedding.detach().double()[0]
    torch.testing.assert_close(vocab[-1].double(), void / void.norm())
    emb = torch.randn(2, 6, 16)
    logits = g.classify(emb, vocab).double()
    e = emb.double() / emb.double().norm(dim=-1, keepdim=True)
    ref = 100 * torch.einsum(
        "bnd,cd->bnc", e, torch.cat([text.double(), (void / void.norm())[None]])
    )
    torch.testing.assert_close(logits, ref, rtol=1e-5, atol=1e-4)
    assert float(logits.detach().abs().max()) <= 100 + 1e-3


def test_void_embedding_init_scale() -> None:
    g = MaskProposalGenerator(
        backbone="test_resnet",
        hidden_dim=32,
        nheads=4,
        dec_layers=1,
        enc_layers=1,
        num_queries=2,
        mask_dim=32,
        clip_dim=512,
    )
    assert g.void_embedding.shape == (1, 512)
    assert float(g.void_embedding.detach().std()) == pytest.approx(512**-0.5, rel=0.2)


def test_proposal_scores_drop_void_after_softmax() -> None:
    logits = torch.randn(2, 5, 4, dtype=torch.float64) * 5
    a_p = proposal_scores(logits)
    exp = logits.exp()
    ref = exp[..., :3] / exp.sum(-1, keepdim=True)
    torch.testing.assert_close(a_p, ref)
    torch.testing.assert_close(a_p.sum(-1), 1 - ref.new_tensor(1) * (exp[..., 3] / exp.sum(-1)))


def test_attention_mask_threshold_and_empty_fallback() -> None:
    logits = torch.full((1, 2, 2, 2), -5.0)
    logits[0, 0, 0, 1] = 3.0  # query 0: only pixel (0, 1); query 1: empty mask
    mask = attention_mask_from_logits(logits, (2, 2))
    assert mask.shape == (1, 1, 2, 4) and mask.dtype == torch.bool
    assert mask[0, 0, 0].tolist() == [False, True, False, False]
    assert mask[0, 0, 1].tolist() == [True, True, True, True]


def test_masked_cross_attention_ignores_blocked_pixels() -> None:
    attn = Attention(8, 2)
    q, mem = torch.randn(1, 2, 8), torch.randn(1, 5, 8)
    mask = torch.tensor([[True, True, False, False, False], [True] * 5])[None, None]
    base = attn(q, mem, mem, mask)
    blocked = mem.clone()
    blocked[:, 2:] += 10.0  # query 0 may not see tokens 2..4
    moved = attn(q, blocked, blocked, mask)
    torch.testing.assert_close(moved[0, 0], base[0, 0])
    assert not torch.allclose(moved[0, 1], base[0, 1])


def test_context_interaction_makes_masks_text_dependent(tiny_generator_kwargs: dict) -> None:
    x = torch.rand(1, 3, 64, 64) * 255
    plain = MaskProposalGenerator(**tiny_generator_kwargs, clip_dim=16).eval()
    t1, t2 = _text(), _text()
    torch.testing.assert_close(plain(x, t1)["mask_logits"], plain(x, t2)["mask_logits"])
    inter = MaskProposalGenerator(**tiny_generator_kwargs, clip_dim=16, context_interaction=True)
    inter.eval()
    assert not torch.allclose(inter(x, t1)["mask_logits"], inter(x, t2)["mask_logits"])
    gammas = [m.gamma for m in inter.interaction.modules() if hasattr(m, "gamma")]
    assert len(gammas) == 4 and all(torch.all(g == 0.1) for g in gammas)


def test_input_checks(tiny_generator_kwargs: dict) -> None:
    g = MaskProposalGenerator(**tiny_generator_kwargs, clip_dim=16)
    with pytest.raises(ValueError, match="multiple of 32"):
        g(torch.rand(1, 3, 48, 64), _text())
    with pytest.raises(ValueError, match="clip_dim"):
        g(torch.rand(1, 3, 32, 32), _text(d=8))


def test_gradients_reach_backbone_and_void(tiny_generator_kwargs: dict) -> None:
    g = MaskProposalGenerator(**tiny_generator_kwargs, clip_dim=16)
    out = g(torch.rand(1, 3, 32, 32) * 255, _text())
    (out["mask_logits"].mean() + out["class_logits"].logsumexp(-1).mean()).backward()
    assert g.void_embedding.grad is not None and g.void_embedding.grad.abs().sum() > 0
    conv = next(p for n, p in g.backbone.named_parameters() if "conv" in n)
    assert conv.grad is not None and conv.grad.abs().sum() > 0


def test_frozen_batchnorm() -> None:
    frozen = TimmBackbone("test_resnet", freeze_bn=True)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in frozen.modules())
    assert any(isinstance(m, FrozenBatchNorm2d) for m in frozen.modules())
    trainable = TimmBackbone("test_resnet", freeze_bn=False)
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in trainable.modules())
    feats = frozen(torch.randn(1, 3, 64, 64))
    assert [f.shape[-1] for f in feats.values()] == [16, 8, 4, 2]


def test_backbone_loads_local_weights_and_never_downloads(tmp_path) -> None:
    src = timm.create_model("test_resnet", pretrained=False)
    path = tmp_path / "test_resnet.pth"
    torch.save(src.state_dict(), path)
    bb = TimmBackbone("test_resnet", weights=str(path), freeze_bn=False)
    torch.testing.assert_close(bb.body.conv1[0].weight, src.conv1[0].weight)
    with pytest.raises(ConfigError, match="missing.pth"):
        TimmBackbone("test_resnet", weights=str(tmp_path / "missing.pth"))


@pytest.mark.slow  # a fresh interpreter importing torch takes ~5-15 s on a busy 2-core machine
def test_models_and_losses_do_not_import_lightning() -> None:
    code = (
        "import sys, maft.models.proposals, maft.losses.set_criterion; "
        "assert 'lightning' not in sys.modules and 'pytorch_lightning' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
