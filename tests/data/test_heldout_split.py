"""A held-out validation split of a custom folder: listed by the layout, read with its unseen pixels
ignored (``val_seen_only``), while the test split (``test_split``) keeps its unseen labels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from maft.data import FolderDataModule
from maft.data.dataset import SemSegDataset
from maft.data.layouts import folder_layout, get_layout

SKY, GRASS, WATER, IGNORE = 0, 1, 2, 255  # classes.txt order; water is unseen
H, W = 12, 16


def _label(split: str, i: int) -> np.ndarray:
    """The hand-painted label maps (uint8 [12, 16]) of the dataset below."""
    lab = np.full((H, W), IGNORE, np.uint8)
    if (split, i) == ("heldout", 0):  # sky 4 rows, water 4 rows, ignore 2 rows, grass 2 rows
        lab[0:4], lab[4:8], lab[10:12] = SKY, WATER, GRASS
    elif (split, i) == ("heldout", 2):  # grass 5 columns, water 11 columns
        lab[:, :5], lab[:, 5:] = GRASS, WATER
    elif (split, i) == ("val", 0):  # grass 6 columns, water 10 columns
        lab[:, :6], lab[:, 6:] = GRASS, WATER
    elif (split, i) == ("train", 0):  # sky 6 rows, water 6 rows
        lab[:6], lab[6:] = SKY, WATER
    else:  # all water: no seen pixel at all
        lab[:] = WATER
    return lab


SPLITS = {"train": 2, "val": 2, "heldout": 3}


@pytest.fixture
def root(tmp_path: Path) -> Path:
    root = tmp_path / "mydata"
    rng = np.random.default_rng(0)
    for split, n in SPLITS.items():
        (root / "images" / split).mkdir(parents=True)
        (root / "labels" / split).mkdir(parents=True)
        for i in range(n):
            image = rng.integers(0, 255, (H, W, 3), dtype=np.uint8)
            Image.fromarray(image, "RGB").save(root / "images" / split / f"{i:03d}.png")
            Image.fromarray(_label(split, i), "L").save(root / "labels" / split / f"{i:03d}.png")
    (root / "classes.txt").write_text("sky\ngrass\nwater | unseen\n")
    return root


def _module(root: Path, tmp_path: Path, **kwargs) -> FolderDataModule:
    return FolderDataModule(
        benchmark="folder",
        root=str(root),
        batch_size=1,
        val_batch_size=1,
        num_workers=0,
        pin_memory=False,
        test_short_side=H,
        cache_dir=str(tmp_path / "scan"),
        **kwargs,
    )


def _labels(loader) -> list[tuple[str, np.ndarray]]:
    """(file stem, label at its original size) of every image a loader yields, in order."""
    out = []
    for batch in loader:
        for name, label, (h, w) in zip(batch["file_name"], batch["label"], batch["orig_size"]):
            out.append((Path(name).stem, label[:h, :w].numpy()))
    return out


def _counts(label: np.ndarray) -> dict[int, int]:
    values, counts = np.unique(label, return_counts=True)
    return {int(v): int(c) for v, c in zip(values, counts)}


def test_folder_layout_lists_every_split_folder_under_images(root: Path) -> None:
    (root / "images" / "notes.txt").write_text("a file, not a split")
    layout = folder_layout(".png", root)
    assert sorted(layout.splits) == ["heldout", "train", "val"]
    held = layout.splits["heldout"]
    assert (held.image_dir, held.label_dir) == ("images/heldout", "labels/heldout")
    assert sorted(folder_layout(".png").splits) == ["train", "val"]  # no root: the two
    assert "heldout" in get_layout("folder", root=root).splits


def test_val_loader_ignores_unseen_and_test_loader_keeps_them(root: Path, tmp_path: Path) -> None:
    dm = _module(root, tmp_path, val_split="heldout", val_seen_only=True, test_split="val")
    dm.setup("fit")
    val = _labels(dm.val_dataloader())
    # heldout/001 (all water) has no seen pixel left: dropped
    assert [stem for stem, _ in val] == ["000", "002"]
    assert _counts(val[0][1]) == {SKY: 64, GRASS: 32, IGNORE: 64 + 32}
    assert _counts(val[1][1]) == {GRASS: 60, IGNORE: 132}
    assert dm.val_dataset.drop_unseen and dm.val_dataset.num_dropped == 1

    dm.setup("test")
    test = _labels(dm.test_dataloader())
    assert [stem for stem, _ in test] == ["000", "001"]  # the val split, nothing dropped
    assert _counts(test[0][1]) == {GRASS: 72, WATER: 120}
    assert _counts(test[1][1]) == {WATER: H * W}
    assert dm.num_test_images == {"folder": 2}


def test_val_seen_only_off_keeps_unseen_and_test_split_defaults_to_val_split(
    root: Path, tmp_path: Path
) -> None:
    dm = _module(root, tmp_path, val_split="heldout")
    dm.setup("fit")
    val = _labels(dm.val_dataloader())
    assert [stem for stem, _ in val] == ["000", "001", "002"]
    assert _counts(val[0][1]) == {SKY: 64, WATER: 64, IGNORE: 32, GRASS: 32}
    dm.setup("test")
    test = _labels(dm.test_dataloader())
    assert [stem for stem, _ in test] == ["000", "001", "002"]  # heldout, unseen kept
    assert _counts(test[2][1]) == {GRASS: 60, WATER: 132}


def test_training_still_drops_unseen(root: Path, tmp_path: Path) -> None:
    dm = _module(root, tmp_path, val_split="heldout", val_seen_only=True, test_split="val")
    dm.setup("fit")
    assert len(dm.train_dataset) == 1  # train/001 is all water
    assert not torch.isin(dm.train_dataset[0]["label"], torch.tensor([WATER])).any()


@pytest.mark.parametrize(
    ("split", "drop_unseen", "kept", "water"),
    [
        ("train", None, 1, False),  # default: training drops unseen
        ("train", False, 2, True),
        ("heldout", None, 3, True),  # default: evaluation splits keep them
        ("heldout", True, 2, False),
        ("val", False, 2, True),
    ],
)
def test_dataset_drop_unseen_explicit_and_default(
    root: Path, tmp_path: Path, split: str, drop_unseen: bool | None, kept: int, water: bool
) -> None:
    ds = SemSegDataset("folder", root, split, cache_dir=tmp_path / "scan", drop_unseen=drop_unseen)
    assert len(ds) == kept and ds.num_dropped == SPLITS[split] - kept
    labels = [ds[i]["label"] for i in range(len(ds))]
    has_water = any(bool((lab == WATER).any()) for lab in labels)
    assert has_water is water
    first = _label(split, 0).astype(np.int64)
    if not water:
        first[first == WATER] = IGNORE
    np.testing.assert_array_equal(labels[0].numpy(), first)


def test_drop_unseen_has_no_effect_without_unseen_classes(root: Path, tmp_path: Path) -> None:
    (root / "classes.txt").write_text("sky\ngrass\nwater\n")
    ds = SemSegDataset("folder", root, "heldout", cache_dir=tmp_path / "scan", drop_unseen=True)
    assert not ds.drop_unseen and len(ds) == 3
    assert int((ds[0]["label"] == WATER).sum()) == 64
