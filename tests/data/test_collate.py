"""Collate: pad to a multiple of 32 with image 128 / label ignore, keep valid and original sizes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from maft.data.collate import SemSegCollate


def sample(h, w, value, label_dtype=torch.int64, ignore=255):
    return {
        "image": torch.full((3, h, w), value, dtype=torch.uint8),
        "label": torch.full((h, w), ignore, dtype=label_dtype),
        "file_name": f"img{value}.jpg",
        "orig_size": (h * 2, w * 2),
    }


def test_collate_pads_and_records_sizes():
    a, b = sample(30, 50, 7), sample(40, 20, 9)
    a["label"][:, :5] = 3
    batch = SemSegCollate(ignore_index=255)([a, b])
    assert batch["image"].shape == (2, 3, 64, 64) and batch["image"].dtype == torch.uint8
    assert batch["label"].shape == (2, 64, 64) and batch["label"].dtype == torch.int64
    assert batch["valid_size"].tolist() == [[30, 50], [40, 20]]
    assert batch["orig_size"].tolist() == [[60, 100], [80, 40]]
    assert batch["file_name"] == ["img7.jpg", "img9.jpg"]
    assert (batch["image"][0, :, :30, :50] == 7).all() and (batch["image"][0, :, 30:] == 128).all()
    assert (batch["image"][1, :, :, 20:] == 128).all()
    assert (batch["label"][0, :30, :5] == 3).all() and (batch["label"][0, 30:] == 255).all()
    assert int((batch["label"] != 255).sum()) == 30 * 5


def test_collate_uint16_labels_become_int64_with_65535_ignore():
    s = sample(32, 32, 1, label_dtype=torch.uint16, ignore=65535)
    s["label"][0, 0] = 846
    batch = SemSegCollate(ignore_index=65535, size_divisibility=32)([s])
    assert batch["label"].dtype == torch.int64 and batch["image"].shape[-2:] == (32, 32)
    assert batch["label"][0, 0, 0] == 846 and batch["label"][0, 0, 1] == 65535


def test_original_size_labels_get_their_own_canvas():
    from maft.data.collate import SemSegCollate
    from maft.data.transforms import build_test_transform

    rng = np.random.default_rng(0)
    t = build_test_transform(short_side=32)
    samples = []
    for h, w in [(20, 30), (50, 40)]:
        label = rng.integers(0, 5, size=(h, w))
        out = t(image=rng.integers(0, 255, (h, w, 3), dtype=np.uint8), mask=label.astype(np.int32))
        assert out["mask"].shape == (h, w)  # label untouched by the test resize
        samples.append(
            {
                "image": torch.from_numpy(out["image"]).permute(2, 0, 1),
                "label": torch.from_numpy(out["mask"].astype(np.int64)),
                "file_name": f"{h}x{w}",
                "orig_size": (h, w),
            }
        )
    batch = SemSegCollate(ignore_index=255)(samples)
    assert batch["label"].shape == (2, 50, 40)
    assert torch.equal(batch["label"][0, :20, :30], samples[0]["label"])
    assert (batch["label"][0, 20:] == 255).all() and (batch["label"][0, :, 30:] == 255).all()
    assert batch["valid_size"].tolist() == [[32, 48], [40, 32]]


def test_label_of_a_third_size_is_refused():
    from maft.data.collate import SemSegCollate

    s = {
        "image": torch.zeros(3, 8, 8, dtype=torch.uint8),
        "label": torch.zeros(5, 5).long(),
        "file_name": "odd.png",
        "orig_size": (6, 6),
    }
    with pytest.raises(ValueError, match="odd.png"):
        SemSegCollate()([s])
