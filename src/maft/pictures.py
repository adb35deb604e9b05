"""Pictures of a finished run: overlays, image|GT|prediction panels, frozen-vs-MAFT top-5 figures.

Written into ``<run>/pictures/`` for the first few test images. Colours follow the class names
and text scales with each image (see :mod:`maft.viz`); the proposal figure shows the proposals
where frozen CLIP and MAFT disagree most.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from torch.utils.data import Subset

from maft.data.vocabulary import Vocabulary

log = logging.getLogger(__name__)


def write_run_pictures(
    task: Any, dm: Any, vocab: Vocabulary, out_dir: str | Path, n: int
) -> list[Path]:
    """Write ``n`` overlays, panels and proposal figures; returns the written paths."""
    from maft.data.readers import read_image
    from maft.predictor import Predictor
    from maft.viz import panel

    if n <= 0:
        return []
    out = Path(out_dir) / "pictures"
    out.mkdir(parents=True, exist_ok=True)
    dm.setup("test")
    ds, indices = dm.test_datasets[0], None
    while isinstance(ds, Subset):  # max_val_images keeps the first images of the split
        outer = range(len(ds)) if indices is None else indices
        indices = [int(ds.indices[i]) for i in outer]
        ds = ds.dataset
    order = indices if indices is not None else range(len(ds))
    predictor = Predictor(task, device=task.device, mode="maft", short_side=dm.test_short_side)
    written: list[Path] = []
    for i in list(order)[:n]:
        image_path, label_path = ds.pairs[i]
        image = read_image(image_path)  # [H, W, 3] uint8
        gt = ds.decode_label(label_path)  # [H, W] int64, original size
        pred = predictor.predict(image, vocab)
        stem = Path(image_path).stem
        paths = {
            "overlay": out / f"{stem}_overlay.png",
            "panel": out / f"{stem}_panel.png",
            "proposals": out / f"{stem}_proposals.png",
        }
        pred.overlay().save(paths["overlay"])
        panel(image, gt, pred.label_map.numpy(), vocab.names, ignore_index=vocab.ignore_index).save(
            paths["panel"]
        )
        figure, _ = predictor.proposal_figure(image, vocab, num=4, top_k=5)
        figure.save(paths["proposals"])
        written += list(paths.values())
    log.info("wrote %d pictures to %s", len(written), out)
    return written
