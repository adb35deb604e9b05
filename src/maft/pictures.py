"""Pictures of a finished run: overlays, image|GT|prediction panels, frozen-vs-MAFT top-5 figures.

Written into ``<run>/pictures/`` for the first few test images. Colours follow the class names
and text scales with each image (see :mod:`maft.viz`); the proposal figure
(:func:`proposal_figure`, also behind ``scripts/show_proposals.py``) shows the proposals where
frozen CLIP and MAFT disagree most.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from PIL import Image
from torch.utils.data import Subset

from maft.data.vocabulary import Vocabulary
from maft.models.segmenter import describe_proposals, proposal_masks, top_k_names
from maft.viz import panel, proposal_panel

if TYPE_CHECKING:
    from maft.predictor import ImageLike, Predictor, VocabLike

log = logging.getLogger(__name__)


def write_run_pictures(
    task: Any, dm: Any, vocab: Vocabulary, out_dir: str | Path, n: int
) -> list[Path]:
    """Write ``n`` overlays, panels and proposal figures; returns the written paths."""
    from maft.data.readers import read_image
    from maft.predictor import Predictor

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
        figure, _ = proposal_figure(predictor, image, vocab, num=4, top_k=5)
        figure.save(paths["proposals"])
        written += list(paths.values())
    log.info("wrote %d pictures to %s", len(written), out)
    return written


# ---------------------------------------------------------------------------------- proposal figure
def disagreement(frozen: torch.Tensor, maft: torch.Tensor) -> torch.Tensor:
    """Total-variation distance between two ``A^c`` rows per proposal: ``[N, C], [N, C] -> [N]``."""
    return 0.5 * (frozen.float() - maft.float()).abs().sum(-1).cpu()


def select_proposals(
    props: Sequence[dict[str, Any]], tv: torch.Tensor, num: int, min_area: float = 0.01
) -> list[int]:
    """Indices of the ``num`` proposals to show, most disagreeing first.

    Valid proposals covering at least ``min_area`` of the image come first, by decreasing
    total-variation distance ``tv`` (ties: lower index); when fewer qualify, the rest fill in
    (valid before invalid, large before small, then by ``tv``).
    """

    def key(p: dict[str, Any]) -> tuple[bool, bool, float, int]:
        q = int(p["index"])
        return (not p["valid"], p["area_share"] < min_area, -float(tv[q]), q)

    return [int(p["index"]) for p in sorted(props, key=key)[: max(int(num), 0)]]


def proposal_figure(
    predictor: Predictor,
    image: ImageLike,
    vocabulary: VocabLike,
    num: int = 4,
    top_k: int = 5,
    min_area: float = 0.01,
) -> tuple[Image.Image, list[dict[str, Any]]]:
    """The paper's figure: the ``num`` proposals where frozen CLIP and MAFT disagree most.

    Both rows use the same proposals (one generator); frozen = teacher IP-CLIP
    (``frozen_ip_clip``), MAFT = fine-tuned IP-CLIP (``maft``). Proposals are ranked by the
    total-variation distance between the two ``A^c`` distributions, among valid proposals
    covering at least ``min_area`` of the image (see :func:`select_proposals`). Returns the
    picture and, per proposal shown, ``{"index", "area_share", "disagreement", "frozen",
    "maft"}``.
    """
    out_maft, info = predictor.run(image, vocabulary, mode="maft")
    out_frozen, _ = predictor.run(info["image"], info["vocab"], mode="frozen_ip_clip")
    names = info["vocab"].names
    frozen_probs, maft_probs = out_frozen.clip_probs[0], out_maft.clip_probs[0]  # [N, C]
    props = describe_proposals(out_maft, names, top_k)
    tv = disagreement(frozen_probs, maft_probs)  # [N]
    chosen = select_proposals(props, tv, num, min_area)
    masks = proposal_masks(out_maft)[chosen]  # [K, H0, W0]
    rows = [
        {
            "index": q,
            "area_share": props[q]["area_share"],
            "disagreement": round(float(tv[q]), 6),
            "frozen": [tuple(t) for t in top_k_names(frozen_probs[q], names, top_k)],
            "maft": [tuple(t) for t in top_k_names(maft_probs[q], names, top_k)],
        }
        for q in chosen
    ]
    picture = proposal_panel(
        info["image"],
        masks.cpu().numpy(),
        [r["frozen"] for r in rows],
        [r["maft"] for r in rows],
    )
    return picture, rows


__all__ = ["disagreement", "proposal_figure", "select_proposals", "write_run_pictures"]
