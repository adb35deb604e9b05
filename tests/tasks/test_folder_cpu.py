"""The README's CPU recipe for your own folder (experiment=folder_cpu), end to end, few steps."""

from __future__ import annotations

import json
from pathlib import Path

from maft.config import compose
from maft.data.vocabulary import Vocabulary
from maft.runner import run_train

FEW_STEPS = [
    "model.clip.world_pretrain.steps=2",
    "+model.clip.world_pretrain.pool_size=256",  # a smaller pretraining pool and evaluation
    "+model.clip.world_pretrain.eval_images=16",
    "+model.clip.world_pretrain.eval_scenes=16",
    "+model.clip.world_pretrain.batch_size=16",
    "model.proposal_train.max_steps=2",
    "model.maft.max_steps=2",
    "data.batch_size=2",
    "pictures=1",
]


def test_folder_cpu_trains_and_evaluates_the_folders_classes(
    folder_root: Path, tmp_path: Path
) -> None:
    overrides = [
        "experiment=folder_cpu",
        f"data.root={folder_root}",
        f"paths.cache_dir={tmp_path / 'cache'}",
        "logger=none",
        *FEW_STEPS,
    ]
    cfg = compose(overrides, output_dir=tmp_path / "run")
    assert cfg.model.clip.name == "maft-world" and cfg.trainer.accelerator == "cpu"
    summary = run_train(cfg)
    classes = Vocabulary.from_file(folder_root / "classes.txt")
    assert not all(classes.seen.tolist())  # the folder marks an unseen class
    payload = json.loads((tmp_path / "run" / "metrics.json").read_text())
    seen = int(classes.seen.sum())
    meta = payload["meta"]
    assert meta["benchmark"] == "folder" and meta["experiment"] == "folder_cpu"
    assert meta["classes"] == len(classes) == 5
    assert meta["seen/unseen"] == f"{seen}/{len(classes) - seen}"
    assert set(payload["results"]) == {"frozen_ip_clip", "maft"}
    for row in ("frozen_ip_clip", "maft"):
        result = payload["results"][row]["folder"]
        assert len(result["iou_per_class"]) == len(classes), row
        assert result["class_names"] == classes.names, row  # per-class IoU, named
    assert (tmp_path / "run" / "checkpoints" / "maft" / "final.ckpt").is_file()
    assert list((tmp_path / "run" / "pictures").glob("*.png"))
    assert summary["headline"] == payload["meta"]["headline"]
