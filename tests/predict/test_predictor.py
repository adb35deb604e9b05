"""maft.predictor, maft.predict_run, the proposal figure: inputs, outputs, seen/unseen, errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from maft.data.vocabulary import Vocabulary
from maft.errors import CheckpointError, ConfigError, DatasetFileError, VocabularyError
from maft.models.segmenter import describe_proposals
from maft.pictures import disagreement, proposal_figure, select_proposals
from maft.predict_run import resolve_images, run_predict_cli
from maft.predictor import Prediction, Predictor, as_vocabulary
from maft.viz import write_label_png

VOCAB = ["Sky ", "grass", "cat", "road", "sofa"]  # sky/grass: training classes; road: unseen there


def _check(pred: Prediction, shape: tuple[int, int], num_classes: int) -> None:
    assert isinstance(pred, Prediction)
    assert pred.label_map.dtype == torch.int64 and tuple(pred.label_map.shape) == shape
    assert int(pred.label_map.min()) >= 0 and int(pred.label_map.max()) < num_classes
    assert len(pred.names) == num_classes


def test_predict_on_array_with_scores_and_split(predictor, rgb):
    pred = predictor.predict(rgb, VOCAB, top_k=3, return_scores=True)
    _check(pred, (40, 70), 5)
    assert pred.scores.shape == (5, 40, 70) and pred.scores.dtype == torch.float32
    assert torch.equal(pred.label_map, pred.scores.argmax(0))
    # case-insensitive match against the *seen* training classes: road is unseen in training
    assert pred.names == ["Sky", "grass", "cat", "road", "sofa"]
    assert pred.seen_names == ["Sky", "grass"] and pred.unseen_names == ["cat", "road", "sofa"]
    assert predictor.predict(rgb, VOCAB, return_scores=False).scores is None


def test_class_shares_match_a_hand_count(predictor, rgb):
    pred = predictor.predict(rgb, VOCAB)
    shares = pred.class_shares()
    lab = pred.label_map.numpy()
    for c, name in enumerate(pred.names):
        n = int((lab == c).sum())
        assert (name in shares) == (n > 0)
        if n:
            assert shares[name] == pytest.approx(n / lab.size)
    assert sum(shares.values()) == pytest.approx(1.0)
    assert list(shares.values()) == sorted(shares.values(), reverse=True)


def test_proposals_report_area_and_top_k(predictor, rgb):
    pred = predictor.predict(rgb, VOCAB, top_k=3)
    assert len(pred.proposals) == predictor.task.hparams.generator["num_queries"] == 8
    for q, p in enumerate(pred.proposals):
        assert p["index"] == q and 0 <= p["area"] <= 40 * 70
        assert p["area"] == round(p["area_share"] * 40 * 70)
        for key in ("top_k", "clip_top_k"):
            probs = [v for _, v in p[key]]
            assert len(p[key]) == 3 and probs == sorted(probs, reverse=True)
            assert all(n in pred.names for n, _ in p[key]) and 0 <= probs[-1] <= probs[0] <= 1


def test_same_pixels_same_prediction_for_every_input_kind(predictor, rgb, tmp_path):
    ref = predictor.predict(rgb, VOCAB).label_map
    png = tmp_path / "photo.png"
    Image.fromarray(rgb).save(png)
    tensor = torch.from_numpy(rgb).permute(2, 0, 1)  # [3, H, W]
    for image in (png, str(png), Image.fromarray(rgb), tensor, tensor.float()):
        assert torch.equal(predictor.predict(image, VOCAB).label_map, ref)
    jpg = tmp_path / "photo.jpg"
    Image.fromarray(rgb).save(jpg, quality=90)
    _check(predictor.predict(jpg, VOCAB), (40, 70), 5)


def test_file_vocabulary_and_vocabulary_object(predictor, rgb, tmp_path):
    path = tmp_path / "classes.txt"
    path.write_text("# my classes\nsky\ngrass | unseen\ncat\n", "utf-8")
    pred = predictor.predict(rgb, path)
    _check(pred, (40, 70), 3)
    assert pred.seen_names == ["sky"]  # "| unseen" is respected even for a training class
    assert pred.unseen_names == ["grass", "cat"]
    same = predictor.predict(rgb, Vocabulary.from_file(path))
    assert torch.equal(same.label_map, pred.label_map)
    assert as_vocabulary("cat,sofa").names == ["cat", "sofa"]


def test_preprocess_resizes_short_side_and_pads_to_32(predictor, rgb):
    batch = predictor.preprocess(rgb)
    # short side 40 -> 32: long side round(70 * 32 / 40) = 56, padded to 64
    assert batch["valid_size"].tolist() == [[32, 56]]
    assert batch["orig_size"].tolist() == [[40, 70]]
    assert tuple(batch["image"].shape) == (1, 3, 32, 64) and batch["image"].dtype == torch.uint8
    assert (batch["image"][0, :, :, 56:] == 128).all()  # pad value of the data layer
    resized = np.asarray(Image.fromarray(rgb).resize((56, 32), Image.BILINEAR))
    assert np.array_equal(batch["image"][0, :, :, :56].permute(1, 2, 0).numpy(), resized)


def test_one_class_vocabulary_gives_a_constant_map(predictor, rgb):
    pred = predictor.predict(rgb, ["cat"])
    assert (pred.label_map == 0).all() and pred.class_shares() == {"cat": 1.0}


def test_input_errors_are_named(predictor, rgb, tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not a jpeg at all")
    with pytest.raises(DatasetFileError, match="broken.jpg"):
        predictor.predict(bad, VOCAB)
    with pytest.raises(DatasetFileError, match="missing.png"):
        predictor.predict(tmp_path / "missing.png", VOCAB)
    with pytest.raises(DatasetFileError, match="shape"):
        predictor.predict(np.zeros((4, 5, 6, 7), dtype=np.uint8), VOCAB)
    with pytest.raises(VocabularyError, match="empty"):
        predictor.predict(rgb, [])
    with pytest.raises(VocabularyError, match="nope.txt"):
        predictor.predict(rgb, tmp_path / "nope.txt")
    with pytest.raises(DatasetFileError, match="no image"):
        resolve_images(str(tmp_path / "*.webp"))


def test_checkpoint_errors(tmp_path, maft_ckpt):
    with pytest.raises(CheckpointError, match="not found"):
        Predictor.from_checkpoint(tmp_path / "absent.ckpt")
    stage1 = tmp_path / "proposals.ckpt"
    torch.save(
        {
            "state_dict": {"generator.x": torch.zeros(1)},
            "hyper_parameters": {"class_names": ["a"], "generator": {}, "criterion": {}},
        },
        stage1,
    )
    with pytest.raises(CheckpointError, match="ProposalTask"):
        Predictor.from_checkpoint(stage1)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weight": torch.zeros(2)}, foreign)
    with pytest.raises(CheckpointError, match="foreign.pt"):
        Predictor.from_checkpoint(foreign)
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"\x00garbage")
    with pytest.raises(CheckpointError, match="garbage.ckpt"):
        Predictor.from_checkpoint(garbage)
    with pytest.raises(ConfigError, match="mode"):
        Predictor.from_checkpoint(maft_ckpt, mode="bogus")


def test_write_label_png_is_8_or_16_bit(tmp_path):
    lab = np.array([[0, 3], [254, 1]], dtype=np.int64)
    write_label_png(lab, 255 - 1, tmp_path / "a.png")
    wide = np.array([[0, 300], [846, 255]], dtype=np.int64)
    write_label_png(wide, 847, tmp_path / "b.png")
    with Image.open(tmp_path / "a.png") as a, Image.open(tmp_path / "b.png") as b:
        assert a.mode == "L" and np.array_equal(np.asarray(a), lab)
        assert b.mode.startswith("I") and np.array_equal(np.asarray(b).astype(np.int64), wide)


def test_cli_backend_writes_three_files_per_image(maft_ckpt, rgb, tmp_path):
    from omegaconf import OmegaConf

    folder = tmp_path / "photos"
    folder.mkdir()
    Image.fromarray(rgb).save(folder / "one.png")
    Image.fromarray(rgb[:, ::-1]).save(folder / "two.jpg", quality=90)
    (folder / "notes.txt").write_text("not an image")
    vocab_file = tmp_path / "vocab.txt"
    vocab_file.write_text("sky\ncat\nsofa\n")
    cfg = OmegaConf.create(
        {
            "ckpt_path": str(maft_ckpt),
            "image": str(folder),
            "vocabulary": str(vocab_file),
            "output_dir": str(tmp_path / "out"),
            "device": "cpu",
            "short_side": 32,
            "ensemble": {"lambda_": 0.3, "form": None},
            "top_k": 2,
        }
    )
    summary = run_predict_cli(cfg)
    assert summary["num_images"] == 2 and summary["unseen_names"] == ["cat", "sofa"]
    for stem in ("one", "two"):
        out = tmp_path / "out"
        with Image.open(out / f"{stem}_label.png") as im:
            assert im.mode == "L" and im.size == (70, 40)
            assert np.asarray(im).max() < 3
        with Image.open(out / f"{stem}_overlay.png") as im:
            assert im.mode == "RGB" and im.height >= 40 and im.width > 70
        record = json.loads((out / f"{stem}.json").read_text())
        assert sum(record["class_shares"].values()) == pytest.approx(1.0)
        assert record["seen_names"] == ["sky"] and record["unseen_names"] == ["cat", "sofa"]
        assert all(len(p["top_k"]) == 2 for p in record["proposals"])
    assert summary["lambda_"] == 0.3 and summary["form"] == "code"  # override reached the task


def test_resolve_images_folder_glob_list(tmp_path):
    for name in ("b.png", "a.JPG", "c.txt"):
        (tmp_path / name).write_bytes(b"x")
    assert [p.name for p in resolve_images(tmp_path)] == ["a.JPG", "b.png"]
    assert [p.name for p in resolve_images(str(tmp_path / "*.png"))] == ["b.png"]
    both = resolve_images([str(tmp_path / "b.png"), str(tmp_path / "a.JPG")])
    assert [p.name for p in both] == ["b.png", "a.JPG"]


def test_cli_backend_requires_keys(tmp_path):
    with pytest.raises(ConfigError, match="ckpt_path"):
        run_predict_cli({"ckpt_path": "???", "image": "x.png", "vocabulary": ["a"]})


def test_proposal_figure_compares_frozen_and_maft(predictor, rgb):
    picture, rows = proposal_figure(predictor, rgb, VOCAB, num=3, top_k=5)
    assert isinstance(picture, Image.Image) and picture.mode == "RGB"
    assert picture.height >= 3 * 40 and len(rows) == 3
    for r in rows:
        assert len(r["frozen"]) == len(r["maft"]) == 5
        assert sum(p for _, p in r["frozen"]) <= 1 + 1e-5
    # the student was perturbed in the fixture, so MAFT's A^c differs from frozen CLIP's
    assert any(r["frozen"] != r["maft"] for r in rows)


def test_show_proposals_script(maft_ckpt, rgb, tmp_path, capsys):
    import runpy
    from pathlib import Path

    script = Path(__file__).resolve().parents[2] / "scripts" / "show_proposals.py"
    module = runpy.run_path(str(script))
    image = tmp_path / "photo.jpg"
    Image.fromarray(rgb).save(image)
    out = tmp_path / "fig.png"
    argv = ["--ckpt", str(maft_ckpt), "--image", str(image), "--vocabulary", "sky,cat,road"]
    rc = module["main"](argv + ["--out", str(out), "--num", "2", "--short-side", "32"])
    assert rc == 0
    with Image.open(out) as im:
        assert im.format == "PNG" and im.height >= 2 * 40
    assert "wrote" in capsys.readouterr().out
    rc = module["main"](argv[:3] + [str(tmp_path / "nope.jpg")] + argv[4:] + ["--out", str(out)])
    assert rc == 2 and "nope.jpg" in capsys.readouterr().err


def test_hydra_predict_config_drives_the_backend(maft_ckpt, rgb, tmp_path):
    from maft.config import compose
    from maft.runner import run_predict

    Image.fromarray(rgb).save(tmp_path / "photo.jpg", quality=90)
    cfg = compose(
        [
            f"ckpt_path={maft_ckpt}",
            f"image={tmp_path / 'photo.jpg'}",
            "vocabulary=[sky,cat,wall]",
            "device=cpu",
            "short_side=32",
        ],
        config_name="predict",
        output_dir=tmp_path / "run",
    )
    summary = run_predict(cfg)
    assert summary["output_dir"] == str(tmp_path / "run") and summary["lambda_"] == 0.0
    assert summary["seen_names"] == ["sky"] and summary["unseen_names"] == ["cat", "wall"]
    for name in ("photo_label.png", "photo_overlay.png", "photo.json"):
        assert (tmp_path / "run" / name).is_file()


def test_exif_orientation_is_applied_to_files(predictor, rgb, tmp_path):
    path = tmp_path / "phone.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    Image.fromarray(rgb).save(path, exif=exif.tobytes())
    pred = predictor.predict(path, VOCAB)
    assert tuple(pred.label_map.shape) == (70, 40)  # upright: width and height swapped
    assert pred.image.shape == (70, 40, 3)


def test_select_proposals_prefers_disagreement_over_size():
    frozen = torch.tensor([[0.9, 0.1], [0.5, 0.5], [0.2, 0.8], [1.0, 0.0], [0.0, 1.0]])
    maft = torch.tensor([[0.1, 0.9], [0.5, 0.5], [0.6, 0.4], [0.0, 1.0], [0.0, 1.0]])
    tv = disagreement(frozen, maft)
    assert tv.tolist() == pytest.approx([0.8, 0.0, 0.4, 1.0, 0.0])
    props = [
        {"index": 0, "valid": True, "area_share": 0.05},
        {"index": 1, "valid": True, "area_share": 0.90},  # largest, but both models agree
        {"index": 2, "valid": True, "area_share": 0.20},
        {"index": 3, "valid": True, "area_share": 0.001},  # disagrees most, but a speck
        {"index": 4, "valid": False, "area_share": 0.50},  # invalid
    ]
    assert select_proposals(props, tv, 2) == [0, 2]
    assert select_proposals(props, tv, 3) == [0, 2, 1]  # then the other valid, large ones
    assert select_proposals(props, tv, 5) == [0, 2, 1, 3, 4]
    assert select_proposals(props, tv, 2, min_area=0.0) == [3, 0]
    assert select_proposals(props, tv, 0) == []


def test_proposal_figure_shows_the_most_disagreeing_proposals(predictor, rgb):
    picture, rows = proposal_figure(predictor, rgb, VOCAB, num=3, top_k=5)
    out_maft, info = predictor.run(rgb, VOCAB, mode="maft")
    out_frozen, _ = predictor.run(rgb, VOCAB, mode="frozen_ip_clip")
    tv = disagreement(out_frozen.clip_probs[0], out_maft.clip_probs[0])
    props = describe_proposals(out_maft, info["vocab"].names)
    eligible = [p["index"] for p in props if p["valid"] and p["area_share"] >= 0.01]
    ranked = sorted(eligible, key=lambda q: (-float(tv[q]), q))  # by total-variation distance
    largest = sorted(eligible, key=lambda q: (-props[q]["area_share"], q))
    assert ranked[:3] != largest[:3]  # the fixture tells the two rules apart
    assert [r["index"] for r in rows] == ranked[:3]
    got = [r["disagreement"] for r in rows]
    assert got == sorted(got, reverse=True)
    assert got == pytest.approx([float(tv[q]) for q in ranked[:3]], abs=1e-6)


def test_as_vocabulary_rules_for_strings(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert as_vocabulary(["cat"]).names == ["cat"]
    assert as_vocabulary("[Straße, 猫]").names == ["Straße", "猫"]
    with pytest.raises(VocabularyError, match=r"not an existing file.*vocabulary=\[classes\]"):
        as_vocabulary("classes")  # today's one-class vocabulary by accident
    with pytest.raises(VocabularyError, match="duplicate.*'zebra' and 'Zebra'"):
        as_vocabulary(["zebra", "wood", "Zebra"])


def test_run_pictures_with_a_limited_test_set(tiny_task, tmp_path):
    from maft.data import FolderDataModule, write_benchmark
    from maft.pictures import write_run_pictures

    sb = write_benchmark(tmp_path / "data", "folder", n_images=3, splits=("val",))
    dm = FolderDataModule(
        benchmark="folder",
        root=str(sb.root),
        num_workers=0,
        pin_memory=False,
        test_short_side=32,
        max_val_images=2,  # the test set is a Subset of the split
        cache_dir=str(tmp_path / "cache"),
    )
    written = write_run_pictures(tiny_task, dm, sb.vocabulary, tmp_path / "run", n=5)
    stems = sorted({p.name.rsplit("_", 1)[0] for p in written})
    assert stems == [s.stem for s in sb.samples["val"][:2]] and len(written) == 6
    assert all(p.is_file() for p in written)
