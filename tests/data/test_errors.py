"""Each bad input raises its named error, naming the path and the fix."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from maft.data import SemSegDataset, write_benchmark
from maft.data.readers import write_label
from maft.data.vocabulary import Vocabulary
from maft.errors import ConfigError, DatasetFileError, DatasetLayoutError, LabelValueError


@pytest.fixture
def voc(tmp_path):
    return write_benchmark(tmp_path, "voc_20", n_images=2, splits=("val",))


@pytest.fixture
def ade(tmp_path):
    return write_benchmark(tmp_path, "ade20k_847", n_images=2, splits=("val",))


def test_missing_root_lists_expected_layout(tmp_path):
    root = tmp_path / "nowhere" / "coco"
    with pytest.raises(DatasetLayoutError, match="nowhere") as err:
        SemSegDataset("coco_stuff_171", root, "val")
    assert "stuffthingmaps_detectron2/val2017" in str(err.value)
    assert "MAFT_DATA_ROOT" in str(err.value)


def test_missing_split_folder(ade):
    with pytest.raises(DatasetLayoutError, match="annotations_detectron2/training"):
        SemSegDataset("ade20k_847", ade.root, "train")


def test_split_not_in_layout(voc):
    with pytest.raises(DatasetLayoutError, match="available splits: val"):
        SemSegDataset("pas_20", voc.root, "train")


def test_label_without_image(voc):
    voc.samples["val"][0].image_path.unlink()
    with pytest.raises(DatasetLayoutError, match=voc.samples["val"][0].stem):
        SemSegDataset("voc_20", voc.root, "val")


def test_image_without_label(ade):
    ade.samples["val"][1].label_path.unlink()
    with pytest.raises(DatasetLayoutError, match="ADE_val_00000002") as err:
        SemSegDataset("ade20k_847", ade.root, "val")
    assert "have no label" in str(err.value)


def test_corrupt_and_truncated_image(voc):
    path = voc.samples["val"][0].image_path
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # truncated JPEG
    ds = SemSegDataset("voc_20", voc.root, "val")
    with pytest.raises(DatasetFileError, match=path.name):
        ds[0]
    path.write_bytes(b"not an image at all")
    with pytest.raises(DatasetFileError, match="corrupt or truncated"):
        ds[0]


def test_label_values_out_of_range(voc):
    path = voc.samples["val"][1].label_path
    lab = np.asarray(Image.open(path)).copy()
    lab[0, :3] = [20, 21, 200]
    write_label(path, lab)
    ds = SemSegDataset("voc_20", voc.root, "val")
    with pytest.raises(LabelValueError, match=path.name) as err:
        ds[1]
    assert "[20, 21, 200]" in str(err.value) and "[0, 20)" in str(err.value)


def test_uint16_label_out_of_range(ade):
    path = ade.samples["val"][0].label_path
    write_label(path, np.full((64, 64), 847), "uint16")
    with pytest.raises(LabelValueError, match=r"\[847\]"):
        SemSegDataset("ade20k_847", ade.root, "val")[0]


def test_size_mismatch(voc):
    write_label(voc.samples["val"][0].label_path, np.zeros((10, 64), np.uint8))
    with pytest.raises(DatasetFileError, match="size mismatch"):
        SemSegDataset("voc_20", voc.root, "val")[0]


def test_colour_label_rejected(voc):
    path = voc.samples["val"][0].label_path
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(path)
    with pytest.raises(DatasetFileError, match="one channel"):
        SemSegDataset("voc_20", voc.root, "val")[0]


def test_empty_split(voc):
    for s in voc.samples["val"]:
        s.label_path.unlink()
    with pytest.raises(DatasetFileError, match="empty split"):
        SemSegDataset("voc_20", voc.root, "val")


def test_all_images_dropped_is_an_empty_split(tmp_path):
    sb = write_benchmark(tmp_path, "voc_20", n_images=1, splits=("train",))
    vocab = Vocabulary.from_benchmark("voc_20", "zero_shot")
    with pytest.raises(DatasetFileError, match="empty split"):
        SemSegDataset("voc_20", sb.root, "train", vocabulary=vocab)


def test_vocabulary_size_and_unknown_layout(voc):
    with pytest.raises(ConfigError, match="20"):
        SemSegDataset("voc_20", voc.root, "val", Vocabulary.from_benchmark("ade20k_150", None))
    with pytest.raises(ConfigError, match="valid layouts"):
        SemSegDataset("voc_20", voc.root, "val", layout="zsseg")
    with pytest.raises(ConfigError, match="no 'seen_only' layout"):
        SemSegDataset("pas_20", voc.root, "val", layout="seen_only")


def test_folder_errors(tmp_path):
    sb = write_benchmark(tmp_path, "folder", n_images=1)
    (sb.root / "classes.txt").unlink()
    with pytest.raises(DatasetLayoutError, match="classes.txt"):
        SemSegDataset("folder", sb.root, "val")
    write_label(sb.root / "labels" / "val" / "extra.tif", np.zeros((4, 4)), "uint16")
    with pytest.raises(DatasetLayoutError, match="mixes label formats"):
        SemSegDataset("folder", sb.root, "val", vocabulary=Vocabulary.from_names(["a"]))
