"""On-disk layouts of every benchmark (docs/datasets.md, ``benchmarks.json`` ``on_disk`` fields).

One :class:`BenchmarkLayout` per (benchmark, layout name). ``root`` is always the benchmark's own
folder under ``MAFT_DATA_ROOT`` (see :data:`SUBFOLDERS`); every path below is relative to it.

Layout names:

- ``"registration"``: what MAFT's dataset registration reads (default).
- ``"seen_only"``: the zsseg / ZegFormer zero-shot folders, whose training labels hold only seen
  classes re-indexed ``0..S-1`` (``train2017_base``, ``train_base``, ``training_seen``); the
  reader maps them back to the full benchmark index space, so labels always use full indices.

Benchmark ``"folder"`` is the custom format: ``images/{train,val}``, ``labels/{train,val}`` with
8-bit PNG (255 ignore) or 16-bit TIFF (65535 ignore) labels and a ``classes.txt``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from maft.errors import ConfigError, DatasetLayoutError

#: Layout names accepted by :func:`get_layout`.
LAYOUTS = ("registration", "seen_only")

#: The benchmark's folder under ``MAFT_DATA_ROOT`` (what ``conf/data/<key>.yaml`` appends).
SUBFOLDERS: dict[str, str] = {
    "coco_stuff_171": "coco",
    "voc_20": "VOCdevkit/VOC2012",
    "pas_20": "VOCdevkit/VOC2012",
    "ade20k_847": "ADE20K_2021_17_01",
    "ade20k_150": "ADEChallengeData2016",
    "pcontext_59": "VOCdevkit/VOC2010",
    "pcontext_459": "VOCdevkit/VOC2010",
    "folder": "folder",
}

IMAGE_SUFFIXES = (".jpg",)
FOLDER_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


@dataclass(frozen=True)
class SplitLayout:
    """Image and label folders of one split; ``label_space`` is ``"full"`` or ``"seen"``."""

    image_dir: str
    label_dir: str
    label_space: str = "full"


@dataclass(frozen=True)
class BenchmarkLayout:
    """Where a benchmark's files live and how its labels are encoded."""

    benchmark: str
    name: str
    splits: dict[str, SplitLayout]
    label_suffix: str = ".png"
    ignore_value: int = 255
    image_suffixes: tuple[str, ...] = IMAGE_SUFFIXES
    images_shared: bool = False  # the image folder also holds other splits' images
    unlabeled_images: str = "error"  # "error" or "skip" (images without a label file)
    note: str = field(default="", compare=False)

    @property
    def label_dtype(self) -> str:
        """``"uint16"`` for TIFF labels, else ``"uint8"``."""
        return "uint16" if self.label_suffix in (".tif", ".tiff") else "uint8"

    def split(self, split: str, root: Path) -> SplitLayout:
        """Layout of ``split`` or a :class:`DatasetLayoutError` listing the valid splits."""
        if split not in self.splits:
            raise DatasetLayoutError(
                f"split {split!r} is not available for {self.benchmark!r} with layout "
                f"{self.name!r} under {root}; available splits: {', '.join(self.splits)}.\n"
                + self.describe(root)
            )
        return self.splits[split]

    def describe(self, root: str | Path) -> str:
        """Human-readable expected layout, used in every layout error."""
        lines = [f"expected layout of {self.benchmark!r} ({self.name}) under {root}:"]
        for name, s in self.splits.items():
            img = "/".join([s.image_dir, "<name>" + "|".join(self.image_suffixes)])
            lab = "/".join([s.label_dir, "<name>" + self.label_suffix])
            space = " (seen classes re-indexed 0..S-1)" if s.label_space == "seen" else ""
            lines.append(f"  {name}: {img}  +  {lab}{space}")
        if self.note:
            lines.append(f"  note: {self.note}")
        lines.append("  (run the matching scripts/prepare_*.py or see docs/datasets.md)")
        return "\n".join(lines)


def _two(img: tuple[str, str], lab: tuple[str, str], space: str = "full") -> dict:
    return {
        "train": SplitLayout(img[0], lab[0], space),
        "val": SplitLayout(img[1], lab[1]),
    }


def _build() -> dict[tuple[str, str], BenchmarkLayout]:
    voc_note = "JPEGImages holds every VOC image; the label folder decides the split"
    pc_note = (
        "val/image holds only the PASCAL-Context val JPEGs (scripts/prepare_pascal_context.py)"
    )
    coco = ("train2017", "val2017")
    ade_full_img = ("images_detectron2/training", "images_detectron2/validation")
    ade_freq_img = ("images_detectron2_freq/training", "images_detectron2_freq/validation")
    voc_img = ("JPEGImages", "JPEGImages")
    pc_img = ("train/image", "val/image")
    table = [
        BenchmarkLayout(
            "coco_stuff_171",
            "registration",
            _two(
                coco, ("stuffthingmaps_detectron2/train2017", "stuffthingmaps_detectron2/val2017")
            ),
            unlabeled_images="skip",
            note="images whose label map is all-ignore have no label file; they are skipped",
        ),
        BenchmarkLayout(
            "coco_stuff_171",
            "seen_only",
            _two(
                coco,
                ("stuffthingmaps_detectron2/train2017_base", "stuffthingmaps_detectron2/val2017"),
                "seen",
            ),
            unlabeled_images="skip",
            note="zsseg layout: train2017_base holds the 156 seen classes re-indexed 0..155",
        ),
        BenchmarkLayout(
            "voc_20",
            "registration",
            _two(voc_img, ("annotations_ovs/train", "annotations_ovs/val")),
            images_shared=True,
            note=voc_note,
        ),
        BenchmarkLayout(
            "voc_20",
            "seen_only",
            _two(
                voc_img, ("annotations_detectron2/train_base", "annotations_detectron2/val"), "seen"
            ),
            images_shared=True,
            note="zsseg layout: train_base holds the 15 seen classes re-indexed 0..14",
        ),
        BenchmarkLayout(
            "pas_20",
            "registration",
            {"val": SplitLayout("JPEGImages", "annotations_ovs/val")},
            images_shared=True,
            note=voc_note,
        ),
        BenchmarkLayout(
            "ade20k_847",
            "registration",
            _two(
                ade_full_img,
                ("annotations_detectron2/training", "annotations_detectron2/validation"),
            ),
            label_suffix=".tif",
            ignore_value=65535,
        ),
        BenchmarkLayout(
            "ade20k_847",
            "seen_only",
            _two(
                ade_freq_img,
                (
                    "annotations_detectron2_freq/training_seen",
                    "annotations_detectron2_freq/val_all",
                ),
                "seen",
            ),
            label_suffix=".tif",
            ignore_value=65535,
            note="ZegFormer frequency split: training_seen holds 572 seen classes as 0..571",
        ),
        BenchmarkLayout(
            "ade20k_150",
            "registration",
            _two(
                ("images/training", "images/validation"),
                ("annotations_detectron2/training", "annotations_detectron2/validation"),
            ),
        ),
        BenchmarkLayout(
            "pcontext_59",
            "registration",
            _two(
                pc_img,
                ("annotations_detectron2_ovs/pc59_train", "annotations_detectron2_ovs/pc59_val"),
            ),
            note=pc_note,
        ),
        BenchmarkLayout(
            "pcontext_459",
            "registration",
            _two(
                pc_img,
                ("annotations_detectron2_ovs/pc459_train", "annotations_detectron2_ovs/pc459_val"),
            ),
            label_suffix=".tif",
            ignore_value=65535,
            note=pc_note,
        ),
    ]
    return {(lay.benchmark, lay.name): lay for lay in table}


_LAYOUTS = _build()


def folder_layout(label_suffix: str = ".png", root: str | Path = "") -> BenchmarkLayout:
    """Layout of the custom folder format; ``.tif`` labels are 16-bit with 65535 ignore.

    Splits: ``train`` and ``val``, plus every other folder under ``<root>/images`` (e.g. a
    held-out validation split ``images/heldout`` beside ``labels/heldout``).
    """
    tif = label_suffix in (".tif", ".tiff")
    splits = _two(("images/train", "images/val"), ("labels/train", "labels/val"))
    images = Path(root) / "images" if root else None
    if images is not None and images.is_dir():
        for d in sorted(images.iterdir()):
            if d.is_dir() and d.name not in splits:
                splits[d.name] = SplitLayout(f"images/{d.name}", f"labels/{d.name}")
    return BenchmarkLayout(
        "folder",
        "registration",
        splits,
        label_suffix=label_suffix,
        ignore_value=65535 if tif else 255,
        image_suffixes=FOLDER_IMAGE_SUFFIXES,
        note="classes.txt: one class name per line, '| unseen' marks unseen classes",
    )


def detect_folder_label_suffix(root: str | Path) -> str:
    """Return ``.png`` or ``.tif`` from the label files of a custom folder dataset."""
    root = Path(root)
    found: set[str] = set()
    for split in ("train", "val"):
        d = root / "labels" / split
        if d.is_dir():
            found |= {p.suffix.lower() for p in d.iterdir() if p.is_file()}
    found &= {".png", ".tif", ".tiff"}
    if len(found) > 1:
        raise DatasetLayoutError(
            f"{root / 'labels'} mixes label formats {sorted(found)}; use only 8-bit .png "
            "(255 ignore) or only 16-bit .tif (65535 ignore)"
        )
    return found.pop() if found else ".png"


def get_layout(
    benchmark: str, layout: str = "registration", root: str | Path = ""
) -> BenchmarkLayout:
    """Layout of ``benchmark`` under ``layout``; ``folder`` inspects ``root`` for its labels."""
    if layout not in LAYOUTS:
        raise ConfigError(f"unknown layout {layout!r}; valid layouts: {', '.join(LAYOUTS)}")
    if benchmark == "folder":
        if layout != "registration":
            raise ConfigError(
                "the custom 'folder' format has one layout: use layout='registration'"
            )
        return folder_layout(detect_folder_label_suffix(root) if root else ".png", root)
    key = (benchmark, layout)
    if key not in _LAYOUTS:
        have = sorted(n for b, n in _LAYOUTS if b == benchmark)
        if not have:
            valid = sorted({b for b, _ in _LAYOUTS} | {"folder"})
            raise ConfigError(f"unknown benchmark {benchmark!r}; valid: {', '.join(valid)}")
        raise ConfigError(
            f"benchmark {benchmark!r} has no {layout!r} layout; available: {', '.join(have)}"
        )
    return _LAYOUTS[key]
