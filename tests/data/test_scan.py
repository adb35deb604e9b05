"""Data errors surface at setup, before any training: the split scan, missing labels, counts."""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest
from PIL import Image

import maft.data.dataset as dataset_mod
from maft.data import CocoStuffDataModule, SemSegDataset, VocDataModule, write_benchmark
from maft.data.readers import write_label
from maft.data.vocabulary import Vocabulary
from maft.errors import ConfigError, DatasetFileError, DatasetLayoutError, LabelValueError

SMALL = dict(batch_size=2, num_workers=0, pin_memory=False, crop_size=32, test_short_side=48)


def _voc(tmp_path, **kwargs) -> tuple:
    sb = write_benchmark(tmp_path, "voc_20", n_images=3)
    dm = VocDataModule(benchmark="voc_20", root=str(sb.root), **SMALL, **kwargs)
    return sb, dm


def _bad_values(path, values=(20, 21, 200)) -> None:
    lab = np.asarray(Image.open(path)).copy()
    lab[0, : len(values)] = values
    write_label(path, lab)


def test_label_out_of_range_fails_setup_naming_the_file(tmp_path):
    sb, dm = _voc(tmp_path)
    path = sb.samples["val"][2].label_path
    _bad_values(path)
    with pytest.raises(LabelValueError, match=path.name) as err:
        dm.setup("fit")  # the validation split is scanned before the first training step
    assert "[20, 21, 200]" in str(err.value) and "[0, 20)" in str(err.value)


def test_size_mismatch_fails_setup_naming_both_files(tmp_path):
    sb, dm = _voc(tmp_path)
    s = sb.samples["train"][1]
    write_label(s.label_path, np.zeros((10, 64), np.uint8))
    with pytest.raises(DatasetFileError, match="size mismatch") as err:
        dm.setup("fit")
    assert s.image_path.name in str(err.value) and s.label_path.name in str(err.value)
    assert "(64, 64)" in str(err.value) and "(10, 64)" in str(err.value)


def test_unreadable_image_header_fails_setup(tmp_path):
    sb, dm = _voc(tmp_path)
    path = sb.samples["val"][0].image_path
    path.write_bytes(b"not an image at all")
    with pytest.raises(DatasetFileError, match=path.name):
        dm.setup("validate")


def test_every_bad_file_is_counted(tmp_path):
    sb, dm = _voc(tmp_path)
    for s in sb.samples["val"]:
        _bad_values(s.label_path)
    with pytest.raises(LabelValueError) as err:
        dm.setup("validate")
    text = str(err.value)
    assert sb.samples["val"][0].label_path.name in text and "2 more file(s)" in text
    assert sb.samples["val"][2].label_path.name in text


def test_uint16_test_set_is_scanned_at_setup(tmp_path):
    coco = write_benchmark(tmp_path, "coco_stuff_171", n_images=2, splits=("val",))
    ade = write_benchmark(tmp_path, "ade20k_847", n_images=2, splits=("val",))
    path = ade.samples["val"][1].label_path
    lab = np.asarray(Image.open(path)).astype(np.int64)
    lab[5, 5] = 847
    write_label(path, lab, "uint16")
    dm = CocoStuffDataModule(
        benchmark="coco_stuff_171",
        root=str(coco.root),
        test_sets=[{"benchmark": "ade20k_847", "root": str(ade.root)}],
        **SMALL,
    )
    with pytest.raises(LabelValueError, match=rf"{path.name}.*\[847\]"):
        dm.setup("test")


def test_only_the_images_the_run_uses_are_scanned(tmp_path):
    sb, dm = _voc(tmp_path, max_val_images=2, max_train_images=2)
    _bad_values(sb.samples["val"][2].label_path)  # third image: beyond max_val_images
    dm.setup("fit")
    assert len(dm.val_dataset) == 2 and dm.val_dataset.dataset.num_scanned == 2


def test_scan_can_be_turned_off(tmp_path):
    sb, dm = _voc(tmp_path, scan=False)
    _bad_values(sb.samples["val"][0].label_path)
    dm.setup("validate")  # no scan: the error comes with the first batch, as before
    with pytest.raises(LabelValueError):
        dm.val_dataset[0]


def _coco_with_unlabelled_val_image(tmp_path):
    sb = write_benchmark(tmp_path, "coco_stuff_171", n_images=2)
    extra = sb.root / "val2017" / "000000999999.jpg"
    extra.write_bytes(sb.samples["val"][0].image_path.read_bytes())
    train_extra = sb.root / "train2017" / "000000888888.jpg"
    train_extra.write_bytes(sb.samples["train"][0].image_path.read_bytes())
    return sb


def test_evaluation_split_with_missing_labels_is_an_error(tmp_path):
    sb = _coco_with_unlabelled_val_image(tmp_path)
    dm = CocoStuffDataModule(benchmark="coco_stuff_171", root=str(sb.root), **SMALL)
    with pytest.raises(DatasetLayoutError, match="000000999999") as err:
        dm.setup("validate")
    assert "allow_missing_labels=true" in str(err.value)
    with pytest.raises(DatasetLayoutError, match="000000999999"):
        dm.setup("test")


def test_missing_labels_allowed_on_request_and_counted(tmp_path, caplog):
    sb = _coco_with_unlabelled_val_image(tmp_path)
    dm = CocoStuffDataModule(
        benchmark="coco_stuff_171", root=str(sb.root), allow_missing_labels=True, **SMALL
    )
    with caplog.at_level("WARNING", logger="maft.data.dataset"):
        dm.setup("fit")  # training skips its unlabelled image either way
        dm.setup("test")
    assert "skipped 1 image" in caplog.text
    assert dm.num_test_images == {"coco_stuff_171": 2}
    assert dm.num_test_unlabeled == {"coco_stuff_171": 1}


def test_training_split_still_skips_unlabelled_images(tmp_path):
    sb = _coco_with_unlabelled_val_image(tmp_path)
    (sb.root / "val2017" / "000000999999.jpg").unlink()
    dm = CocoStuffDataModule(benchmark="coco_stuff_171", root=str(sb.root), **SMALL)
    dm.setup("fit")
    assert len(dm.train_dataset) == 2


def test_num_test_images_per_test_set(tmp_path):
    roots = {
        b: write_benchmark(tmp_path, b, n_images=n, splits=("val",)).root
        for b, n in (("coco_stuff_171", 2), ("ade20k_847", 3), ("pas_20", 2))
    }
    dm = CocoStuffDataModule(
        benchmark="coco_stuff_171",
        root=str(roots["coco_stuff_171"]),
        test_sets=[
            {"benchmark": "ade20k_847", "root": str(roots["ade20k_847"]), "name": "ade"},
            {"benchmark": "pas_20", "root": str(roots["pas_20"])},
        ],
        **SMALL,
    )
    with pytest.raises(ConfigError, match="setup"):
        _ = dm.num_test_images
    dm.setup("test")
    assert dm.num_test_images == {"ade": 3, "pas_20": 2}
    assert list(dm.num_test_images) == dm.test_names
    assert dm.num_test_unlabeled == {"ade": 0, "pas_20": 0}
    limited = CocoStuffDataModule(
        benchmark="coco_stuff_171", root=str(roots["coco_stuff_171"]), max_val_images=1, **SMALL
    )
    limited.setup("test")
    assert limited.num_test_images == {"coco_stuff_171": 1}


def test_labels_are_read_once_and_rescanned_only_when_changed(tmp_path, monkeypatch):
    sb = write_benchmark(tmp_path, "voc_20", n_images=4)
    vocab = Vocabulary.from_benchmark("voc_20", "zero_shot")
    calls = []
    real = dataset_mod.read_label
    monkeypatch.setattr(dataset_mod, "read_label", lambda p: calls.append(p.name) or real(p))
    dm = VocDataModule(benchmark="voc_20", root=str(sb.root), vocabulary=vocab, **SMALL)
    dm.setup("fit")  # zero-shot kept list + scan of train, scan of val: one read per label
    assert sorted(calls) == sorted(
        s.label_path.name for sp in ("train", "val") for s in sb.samples[sp]
    )
    calls.clear()
    again = VocDataModule(benchmark="voc_20", root=str(sb.root), vocabulary=vocab, **SMALL)
    again.setup("fit")
    again.setup("test")
    assert calls == []  # from the cache, for both vocabularies' splits
    SemSegDataset("voc_20", sb.root, "train").scan()  # another vocabulary, same cache
    assert calls == []
    changed = sb.samples["val"][1].label_path
    st = changed.stat()
    os.utime(changed, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    SemSegDataset("voc_20", sb.root, "val").scan()
    assert calls == [changed.name]


def test_a_broken_cache_file_is_rescanned(tmp_path, _isolated_cache):
    sb = write_benchmark(tmp_path, "voc_20", n_images=2, splits=("val",))
    SemSegDataset("voc_20", sb.root, "val").scan()
    (cache,) = _isolated_cache.glob("scan_*.json")
    cache.write_text("{not json")
    assert SemSegDataset("voc_20", sb.root, "val").scan() == 2


def test_scan_shows_a_progress_bar_on_a_terminal_only(tmp_path, monkeypatch, capsys):
    """A live bar on a terminal; none when stderr is a file (no carriage returns in logs)."""
    sb = write_benchmark(tmp_path, "voc_20", n_images=2, splits=("val",))
    monkeypatch.setattr(dataset_mod, "PROGRESS_MIN_FILES", 1)
    SemSegDataset("voc_20", sb.root, "val").scan()
    assert "scan voc_20/val" not in capsys.readouterr().err  # captured: not a terminal
    sb2 = write_benchmark(tmp_path / "b", "voc_20", n_images=2, splits=("val",))
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    SemSegDataset("voc_20", sb2.root, "val").scan()
    assert "scan voc_20/val" in capsys.readouterr().err
