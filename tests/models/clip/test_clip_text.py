"""TextClassifier: ViLD template averaging vs a float64 per-prompt loop, caches, logits."""

from __future__ import annotations

from pathlib import Path

import open_clip
import pytest
import torch

from maft.errors import VocabularyError
from maft.models.clip import VILD_TEMPLATES, TextClassifier

NAMES = ["cat", "road, route", "dining table"]


def _reference(model: open_clip.CLIP, tokenizer, names: list[str]) -> torch.Tensor:
    """One class at a time, float64 per-template normalisation and averaging."""
    rows = []
    with torch.no_grad():
        for name in names:
            prompts = [template.format(name) for template in VILD_TEMPLATES]
            emb = model.encode_text(tokenizer(prompts)).double()  # [T, D]
            per_template = [e / e.norm() for e in emb]
            mean = sum(per_template) / len(per_template)
            rows.append(mean / mean.norm())
    return torch.stack(rows)


def test_templates_are_the_vild_set() -> None:
    assert len(VILD_TEMPLATES) == 14 and len(set(VILD_TEMPLATES)) == 14
    assert VILD_TEMPLATES[0] == "a photo of a {}."
    assert VILD_TEMPLATES[1] == "This is a photo of a {}"
    assert VILD_TEMPLATES[-1] == "There is a large {} in the scene."
    assert all(t.count("{}") == 1 for t in VILD_TEMPLATES)


def test_embeddings_match_per_prompt_float64_loop(tiny_clip, tiny_tokenizer) -> None:
    clf = TextClassifier(tiny_clip, tiny_tokenizer, chunk_size=5)  # chunks cross class borders
    emb = clf(NAMES)
    assert emb.shape == (3, 32) and emb.dtype == torch.float32
    torch.testing.assert_close(
        emb.double(), _reference(tiny_clip, tiny_tokenizer, NAMES), atol=1e-5, rtol=0
    )
    torch.testing.assert_close(emb.norm(dim=-1), torch.ones(3))
    assert not emb.requires_grad


def test_names_are_stripped_and_used_verbatim(tiny_clip, tiny_tokenizer) -> None:
    clf = TextClassifier(tiny_clip, tiny_tokenizer)
    torch.testing.assert_close(clf(["  road, route \n"]), clf(["road, route"]), rtol=0, atol=0)
    # the comma is kept: "road, route" differs from "road route"
    assert (clf(["road, route"]) - clf(["road route"])).abs().max() > 1e-4


def test_text_tower_frozen_image_tower_untouched(tiny_clip, tiny_tokenizer) -> None:
    TextClassifier(tiny_clip, tiny_tokenizer)
    assert not tiny_clip.token_embedding.weight.requires_grad
    assert not tiny_clip.text_projection.requires_grad
    assert tiny_clip.visual.conv1.weight.requires_grad
    with torch.enable_grad():
        assert not TextClassifier(tiny_clip, tiny_tokenizer)(NAMES).requires_grad


def test_memory_cache(tiny_clip, tiny_tokenizer, monkeypatch: pytest.MonkeyPatch) -> None:
    clf = TextClassifier(tiny_clip, tiny_tokenizer)
    first = clf(NAMES)
    calls = []
    monkeypatch.setattr(clf, "encode", lambda names: calls.append(names))
    second = clf([f" {n}" for n in NAMES])
    assert calls == [] and second is first


def test_disk_cache_keyed_by_weights_and_names(tiny_clip, tiny_tokenizer, tmp_path: Path) -> None:
    first = TextClassifier(tiny_clip, tiny_tokenizer, cache_dir=str(tmp_path))(NAMES)
    assert len(list(tmp_path.glob("*.pt"))) == 1

    clf = TextClassifier(tiny_clip, tiny_tokenizer, cache_dir=str(tmp_path))
    clf.encode = lambda names: pytest.fail("should have been read from disk")
    torch.testing.assert_close(clf(NAMES), first, rtol=0, atol=0)

    TextClassifier(tiny_clip, tiny_tokenizer, cache_dir=str(tmp_path))(NAMES[:2])
    assert len(list(tmp_path.glob("*.pt"))) == 2  # other vocabulary, other file

    with torch.no_grad():
        tiny_clip.ln_final.bias.add_(0.5)  # other text weights → other key, recomputed
    changed = TextClassifier(tiny_clip, tiny_tokenizer, cache_dir=str(tmp_path))(NAMES)
    assert len(list(tmp_path.glob("*.pt"))) == 3
    assert (changed - first).abs().max() > 1e-4


def test_visual_weights_do_not_change_the_key(tiny_clip, tiny_tokenizer) -> None:
    before = TextClassifier(tiny_clip, tiny_tokenizer).weights_digest()
    with torch.no_grad():
        tiny_clip.visual.proj.add_(1.0)
    assert TextClassifier(tiny_clip, tiny_tokenizer).weights_digest() == before
    other = TextClassifier(tiny_clip, tiny_tokenizer, templates=["a {}"]).weights_digest()
    assert other != before


def test_logits_fixed_temperature_100() -> None:
    gen = torch.Generator().manual_seed(0)
    image = torch.randn(2, 5, 8, generator=gen, dtype=torch.float64) * 3.0
    text = torch.nn.functional.normalize(
        torch.randn(4, 8, generator=gen, dtype=torch.float64), dim=-1
    )
    out = TextClassifier.logits(image, text)
    assert out.shape == (2, 5, 4)
    for b in range(2):
        for n in range(5):
            for c in range(4):
                cos = torch.dot(image[b, n], text[c]) / image[b, n].norm()
                assert abs(out[b, n, c].item() - 100.0 * cos.item()) < 1e-9


def test_bad_vocabulary_and_templates(tiny_clip, tiny_tokenizer) -> None:
    clf = TextClassifier(tiny_clip, tiny_tokenizer)
    with pytest.raises(VocabularyError):
        clf([])
    with pytest.raises(VocabularyError):
        clf(["cat", "  "])
    with pytest.raises(ValueError, match="placeholder"):
        TextClassifier(tiny_clip, tiny_tokenizer, templates=["no placeholder"])
