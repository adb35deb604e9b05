"""run_train / run_eval end to end on a tiny folder dataset with tiny models."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from maft.config import compose
from maft.errors import ConfigError
from maft.runner import run_eval, run_train

ROWS = ["frozen_merge", "frozen_ip_clip", "maft"]


def test_train_then_eval_writes_reports(tiny_overrides: list[str], tmp_path: Path) -> None:
    out = tmp_path / "run"
    cfg = compose([*tiny_overrides, f"evaluate=[{','.join(ROWS)}]"], output_dir=out)
    summary = run_train(cfg)
    payload = json.loads((out / "metrics.json").read_text())
    assert set(payload["results"]) == set(ROWS)
    for row in ROWS:
        (bench,) = payload["results"][row]
        m = payload["results"][row][bench]
        for key in ("miou", "miou_seen", "miou_unseen", "hiou", "pacc", "iou_per_class", "rule"):
            assert key in m
        assert 0.0 <= m["pacc"] <= 100.0 and not math.isnan(m["pacc"])
        assert len(m["iou_per_class"]) == 5
    for key in ("rule", "lambda", "form", "merge", "checkpoint", "config_hash"):
        assert key in payload["meta"]
    report = (out / "report.md").read_text()
    assert "| MAFT |" in report and "frozen CLIP (IP-CLIP)" in report and "mIoU(U)" in report
    maft_ckpt = out / "checkpoints" / "maft" / "final.ckpt"
    assert maft_ckpt.is_file() and (out / "checkpoints" / "proposals" / "final.ckpt").is_file()
    assert summary["meta"]["checkpoint"] == str(maft_ckpt)

    # The same checkpoint evaluated through run_eval gives the same MAFT numbers.
    eval_out = tmp_path / "eval"
    # real-scale default model group in the eval config: facts must come from the checkpoint
    eval_over = [o for o in tiny_overrides if not o.startswith("model/clip")]
    ecfg = compose(
        [*eval_over, f"ckpt_path={maft_ckpt}", "evaluate=[maft]"],
        config_name="eval",
        output_dir=eval_out,
    )
    again = run_eval(ecfg)
    (bench,) = again["results"]["maft"]
    a = again["results"]["maft"][bench]
    b = payload["results"]["maft"][bench]
    assert a["miou"] == b["miou"] or (math.isnan(a["miou"]) and math.isnan(b["miou"]))
    assert a["pacc"] == b["pacc"]
    assert (eval_out / "metrics.json").is_file()
    assert again["meta"]["clip"].startswith("maft-tiny") and again["meta"]["start_layer"] == 1
    assert again["meta"]["rule"] == "gt_or_pred"


def test_missing_dataset_root_fails_first_with_its_path(tmp_path: Path) -> None:
    import pytest

    from maft.errors import DatasetLayoutError

    cfg = compose(
        [
            "experiment=coco_zs",
            "model/clip=tiny",
            "model/proposals=tiny",
            "logger=none",
            f"paths.data_root={tmp_path / 'nowhere'}",
            "callbacks=none",
        ],
        output_dir=tmp_path / "run",
    )
    with pytest.raises(DatasetLayoutError, match="nowhere/coco.*MAFT_DATA_ROOT"):
        run_train(cfg)


def test_a_stage_with_an_empty_training_loader_fails_clearly(
    tiny_overrides: list[str], tmp_path: Path
) -> None:
    """4 training images, 8 per step and drop_last: 0 steps is an error, not a silent 'done'."""
    over = [*tiny_overrides, "model.proposal_train.batch_size=8", "evaluate=[]"]
    cfg = compose(over, output_dir=tmp_path / "run")
    with pytest.raises(ConfigError, match="proposals stage trained 0 steps"):
        run_train(cfg)
    assert not (tmp_path / "run" / "checkpoints" / "proposals" / "final.ckpt").exists()


def test_world_clip_pretraining_leaves_the_random_state_as_a_cache_hit(tmp_path: Path) -> None:
    """A first run (CLIP pretrained in-process) then draws the same numbers as a cached run."""
    import random

    import numpy as np
    import torch

    from maft.runner import resolve_clip_weights

    over = [
        "experiment=world_quick",
        f"paths.cache_dir={tmp_path / 'cache'}",
        "model.clip.world_pretrain.steps=2",
        "+model.clip.world_pretrain.pool_size=64",
        "+model.clip.world_pretrain.eval_images=8",
        "+model.clip.world_pretrain.eval_scenes=8",
        "+model.clip.world_pretrain.batch_size=8",
    ]

    def draws_after_resolve() -> tuple[list[float], list[float], list[float]]:
        cfg = compose(over, output_dir=tmp_path / "run")
        random.seed(7), np.random.seed(7), torch.manual_seed(7)
        resolve_clip_weights(cfg, {})
        assert cfg.model.clip.pretrained and Path(cfg.model.clip.pretrained).is_file()
        return [random.random()], np.random.rand(2).tolist(), torch.rand(3).tolist()

    fresh = draws_after_resolve()  # pretrains into the empty cache
    cached = draws_after_resolve()  # the file is there now
    assert fresh == cached
