"""Convert COCO-Stuff stuffthingmaps to the 171-class layout maft reads (benchmarks.json).

Input:  <coco>/stuffthingmaps/{train2017,val2017}/*.png  (value = COCO id - 1, 255 unlabelled)
Output: <coco>/stuffthingmaps_detectron2/{train2017,val2017}/*.png  (0..170, 255 ignore)

As MAFT's datasets/prepare_coco_stuff_sem_seg.py: value -> position of (value + 1) in the
171 COCO id list, unknown values -> 255, maps that end up all-255 are not written.
Usage: python scripts/prepare_coco_stuff.py --root $MAFT_DATA_ROOT/coco [--force] [--workers 8]
"""

from __future__ import annotations

import os
from functools import partial
from pathlib import Path

import numpy as np
from PIL import Image

from maft.data.prepare import base_parser, check_outputs, coco_stuff_lut, report, run_all


def convert_one(src: Path, out_dir: Path) -> bool:
    """Convert one stuffthingmap; return False when the result is all-ignore (not written)."""
    with Image.open(src) as im:
        raw = np.asarray(im)
    out = coco_stuff_lut()[raw]
    if (out == 255).all():
        return False
    Image.fromarray(out).save(out_dir / src.name)
    return True


def main(argv: list[str] | None = None) -> int:
    """Parse arguments and convert every requested split."""
    p = base_parser(__doc__.splitlines()[0])
    p.add_argument("--root", default=os.path.join(os.environ.get("MAFT_DATA_ROOT", "data"), "coco"))
    p.add_argument("--splits", nargs="+", default=["train2017", "val2017"])
    p.add_argument("--workers", type=int, default=1)
    args = p.parse_args(argv)
    root = Path(args.root)
    srcs = {s: root / "stuffthingmaps" / s for s in args.splits}
    missing = [str(d) for d in srcs.values() if not d.is_dir()]
    if missing:
        raise SystemExit(f"missing input folder(s): {', '.join(missing)} (unzip stuffthingmaps)")
    outs = {s: root / "stuffthingmaps_detectron2" / s for s in args.splits}
    check_outputs(list(outs.values()), args.force)
    for split in args.splits:
        files = sorted(srcs[split].glob("*.png"))
        done = run_all(partial(convert_one, out_dir=outs[split]), files, args.workers, split)
        report({outs[split]: sum(done)}, len(done) - sum(done), "all-ignore label maps")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
