"""Lightning callbacks: the run's lifecycle (progress, stop on a signal, stage clock) and panels.

- :class:`StageProgressBar`: the live terminal bar, in steps of the stage's ``max_steps``.
- :class:`StageProgressLog`: a plain progress line (step N/max, loss, speed, time left) about every
  tenth of a stage, for log files and pipes (logger ``maft.progress``).
- :class:`GracefulStop`: SIGINT / SIGTERM finish the current step, save ``last.ckpt`` and stop.
- :class:`StageClock`: training seconds of a stage, carried across resumes in its checkpoints.
- :class:`ValidationCurve`: a stage's validation curve, and the weights of its best point.
- :class:`LogValidationPanels`: validation panels (image | ground truth | prediction).

The panels go to ``<dirpath or trainer.default_root_dir>/panels/epoch{E}_{i}.png`` and, when a
TensorBoard logger is attached, to TensorBoard as ``val/panel_{i}``. Predictions are the
``validation_step`` output (a dict with ``"labels"``: per image int64 ``[H0, W0]``), as both
tasks return it; a task that returns none gets no panels (one warning).
"""

from __future__ import annotations

import logging
import math
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.loggers import TensorBoardLogger
from PIL import Image

from maft.errors import MaftError
from maft.viz import panel, save_png

log = logging.getLogger(__name__)
progress_log = logging.getLogger("maft.progress")


# ------------------------------------------------------------------------------ run lifecycle
def interactive() -> bool:
    """True when both output streams are terminals (live bars); False for files and pipes."""
    return all(getattr(s, "isatty", lambda: False)() for s in (sys.stdout, sys.stderr))


def duration(seconds: float) -> str:
    """``4.2 s``, ``3 min 05 s``, ``2 h 01 min``."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, sec = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes} min {sec:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def _metrics_text(trainer: L.Trainer) -> str:
    """``loss 0.123`` from the progress-bar metrics (the training loss; no logger version)."""
    items = []
    for key, value in trainer.progress_bar_metrics.items():
        if key.startswith("train/") and isinstance(value, int | float) and math.isfinite(value):
            items.append(f"{key.removeprefix('train/')} {value:.4g}")
    return ", ".join(items)


class StageProgressBar(TQDMProgressBar):
    """Lightning's tqdm bars, with the training bar counting steps of the stage (not epochs)."""

    def __init__(self, label: str = "", max_steps: int = 0) -> None:
        super().__init__()
        self.label, self.max_steps = label, int(max_steps)

    def on_train_start(self, trainer: L.Trainer, *_: Any) -> None:
        self.train_progress_bar = self.init_train_tqdm()
        total = self.max_steps if self.max_steps > 0 else trainer.max_steps
        self.train_progress_bar.reset(total=total if total and total > 0 else None)
        self.train_progress_bar.n = self.train_progress_bar.initial = int(trainer.global_step)
        self.train_progress_bar.set_description(self.label or "train")
        self.train_progress_bar.refresh()

    def on_train_epoch_start(self, trainer: L.Trainer, *_: Any) -> None:
        """One bar for the whole stage: nothing to reset."""

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *_: Any) -> None:
        bar, step = self.train_progress_bar, int(trainer.global_step)
        if not bar.disable and self._should_update(step, bar.total):
            bar.n = step
            bar.set_postfix(self.get_metrics(trainer, pl_module))

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        """The progress-bar metrics without Lightning's logger version."""
        items = super().get_metrics(trainer, pl_module)
        items.pop("v_num", None)
        return items


class StageProgressLog(L.Callback):
    """A plain progress line about every tenth of a stage (or every ``max_interval_s`` seconds)."""

    def __init__(self, label: str = "", max_steps: int = 0, lines: int = 10) -> None:
        self.label, self.max_steps = label, int(max_steps)
        self.every = max(1, math.ceil(self.max_steps / max(1, lines))) if max_steps > 0 else 50
        self.max_interval_s = 300.0
        self._t0 = self._last = 0.0
        self._step0 = 0

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._t0 = self._last = time.perf_counter()
        self._step0 = int(trainer.global_step)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *_: Any) -> None:
        step, now = int(trainer.global_step), time.perf_counter()
        total = self.max_steps or int(trainer.max_steps)
        due = step % self.every == 0 or step == total or now - self._last >= self.max_interval_s
        if not due or not trainer.is_global_zero:
            return
        self._last = now
        per_step = (now - self._t0) / max(1, step - self._step0)
        share = 100 * step / max(1, total)
        parts = [f"{self.label or 'train'}: step {step}/{total} ({share:.0f}%)"]
        metrics = _metrics_text(trainer)
        if metrics:
            parts.append(metrics)
        parts.append(f"{per_step:.2f} s/step")
        if step < total:
            parts.append(f"about {duration(per_step * (total - step))} left")
        progress_log.info(", ".join(parts))


class StageClock(L.Callback):
    """Training seconds of a stage; saved in its checkpoints, so a resumed stage keeps counting."""

    def __init__(self) -> None:
        self.before = 0.0  # seconds trained before this session (from the checkpoint)
        self._t0: float | None = None

    @property
    def seconds(self) -> float:
        """Seconds trained so far, earlier sessions included."""
        running = 0.0 if self._t0 is None else time.perf_counter() - self._t0
        return self.before + running

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._t0 = time.perf_counter()

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.before, self._t0 = self.seconds, None

    def state_dict(self) -> dict[str, Any]:
        """The seconds trained up to this checkpoint."""
        return {"seconds": self.seconds}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Continue counting from the checkpoint's seconds."""
        self.before = float(state_dict.get("seconds", 0.0))


class TrainingInterrupted(MaftError):
    """SIGINT / SIGTERM stopped a training stage after saving a resumable checkpoint."""

    def __init__(self, signum: int, stage: str, step: int, path: Path) -> None:
        name = signal.Signals(signum).name
        super().__init__(f"{name}: stage {stage} stopped at step {step}; checkpoint {path}")
        self.signum, self.stage, self.step, self.path = int(signum), stage, int(step), Path(path)


class GracefulStop(L.Callback):
    """SIGINT / SIGTERM: finish the running step, save ``<dirpath>/last.ckpt``, stop the stage.

    A second SIGINT interrupts at once (without a checkpoint). Under DDP the ranks agree on the
    stop at every step end, so they save and stop together. Handlers are installed for the
    duration of ``fit`` only, from the main thread, and the previous ones restored afterwards.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, dirpath: str | Path, stage: str = "") -> None:
        self.dirpath, self.stage = Path(dirpath), stage
        self.signum: int | None = None  # the signal that stopped the stage
        self.saved: Path | None = None
        self.step = 0
        self._previous: dict[int, Any] = {}

    def _handler(self, signum: int, frame: Any) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now
        self.signum = int(signum)
        log.warning(
            "%s received: finishing the current step of %s, then saving a checkpoint "
            "(Ctrl-C again to stop at once)",
            signal.Signals(signum).name,
            self.stage or "the stage",
        )

    def _install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in self.SIGNALS:
            self._previous[sig] = signal.getsignal(sig)
            signal.signal(sig, self._handler)

    def _restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        self._previous = {}

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.signum, self.saved = None, None
        self._install()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *_: Any) -> None:
        wanted = self.signum is not None
        if trainer.world_size > 1:
            wanted = trainer.strategy.reduce_boolean_decision(wanted, all=False)
            if wanted and self.signum is None:
                self.signum = int(signal.SIGTERM)  # another rank got it
        if not wanted or self.saved is not None:
            return
        self.step = int(trainer.global_step)
        path = self.dirpath / "last.ckpt"
        trainer.save_checkpoint(str(path))
        self.saved = path
        trainer.should_stop = True

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._restore()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, err: Any) -> None:
        self._restore()

    def raise_if_stopped(self) -> None:
        """After ``fit``: raise :class:`TrainingInterrupted` when a signal stopped the stage."""
        if self.signum is not None and self.saved is not None:
            raise TrainingInterrupted(self.signum, self.stage, self.step, self.saved)


class ValidationCurve(L.Callback):
    """The stage's validation curve ``[(step, value)]`` of ``monitor``; optionally keep the best.

    With ``keep_best`` the trainable parameters of the best validation so far (highest value;
    the earliest on ties) are copied to the CPU, and put back into the model when training ends,
    so the stage ends with the selected weights. A validation run before the first step (step 0)
    enters the curve and can win: then the stage ends where it started. Curve, best step and
    best parameters travel in the stage's checkpoints, so a resumed stage selects the same way.

    With ``every`` only validations at multiples of ``every`` count (Lightning also validates
    when a stop is requested; that point is left out, so a stopped and resumed stage has the
    curve of an uninterrupted one). A checkpoint saved at a validation step before that step's
    validation ran (checkpoints are written at the end of the training batch, validation comes
    after) records the step as ``pending``; the runner validates it first when it resumes
    (:meth:`pending_of`, ``next_step``), and :meth:`load_state_dict` merges that point in.
    """

    def __init__(self, monitor: str, keep_best: bool = False, every: int | None = None) -> None:
        self.monitor, self.keep_best = monitor, bool(keep_best)
        self.every = int(every) if every else None
        self.curve: list[tuple[int, float]] = []
        self.best_step: int | None = None
        self.best_value = -math.inf
        self._best: dict[str, torch.Tensor] = {}
        self.next_step: int | None = None  # the step the next validation stands for (resume)

    @staticmethod
    def _trainable(pl_module: L.LightningModule) -> dict[str, torch.Tensor]:
        return {n: p for n, p in pl_module.named_parameters() if p.requires_grad}

    def _record(self, step: int, value: float, pl_module: L.LightningModule) -> None:
        self.curve = sorted([(s, v) for s, v in self.curve if s != step] + [(step, value)])
        better = value > self.best_value or (
            value == self.best_value and self.best_step is not None and step < self.best_step
        )
        if math.isfinite(value) and better:
            self.best_step, self.best_value = step, value
            if self.keep_best:
                self._best = {
                    n: p.detach().to("cpu", copy=True)
                    for n, p in self._trainable(pl_module).items()
                }

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        step = int(trainer.global_step) if self.next_step is None else self.next_step
        self.next_step = None
        if self.every and step % self.every:
            return  # a validation Lightning runs on a requested stop: not a point of the curve
        value = trainer.callback_metrics.get(self.monitor)
        if value is None:
            raise MaftError(
                f"validation logged no {self.monitor!r} (logged: "
                f"{sorted(trainer.callback_metrics)}); the validation curve needs it"
            )
        self._record(step, float(value), pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not (self.keep_best and self._best):
            return
        params = self._trainable(pl_module)
        with torch.no_grad():
            for name, value in self._best.items():
                params[name].copy_(value.to(params[name].device))
        log.info(
            "kept the weights of step %d (%s %.2f, the best of %d validations)",
            self.best_step,
            self.monitor,
            self.best_value,
            len(self.curve),
        )

    def summary(self) -> dict[str, Any]:
        """``{"monitor", "curve": [[step, value]], "best_step", "best_value", "kept"}``."""
        return {
            "monitor": self.monitor,
            "curve": [[s, round(v, 4)] for s, v in self.curve],
            "best_step": self.best_step,
            "best_value": None if self.best_step is None else round(self.best_value, 4),
            "kept": "best" if self.keep_best else "last",
        }

    def state_dict(self) -> dict[str, Any]:
        """Curve, best step / value and (``keep_best``) the best trainable parameters."""
        return {
            "curve": list(self.curve),
            "best_step": self.best_step,
            "best_value": self.best_value,
            "best": dict(self._best),
        }

    def on_save_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        """Mark a validation step saved before its validation ran as ``pending``."""
        step = int(trainer.global_step)
        due = bool(self.every) and step > 0 and step % self.every == 0
        state = (checkpoint.get("callbacks") or {}).get(self.state_key)
        if isinstance(state, dict):
            state["pending"] = step if due and step not in dict(self.curve) else None

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Continue a resumed stage's curve, merged with points recorded in this session."""
        mine = dict(self.curve)
        theirs = {int(s): float(v) for s, v in state_dict.get("curve", [])}
        self.curve = sorted({**mine, **theirs}.items())
        step, value = state_dict.get("best_step"), float(state_dict.get("best_value", -math.inf))
        if step is not None and (
            self.best_step is None
            or value > self.best_value
            or (value == self.best_value and int(step) < self.best_step)
        ):
            self.best_step, self.best_value = int(step), value
            self._best = dict(state_dict.get("best") or {})

    @staticmethod
    def pending_of(checkpoint: dict[str, Any]) -> int | None:
        """The ``pending`` validation step recorded in a loaded checkpoint's curve state."""
        for key, state in (checkpoint.get("callbacks") or {}).items():
            if str(key).startswith("ValidationCurve") and isinstance(state, dict):
                return state.get("pending")
        return None

    @staticmethod
    def pending_in(path: str | Path) -> int | None:
        """:meth:`pending_of` for a checkpoint file (memory-mapped read)."""
        return ValidationCurve.pending_of(
            torch.load(path, map_location="cpu", mmap=True, weights_only=False)
        )


def _display_image(
    image: torch.Tensor, valid: tuple[int, int], orig: tuple[int, int]
) -> np.ndarray:
    """Padded canvas ``[3, H, W]`` -> the image at its original size, uint8 ``[H0, W0, 3]``."""
    h, w = valid
    arr = image[:, :h, :w].detach().float().clamp(0, 255).round().byte().permute(1, 2, 0)
    im = Image.fromarray(arr.cpu().numpy(), "RGB")  # [h, w, 3]
    if (h, w) != tuple(orig):
        im = im.resize((orig[1], orig[0]), Image.BILINEAR)
    return np.asarray(im)


class LogValidationPanels(L.Callback):
    """Write ``num_images`` validation panels every ``every_n_epochs`` epochs (rank 0 only)."""

    def __init__(
        self, num_images: int = 2, every_n_epochs: int = 1, dirpath: str | None = None
    ) -> None:
        super().__init__()
        if num_images < 1 or every_n_epochs < 1:
            raise ValueError("num_images and every_n_epochs must be >= 1")
        self.num_images = int(num_images)
        self.every_n_epochs = int(every_n_epochs)
        self.dirpath = dirpath
        self._samples: list[dict[str, Any]] = []
        self._written_epochs: set[int] = set()
        self._warned = False
        self.last_paths: list[Path] = []

    # ------------------------------------------------------------------ hooks
    def _active(self, trainer: L.Trainer) -> bool:
        return (
            not trainer.sanity_checking
            and trainer.is_global_zero
            and trainer.current_epoch % self.every_n_epochs == 0
        )

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._samples = []

    def on_validation_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        want = self.num_images - len(self._samples)
        if want <= 0 or dataloader_idx != 0 or not self._active(trainer):
            return
        if not isinstance(batch, dict) or "image" not in batch:
            return
        n = min(want, int(batch["image"].shape[0]))
        preds = self._predictions(pl_module, outputs, batch, n)
        if preds is None:
            return
        for i in range(n):
            self._samples.append(self._sample(batch, i, preds[i]))

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._samples or not self._active(trainer):
            return
        names = self._names(pl_module, self._samples)
        ignore = getattr(getattr(pl_module, "vocab", None), "ignore_index", None)
        epoch, step = trainer.current_epoch, trainer.global_step
        tag = f"epoch{epoch}" if epoch not in self._written_epochs else f"epoch{epoch}_step{step}"
        self._written_epochs.add(epoch)
        root = Path(self.dirpath or trainer.default_root_dir) / "panels"
        self.last_paths = []
        for i, s in enumerate(self._samples):
            picture = panel(s["image"], s["gt"], s["pred"], names, ignore_index=ignore)
            path = root / f"{tag}_{i}.png"
            save_png(picture, path)
            self.last_paths.append(path)
            for logger in trainer.loggers:
                if isinstance(logger, TensorBoardLogger):
                    arr = np.asarray(picture)  # [H, W, 3]
                    logger.experiment.add_image(
                        f"val/panel_{i}", arr, global_step=step, dataformats="HWC"
                    )
        self._samples = []

    # ------------------------------------------------------------------ helpers
    def _predictions(
        self, pl_module: L.LightningModule, outputs: Any, batch: dict[str, Any], n: int
    ) -> list[torch.Tensor] | None:
        """Per-image label maps at the original size, from the step, the task, or a forward."""
        if isinstance(outputs, dict) and outputs.get("labels") is not None:
            return list(outputs["labels"])[:n]
        if not self._warned:
            log.warning(
                "LogValidationPanels: %s gives no predictions (return {'labels': ...} from "
                "validation_step); no panels written",
                type(pl_module).__name__,
            )
            self._warned = True
        return None

    @staticmethod
    def _sample(batch: dict[str, Any], i: int, pred: torch.Tensor) -> dict[str, Any]:
        """Image, ground truth (None if not at the original size) and prediction of one image."""
        h0, w0 = (int(v) for v in batch["orig_size"][i])
        valid = tuple(int(v) for v in batch.get("valid_size", batch["orig_size"])[i])
        image = _display_image(batch["image"][i], valid, (h0, w0))
        label = batch.get("label")
        gt = None
        if label is not None and label.shape[-2] >= h0 and label.shape[-1] >= w0:
            gt = label[i, :h0, :w0].detach().cpu().numpy().astype(np.int64)
        p = torch.as_tensor(pred).detach().cpu().numpy().astype(np.int64)
        if p.shape != (h0, w0):  # a task predicting at another size: nearest resize
            p = np.asarray(Image.fromarray(p.astype(np.int32), "I").resize((w0, h0), Image.NEAREST))
            p = p.astype(np.int64)
        return {"image": image, "gt": gt, "pred": p}

    @staticmethod
    def _names(pl_module: Any, samples: list[dict[str, Any]]) -> list[str]:
        vocab = getattr(pl_module, "vocab", None)
        if vocab is not None and hasattr(vocab, "names"):
            return list(vocab.names)
        top = max(int(s["pred"].max()) for s in samples) + 1
        return [f"class {c}" for c in range(top)]


__all__ = [
    "GracefulStop",
    "LogValidationPanels",
    "StageClock",
    "StageProgressBar",
    "StageProgressLog",
    "TrainingInterrupted",
    "ValidationCurve",
    "duration",
    "interactive",
]
