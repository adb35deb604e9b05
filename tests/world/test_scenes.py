"""Generator of the built-in world: determinism, labels, region areas and captions."""

from __future__ import annotations

import re

import numpy as np
import pytest

from maft.world import UNSEEN_CLASSES, WORLD_CLASSES, generate_scene, scene_rng
from maft.world.scenes import MAX_CAPTION_TOKENS, caption_from_label, count_tokens, make_caption


def _scenes(n: int, size: int = 64, seed: int = 0) -> list:
    return [generate_scene(scene_rng(seed, "train", i), size) for i in range(n)]


def test_class_list_and_split() -> None:
    assert len(WORLD_CLASSES) == 16 and len(set(WORLD_CLASSES)) == 16
    assert len(UNSEEN_CLASSES) == 4 and set(UNSEEN_CLASSES) <= set(WORLD_CLASSES)
    from maft.world.textures import PAINTERS

    assert list(PAINTERS) == list(WORLD_CLASSES)  # one painter per class, in label order


def test_same_seed_same_scene_and_streams_differ() -> None:
    a = generate_scene(scene_rng(3, "train", 5))
    b = generate_scene(scene_rng(3, "train", 5))
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.label, b.label)
    assert a.caption == b.caption and a.classes == b.classes
    c = generate_scene(scene_rng(3, "val", 5))
    d = generate_scene(scene_rng(4, "train", 5))
    assert not np.array_equal(a.image, c.image) and not np.array_equal(a.image, d.image)


@pytest.mark.parametrize("size", [32, 64, 96])
def test_labels_in_range_and_match_classes(size: int) -> None:
    for sc in _scenes(25, size, seed=1):
        assert sc.image.shape == (size, size, 3) and sc.image.dtype == np.uint8
        assert sc.label.shape == (size, size) and sc.label.dtype == np.uint8
        assert int(sc.label.max()) < len(WORLD_CLASSES)
        assert len(set(sc.classes)) == len(sc.classes)  # distinct classes per image
        assert set(np.unique(sc.label).tolist()) == set(sc.classes)


def test_every_region_covers_min_area() -> None:
    counts = {k: 0 for k in range(1, 5)}
    for sc in _scenes(120, 64, seed=2):
        counts[len(sc.classes)] += 1
        for c in sc.classes:
            assert (sc.label == c).sum() >= 0.06 * 64 * 64, (sc.classes, c)
    assert all(v > 0 for v in counts.values()), counts  # 1, 2, 3 and 4 regions all occur


def test_forced_layout_and_classes() -> None:
    sc = generate_scene(scene_rng(0, "eval_image", 0), 48, n_regions=1, classes=[13])
    assert sc.classes == [13] and (sc.label == 13).all()
    assert "tiger" in sc.caption


def _named(caption: str) -> list[str]:
    return [w for w in re.findall(r"[a-z]+", caption) if w in WORLD_CLASSES]


def test_caption_names_exactly_the_classes_present() -> None:
    for sc in _scenes(80, 32, seed=3):
        named = _named(sc.caption)
        assert sorted(named) == sorted(WORLD_CLASSES[c] for c in sc.classes), sc.caption


def test_caption_lengths_with_real_tokenizer() -> None:
    from maft.models.clip import get_tokenizer

    tok = get_tokenizer("maft-world")
    captions = [sc.caption for sc in _scenes(60, 32, seed=4)]
    rng = np.random.default_rng(0)
    for group in range(len(WORLD_CLASSES) // 4):  # every class name in four-region captions
        four = list(WORLD_CLASSES[4 * group : 4 * group + 4])
        captions += [make_caption(rng, four, [0.1, 0.2, 0.3, 0.4]) for _ in range(15)]
    ids = tok(captions)  # [N, 20]
    assert ids.shape[1] == 20
    for cap, row in zip(captions, ids.tolist()):
        used = [t for t in row if t != 0]
        assert used[-1] == 49407, f"caption truncated: {cap!r}"  # end token survived
        assert len(used) - 2 == count_tokens(cap) <= MAX_CAPTION_TOKENS, cap
    assert len({c.split(" ")[0] for c in captions}) >= 4  # several templates in use


def test_caption_from_label_uses_area_threshold() -> None:
    label = np.zeros((10, 10), np.uint8)
    label[:, :5] = 4  # brick 50 %
    label[0, 5:8] = 9  # marble 3 % -> below 4 %, not named
    cap, present = caption_from_label(np.random.default_rng(0), label)
    assert present == [0, 4] and sorted(_named(cap)) == ["brick", "sky"]
