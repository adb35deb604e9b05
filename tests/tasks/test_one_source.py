"""One source of truth: each setting's default lives in maft.schema, reaches where it acts, and
config mistakes fail when the config is composed.

Settings checked: λ and form (ensemble), start layer and input size (IP-CLIP), the merge op
(frozen-CLIP row), the MAFT recipe (distillation weight, lr, grad clip). After loading a
checkpoint its own values win unless the user overrides them; the report states what ran.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from maft.config import compose
from maft.errors import ConfigError
from maft.models.clip.ip_clip import IPClipEncoder
from maft.models.ensemble import ensemble_scores
from maft.models.segmenter import ZeroShotSegmenter
from maft.runner import _meta, build_maft_task, build_trainer, build_vocabulary, load_task_for_eval
from maft.schema import ClipCfg, EnsembleCfg, MaftRecipe, ModelCfg
from maft_testing import lightning_checkpoint

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src" / "maft"

CHANGED = [
    "model.ensemble.lambda_=0.3",
    "model.ensemble.form=eq1",
    "model.clip.start_layer=0",
    "model.clip.input_size=48",
    "model.merge=mask",
    "model.maft.dis_weight=0.37",
    "model.maft.lr=0.002",
    "model.maft.grad_clip=0.5",
]


def _batch(n: int = 2, size: int = 64, classes: int = 5) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "image": torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8),
        "label": torch.randint(0, classes, (n, size, size), generator=g),
    }


def test_defaults_come_from_the_schema_only() -> None:
    """Composed values equal the dataclass defaults; the model code carries no second default."""
    cfg = compose([])
    assert cfg.model.ensemble.lambda_ == EnsembleCfg.lambda_
    assert cfg.model.ensemble.form == EnsembleCfg.form
    assert cfg.model.merge == ModelCfg.merge and cfg.model.classifier == ModelCfg.classifier
    assert cfg.model.clip.start_layer == ClipCfg.start_layer
    assert cfg.model.clip.input_size == ClipCfg.input_size
    recipe = {f.name: f.default for f in dataclasses.fields(MaftRecipe)}
    assert {k: cfg.model.maft[k] for k in recipe} == recipe
    # the numerical modules take these settings from their caller: no default to drift
    seg = inspect.signature(ZeroShotSegmenter.__init__).parameters
    for name in ("start_layer", "input_size", "classifier", "lambda_", "form"):
        assert seg[name].default is inspect.Parameter.empty, name
    assert inspect.signature(IPClipEncoder).parameters["start_layer"].default is (
        inspect.Parameter.empty
    )
    assert inspect.signature(ensemble_scores).parameters["form"].default is (
        inspect.Parameter.empty
    )


def test_yaml_values_reach_where_they_act(tiny_overrides: list[str], tmp_path: Path) -> None:
    """λ, form, start layer, input size, merge op and recipe changed in the config act."""
    cfg = compose([*tiny_overrides, *CHANGED], output_dir=tmp_path / "run")
    vocab = build_vocabulary(cfg)
    task = build_maft_task(cfg, vocab, None)
    seg = task.segmenter("maft")
    assert (seg.lambda_, seg.form) == (0.3, "eq1")
    assert seg.ip_clip.start_layer == 0 and task.student.start_layer == 0
    assert task.teacher.start_layer == 0 and seg.input_size == 48
    assert task.clip_canvas(_batch()["image"]).shape[-2:] == (48, 48)  # the training canvas
    assert task.segmenter("frozen_merge").classifier == "mask"
    assert task.segmenter("frozen_ip_clip").classifier == "ip_clip"
    losses = task.compute_losses(_batch(classes=vocab.num_classes))
    losses = {k: v.detach() for k, v in losses.items()}
    want = losses["loss_ma"] + 0.37 * losses["loss_dis"]
    assert float(losses["loss"]) == pytest.approx(float(want), rel=1e-6)
    assert float(losses["loss_dis"]) > 0  # the weight is visible in the total
    opt = task.configure_optimizers()["optimizer"]
    assert {g["lr"] for g in opt.param_groups} == {0.002}
    trainer = build_trainer(cfg, "maft", 2)
    assert (trainer.gradient_clip_val, trainer.gradient_clip_algorithm) == (0.5, "norm")


def test_trainer_clipping_and_recipe_clipping_conflict(
    tiny_overrides: list[str], tmp_path: Path
) -> None:
    """Two different clip values for one stage are an error, not a silent choice."""
    over = [*tiny_overrides, "+trainer.gradient_clip_val=1.0"]
    cfg = compose(over, output_dir=tmp_path / "run")
    with pytest.raises(ConfigError, match="gradient_clip_val=1.0 and model.maft.grad_clip"):
        build_trainer(cfg, "maft", 2)
    cfg = compose([*over, "model.maft.grad_clip=null"], output_dir=tmp_path / "run")
    assert build_trainer(cfg, "maft", 2).gradient_clip_val == 1.0


def test_checkpoint_values_win_unless_overridden(tiny_overrides: list[str], tmp_path: Path) -> None:
    """A loaded MaftTask keeps its λ / merge / start layer; command-line overrides replace them."""
    cfg = compose([*tiny_overrides, *CHANGED], output_dir=tmp_path / "run")
    vocab = build_vocabulary(cfg)
    ckpt = lightning_checkpoint(build_maft_task(cfg, vocab, None), tmp_path / "maft.ckpt")

    plain = compose([*tiny_overrides, f"ckpt_path={ckpt}"], "eval", output_dir=tmp_path / "e1")
    assert plain.model.ensemble.lambda_ == 0.0  # the config's default...
    task = load_task_for_eval(plain, vocab)
    assert (task.lambda_, task.form, task.start_layer, task.input_size) == (0.3, "eq1", 0, 48)
    assert task.segmenter("frozen_merge").classifier == "mask"  # ...the checkpoint's value wins
    meta = _meta(plain, vocab, {}, str(ckpt), task)
    assert (meta["lambda"], meta["form"], meta["start_layer"], meta["merge"]) == (
        0.3,
        "eq1",
        0,
        "mask",
    )
    assert "dis_weight 0.37" in meta["maft recipe"]

    user = ["model.ensemble.lambda_=0.6", "model.clip.start_layer=1", "model.merge=crop"]
    over = compose([*tiny_overrides, f"ckpt_path={ckpt}", *user], "eval", output_dir=tmp_path)
    task = load_task_for_eval(over, vocab)
    assert (task.lambda_, task.form, task.start_layer) == (0.6, "eq1", 1)
    assert task.segmenter("maft").ip_clip.start_layer == 1
    assert task.segmenter("frozen_merge").classifier == "crop"
    assert task.hparams.ensemble["lambda_"] == 0.6 and task.hparams.clip["start_layer"] == 1
    meta = _meta(over, vocab, {}, str(ckpt), task)
    assert (meta["lambda"], meta["start_layer"], meta["merge"]) == (0.6, 1, "crop")


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ("data.batch_size=abc", "data.batch_size"),
        ("data.batchsize=3", "batchsize"),
        ("model.maft.dis_weigth=1", "dis_weigth"),
        ("model.ensemble.lambda_=high", "model.ensemble.lambda_"),
    ],
)
def test_config_mistakes_fail_at_compose_time(override: str, needle: str) -> None:
    """A wrong type or an unknown key fails under --cfg job, naming the key."""
    run = subprocess.run(
        [sys.executable, "-m", "maft.train", "experiment=coco_zs", override, "--cfg", "job"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode != 0
    assert needle in run.stderr and "Traceback" not in run.stderr


def test_split_of_another_benchmark_is_refused(tmp_path: Path) -> None:
    """split=voc_15_5 with COCO data: one clear line, exit status 2, before any work."""
    with pytest.raises(ConfigError, match="voc_15_5|voc_20"):
        compose(["experiment=coco_zs", "split=voc_15_5"])
    assert compose(["data=voc_20"]).split.name == "default"  # a benchmark's own split by default
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "maft.train",
            "experiment=coco_zs",
            "split=voc_15_5",
            f"hydra.run.dir={tmp_path / 'run'}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 2, run.stderr[-2000:]
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "does not fit data=coco_stuff_171" in lines[0]


def test_no_attribute_is_written_into_a_task_from_outside() -> None:
    """Outside the task modules, nothing assigns ``task.<attr> = ...`` (settings go by methods)."""
    pattern = re.compile(r"\b(task|pl_module|self\.task|predictor\.task)\.[A-Za-z_]\w*\s*=[^=]")
    offenders = []
    for path in SRC.rglob("*.py"):
        if path.parent.name == "tasks":
            continue
        for lineno, line in enumerate(path.read_text("utf-8").splitlines(), 1):
            if pattern.search(line):
                offenders.append(f"{path.relative_to(ROOT)}:{lineno}: {line.strip()}")
    assert not offenders, "\n".join(offenders)
