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


def test_heldout_split_is_written_from_its_own_stream(tmp_path: Path) -> None:
    out = write_world(tmp_path, 2, 2, size=32, seed=3, progress=False, n_heldout=3)
    assert out["skipped"] is False and out["n_heldout"] == 3
    assert json.loads((tmp_path / "world.json").read_text())["n_heldout"] == 3
    images = sorted(p.name for p in (tmp_path / "images/heldout").glob("*.png"))
    labels = sorted(p.name for p in (tmp_path / "labels/heldout").glob("*.png"))
    assert images == labels == ["000000.png", "000001.png", "000002.png"]
    assert [c["file"] for c in read_captions(tmp_path, "heldout")] == images
    for i in range(3):
        sc = generate_scene(scene_rng(3, "heldout", i), 32)
        image = np.asarray(Image.open(tmp_path / f"images/heldout/{i:06d}.png"))
        np.testing.assert_array_equal(image, sc.image)
        np.testing.assert_array_equal(
            np.asarray(Image.open(tmp_path / f"labels/heldout/{i:06d}.png")), sc.label
        )
        for other in ("train", "val") if i < 2 else ():  # same index, another split's scene
            pixels = np.asarray(Image.open(tmp_path / f"images/{other}/{i:06d}.png"))
            assert not np.array_equal(image, pixels), (other, i)
    again = write_world(tmp_path, 2, 2, size=32, seed=3, progress=False, n_heldout=3)
    assert again["skipped"] is True


def test_no_heldout_keeps_the_old_manifest_and_reuses_the_world(tmp_path: Path) -> None:
    first = write_world(tmp_path, 2, 1, size=32, seed=1, progress=False)
    meta = json.loads((tmp_path / "world.json").read_text())
    assert "n_heldout" not in meta and "n_heldout" not in first
    assert set(meta) == {
        "generator_version", "seed", "size", "n_train", "n_val", "classes", "unseen",
        "ignore_index",
    }  # fmt: skip
    assert not (tmp_path / "images/heldout").exists()
    assert not (tmp_path / "captions/heldout.jsonl").exists()
    png = tmp_path / "images/train/000000.png"
    stamp = png.stat().st_mtime_ns
    again = write_world(tmp_path, 2, 1, size=32, seed=1, progress=False, n_heldout=0)
    assert again["skipped"] is True and png.stat().st_mtime_ns == stamp
    # asking for a heldout split is another world: written, with its key
    grown = write_world(tmp_path, 2, 1, size=32, seed=1, progress=False, n_heldout=1)
    assert grown["skipped"] is False and len(list((tmp_path / "images/heldout").glob("*.png"))) == 1
    assert json.loads((tmp_path / "world.json").read_text())["n_heldout"] == 1


def test_heldout_stream_is_its_own() -> None:
    from maft.world.scenes import STREAMS

    assert "heldout" in STREAMS and len(set(STREAMS.values())) == len(STREAMS)
