"""Convert PASCAL VOC 2012 SegmentationClassAug to the 20-class layout maft reads.

Input:  <VOC2012>/SegmentationClassAug/<id>.png and a split list <VOC2012>/<split>.txt
        (or <VOC2012>/ImageSets/Segmentation/<split>.txt)
Output: <VOC2012>/annotations_ovs/<split>/<id>.png  (0..19, background and 255 -> 255)

As MAFT's datasets/prepare_voc_sem_seg.py: raw k in 1..20 -> k-1, 0 and 255 -> 255, other
values -> 255; maps that end up all-255 are not written. Images stay in JPEGImages.
Usage: python scripts/prepare_voc.py --root $MAFT_DATA_ROOT/VOCdevkit/VOC2012 [--splits val train]
"""

from __future__ import annotations

import os
from functools import partial
from pathlib import Path

import numpy as np
from PIL import Image

from maft.data.prepare import base_parser, check_outputs, report, run_all, voc_lut


def convert_one(src: Path, out_dir: Path) -> bool:
    """Convert one SegmentationClassAug map; False when all-ignore (not written)."""
    with Image.open(src) as im:
        out = voc_lut()[np.asarray(im)]
    if (out == 255).all():
        return False
    Image.fromarray(out).save(out_dir / src.name)
    return True


def split_ids(root: Path, split: str) -> list[str]:
    """Image ids of ``split`` from ``<split>.txt`` or ``ImageSets/Segmentation/<split>.txt``."""
    for f in (root / f"{split}.txt", root / "ImageSets" / "Segmentation" / f"{split}.txt"):
        if f.is_file():
            return [line.split()[0] for line in f.read_text().splitlines() if line.strip()]
    raise SystemExit(f"no split list for {split!r}: expected {root / f'{split}.txt'}")


def main(argv: list[str] | None = None) -> int:
    """Parse arguments and convert every requested split."""
    p = base_parser(__doc__.splitlines()[0])
    default = os.path.join(os.environ.get("MAFT_DATA_ROOT", "data"), "VOCdevkit", "VOC2012")
    p.add_argument("--root", default=default)
    p.add_argument("--splits", nargs="+", default=["val"])
    p.add_argument("--workers", type=int, default=1)
    args = p.parse_args(argv)
    root = Path(args.root)
    aug = root / "SegmentationClassAug"
    if not aug.is_dir():
        raise SystemExit(f"missing {aug} (from the SBD-augmented VOC release)")
    outs = {s: root / "annotations_ovs" / s for s in args.splits}
    check_outputs(list(outs.values()), args.force)
    for split in args.splits:
        files = [aug / f"{i}.png" for i in split_ids(root, split)]
        absent = [str(f) for f in files if not f.is_file()]
        if absent:
            raise SystemExit(f"{len(absent)} label file(s) missing, e.g. {absent[0]}")
        done = run_all(partial(convert_one, out_dir=outs[split]), files, args.workers, split)
        report({outs[split]: sum(done)}, len(done) - sum(done), "all-ignore label maps")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
