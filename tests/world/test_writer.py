"""The world written to disk in the custom-folder format."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from maft.data.vocabulary import Vocabulary
from maft.errors import DatasetLayoutError
from maft.world import UNSEEN_CLASSES, WORLD_CLASSES, generate_scene, scene_rng, write_world
from maft.world.writer import read_captions


def test_files_readable_with_right_dtypes(world_root: Path) -> None:
    for split, n in (("train", 6), ("val", 3)):
        images = sorted((world_root / "images" / split).glob("*.png"))
        labels = sorted((world_root / "labels" / split).glob("*.png"))
        assert [p.name for p in images] == [p.name for p in labels] and len(images) == n
        for ip, lp in zip(images, labels):
            img, lab = Image.open(ip), Image.open(lp)
            assert img.mode == "RGB" and img.size == (32, 32)
            assert lab.mode == "L" and lab.size == (32, 32)
            arr = np.asarray(lab)
            assert arr.dtype == np.uint8 and arr.max() < len(WORLD_CLASSES)


def test_files_equal_the_generator(world_root: Path) -> None:
    sc = generate_scene(scene_rng(7, "val", 2), 32)
    image = np.asarray(Image.open(world_root / "images/val/000002.png"))
    label = np.asarray(Image.open(world_root / "labels/val/000002.png"))
    np.testing.assert_array_equal(image, sc.image)
    np.testing.assert_array_equal(label, sc.label)
    caps = read_captions(world_root, "val")
    assert [c["file"] for c in caps] == ["000000.png", "000001.png", "000002.png"]
    assert caps[2]["caption"] == sc.caption


def test_classes_txt_parses_with_four_unseen(world_root: Path) -> None:
    vocab = Vocabulary.from_file(world_root / "classes.txt")
    assert vocab.names == list(WORLD_CLASSES)
    assert vocab.unseen_names == list(UNSEEN_CLASSES) and int((~vocab.seen).sum()) == 4


def test_world_json_and_idempotence(tmp_path: Path) -> None:
    first = write_world(tmp_path, 2, 1, size=32, seed=1, progress=False)
    meta = json.loads((tmp_path / "world.json").read_text())
    assert meta["seed"] == 1 and meta["size"] == 32 and meta["n_train"] == 2
    assert first["skipped"] is False and "generator_version" in meta
    png = tmp_path / "images/train/000000.png"
    stamp = png.stat().st_mtime_ns
    again = write_world(tmp_path, 2, 1, size=32, seed=1, progress=False)
    assert again["skipped"] is True and png.stat().st_mtime_ns == stamp
    before = np.asarray(Image.open(png)).copy()
    other = write_world(tmp_path, 2, 1, size=32, seed=2, progress=False)
    assert other["skipped"] is False and not np.array_equal(before, np.asarray(Image.open(png)))


def test_errors_name_the_path(tmp_path: Path) -> None:
    blocker = tmp_path / "not_a_dir.txt"
    blocker.write_text("x")
    with pytest.raises(DatasetLayoutError, match="not_a_dir.txt"):
        write_world(blocker, 1, 1, progress=False)
    with pytest.raises(DatasetLayoutError, match="val.jsonl"):
        read_captions(tmp_path, "val")
