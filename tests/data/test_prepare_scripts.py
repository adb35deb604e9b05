"""Each scripts/prepare_*.py converts a tiny raw fixture exactly (benchmarks.json conversions)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from maft.data import SemSegDataset
from maft.data.synthetic import (
    write_raw_ade20k_150,
    write_raw_ade20k_full,
    write_raw_coco_stuff,
    write_raw_pascal_context,
    write_raw_voc,
)


def read(path):
    with Image.open(path) as im:
        return im.mode, np.asarray(im)


def row(values, h=4):
    """A label map whose column j holds values[j] (h rows)."""
    return np.tile(np.asarray(values), (h, 1))


def test_coco_stuff(tmp_path, load_script, capsys):
    coco = tmp_path / "coco"
    # raw = COCO id - 1: person(1)->0, bicycle(2)->1, id 12 (no class)->255, banner(92)->80,
    # wood(182)->170, other(183)->255, unlabelled 255->255
    raw = row([0, 1, 11, 91, 181, 182, 255])
    write_raw_coco_stuff(coco, {"val": {"000000000001": raw, "000000000002": row([255] * 7)}})
    mod = load_script("prepare_coco_stuff")
    assert mod.main(["--root", str(coco), "--splits", "val2017"]) == 0
    out = coco / "stuffthingmaps_detectron2" / "val2017"
    mode, lab = read(out / "000000000001.png")
    assert mode == "L" and lab.tolist() == row([0, 1, 255, 80, 170, 255, 255]).tolist()
    assert not (out / "000000000002.png").exists()  # all-ignore maps are not written
    assert "wrote 1 file(s)" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="--force"):
        mod.main(["--root", str(coco), "--splits", "val2017"])
    mod.main(["--root", str(coco), "--splits", "val2017", "--force"])
    ds = SemSegDataset("coco_stuff_171", coco, "val")  # the unlabelled image is skipped
    assert len(ds) == 1 and ds[0]["label"][0].tolist() == [0, 1, 255, 80, 170, 255, 255]


def test_voc(tmp_path, load_script):
    voc = tmp_path / "VOC2012"
    raw = row([0, 1, 15, 20, 21, 255])  # background, aeroplane, person(15)->14, tv(20)->19
    write_raw_voc(voc, {"val": {"2007_000001": raw, "2007_000002": row([0, 0, 255])}})
    assert load_script("prepare_voc").main(["--root", str(voc)]) == 0
    out = voc / "annotations_ovs" / "val"
    assert read(out / "2007_000001.png")[1].tolist() == row([255, 0, 14, 19, 255, 255]).tolist()
    assert not (out / "2007_000002.png").exists()
    assert len(SemSegDataset("voc_20", voc, "val")) == 1


def test_ade20k_full(tmp_path, load_script):
    ade = tmp_path / "ade"
    # ADE object ids: 2978 (wall) -> 0, 312 (building) -> 1, 3148 -> 846, 0 and 5 unmapped
    small = row([2978, 312, 3148, 0, 5], h=6)
    big = np.kron(np.array([[2978, 3148], [312, 0]]), np.ones((300, 350), dtype=np.int64))
    write_raw_ade20k_full(ade, {"ADE_val_00000001": small, "ADE_train_00000007": big})
    root = ade / "ADE20K_2021_17_01"
    assert load_script("prepare_ade20k").main(["847", "--root", str(root)]) == 0
    mode, lab = read(root / "annotations_detectron2" / "validation" / "ADE_val_00000001.tif")
    assert mode == "I;16" and lab.tolist() == row([0, 1, 846, 65535, 65535], h=6).tolist()
    # 600x700: short side above 512 -> 512 x round(700 / 600 * 512) = 512 x 597
    mode, lab = read(root / "annotations_detectron2" / "training" / "ADE_train_00000007.tif")
    img = Image.open(root / "images_detectron2" / "training" / "ADE_train_00000007.jpg")
    assert lab.shape == (512, 597) and img.size == (597, 512)
    assert (lab[:200, :250] == 0).all() and (lab[:200, -250:] == 846).all()
    assert (lab[-200:, :250] == 1).all() and (lab[-200:, -250:] == 65535).all()
    assert set(np.unique(lab).tolist()) == {0, 1, 846, 65535}
    ds = SemSegDataset("ade20k_847", root, "val")
    assert ds[0]["label"].tolist() == row([0, 1, 846, 65535, 65535], h=6).tolist()


def test_ade20k_150(tmp_path, load_script):
    ade = tmp_path / "ADEChallengeData2016"
    maps = {
        s: {f"ADE_{s[:5] if s == 'training' else 'val'}_00000001": row([0, 1, 150])}
        for s in ("training", "validation")
    }
    write_raw_ade20k_150(ade, maps)
    assert load_script("prepare_ade20k").main(["150", "--root", str(ade)]) == 0
    mode, lab = read(ade / "annotations_detectron2" / "validation" / "ADE_val_00000001.png")
    assert mode == "L" and lab.tolist() == row([255, 0, 149]).tolist()
    assert SemSegDataset("ade20k_150", ade, "val")[0]["label"][0].tolist() == [255, 0, 149]


def test_pascal_context(tmp_path, load_script):
    voc = tmp_path / "VOC2010"
    # LabelMap: 0 unlabelled, 2 aeroplane, 9 bag, 458 wood (last PC-59 id), 459 (not in PC-59)
    lm = row([0, 2, 9, 458, 459, 1])
    write_raw_pascal_context(voc, {"val": {"2008_000002": lm}, "train": {"2008_000003": lm}})
    assert load_script("prepare_pascal_context").main(["--root", str(voc)]) == 0
    mode, l459 = read(voc / "annotations_detectron2_ovs" / "pc459_val" / "2008_000002.tif")
    assert mode == "I;16" and l459.tolist() == row([65535, 1, 8, 457, 458, 0]).tolist()
    mode, l59 = read(voc / "annotations_detectron2_ovs" / "pc59_val" / "2008_000002.png")
    assert mode == "L" and l59.tolist() == row([255, 0, 1, 58, 255, 255]).tolist()
    assert sorted(p.name for p in (voc / "val" / "image").iterdir()) == ["2008_000002.jpg"]
    d59 = SemSegDataset("pcontext_59", voc, "val")
    d459 = SemSegDataset("pcontext_459", voc, "val")
    assert d59.vocabulary.names[58] == "wood" and d459.vocabulary.names[457] == "wood"
    assert d59.vocabulary.names[1] == d459.vocabulary.names[8] == "bag"
    assert torch.equal(d459[0]["label"][0], torch.tensor([65535, 1, 8, 457, 458, 0]))
