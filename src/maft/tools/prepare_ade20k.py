"""Convert ADE20K-Full (847 classes) or ADEChallengeData2016 (150) to the layouts maft reads.

847: input  <root>/images/ADE/{training,validation}/**/<name>.jpg + <name>_seg.png, where root is
     the ADE20K_2021_17_01 folder; output <root>/images_detectron2/<split>/<name>.jpg and
     <root>/annotations_detectron2/<split>/<name>.tif (uint16 trainId, 65535 ignore).
     As MAFT's prepare_ade20k_full_sem_seg.py: object class floor(R/10)*256 + G -> trainId via
     ade_object_ids, unmapped -> 65535; a short side above 512 is resized to 512 (image
     bilinear, label nearest); split from the name (ADE_val_* -> validation). Files are found by
     walking images/ADE instead of reading index_ade20k.pkl.
150: input  <root>/annotations/{training,validation}/*.png with root = ADEChallengeData2016;
     output <root>/annotations_detectron2/<split>/*.png (v - 1, 0 -> 255). Images stay in images/.
Usage: python scripts/prepare_ade20k.py 847 --root $MAFT_DATA_ROOT/ADE20K_2021_17_01
"""

from __future__ import annotations

import os
from functools import partial
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from maft.data.prepare import (
    ade150_convert,
    ade_full_object_class,
    ade_full_resized_size,
    ade_full_train_ids,
    base_parser,
    check_outputs,
    read_rgb,
    report,
    run_all,
)

SPLITS = ("training", "validation")


def convert_full(image: Path, root: Path) -> str:
    """Convert one ADE-full image and its ``_seg.png``; return the split it went to."""
    split = "validation" if image.name.split("_")[1] == "val" else "training"
    img = read_rgb(image)
    obj = ade_full_object_class(read_rgb(image.with_name(image.stem + "_seg.png")))
    size = ade_full_resized_size(*img.shape[:2])
    if size is not None:
        img = cv2.resize(img, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
        obj = cv2.resize(obj, (size[1], size[0]), interpolation=cv2.INTER_NEAREST)
    Image.fromarray(img).save(root / "images_detectron2" / split / image.name)
    label = ade_full_train_ids(obj)
    Image.fromarray(label).save(root / "annotations_detectron2" / split / f"{image.stem}.tif")
    return split


def convert_150(src: Path, out_dir: Path) -> None:
    """Convert one ADEChallengeData2016 annotation (v - 1, 0 -> 255)."""
    with Image.open(src) as im:
        Image.fromarray(ade150_convert(np.asarray(im))).save(out_dir / src.name)


def run_full(root: Path, force: bool, workers: int) -> None:
    """ADE20K-Full: walk images/ADE and write the 847-class layout."""
    src = root / "images" / "ADE"
    if not src.is_dir():
        raise SystemExit(f"missing {src}: point --root at the extracted ADE20K_2021_17_01 folder")
    images = sorted(p for p in src.rglob("ADE_*.jpg"))
    outs = [root / d / s for d in ("images_detectron2", "annotations_detectron2") for s in SPLITS]
    check_outputs(outs, force)
    splits = run_all(partial(convert_full, root=root), images, workers, "ADE20K-Full")
    report(
        {
            root / d / s: splits.count(s)
            for s in SPLITS
            for d in ("images_detectron2", "annotations_detectron2")
        }
    )


def run_150(root: Path, force: bool, workers: int) -> None:
    """ADEChallengeData2016: shift labels by one into annotations_detectron2."""
    outs = {s: root / "annotations_detectron2" / s for s in SPLITS}
    srcs = {s: root / "annotations" / s for s in SPLITS}
    if not all(d.is_dir() for d in srcs.values()):
        raise SystemExit(f"missing {root / 'annotations'}/{{training,validation}}")
    check_outputs(list(outs.values()), force)
    for s in SPLITS:
        files = sorted(srcs[s].glob("*.png"))
        run_all(partial(convert_150, out_dir=outs[s]), files, workers, s)
        report({outs[s]: len(files)})


def main(argv: list[str] | None = None) -> int:
    """Parse arguments and convert one variant."""
    p = base_parser(__doc__.splitlines()[0])
    p.add_argument("variant", choices=["847", "150"])
    p.add_argument("--root", default=None, help="ADE20K_2021_17_01 or ADEChallengeData2016 folder")
    p.add_argument("--workers", type=int, default=1)
    args = p.parse_args(argv)
    sub = "ADE20K_2021_17_01" if args.variant == "847" else "ADEChallengeData2016"
    root = Path(args.root or os.path.join(os.environ.get("MAFT_DATA_ROOT", "data"), sub))
    (run_full if args.variant == "847" else run_150)(root, args.force, args.workers)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
