"""Lightning callbacks: validation panels (image | ground truth | prediction) per validation run.

The panels go to ``<dirpath or trainer.default_root_dir>/panels/epoch{E}_{i}.png`` and, when a
TensorBoard logger is attached, to TensorBoard as ``val/panel_{i}``. Predictions come from, in
order: the ``validation_step`` output (a dict with ``"labels"``: per image int64 ``[H0, W0]``),
a task attribute ``last_val_predictions`` (same list), or a fresh forward of the task's
``segmenter()`` (MaftTask) on the few images kept. Tasks offering none of these get no panels.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from PIL import Image

from maft.viz import panel, save_png

log = logging.getLogger(__name__)


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
        stored = getattr(pl_module, "last_val_predictions", None)
        if stored is not None and len(stored) >= n:
            return list(stored)[:n]
        if all(hasattr(pl_module, a) for a in ("segmenter", "text_embeddings", "vocab")):
            return self._forward(pl_module, batch, n)
        if not self._warned:
            log.warning(
                "LogValidationPanels: %s gives no predictions (return {'labels': ...} from "
                "validation_step or set last_val_predictions); no panels written",
                type(pl_module).__name__,
            )
            self._warned = True
        return None

    @staticmethod
    @torch.no_grad()
    def _forward(pl_module: Any, batch: dict[str, Any], n: int) -> list[torch.Tensor]:
        """Run the task's ZeroShotSegmenter on the first ``n`` images of the batch."""
        vocab = pl_module.vocab
        seen = vocab.seen.to(pl_module.device) if vocab.has_split else None
        out = pl_module.segmenter()(
            batch["image"][:n],
            pl_module.text_embeddings(vocab),
            seen,
            batch["valid_size"][:n],
            batch["orig_size"][:n],
        )
        return out.labels

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
        names = getattr(pl_module, "class_names", None)
        if names:
            return list(names)
        top = max(int(s["pred"].max()) for s in samples) + 1
        return [f"class {c}" for c in range(top)]


__all__ = ["LogValidationPanels"]
