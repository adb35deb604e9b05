"""LogValidationPanels: PNG panels in the run folder, TensorBoard images, robustness."""

from __future__ import annotations

import lightning as L
import numpy as np
import pytest
import torch
from PIL import Image

from maft.callbacks import LogValidationPanels
from maft.data.collate import SemSegCollate


def _loader(batches: list[dict]) -> torch.utils.data.DataLoader:
    """A DataLoader yielding the pre-collated batches unchanged."""
    return torch.utils.data.DataLoader(batches, batch_size=None)


def _batches(n_batches: int = 2, size: tuple[int, int] = (24, 40)) -> list[dict]:
    """Collated eval batches of two images each: canvas 32x64, labels at the original size."""
    g = torch.Generator().manual_seed(0)
    collate = SemSegCollate(ignore_index=255)
    out = []
    for _ in range(n_batches):
        samples = []
        for _ in range(2):
            label = torch.randint(0, 3, size, generator=g)
            label[:2, :2] = 255
            samples.append(
                {
                    "image": torch.randint(0, 256, (3, *size), generator=g, dtype=torch.uint8),
                    "label": label,
                    "orig_size": size,
                    "file_name": "x.jpg",
                }
            )
        out.append(collate(samples))
    return out


class _Vocab:
    names = ["sky", "grass", "tree"]
    ignore_index = 255


class _StepOutputs(L.LightningModule):
    """Predicts ``label % 3`` with 255 -> 0 and hands it back from validation_step."""

    def __init__(self, give: bool = True) -> None:
        super().__init__()
        self.give = give
        self.vocab = _Vocab()
        self.w = torch.nn.Parameter(torch.zeros(1))

    def validation_step(self, batch, batch_idx):
        if not self.give:
            return None
        labels = []
        for i in range(batch["image"].shape[0]):
            h, w = (int(v) for v in batch["orig_size"][i])
            lab = batch["label"][i, :h, :w].clone()
            lab[lab == 255] = 0
            labels.append(lab)
        return {"labels": labels}


def _trainer(tmp_path, cb, logger=False) -> L.Trainer:
    return L.Trainer(
        default_root_dir=str(tmp_path),
        callbacks=[cb],
        logger=logger,
        accelerator="cpu",
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )


def test_panels_written_and_logged_to_tensorboard(tmp_path):
    from lightning.pytorch.loggers import TensorBoardLogger
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cb = LogValidationPanels(num_images=3)
    logger = TensorBoardLogger(str(tmp_path), name="tb")
    batches = _batches()
    _trainer(tmp_path, cb, logger).validate(
        _StepOutputs(), dataloaders=_loader(batches), verbose=False
    )
    names = sorted(p.name for p in (tmp_path / "panels").iterdir())
    assert names == ["epoch0_0.png", "epoch0_1.png", "epoch0_2.png"]  # exactly num_images
    with Image.open(tmp_path / "panels" / "epoch0_2.png") as im:
        assert im.mode == "RGB" and im.height >= 24 and im.width > 3 * 40
        arr = np.asarray(im)
    # the third panel shows image 0 of the second batch, at its original size
    img = batches[1]["image"][0, :, :24, :40].permute(1, 2, 0).numpy()
    title = 18
    assert (arr[title : title + 24, :40] == img).all()
    logger.experiment.flush()
    acc = EventAccumulator(logger.log_dir, size_guidance={"images": 0}).Reload()
    assert sorted(acc.Tags()["images"]) == ["val/panel_0", "val/panel_1", "val/panel_2"]


def test_second_validation_in_an_epoch_gets_its_own_files(tmp_path):
    cb = LogValidationPanels(num_images=1)
    trainer = _trainer(tmp_path, cb)
    module = _StepOutputs()
    trainer.validate(module, dataloaders=_loader(_batches(1)), verbose=False)
    trainer.validate(module, dataloaders=_loader(_batches(1)), verbose=False)
    names = sorted(p.name for p in (tmp_path / "panels").iterdir())
    assert names == ["epoch0_0.png", "epoch0_step0_0.png"]


def test_task_without_predictions_writes_nothing(tmp_path, caplog):
    cb = LogValidationPanels(num_images=2)
    _trainer(tmp_path, cb).validate(
        _StepOutputs(give=False), dataloaders=_loader(_batches(1)), verbose=False
    )
    assert not (tmp_path / "panels").exists()
    assert "no panels" in caplog.text


def test_maft_task_panels_through_its_segmenter(tmp_path, tiny_task):
    cb = LogValidationPanels(num_images=2, dirpath=str(tmp_path / "run"))
    _trainer(tmp_path, cb).validate(tiny_task, dataloaders=_loader(_batches(1)), verbose=False)
    assert [p.name for p in cb.last_paths] == ["epoch0_0.png", "epoch0_1.png"]
    for path in cb.last_paths:
        assert path.parent == tmp_path / "run" / "panels"
        with Image.open(path) as im:
            assert im.mode == "RGB" and im.width > 3 * 40


def test_arguments_are_checked():
    with pytest.raises(ValueError):
        LogValidationPanels(num_images=0)
