"""SegmentationTask: what both LightningModules share — evaluation loop, metrics, schedule.

A task built on it says how it predicts (:meth:`SegmentationTask.predict_labels`) and over which
vocabulary it is evaluated by default (:meth:`SegmentationTask.default_eval_set`); the base
class runs the validation and test loops:

- the test sets come from ``trainer.datamodule`` (``test_names`` / ``test_vocabularies``, one
  per test loader) when the task is tested with ``trainer.test(task, datamodule=dm)``, else the
  task's default set;
- one :class:`ZeroShotSegMetrics` per set; at the end of the epoch every number is logged under
  ``<stage>/<metric>`` (one set) or ``<stage>/<set name>/<metric>`` (several), per-class IoU of a
  test under ``.../iou/<class index>``. Results come back through ``trainer.callback_metrics``
  (:func:`results_from_metrics`); nothing is written into the task from outside.

Gradient clipping is the Trainer's own ``gradient_clip_val`` (the runner passes the recipe's
``grad_clip``); the learning-rate schedule is :func:`poly_schedule`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import lightning as L
import torch

from maft.data.vocabulary import Vocabulary
from maft.metrics import ZeroShotSegMetrics
from maft.tasks.common import poly_lambda, segmentation_targets

#: The metric's rule for which classes count in the mean (detectron2 v0.6: gt_or_pred).
METRIC_RULE = "gt_or_pred"


def poly_schedule(
    optimizer: torch.optim.Optimizer, max_steps: int, power: float, warmup_steps: int = 0
) -> dict[str, Any]:
    """Per-step LambdaLR: linear warm-up then ``(1 - t/T)^power`` (power 0: constant)."""
    sched = torch.optim.lr_scheduler.LambdaLR(
        optimizer, poly_lambda(int(max_steps), float(power), int(warmup_steps))
    )
    return {"scheduler": sched, "interval": "step"}


def results_from_metrics(
    metrics: Mapping[str, Any], names: list[str], stage: str = "test"
) -> dict[str, dict[str, Any]]:
    """``{set name: {metric: value, iou_per_class: [...], rule}}`` from logged metrics.

    Inverse of :meth:`SegmentationTask.log_results` (``trainer.callback_metrics`` after
    ``trainer.test``); ``names`` are the evaluated sets in loader order.
    """
    out: dict[str, dict[str, Any]] = {}
    for name in names:
        prefix = f"{stage}/" if len(names) == 1 else f"{stage}/{name}/"
        scalars: dict[str, Any] = {}
        per_class: dict[int, float] = {}
        for key, value in metrics.items():
            if not key.startswith(prefix):
                continue
            rest = key[len(prefix) :]
            if rest.startswith("iou/"):
                per_class[int(rest[4:])] = float(value)
            elif "/" not in rest:
                scalars[rest] = float(value)
        if scalars:
            scalars["iou_per_class"] = [per_class[k] for k in sorted(per_class)]
            scalars["rule"] = METRIC_RULE
            out[name] = scalars
    return out


class SegmentationTask(L.LightningModule):
    """Base of ProposalTask and MaftTask: evaluation over one or several labelled sets."""

    def default_eval_set(self) -> tuple[str, Vocabulary]:
        """(name, vocabulary) evaluated when no datamodule names the test sets."""
        raise NotImplementedError

    def predict_labels(self, batch: dict[str, Any], vocab: Vocabulary) -> list[torch.Tensor]:
        """Per image int64 label maps ``[H0, W0]`` (ids of ``vocab``) at the original size."""
        raise NotImplementedError

    # ------------------------------------------------------------------ evaluation sets
    def eval_sets(self, stage: str) -> list[tuple[str, Vocabulary]]:
        """The sets of this epoch: the datamodule's test sets when testing with one, else ours."""
        trainer = self._trainer
        dm = getattr(trainer, "datamodule", None) if trainer is not None else None
        if stage == "test" and dm is not None and getattr(dm, "test_vocabularies", None):
            return list(zip(dm.test_names, dm.test_vocabularies))
        return [self.default_eval_set()]

    def _open(self, stage: str) -> None:
        self._sets = self.eval_sets(stage)
        self._metrics = [
            ZeroShotSegMetrics(
                num_classes=v.num_classes,
                seen=v.seen_mask,
                ignore_index=v.ignore_index,
                rule=METRIC_RULE,
            ).to(self.device)
            for _, v in self._sets
        ]

    def _update(self, batch: dict[str, Any], idx: int) -> list[torch.Tensor]:
        labels = self.predict_labels(batch, self._sets[idx][1])
        for pred, target in segmentation_targets(labels, batch):
            self._metrics[idx].update(pred[None], target[None])
        return labels

    def log_results(self, stage: str, name: str, r: Mapping[str, Any], single: bool) -> None:
        """Log one set's numbers (see :func:`results_from_metrics` for the names)."""
        prefix = stage if single else f"{stage}/{name}"
        for key, value in r.items():
            if isinstance(value, float) and (stage == "test" or not math.isnan(value)):
                self.log(f"{prefix}/{key}", value, sync_dist=False)
        if stage == "test":
            for k, value in enumerate(r.get("iou_per_class") or []):
                self.log(f"{prefix}/iou/{k}", float(value), sync_dist=False)

    def _close(self, stage: str) -> None:
        single = len(self._sets) == 1
        for (name, _), metric in zip(self._sets, self._metrics):
            self.log_results(stage, name, metric.compute(), single)

    # ------------------------------------------------------------------ Lightning hooks
    def on_validation_epoch_start(self) -> None:
        self._open("val")

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        """Update the metric; the labels go to callbacks (validation panels) as the output."""
        return {"labels": self._update(batch, 0)}

    def on_validation_epoch_end(self) -> None:
        self._close("val")

    def on_test_epoch_start(self) -> None:
        self._open("test")

    def test_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        self._update(batch, dataloader_idx)

    def on_test_epoch_end(self) -> None:
        self._close("test")


__all__ = ["METRIC_RULE", "SegmentationTask", "poly_schedule", "results_from_metrics"]
