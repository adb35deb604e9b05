"""Build PASCAL-Context 459 (uint16 TIFF) and 59 (PNG) labels in the layout maft reads.

Input:  <VOC2010>/JPEGImages/<id>.jpg, <VOC2010>/trainval/<id>.mat (LabelMap, uint16) and the split
        list: --split-list FILE, else images with "phase" == split in trainval_merged.json, else
        the ids already in <VOC2010>/<split>/image.
Output: <VOC2010>/<split>/image/<id>.jpg (copies), annotations_detectron2_ovs/pc459_<split>/<id>.tif
        (LabelMap - 1, 0 -> 65535) and annotations_detectron2_ovs/pc59_<split>/<id>.png.
PC-59 is derived from LabelMap, not from the Detail API masks: class k is LabelMap value
detail_api_ids_sorted[k + 1] (the Detail ids equal LabelMap ids: the 59 names match the 459 list
at those ids, 'diningtable' = 'table'); every other value -> 255. trainval_merged.json is only
read (standard library json) for its image list.
Usage: python scripts/prepare_pascal_context.py --root $MAFT_DATA_ROOT/VOCdevkit/VOC2010
"""

from __future__ import annotations

import json
import os
import shutil
from functools import partial
from pathlib import Path

import scipy.io
from PIL import Image

from maft.data.prepare import base_parser, check_outputs, pc59_lut, pc459_convert, report, run_all


def convert_one(stem: str, root: Path, split: str, variants: tuple[str, ...]) -> None:
    """Copy one image and write its 459 and/or 59 label maps."""
    mat = root / "trainval" / f"{stem}.mat"
    if not mat.is_file():
        raise SystemExit(f"missing {mat} (extract trainval.tar.gz from PASCAL-Context)")
    label_map = scipy.io.loadmat(mat)["LabelMap"]
    image_dir = root / split / "image"
    if not (image_dir / f"{stem}.jpg").is_file():
        shutil.copy2(root / "JPEGImages" / f"{stem}.jpg", image_dir / f"{stem}.jpg")
    ann = root / "annotations_detectron2_ovs"
    if "459" in variants:
        Image.fromarray(pc459_convert(label_map)).save(ann / f"pc459_{split}" / f"{stem}.tif")
    if "59" in variants:
        Image.fromarray(pc59_lut()[label_map]).save(ann / f"pc59_{split}" / f"{stem}.png")


def split_ids(root: Path, split: str, split_list: str | None) -> list[str]:
    """Image ids of ``split`` (see the module docstring for the order of sources)."""
    if split_list:
        return [Path(s.split()[0]).stem for s in Path(split_list).read_text().split("\n") if s]
    merged = root / "trainval_merged.json"
    if merged.is_file():
        images = json.loads(merged.read_text())["images"]
        return sorted(Path(im["file_name"]).stem for im in images if im.get("phase") == split)
    existing = root / split / "image"
    if existing.is_dir():
        return sorted(p.stem for p in existing.glob("*.jpg"))
    raise SystemExit(f"no image list for {split!r}: give --split-list or {merged}")


def main(argv: list[str] | None = None) -> int:
    """Parse arguments and write the requested variants and splits."""
    p = base_parser(__doc__.splitlines()[0])
    default = os.path.join(os.environ.get("MAFT_DATA_ROOT", "data"), "VOCdevkit", "VOC2010")
    p.add_argument("--root", default=default)
    p.add_argument("--variants", nargs="+", choices=["59", "459"], default=["59", "459"])
    p.add_argument("--splits", nargs="+", default=["val"])
    p.add_argument("--split-list", default=None, help="file with one image id per line")
    p.add_argument("--workers", type=int, default=1)
    args = p.parse_args(argv)
    root = Path(args.root)
    for split in args.splits:
        ids = split_ids(root, split, args.split_list)
        ann = root / "annotations_detectron2_ovs"
        outs = {v: ann / f"pc{v}_{split}" for v in args.variants}
        check_outputs(list(outs.values()), args.force)
        (root / split / "image").mkdir(parents=True, exist_ok=True)
        fn = partial(convert_one, root=root, split=split, variants=tuple(args.variants))
        run_all(fn, ids, args.workers, f"PASCAL-Context {split}")
        report({root / split / "image": len(ids), **{d: len(ids) for d in outs.values()}})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
