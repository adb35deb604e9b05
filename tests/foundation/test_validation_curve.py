"""maft.callbacks.ValidationCurve (the curve of a monitored value, keep-best weights) and the
report lines made of it (maft.reports.validation_section, maft.runner.validation_facts)."""

from __future__ import annotations

import math
import signal
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from omegaconf import OmegaConf
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from maft.callbacks import GracefulStop, ValidationCurve
from maft.errors import MaftError
from maft.reports import render_report, validation_section
from maft.runner import validation_facts
from maft_testing import quiet_trainer

MONITOR = "val/score"


class _Net(L.LightningModule):
    """Two trainable layers and a frozen one; validation logs ``scores[global_step]``.

    During Lightning's sanity check it logs ``sanity`` (larger than every score: it would win).
    """

    def __init__(self, scores: dict[int, float] | None = None, sanity: float = 1000.0) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a = nn.Linear(3, 4)
        self.frozen = nn.Linear(4, 4).requires_grad_(False)
        self.b = nn.Linear(4, 2)
        self.scores, self.sanity = dict(scores or {}), float(sanity)
        self.sanity_runs = 0
        self.step_override: int | None = None  # the step a resumed pending validation stands for

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.tanh(self.frozen(self.a(x))))

    def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> torch.Tensor:
        return ((self(batch[0]) - 1.0) ** 2).mean()

    def validation_step(self, batch: list[torch.Tensor], batch_idx: int) -> None:
        pass

    def on_validation_epoch_end(self) -> None:
        trainer = self.trainer
        self.sanity_runs += int(trainer.sanity_checking)
        step = trainer.global_step if self.step_override is None else self.step_override
        self.step_override = None
        value = self.sanity if trainer.sanity_checking else self.scores[step]
        self.log(MONITOR, value)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _trainable(module: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in module.named_parameters() if p.requires_grad}


def _frozen(module: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in module.named_parameters() if not p.requires_grad}


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _fake_trainer(step: int, metrics: dict, sanity: bool = False) -> SimpleNamespace:
    """What ValidationCurve reads of a Trainer: sanity flag, global step, callback metrics."""
    return SimpleNamespace(sanity_checking=sanity, global_step=step, callback_metrics=metrics)


def _drive(curve: ValidationCurve, module: nn.Module, values: list[tuple[int, float]]) -> dict:
    """Validate at each (step, value), changing the trainable weights before each; return the
    trainable weights as they were at every validation (an independent copy per step)."""
    seen = {}
    for step, value in values:
        with torch.no_grad():
            for p in module.parameters():
                if p.requires_grad:
                    p.add_(0.1 * (step + 1))
        curve.on_validation_end(_fake_trainer(step, {MONITOR: torch.tensor(value)}), module)
        seen[step] = _trainable(module)
    return seen


# ------------------------------------------------------------------------ hand-driven trainer
def test_keep_best_restores_the_best_steps_trainable_weights_only() -> None:
    net = _Net()
    frozen0 = _frozen(net)
    curve = ValidationCurve(MONITOR, keep_best=True)
    at = _drive(curve, net, [(0, 10.0), (5, 30.0), (10, 20.0)])
    assert not _same(at[5], at[10])  # the test means something: the last step differs
    curve.on_train_end(_fake_trainer(10, {}), net)
    assert _same(_trainable(net), at[5])
    assert _same(_frozen(net), frozen0)
    assert set(curve._best) == {n for n, p in net.named_parameters() if p.requires_grad}
    assert "frozen.weight" not in curve._best
    assert all(t.device.type == "cpu" for t in curve._best.values())
    assert curve.summary() == {
        "monitor": MONITOR,
        "curve": [[0, 10.0], [5, 30.0], [10, 20.0]],
        "best_step": 5,
        "best_value": 30.0,
        "kept": "best",
    }


def test_ties_keep_the_earliest_step() -> None:
    net = _Net()
    curve = ValidationCurve(MONITOR, keep_best=True)
    at = _drive(curve, net, [(0, 1.0), (2, 4.0), (4, 4.0), (6, 3.0)])
    curve.on_train_end(_fake_trainer(6, {}), net)
    assert curve.best_step == 2 and curve.best_value == 4.0
    assert _same(_trainable(net), at[2]) and not _same(at[2], at[4])


def test_a_first_validation_that_stays_best_ends_where_training_started() -> None:
    net = _Net()
    curve = ValidationCurve(MONITOR, keep_best=True)
    at = _drive(curve, net, [(0, 9.0), (3, 2.0), (6, 9.0)])
    curve.on_train_end(_fake_trainer(6, {}), net)
    assert curve.best_step == 0 and _same(_trainable(net), at[0])


def test_stored_best_is_a_copy_not_a_view() -> None:
    net = _Net()
    curve = ValidationCurve(MONITOR, keep_best=True)
    at = _drive(curve, net, [(0, 5.0)])
    with torch.no_grad():
        net.a.weight.mul_(-3.0)  # training goes on in place after the validation
    assert torch.equal(curve._best["a.weight"], at[0]["a.weight"])


def test_nan_never_wins_and_a_revalidated_step_is_replaced() -> None:
    net = _Net()
    curve = ValidationCurve(MONITOR, keep_best=True)
    at = _drive(curve, net, [(0, 2.0), (2, float("nan")), (4, 1.0), (4, 3.0)])
    steps = [s for s, _ in curve.curve]
    assert steps == [0, 2, 4]  # step 4 once, with its latest value
    assert curve.curve[-1] == (4, 3.0) and math.isnan(curve.curve[1][1])
    curve.on_train_end(_fake_trainer(4, {}), net)
    assert curve.best_step == 4 and _same(_trainable(net), at[4])


def test_keep_last_tracks_the_best_but_leaves_the_weights() -> None:
    net = _Net()
    curve = ValidationCurve(MONITOR, keep_best=False)
    at = _drive(curve, net, [(0, 5.0), (2, 1.0)])
    curve.on_train_end(_fake_trainer(2, {}), net)
    assert _same(_trainable(net), at[2])
    assert curve._best == {} and curve.state_dict()["best"] == {}
    summary = curve.summary()
    assert summary["kept"] == "last" and summary["best_step"] == 0 and summary["best_value"] == 5.0


def test_sanity_check_is_ignored_even_without_the_monitor() -> None:
    net = _Net()
    curve = ValidationCurve(MONITOR, keep_best=True)
    curve.on_validation_end(_fake_trainer(0, {MONITOR: torch.tensor(99.0)}, sanity=True), net)
    curve.on_validation_end(_fake_trainer(0, {}, sanity=True), net)
    assert curve.curve == [] and curve.best_step is None and curve._best == {}
    before = _trainable(net)
    curve.on_train_end(_fake_trainer(0, {}), net)  # nothing selected: weights untouched
    assert _same(_trainable(net), before)
    assert curve.summary()["best_value"] is None


def test_a_missing_monitor_names_it_and_what_was_logged() -> None:
    curve = ValidationCurve("val/miou_seen")
    metrics = {"val/miou": torch.tensor(1.0), "val/pacc": torch.tensor(2.0)}
    with pytest.raises(MaftError, match=r"'val/miou_seen'.*'val/miou', 'val/pacc'"):
        curve.on_validation_end(_fake_trainer(3, metrics), _Net())


def test_state_dict_round_trip_through_a_file(tmp_path: Path) -> None:
    net = _Net()
    curve = ValidationCurve(MONITOR, keep_best=True)
    at = _drive(curve, net, [(0, 1.0), (4, 8.0), (8, 2.0)])
    torch.save(curve.state_dict(), tmp_path / "curve.pt")

    again = ValidationCurve(MONITOR, keep_best=True)
    again.load_state_dict(torch.load(tmp_path / "curve.pt", weights_only=False))
    assert again.summary() == curve.summary()
    assert again.curve == [(0, 1.0), (4, 8.0), (8, 2.0)]
    # a resumed stage: a later, lower validation does not replace the loaded best
    fresh = _Net()
    again.on_validation_end(_fake_trainer(12, {MONITOR: torch.tensor(5.0)}), fresh)
    again.on_train_end(_fake_trainer(12, {}), fresh)
    assert again.best_step == 4 and _same(_trainable(fresh), at[4])
    # ... and a higher one does
    third = ValidationCurve(MONITOR, keep_best=True)
    third.load_state_dict(curve.state_dict())
    third.on_validation_end(_fake_trainer(12, {MONITOR: torch.tensor(9.5)}), fresh)
    assert third.best_step == 12 and third.best_value == 9.5


def test_empty_state_dict_loads_as_a_fresh_curve() -> None:
    curve = ValidationCurve(MONITOR, keep_best=True)
    curve.load_state_dict({})
    assert curve.curve == [] and curve.best_step is None and curve.best_value == -math.inf


# ------------------------------------------------------------------------ a real Trainer
class _Snapshots(L.Callback):
    """The trainable weights at each (non-sanity) validation, copied independently."""

    def __init__(self) -> None:
        self.at: dict[int, dict[str, torch.Tensor]] = {}

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self.at[int(trainer.global_step)] = _trainable(pl_module)


def _loaders() -> tuple[DataLoader, DataLoader]:
    """Training (64 samples, batch 4) and validation (one batch of 4) loaders, fixed data."""
    g = torch.Generator().manual_seed(0)
    train = DataLoader(TensorDataset(torch.randn(64, 3, generator=g)), batch_size=4)
    return train, DataLoader(TensorDataset(torch.randn(4, 3, generator=g)), batch_size=4)


def _trainer(tmp_path: Path, callbacks: list[L.Callback], **kwargs: object) -> L.Trainer:
    """6 steps on the CPU, a validation every 2 steps counted across epochs."""
    return quiet_trainer(
        tmp_path,
        6,
        val_check_interval=2,
        check_val_every_n_epoch=None,
        callbacks=callbacks,
        **kwargs,
    )


def test_in_a_lightning_trainer_the_best_step_is_kept_and_saved(tmp_path: Path) -> None:
    """validate() at step 0, then fit with a sanity check (whose value would win) and a
    validation every 2 steps; the best (earliest of a tie) is restored at the end of fit and
    travels in the trainer's checkpoint."""
    scores = {0: 5.0, 2: 7.0, 4: 7.0, 6: 6.0}
    net = _Net(scores)
    frozen0 = _frozen(net)
    snaps, curve = _Snapshots(), ValidationCurve(MONITOR, keep_best=True)
    train, val = _loaders()
    trainer = _trainer(tmp_path, [snaps, curve], num_sanity_val_steps=1)
    trainer.validate(net, dataloaders=val, verbose=False)
    trainer.fit(net, train_dataloaders=train, val_dataloaders=val)

    assert net.sanity_runs == 1 and sorted(snaps.at) == [0, 2, 4, 6]
    assert curve.curve == [(s, v) for s, v in scores.items()]
    assert curve.best_step == 2 and curve.best_value == 7.0
    assert not _same(snaps.at[2], snaps.at[6]) and not _same(snaps.at[2], snaps.at[4])
    assert _same(_trainable(net), snaps.at[2])
    assert _same(_frozen(net), frozen0)

    trainer.save_checkpoint(tmp_path / "stage.ckpt")
    ckpt = torch.load(tmp_path / "stage.ckpt", map_location="cpu", weights_only=False)
    for name, value in snaps.at[2].items():  # the checkpoint holds the kept weights
        assert torch.equal(ckpt["state_dict"][name], value), name
    state = ckpt["callbacks"][curve.state_key]
    loaded = ValidationCurve(MONITOR, keep_best=True)
    loaded.load_state_dict(state)
    assert loaded.summary() == curve.summary()
    assert _same(loaded._best, snaps.at[2])


class _StopAt(L.Callback):
    """Deliver a SIGTERM to GracefulStop (listed after this one) at the end of ``step``."""

    def __init__(self, stopper: GracefulStop, step: int) -> None:
        self.stopper, self.step = stopper, step

    def on_train_batch_end(self, trainer: L.Trainer, *_: object) -> None:
        if trainer.global_step == self.step:
            self.stopper.signum = int(signal.SIGTERM)


#: Validation every 2 of 6 steps; step 2 is the best (7.0 > 6.0, 5.0, 4.0); 3.0 at an odd step.
RESUME_SCORES = {0: 5.0, 1: 3.0, 2: 7.0, 3: 3.0, 4: 6.0, 5: 3.0, 6: 4.0}


def _session(
    tmp_path: Path, callbacks: list[L.Callback], ckpt_path: Path | None = None
) -> tuple[_Net, ValidationCurve, _Snapshots]:
    """One training session as the runner runs a MAFT stage: validate() at step 0 (fresh
    start only; on resume, the checkpoint's pending validation step), then fit with a
    validation every 2 steps and keep-best."""
    net, snaps = _Net(RESUME_SCORES), _Snapshots()
    curve = ValidationCurve(MONITOR, keep_best=True, every=2)
    train, val = _loaders()
    trainer = _trainer(tmp_path, [snaps, *callbacks, curve])
    if ckpt_path is None:
        trainer.validate(net, dataloaders=val, verbose=False)
    pending = None if ckpt_path is None else ValidationCurve.pending_in(ckpt_path)
    if pending is not None:  # as maft.runner._fit_stage: the weights of the pending step
        net.load_state_dict(torch.load(ckpt_path, weights_only=False)["state_dict"])
        curve.next_step = net.step_override = pending
        trainer.validate(net, dataloaders=val, verbose=False)
    trainer.fit(net, train_dataloaders=train, val_dataloaders=val, ckpt_path=ckpt_path)
    return net, curve, snaps


def _stopped_and_resumed(tmp_path: Path, stop: int) -> tuple[ValidationCurve, _Net, _Snapshots]:
    stopper = GracefulStop(tmp_path / "stage", "maft")
    _, _, stopped = _session(tmp_path, [_StopAt(stopper, stop), stopper])
    assert stopper.saved == tmp_path / "stage" / "last.ckpt"
    net, curve, _ = _session(tmp_path, [], ckpt_path=stopper.saved)
    return curve, net, stopped


def test_a_stage_stopped_between_validations_resumes_to_the_same_selection(
    tmp_path: Path,
) -> None:
    _, full, snaps = _session(tmp_path / "full", [])
    assert full.best_step == 2 and [s for s, _ in full.curve] == [0, 2, 4, 6]
    curve, net, _ = _stopped_and_resumed(tmp_path / "stop", stop=3)
    assert curve.curve == full.curve and curve.best_step == 2
    assert _same(_trainable(net), snaps.at[2])  # the best params travelled in last.ckpt


def test_a_stage_stopped_at_a_validation_step_resumes_to_the_same_selection(
    tmp_path: Path,
) -> None:
    """The save at step 2 precedes step 2's validation: the checkpoint marks it pending and the
    resumed session validates it first (with step 2's weights), so nothing is lost."""
    _, full, snaps = _session(tmp_path / "full", [])
    stopper = GracefulStop(tmp_path / "stop" / "stage", "maft")
    _session(tmp_path / "stop", [_StopAt(stopper, 2), stopper])
    assert ValidationCurve.pending_in(stopper.saved) == 2
    net, curve, _ = _session(tmp_path / "stop", [], ckpt_path=stopper.saved)
    assert curve.curve == full.curve, curve.curve
    assert curve.best_step == 2 and _same(_trainable(net), snaps.at[2])


def test_a_stop_validation_is_not_a_point_of_the_curve(tmp_path: Path) -> None:
    """Lightning validates when a stop is requested (step 3 here, not a multiple of every):
    that validation runs but does not enter the curve, and nothing is pending."""
    stopper = GracefulStop(tmp_path / "stage", "maft")
    _, stopped_curve, stopped = _session(tmp_path, [_StopAt(stopper, 3), stopper])
    assert 3 in stopped.at  # it ran (Lightning's behaviour) ...
    assert [s for s, _ in stopped_curve.curve] == [0, 2]  # ... but is not a point
    assert ValidationCurve.pending_in(stopper.saved) is None


# ------------------------------------------------------------------------ report lines
SUMMARY = {
    "monitor": "val/miou_seen",
    "curve": [[0, 41.5], [50, 47.25], [100, 47.25], [150, 44.0]],
    "best_step": 50,
    "best_value": 47.25,
    "kept": "best",
}


def test_validation_section_marks_the_kept_step() -> None:
    text = validation_section({**SUMMARY, "split": "heldout"})
    lines = text.strip().splitlines()
    assert lines[0] == "### MAFT validation curve (val/miou_seen on split 'heldout')"
    assert lines[1:] == [
        "",
        "| step | value |",
        "|---|---|",
        "| 0 | 41.50 |",
        "| 50 | 47.25 (kept) |",
        "| 100 | 47.25 |",
        "| 150 | 44.00 |",
    ]
    last = validation_section({**SUMMARY, "kept": "last", "split": "val"})
    assert "(kept)" not in last and "| 50 | 47.25 |" in last


def test_render_report_adds_the_curve_only_when_there_is_one() -> None:
    results = {"maft": {"world": {"miou": 50.0, "pacc": 80.0}}}
    cfg = OmegaConf.create({"data": {"val_split": "heldout", "val_seen_only": True}})
    meta = {"experiment": "x", **validation_facts(SUMMARY, cfg)}
    text = render_report(results, meta, {"maft": 3.0})
    assert "### MAFT validation curve (val/miou_seen on split 'heldout')" in text
    assert "| 50 | 47.25 (kept) |" in text
    # the curve is a table, not a fact line; the kept-weights line is a fact
    assert "**maft_validation**" not in text
    assert (
        "- **maft weights kept**: step 50 of 150 (the highest val/miou_seen, 47.25, on split "
        "'heldout' with unseen pixels ignored)" in text
    )
    assert text.index("MAFT validation curve") < text.index("time per stage")
    plain = render_report(results, {"experiment": "x"})
    assert "validation curve" not in plain
    empty = {"experiment": "x", "maft_validation": {**SUMMARY, "curve": []}}
    assert "validation curve" not in render_report(results, empty)


def test_validation_facts_keep_last_and_plain_split() -> None:
    cfg = OmegaConf.create({"data": {"val_split": "val"}})
    facts = validation_facts({**SUMMARY, "kept": "last"}, cfg)
    assert facts["maft weights kept"] == "step 150 (the last; curve on split 'val')"
    assert facts["maft_validation"] == {**SUMMARY, "kept": "last", "split": "val"}
    default = validation_facts(SUMMARY, OmegaConf.create({"data": {}}))
    assert default["maft_validation"]["split"] == "val"
    assert default["maft weights kept"].endswith("47.25, on split 'val')")
