"""Every benchmark reads from its synthetic layout with exact label values."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from PIL import Image

import maft.data.dataset as dataset_mod
from maft.data import SemSegDataset, write_benchmark
from maft.data.layouts import SUBFOLDERS
from maft.data.vocabulary import Vocabulary

ALL = [
    "coco_stuff_171",
    "voc_20",
    "pas_20",
    "ade20k_847",
    "ade20k_150",
    "pcontext_59",
    "pcontext_459",
    "folder",
]
ZERO_SHOT = ["coco_stuff_171", "voc_20", "ade20k_847"]


@pytest.mark.parametrize("benchmark", ALL)
def test_every_benchmark_reads_exact_labels(tmp_path, benchmark, paint):
    sb = write_benchmark(tmp_path, benchmark, n_images=3, size=(24, 40))
    assert sb.root == tmp_path / SUBFOLDERS[benchmark]
    vocab = Vocabulary(
        sb.vocabulary.names, torch.ones(len(sb.vocabulary), dtype=torch.bool), sb.ignore_index
    )
    for split, samples in sb.samples.items():
        ds = SemSegDataset(benchmark, sb.root, split, vocabulary=vocab)
        assert len(ds) == len(samples) == 3
        for i, s in enumerate(samples):
            item = ds[i]
            assert item["image"].dtype == torch.uint8 and item["image"].shape == (3, 24, 40)
            assert item["label"].dtype == torch.int64
            assert item["orig_size"] == (24, 40)
            assert item["file_name"] == str(s.image_path)
            expected = paint(s.rects, (24, 40), sb.ignore_index)
            assert torch.equal(item["label"], torch.from_numpy(expected))


@pytest.mark.parametrize(
    ("benchmark", "mode", "last"),
    [("ade20k_847", "I;16", 846), ("pcontext_459", "I;16", 458), ("coco_stuff_171", "L", 170)],
)
def test_disk_encoding_and_largest_index(tmp_path, benchmark, mode, last):
    sb = write_benchmark(tmp_path, benchmark, n_images=2)
    s = sb.samples["val"][1]  # image 1 holds class C-1
    with Image.open(s.label_path) as im:
        assert im.mode == mode
        raw = np.asarray(im)
    ignore = 65535 if mode == "I;16" else 255
    assert set(np.unique(raw).tolist()) <= {0, last, ignore} | {r[4] for r in s.rects}
    assert last in raw and ignore in raw
    lab = SemSegDataset(benchmark, sb.root, "val")[1]["label"]
    assert int(lab.max()) == ignore and bool((lab == last).any())


def test_voc_background_is_ignore(tmp_path, paint):
    sb = write_benchmark(tmp_path, "voc_20", n_images=2)
    s = sb.samples["val"][1]  # classes 0 and 19: class 0 must not be confused with background
    raw = np.asarray(Image.open(s.label_path))
    expected = paint(s.rects, (64, 64), 255)
    assert raw.dtype == np.uint8 and np.array_equal(raw, expected)
    assert 0 in raw and (raw == 255).sum() == (expected == 255).sum() > 0


@pytest.mark.parametrize("benchmark", ZERO_SHOT)
def test_zero_shot_training_drops_unseen(tmp_path, benchmark, paint, caplog):
    sb = write_benchmark(tmp_path, benchmark, n_images=4)
    vocab = Vocabulary.from_benchmark(benchmark, "zero_shot")
    with caplog.at_level(logging.INFO, logger="maft.data.dataset"):
        ds = SemSegDataset(benchmark, sb.root, "train", vocabulary=vocab)
    assert len(ds) == 3 and ds.num_dropped == 1  # image 0 holds only unseen classes
    assert "dropped 1 of 4" in caplog.text
    unseen = set(vocab.unseen_indices.tolist())
    for i, s in enumerate(sb.samples["train"][1:]):
        expected = paint(s.rects, (64, 64), sb.ignore_index)
        expected[np.isin(expected, list(unseen))] = sb.ignore_index
        got = ds[i]["label"]
        assert torch.equal(got, torch.from_numpy(expected))
        assert not set(got.unique().tolist()) & unseen
    # validation keeps unseen classes, in the full index space
    val = SemSegDataset(benchmark, sb.root, "val", vocabulary=vocab)
    assert len(val) == 4 and set(val[0]["label"].unique().tolist()) & unseen


def test_kept_list_is_cached(tmp_path, monkeypatch, _isolated_cache):
    sb = write_benchmark(tmp_path, "voc_20", n_images=4)
    vocab = Vocabulary.from_benchmark("voc_20", "zero_shot")
    calls = []
    real = dataset_mod.read_label
    monkeypatch.setattr(dataset_mod, "read_label", lambda p: calls.append(p) or real(p))
    SemSegDataset("voc_20", sb.root, "train", vocabulary=vocab)
    assert len(calls) == 4 and len(list(_isolated_cache.glob("scan_*.json"))) == 1
    calls.clear()
    ds = SemSegDataset("voc_20", sb.root, "train", vocabulary=vocab)
    assert calls == [] and len(ds) == 3


@pytest.mark.parametrize("benchmark", ZERO_SHOT)
def test_seen_only_layout_maps_back_to_full_indices(tmp_path, benchmark, paint):
    sb = write_benchmark(tmp_path, benchmark, n_images=3, layout="seen_only")
    vocab = Vocabulary.from_benchmark(benchmark, "zero_shot")
    s = sb.samples["train"][1]
    raw = np.asarray(Image.open(s.label_path)).astype(np.int64)
    seen = vocab.seen_indices.tolist()
    # the file holds seen-only indices: the largest full index is re-indexed
    assert raw[raw != sb.ignore_index].max() < len(seen)
    ds = SemSegDataset(benchmark, sb.root, "train", vocabulary=vocab, layout="seen_only")
    assert len(ds) == 2
    expected = paint(s.rects, (64, 64), sb.ignore_index)
    expected[~np.isin(expected, seen + [sb.ignore_index])] = sb.ignore_index
    assert torch.equal(ds[0]["label"], torch.from_numpy(expected))
    val = SemSegDataset(benchmark, sb.root, "val", vocabulary=vocab, layout="seen_only")
    v = sb.samples["val"][0]
    assert torch.equal(val[0]["label"], torch.from_numpy(paint(v.rects, (64, 64), sb.ignore_index)))


def test_coco_images_without_label_are_skipped(tmp_path, caplog):
    sb = write_benchmark(tmp_path, "coco_stuff_171", n_images=2, splits=("val",))
    (sb.root / "val2017" / "000000999999.jpg").write_bytes(
        sb.samples["val"][0].image_path.read_bytes()
    )
    with caplog.at_level(logging.WARNING, logger="maft.data.dataset"):
        ds = SemSegDataset("coco_stuff_171", sb.root, "val")
    assert len(ds) == 2 and "skipped 1 image" in caplog.text


def test_folder_tif_labels_and_classes_txt(tmp_path, paint):
    sb = write_benchmark(tmp_path, "folder", n_images=2, label_format="tif")
    assert (sb.root / "classes.txt").read_text().splitlines()[2] == "water | unseen"
    ds = SemSegDataset("folder", sb.root, "val")
    assert ds.vocabulary.ignore_index == 65535 and ds.vocabulary.unseen_names == ["water"]
    s = sb.samples["val"][1]
    assert torch.equal(ds[1]["label"], torch.from_numpy(paint(s.rects, (64, 64), 65535)))
    train = SemSegDataset("folder", sb.root, "train")  # classes.txt marks water unseen
    assert 2 not in torch.cat([train[i]["label"].flatten() for i in range(len(train))]).tolist()
