"""Augmentations (docs/method.md §6.2, §4.4): sizes, pad values, nearest labels, ColorAugSSD ops."""

from __future__ import annotations

import colorsys

import numpy as np
import pytest

from maft.data.transforms import (
    ColorAugSSD,
    build_test_transform,
    build_train_transform,
    shortest_edge_size,
)


def blocks(h: int, w: int, values=(0, 3, 7, 255), seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    small = rng.choice(values, size=(h // 8 + 1, w // 8 + 1))
    return np.kron(small, np.ones((8, 8), dtype=np.int64))[:h, :w].astype(np.int32)


@pytest.mark.parametrize(
    ("h", "w", "short", "cap", "expected"),
    [
        (480, 640, 640, 2560, (640, 853)),
        (640, 480, 320, 2560, (427, 320)),
        (100, 3000, 640, 2560, (85, 2560)),
        (64, 64, 64, 2560, (64, 64)),
    ],
)
def test_shortest_edge_size_hand_values(h, w, short, cap, expected):
    assert shortest_edge_size(h, w, short, cap) == expected


def test_test_transform_sizes_and_labels():
    img = np.random.default_rng(0).integers(0, 255, (30, 50, 3), dtype=np.uint8)
    lab = blocks(30, 50)
    kept = build_test_transform(short_side=48, max_long_side=2560)(image=img, mask=lab)
    assert kept["image"].shape == (48, 80, 3) and np.array_equal(kept["mask"], lab)  # default
    t = build_test_transform(short_side=48, max_long_side=2560, resize_label=True)
    out = t(image=img, mask=lab)
    assert out["image"].shape == (48, 80, 3) and out["mask"].shape == (48, 80)
    assert set(np.unique(out["mask"])) <= set(np.unique(lab))
    # nearest neighbour: every output label is the input label at the PIL-nearest source pixel
    ys = np.minimum(((np.arange(48) + 0.5) * 30 / 48).astype(int), 29)
    xs = np.minimum(((np.arange(80) + 0.5) * 50 / 80).astype(int), 49)
    assert np.array_equal(out["mask"], lab[ys][:, xs])


def test_train_transform_crop_pad_and_label_values():
    ignore = 65535
    t = build_train_transform([32, 40, 96], 2560, 64, ignore_index=ignore, seed=3)
    lab = blocks(30, 45, values=(0, 3, 846, ignore))
    img = np.full((30, 45, 3), 20, dtype=np.uint8)  # jitter keeps it < 128
    shorts = set()
    for _ in range(60):
        out = t(image=img, mask=lab)
        image, mask = out["image"], out["mask"]
        assert image.shape == (64, 64, 3) and mask.shape == (64, 64)
        assert set(np.unique(mask)) <= {0, 3, 846, ignore}
        pad = np.all(image == 128, axis=2)
        if pad.any():  # bottom/right pad only: the padded area is a union of full rows/columns
            rows, cols = pad.all(axis=1), pad.all(axis=0)
            assert np.array_equal(pad, rows[:, None] | cols[None, :])
            assert (mask[pad] == ignore).all()
            assert not rows[0] and not cols[0]
            shorts.add(int((~rows).sum()))
    assert shorts == {32, 40}  # 32x48 and 40x60 are padded; 96x144 is only cropped


def test_flip_and_crop_keep_image_and_label_aligned():
    lab = blocks(96, 128, values=(1, 2, 3, 4))
    img = np.repeat((lab * 50).astype(np.uint8)[..., None], 3, axis=2)
    t = build_train_transform([96, 128], 2560, 64, color_jitter=False, seed=0)
    for _ in range(20):
        out = t(image=img, mask=lab)
        agree = out["image"][..., 0].astype(int) == out["mask"] * 50
        assert agree.mean() > 0.8  # bilinear blur only at block borders


def test_short_side_choices_are_uniform_over_the_list():
    t = build_train_transform([32, 48], 2560, 16, color_jitter=False, hflip=False, seed=1)
    resize = t.transforms[0]
    sides = [
        min(resize.get_params_dependent_on_data({"shape": (40, 60)}, {})["size"])
        for _ in range(400)
    ]
    assert set(sides) == {32, 48} and 150 < sides.count(32) < 250


def test_color_aug_ops_against_hand_computation():
    aug = ColorAugSSD()
    none = {"beta": None, "contrast_first": True, "alpha": None, "sat": None, "hue": None}
    img = np.array([[[10, 100, 250], [0, 128, 255]]], dtype=np.uint8)
    bright = aug.apply(img.copy(), **{**none, "beta": 10.7})
    assert bright.tolist() == [[[20, 110, 255], [10, 138, 255]]]  # clip then truncate
    contrast = aug.apply(img.copy(), **{**none, "alpha": 1.5})
    assert contrast.tolist() == [[[15, 150, 255], [0, 192, 255]]]
    gray = aug.apply(img.copy(), **{**none, "sat": 0.0})
    assert (gray == gray.max(axis=2, keepdims=True)).all()  # S=0 -> R=G=B=V
    red = np.array([[[255, 0, 0]]], dtype=np.uint8)
    shifted = aug.apply(red, **{**none, "hue": 60})  # 60 OpenCV units = 120 degrees
    r, g, b = colorsys.hsv_to_rgb(120 / 360, 1.0, 1.0)
    assert shifted.tolist() == [[[round(r * 255), round(g * 255), round(b * 255)]]]


def test_color_aug_probabilities_and_ranges():
    aug = ColorAugSSD()
    aug.set_random_seed(0)
    draws = [aug.get_params() for _ in range(2000)]
    for key in ("beta", "alpha", "sat", "hue"):
        fired = [d[key] for d in draws if d[key] is not None]
        assert 0.45 < len(fired) / 2000 < 0.55
    assert 0.45 < np.mean([d["contrast_first"] for d in draws]) < 0.55
    hues = {d["hue"] for d in draws if d["hue"] is not None}
    assert min(hues) == -18 and max(hues) == 18 and all(isinstance(h, int) for h in hues)
    betas = [d["beta"] for d in draws if d["beta"] is not None]
    assert -32 <= min(betas) < -28 and 28 < max(betas) <= 32
