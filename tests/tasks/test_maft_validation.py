"""MAFT's validation during training (model.maft.val_every / keep): the config checks, a tiny run
end to end (curve in final.json and report.md, the kept step's weights in final.ckpt and in the
evaluated task), and a resumed run that skips the finished stages but evaluates their weights."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from omegaconf import OmegaConf

import maft.runner as runner
from maft.callbacks import ValidationCurve
from maft.config import check_config, compose
from maft.errors import ConfigError
from maft.runner import VALIDATION_MONITOR, _validation_setup, run_train

#: The smoke experiment (world data with a heldout split, tiny random CLIP; MAFT 4 steps,
#: validation every 2, keep best), stage 1 one step, only the MAFT row evaluated.
SMOKE = [
    "experiment=smoke",
    "logger=none",
    "pictures=0",
    "callbacks.val_panels=null",
    "callbacks.lr_monitor=null",
    "model.proposal_train.max_steps=1",
    "evaluate=[maft]",
]
#: What the curve is told at each validation (the real mIoU(S) of the tiny random CLIP is flat):
#: step 2 is the best, tied with step 4, so the stage must end with step 2's weights.
SCRIPTED = {0: 1.0, 2: 3.0, 4: 3.0}


def _maft_cfg(**maft: Any):
    return OmegaConf.create({"model": {"maft": maft}})


# ------------------------------------------------------------------------------ config checks
@pytest.mark.parametrize(
    ("maft", "match"),
    [
        ({"val_every": None, "keep": "best"}, "keep=best.*val_every"),
        ({"keep": "best"}, "keep=best.*val_every"),
        ({"val_every": 2, "keep": "first"}, "keep='first'"),
        ({"val_every": None, "keep": "Best"}, "keep='Best'"),
        ({"val_every": -1, "keep": "last"}, "val_every=-1"),
        ({"val_every": -5, "keep": "best"}, "val_every=-5"),
        ({"val_every": 0, "keep": "best"}, "val_every"),
    ],
)
def test_validation_setup_refuses(maft: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        _validation_setup(_maft_cfg(**maft), "maft")


def test_val_every_zero_is_refused_with_keep_last() -> None:
    with pytest.raises(ConfigError, match="val_every=0"):
        _validation_setup(_maft_cfg(val_every=0, keep="last"), "maft")


def test_validation_setup_trainer_arguments_and_callback() -> None:
    kwargs, curve = _validation_setup(_maft_cfg(val_every=3, keep="best"), "maft")
    assert kwargs == {
        "val_check_interval": 3,
        "check_val_every_n_epoch": None,
        "limit_val_batches": 1.0,
        "num_sanity_val_steps": 0,
    }
    assert isinstance(curve, ValidationCurve) and curve.keep_best
    assert curve.monitor == VALIDATION_MONITOR == "val/miou_seen"
    _, last = _validation_setup(_maft_cfg(val_every=3, keep="last"), "maft")
    assert isinstance(last, ValidationCurve) and not last.keep_best
    assert _validation_setup(_maft_cfg(val_every=None, keep="last"), "maft") == ({}, None)
    assert _validation_setup(_maft_cfg(), "maft") == ({}, None)
    # stage 1 never validates this way, whatever model.maft says
    assert _validation_setup(_maft_cfg(val_every=None, keep="best"), "proposals") == ({}, None)


def test_world_configs_validate_on_heldout_seen_only(tmp_path: Path) -> None:
    cfg = compose(["experiment=world", f"paths.cache_dir={tmp_path}"], output_dir=tmp_path / "r")
    assert cfg.data.val_split == "heldout" and cfg.data.val_seen_only is True
    assert cfg.data.test_split == "val" and cfg.data.n_heldout == 200
    assert cfg.model.maft.val_every == 50 and cfg.model.maft.keep == "best"
    assert cfg.data.root.endswith("_200_64px")  # the heldout size names the world
    quick = compose(["experiment=world_quick", f"paths.cache_dir={tmp_path}"], output_dir=tmp_path)
    assert quick.data.n_heldout == 8 and quick.model.maft.val_every == 2
    assert quick.model.maft.keep == "best"


def test_a_bad_keep_fails_before_stage_one_trains(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def stage_one(*_: Any, **__: Any) -> None:
        raise AssertionError("stage 1 started before model.maft.keep was checked")

    monkeypatch.setattr(runner, "build_proposal_task", stage_one)
    over = [*SMOKE, f"paths.cache_dir={tmp_path / 'cache'}", "model.maft.keep=first"]
    with pytest.raises(ConfigError, match="keep='first'"):
        run_train(compose(over, output_dir=tmp_path / "run"))


# ------------------------------------------------------------------------------ a tiny run
def _trainable(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().cpu().clone() for n, p in module.named_parameters() if p.requires_grad}


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


class _ScriptedCurve(ValidationCurve):
    """The runner's curve, told SCRIPTED values; records the real value and the trainable
    weights (an independent copy) at every validation."""

    made: list[_ScriptedCurve] = []

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.real: dict[int, float | None] = {}
        self.at: dict[int, dict[str, torch.Tensor]] = {}
        _ScriptedCurve.made.append(self)

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        assert not trainer.sanity_checking  # the runner turns the sanity check off
        step = int(trainer.global_step)
        real = trainer.callback_metrics.get(self.monitor)
        self.real[step] = None if real is None else float(real)
        self.at[step] = _trainable(pl_module)
        metrics = {**trainer.callback_metrics, self.monitor: torch.tensor(SCRIPTED[step])}
        proxy = SimpleNamespace(sanity_checking=False, global_step=step, callback_metrics=metrics)
        super().on_validation_end(proxy, pl_module)


def _spy_evaluate(monkeypatch: pytest.MonkeyPatch, seen: list[dict[str, torch.Tensor]]) -> None:
    """Record the trainable weights of the task each MAFT evaluation runs with."""
    real = runner.evaluate

    def evaluate(task, dm, cfg, mode):
        if mode == "maft":
            seen.append(_trainable(task))
        return real(task, dm, cfg, mode)

    monkeypatch.setattr(runner, "evaluate", evaluate)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    tmp = tmp_path_factory.mktemp("maft_validation")
    over = [*SMOKE, f"paths.cache_dir={tmp / 'cache'}"]
    evaluated: list[dict[str, torch.Tensor]] = []
    _ScriptedCurve.made.clear()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(runner, "ValidationCurve", _ScriptedCurve)
        _spy_evaluate(mp, evaluated)
        summary = run_train(compose(over, output_dir=tmp / "run"))
    (curve,) = _ScriptedCurve.made
    return SimpleNamespace(
        tmp=tmp, out=tmp / "run", over=over, summary=summary, curve=curve, evaluated=evaluated
    )


def test_final_json_holds_the_curve_from_step_zero_to_the_last(run: SimpleNamespace) -> None:
    record = json.loads((run.out / "checkpoints" / "maft" / "final.json").read_text())
    assert record["stage"] == "maft" and record["steps"] == 4
    assert record["validation"] == {
        "monitor": "val/miou_seen",
        "curve": [[0, 1.0], [2, 3.0], [4, 3.0]],
        "best_step": 2,
        "best_value": 3.0,
        "kept": "best",
    }
    # the monitored value was really logged at every validation (before the script replaced it)
    assert sorted(run.curve.real) == [0, 2, 4]
    assert all(v is not None and 0.0 <= v <= 100.0 for v in run.curve.real.values())


def test_final_ckpt_and_the_evaluated_task_hold_the_kept_steps_weights(
    run: SimpleNamespace,
) -> None:
    at = run.curve.at
    assert not _same(at[2], at[4]) and not _same(at[0], at[2])  # the steps differ
    ckpt = torch.load(
        run.out / "checkpoints/maft/final.ckpt", map_location="cpu", weights_only=False
    )
    assert ckpt["global_step"] == 4
    state = ckpt["state_dict"]
    assert _same({n: state[n] for n in at[2]}, at[2])
    # step 0 is where fine-tuning started: the student was the frozen teacher there
    for name, value in at[0].items():
        teacher = name.replace("clip_model.visual.", "teacher_visual.", 1)
        assert teacher != name and torch.equal(state[teacher], value), name
    (evaluated,) = run.evaluated
    assert _same(evaluated, at[2])


def test_report_shows_the_curve_and_the_kept_step(run: SimpleNamespace) -> None:
    report = (run.out / "report.md").read_text()
    assert "### MAFT validation curve (val/miou_seen on split 'heldout')" in report
    for line in ("| 0 | 1.00 |", "| 2 | 3.00 (kept) |", "| 4 | 3.00 |"):
        assert line in report
    kept = "step 2 of 4 (the highest val/miou_seen, 3.00, on split 'heldout' with unseen pixels "
    assert f"- **maft weights kept**: {kept}ignored)" in report
    meta = json.loads((run.out / "metrics.json").read_text())["meta"]
    assert meta["maft_validation"]["split"] == "heldout"
    assert meta["maft_validation"]["best_step"] == 2


def _results_equal(a: dict, b: dict) -> bool:
    if a.keys() != b.keys():
        return False
    for k in a:
        x, y = a[k], b[k]
        if isinstance(x, dict):
            if not (isinstance(y, dict) and _results_equal(x, y)):
                return False
        elif isinstance(x, list):
            if len(x) != len(y) or not all(
                u == v or (math.isnan(u) and math.isnan(v)) for u, v in zip(x, y)
            ):
                return False
        elif isinstance(x, float):
            if not (x == y or (math.isnan(x) and math.isnan(y))):
                return False
        elif x != y:
            return False
    return True


def test_a_resumed_run_evaluates_the_finished_stages_weights(
    run: SimpleNamespace, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Killed after the MAFT stage sealed (no reports yet): ckpt_path=last skips both stages and
    evaluates the weights final.ckpt holds, so the numbers equal the uninterrupted run's."""
    again = run.tmp / "resumed"
    shutil.copytree(run.out, again, symlinks=True)
    for name in ("metrics.json", "report.md"):
        (again / name).unlink()
    finals = [again / "checkpoints" / s / "final.ckpt" for s in ("proposals", "maft")]
    stamps = [f.stat().st_mtime_ns for f in finals]
    evaluated: list[dict[str, torch.Tensor]] = []
    _spy_evaluate(monkeypatch, evaluated)

    summary = run_train(compose([*run.over, "ckpt_path=last"], output_dir=again))

    assert [f.stat().st_mtime_ns for f in finals] == stamps  # nothing trained again
    (weights,) = evaluated
    assert _same(weights, run.curve.at[2]), "the skipped MAFT stage's weights were not loaded"
    assert _results_equal(summary["results"], run.summary["results"])
    assert summary["meta"]["maft weights kept"] == run.summary["meta"]["maft weights kept"]
    assert summary["meta"]["maft_validation"] == run.summary["meta"]["maft_validation"]
    report = (again / "report.md").read_text()
    assert "| 2 | 3.00 (kept) |" in report


def test_keep_best_refuses_to_select_on_the_test_split(tmp_path: Path) -> None:
    """Choosing the MAFT length on the split that is then tested is refused with the config;
    the world (heldout vs val) passes, and folder_cpu (no held-out split) keeps the last step."""
    base = ["experiment=world", f"paths.cache_dir={tmp_path}"]
    check_config(compose(base, output_dir=tmp_path / "ok"))
    for bad in (["data.val_split=val"], ["data.test_split=heldout"]):
        with pytest.raises(ConfigError, match="tested on"):
            check_config(compose(base + bad, output_dir=tmp_path / "bad"))
    folder = compose(
        ["experiment=folder_cpu", f"data.root={tmp_path}", f"paths.cache_dir={tmp_path}"],
        output_dir=tmp_path / "f",
    )
    assert folder.model.maft.keep == "last" and folder.model.maft.val_every is None
    check_config(folder)
