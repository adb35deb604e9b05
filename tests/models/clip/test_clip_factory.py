"""build_clip: random weights, local files (open_clip, nested, OpenAI JIT/state dict), tags."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
from open_clip.transformer import QuickGELU

from maft.errors import CheckpointError, ConfigError
from maft.models.clip import ClipNormalization, build_clip, get_tokenizer
from maft.models.clip import factory as factory_mod

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


def _outputs(model: open_clip.CLIP) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    images = torch.randn(2, 3, 32, 32, generator=gen)
    tokens = open_clip.get_tokenizer("maft-tiny")(["a photo of a cat", "road, route"])
    with torch.no_grad():
        return model.encode_image(images), model.encode_text(tokens)


def _uses_quick_gelu(model: open_clip.CLIP) -> bool:
    return isinstance(model.visual.transformer.resblocks[0].mlp.gelu, QuickGELU)


def test_registered_config_creates_with_open_clip() -> None:
    model = open_clip.create_model("maft-tiny")
    assert "maft-tiny" in open_clip.list_models()
    assert model.visual.conv1.weight.shape == (64, 3, 8, 8)
    assert model.visual.transformer.resblocks[0].attn.num_heads == 2
    assert model.text_projection.shape == (32, 32)
    assert model.token_embedding.weight.shape == (49408, 32)


def test_random_weights_and_normalization() -> None:
    model, norm = build_clip("maft-tiny")
    assert isinstance(model, open_clip.CLIP)
    assert norm == ClipNormalization(mean=OPENAI_MEAN, std=OPENAI_STD, image_size=32)
    assert not _uses_quick_gelu(model)
    assert _uses_quick_gelu(build_clip("maft-tiny", quick_gelu=True)[0])


def test_normalize_matches_float64_formula() -> None:
    norm = ClipNormalization(mean=OPENAI_MEAN, std=OPENAI_STD, image_size=32)
    rng = np.random.default_rng(0)
    raw = rng.integers(0, 256, size=(2, 3, 5, 7), dtype=np.uint8)
    expected = (raw / 255.0 - np.array(OPENAI_MEAN)[:, None, None]) / np.array(OPENAI_STD)[
        :, None, None
    ]
    out_u8 = norm.normalize(torch.from_numpy(raw))
    out_f64 = norm.normalize(torch.from_numpy(raw).double())
    assert out_u8.dtype == torch.float32
    np.testing.assert_allclose(out_u8.numpy(), expected, atol=1e-5)
    np.testing.assert_allclose(out_f64.numpy(), expected, atol=1e-12)
    mean_pixel = torch.tensor(OPENAI_MEAN).view(1, 3, 1, 1) * 255.0
    assert norm.normalize(mean_pixel).abs().max() < 1e-6
    with pytest.raises(ValueError, match="RGB"):
        norm.normalize(torch.zeros(3, 4, 4))


def test_open_clip_file_roundtrip(tiny_clip: open_clip.CLIP, tiny_clip_file: Path) -> None:
    model, _ = build_clip("maft-tiny", str(tiny_clip_file))
    for ours, ref in zip(_outputs(model), _outputs(tiny_clip)):
        torch.testing.assert_close(ours, ref, rtol=0, atol=0)
    assert not _uses_quick_gelu(model)  # a plain open_clip file keeps the config's activation


@pytest.mark.parametrize("nesting", ["state_dict", "model", "lightning_prefix", "module"])
def test_nested_checkpoints(tiny_clip: open_clip.CLIP, tmp_path: Path, nesting: str) -> None:
    sd = tiny_clip.state_dict()
    if nesting == "state_dict":
        obj = {"state_dict": sd, "epoch": 3}
    elif nesting == "model":
        obj = {"model": sd, "iteration": 10}
    elif nesting == "lightning_prefix":
        extra = {"head.weight": torch.zeros(2)}
        obj = {"state_dict": {**{f"clip.{k}": v for k, v in sd.items()}, **extra}, "epoch": 1}
    else:
        obj = {f"module.{k}": v for k, v in sd.items()}
    path = tmp_path / f"{nesting}.ckpt"
    torch.save(obj, path)
    model, _ = build_clip("maft-tiny", str(path))
    torch.testing.assert_close(_outputs(model)[0], _outputs(tiny_clip)[0], rtol=0, atol=0)


def test_openai_state_dict_switches_to_quick_gelu(
    tiny_clip: open_clip.CLIP, tmp_path: Path
) -> None:
    sd = {k: v.half() for k, v in tiny_clip.state_dict().items()}  # OpenAI files are fp16
    sd.update(
        input_resolution=torch.tensor(32),
        context_length=torch.tensor(20),
        vocab_size=torch.tensor(49408),
    )
    path = tmp_path / "openai_sd.pt"
    torch.save(sd, path)
    model, _ = build_clip("maft-tiny", str(path))
    assert _uses_quick_gelu(model)
    assert next(model.parameters()).dtype == torch.float32
    ref = open_clip.create_model("maft-tiny", force_quick_gelu=True)
    ref.load_state_dict({k: v.float() for k, v in tiny_clip.half().state_dict().items()})
    torch.testing.assert_close(_outputs(model)[0], _outputs(ref.eval())[0], rtol=0, atol=0)
    with pytest.raises(CheckpointError, match="openai_sd.pt.*QuickGELU"):
        build_clip("maft-tiny", str(path), quick_gelu=False)


def test_openai_jit_archive(tiny_clip: open_clip.CLIP, tmp_path: Path) -> None:
    path = tmp_path / "ViT-tiny.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.save(torch.jit.script(tiny_clip), str(path))
    model, _ = build_clip("maft-tiny", str(path))
    assert _uses_quick_gelu(model)
    ref = open_clip.create_model("maft-tiny", force_quick_gelu=True).eval()
    ref.load_state_dict(tiny_clip.state_dict())
    torch.testing.assert_close(_outputs(model)[1], _outputs(ref)[1], rtol=0, atol=0)
    with pytest.raises(CheckpointError, match="ViT-tiny.pt"):
        build_clip("maft-tiny", str(path), quick_gelu=False)


def test_wrong_keys_name_file_and_keys(tiny_clip: open_clip.CLIP, tmp_path: Path) -> None:
    sd = tiny_clip.state_dict()
    sd["visual.bogus_weight"] = torch.zeros(1)
    del sd["ln_final.weight"]
    path = tmp_path / "broken.pt"
    torch.save(sd, path)
    with pytest.raises(
        CheckpointError, match=r"broken\.pt.*ln_final\.weight.*visual\.bogus_weight"
    ):
        build_clip("maft-tiny", str(path))


def test_wrong_shape(tiny_clip: open_clip.CLIP, tmp_path: Path) -> None:
    sd = tiny_clip.state_dict()
    sd["text_projection"] = torch.zeros(32, 16)
    path = tmp_path / "shape.pt"
    torch.save(sd, path)
    with pytest.raises(CheckpointError, match=r"shape\.pt.*text_projection"):
        build_clip("maft-tiny", str(path))


def test_not_a_file_nor_tag_and_unknown_model() -> None:
    with pytest.raises(CheckpointError, match="no_such_file.pt"):
        build_clip("maft-tiny", "no_such_file.pt")
    with pytest.raises(ConfigError, match="not-a-model"):
        build_clip("not-a-model")
    with pytest.raises(ConfigError, match="not-a-model"):
        get_tokenizer("not-a-model")


def test_tag_goes_through_download_then_file_loader(
    tiny_clip: open_clip.CLIP, tiny_clip_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A registered tag: only the download step is replaced; QuickGELU and mean/std follow it."""
    cfg = {
        "url": "https://example.invalid/w.pt",
        "quick_gelu": True,
        "mean": (0.5,) * 3,
        "std": (0.25,) * 3,
    }
    monkeypatch.setitem(open_clip.pretrained._PRETRAINED, "maft-tiny", {"faketag": cfg})
    calls = []

    def fake_download(name: str, tag: str, tag_cfg: dict) -> str:
        calls.append((name, tag, tag_cfg["url"]))
        return str(tiny_clip_file)

    monkeypatch.setattr(factory_mod, "_download_pretrained", fake_download)
    model, norm = build_clip("maft-tiny", "faketag")
    assert calls == [("maft-tiny", "faketag", cfg["url"])]
    assert _uses_quick_gelu(model)
    assert norm.mean == (0.5, 0.5, 0.5) and norm.std == (0.25, 0.25, 0.25)
    ref = open_clip.create_model("maft-tiny", force_quick_gelu=True).eval()
    ref.load_state_dict(tiny_clip.state_dict())
    torch.testing.assert_close(_outputs(model)[0], _outputs(ref)[0], rtol=0, atol=0)
    with pytest.raises(CheckpointError, match="QuickGELU"):
        build_clip("maft-tiny", "faketag", quick_gelu=False)


def test_tokenizer_is_real_bpe_with_config_context() -> None:
    tok = get_tokenizer("maft-tiny")
    ids = tok(["a photo of a cat"])
    assert ids.shape == (1, 20)
    ref = open_clip.tokenize(["a photo of a cat"], context_length=20)
    torch.testing.assert_close(ids, ref)


@pytest.mark.real_weights
def test_real_openai_vit_b16_archive() -> None:
    """``$MAFT_WEIGHTS_DIR/ViT-B-16.pt`` (OpenAI's JIT release) loads with QuickGELU."""
    path = Path(os.environ.get("MAFT_WEIGHTS_DIR", "/nonexistent")) / "ViT-B-16.pt"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    model, norm = build_clip("ViT-B-16", str(path))
    assert _uses_quick_gelu(model) and norm.image_size == 224
    with torch.no_grad():
        emb = model.encode_image(torch.zeros(1, 3, 224, 224))
    assert torch.isfinite(emb).all()
