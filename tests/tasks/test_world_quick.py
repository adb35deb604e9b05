"""The built-in world's quick variant end to end, then the README's predict command on its
checkpoint with a world image and with a user JPEG and a free-form vocabulary."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from maft.config import compose
from maft.runner import run_predict, run_train

ROWS = {"frozen_merge", "frozen_ip_clip", "maft"}
COLUMNS = ("miou_seen", "miou_unseen", "hiou", "pacc", "miou")


@pytest.fixture(scope="module")
def world_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("world")
    cfg = compose(
        ["experiment=world_quick", f"paths.cache_dir={tmp / 'cache'}", "logger=none"],
        output_dir=tmp / "run",
    )
    run_train(cfg)
    return tmp


def test_report_has_every_row_and_column_finite(world_run: Path) -> None:
    out = world_run / "run"
    payload = json.loads((out / "metrics.json").read_text())
    assert set(payload["results"]) == ROWS
    for row in ROWS:
        metrics = payload["results"][row]["world"]
        for col in COLUMNS:
            assert math.isfinite(metrics[col]), (row, col)
    report = (out / "report.md").read_text()
    for label in ("frozen CLIP (merge mask&crop)", "frozen CLIP (IP-CLIP)", "| MAFT |"):
        assert label in report
    for col in ("mIoU(S)", "mIoU(U)", "hIoU", "pAcc"):
        assert col in report
    assert "clip pretrain" in report and "maft" in payload["timings_s"]
    pictures = sorted(p.name for p in (out / "pictures").glob("*.png"))
    assert len(pictures) == 6 and all(Image.open(out / "pictures" / p).size for p in pictures)


def test_predict_on_a_world_image_and_a_user_jpeg(world_run: Path) -> None:
    ckpt = world_run / "run" / "checkpoints" / "maft" / "final.ckpt"
    world_image = next((world_run / "cache" / "world").glob("*/images/val/*.png"))
    photo = world_run / "photo.jpg"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (48, 72, 3), dtype=np.uint8)).save(photo)
    for image, vocab, names in [
        (world_image, "[sky,grass,water,brick]", ["sky", "grass", "water", "brick"]),
        (photo, "[cat,sofa,wall]", ["cat", "sofa", "wall"]),
    ]:
        out = world_run / f"pred_{image.stem}"
        cfg = compose(
            [f"ckpt_path={ckpt}", f"image={image}", f"vocabulary={vocab}", f"output_dir={out}"],
            config_name="predict",
            output_dir=out,
        )
        run_predict(cfg)
        label = np.asarray(Image.open(out / f"{image.stem}_label.png"))
        assert label.shape == Image.open(image).size[::-1] and label.max() < len(names)
        assert Image.open(out / f"{image.stem}_overlay.png").mode == "RGB"
        shares = json.loads((out / f"{image.stem}.json").read_text())
        assert shares
