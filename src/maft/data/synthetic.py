"""Tiny datasets in each benchmark's exact on-disk layout and encoding.

:func:`write_benchmark` paints labels from known rectangles and returns them with the label each
file must decode to, so tests assert exact values through the production readers. The
``write_raw_*`` functions write the *raw* official formats the ``scripts/prepare_*.py`` read.
"""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import scipy.io

from maft.data.layouts import SUBFOLDERS, folder_layout, get_layout
from maft.data.readers import write_image, write_label
from maft.data.vocabulary import Vocabulary

#: Classes of the synthetic custom-folder dataset (``classes.txt``); "water" is unseen.
FOLDER_CLASSES = ("sky", "grass", "water", "road", "sand")
_FOLDER_UNSEEN = ("water",)


@dataclass
class SyntheticSample:
    """One written image: paths, rectangles ``(y0, x0, y1, x1, class)`` and expected labels."""

    stem: str
    image_path: Path
    label_path: Path
    rects: list[tuple[int, int, int, int, int]]
    label: np.ndarray  # [H, W] int64, full class indices, ignore = benchmark ignore value


@dataclass
class SyntheticBenchmark:
    """What :func:`write_benchmark` wrote."""

    benchmark: str
    root: Path  # the benchmark's own folder (pass this as ``SemSegDataset(root=...)``)
    layout: str
    ignore_index: int
    vocabulary: Vocabulary
    samples: dict[str, list[SyntheticSample]] = field(default_factory=dict)


def _rng(*parts: object) -> np.random.Generator:
    return np.random.default_rng(zlib.crc32(repr(parts).encode()))


def _stem(benchmark: str, split: str, i: int) -> str:
    k = 1 if split == "train" else 2
    if benchmark == "coco_stuff_171":
        return f"{k * 100000 + i:012d}"
    if benchmark.startswith("ade20k"):
        return f"ADE_{'train' if split == 'train' else 'val'}_{i + 1:08d}"
    if benchmark in ("voc_20", "pas_20", "pcontext_59", "pcontext_459"):
        return f"200{6 + k}_{i:06d}"
    return f"img_{split}_{i:03d}"


def synthetic_image(stem: str, size: tuple[int, int], seed: int = 0) -> np.ndarray:
    """Deterministic uint8 RGB ``[H, W, 3]`` image for ``stem`` (same for every benchmark)."""
    h, w = size
    rng = _rng("image", stem, seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = rng.integers(40, 200, size=3)
    img = base + 30 * np.sin(xx[..., None] / (3 + rng.integers(1, 6)) + np.arange(3))
    return np.clip(img + rng.normal(0, 4, (h, w, 3)), 0, 255).astype(np.uint8)


def _rect(rng: np.random.Generator, h: int, w: int) -> tuple[int, int, int, int]:
    y0, x0 = int(rng.integers(0, h // 2)), int(rng.integers(0, w // 2))
    y1, x1 = int(rng.integers(y0 + h // 4, h + 1)), int(rng.integers(x0 + w // 4, w + 1))
    return y0, x0, y1, x1


def _classes(i: int, vocab: Vocabulary, rng: np.random.Generator) -> list[int]:
    """Rectangle classes: image 0 only unseen (or 0 and C-1), image 1 has 0 and C-1."""
    c, seen, unseen = vocab.num_classes, vocab.seen_indices.tolist(), vocab.unseen_indices.tolist()
    if i == 0:
        return [unseen[0], unseen[-1]] if unseen else [0, c - 1]
    if i == 1:
        return [seen[0], c - 1]
    return [int(rng.choice(seen)), int(rng.integers(0, c))]


def _vocabulary(benchmark: str) -> Vocabulary:
    if benchmark == "folder":
        seen = [n not in _FOLDER_UNSEEN for n in FOLDER_CLASSES]
        return Vocabulary.from_names(FOLDER_CLASSES, seen)
    try:
        return Vocabulary.from_benchmark(benchmark, "zero_shot")
    except KeyError:
        return Vocabulary.from_benchmark(benchmark, None)


def _encode(label: np.ndarray, space: str, vocab: Vocabulary, ignore: int) -> np.ndarray:
    """Full-index label -> disk values (seen-only folders re-index seen classes, unseen ignored)."""
    if space == "full":
        return label
    seen_map = vocab.seen_class_map().numpy()
    lut = np.where(seen_map >= 0, seen_map, ignore)
    return np.where(label == ignore, ignore, lut[np.minimum(label, len(lut) - 1)])


def write_benchmark(
    root: str | Path,
    benchmark: str,
    n_images: int = 4,
    size: tuple[int, int] = (64, 64),
    seed: int = 0,
    splits: tuple[str, ...] = ("train", "val"),
    layout: str = "registration",
    label_format: str = "png",
) -> SyntheticBenchmark:
    """Write a tiny ``benchmark`` dataset under ``root/<SUBFOLDERS[benchmark]>``.

    ``root`` plays ``MAFT_DATA_ROOT``. Each label has the disk ignore value as background and two
    rectangles; with a zero-shot split, image 0 holds only unseen classes. ``label_format``
    (``png``/``tif``) applies to the ``folder`` benchmark only.
    """
    bench_root = Path(root) / SUBFOLDERS[benchmark]
    vocab = _vocabulary(benchmark)
    if benchmark == "folder":
        lay = folder_layout(".tif" if label_format == "tif" else ".png")
        bench_root.mkdir(parents=True, exist_ok=True)
        vocab = Vocabulary(list(vocab.names), vocab.seen, lay.ignore_value)
        vocab.write(bench_root / "classes.txt")
    else:
        lay = get_layout(benchmark, layout)
    out = SyntheticBenchmark(benchmark, bench_root, layout, lay.ignore_value, vocab)
    h, w = size
    for split in [s for s in splits if s in lay.splits]:
        sl = lay.splits[split]
        out.samples[split] = []
        for i in range(n_images):
            stem = _stem(benchmark, split, i)
            rng = _rng("label", benchmark, split, i, seed)
            label = np.full((h, w), lay.ignore_value, dtype=np.int64)
            rects = []
            for cls in _classes(i, vocab, rng):
                y0, x0, y1, x1 = _rect(rng, h, w)
                label[y0:y1, x0:x1] = cls
                rects.append((y0, x0, y1, x1, int(cls)))
            image_path = bench_root / sl.image_dir / f"{stem}{lay.image_suffixes[0]}"
            label_path = bench_root / sl.label_dir / f"{stem}{lay.label_suffix}"
            write_image(image_path, synthetic_image(stem, size, seed))
            disk = _encode(label, sl.label_space, vocab, lay.ignore_value)
            write_label(label_path, disk, lay.label_dtype)
            out.samples[split].append(SyntheticSample(stem, image_path, label_path, rects, label))
    return out


# ---------------------------------------------------------------------- raw official formats
def write_raw_coco_stuff(coco: str | Path, maps: dict[str, dict[str, np.ndarray]]) -> None:
    """``<coco>/{split}2017/<stem>.jpg`` + ``stuffthingmaps/{split}2017/<stem>.png`` (raw)."""
    for split, items in maps.items():
        for stem, raw in items.items():
            write_image(
                Path(coco) / f"{split}2017" / f"{stem}.jpg", synthetic_image(stem, raw.shape)
            )
            write_label(Path(coco) / "stuffthingmaps" / f"{split}2017" / f"{stem}.png", raw)


def write_raw_voc(voc2012: str | Path, maps: dict[str, dict[str, np.ndarray]]) -> None:
    """``JPEGImages``, ``SegmentationClassAug`` (0 background, 1..20, 255) and ``<split>.txt``."""
    root = Path(voc2012)
    for split, items in maps.items():
        for stem, raw in items.items():
            write_image(root / "JPEGImages" / f"{stem}.jpg", synthetic_image(stem, raw.shape))
            write_label(root / "SegmentationClassAug" / f"{stem}.png", raw)
        (root / f"{split}.txt").write_text("".join(f"{s}\n" for s in items))


def ade_seg_png(object_class: np.ndarray) -> np.ndarray:
    """Encode ADE object classes as a ``_seg.png`` RGB: R = (id // 256) * 10, G = id % 256."""
    oc = np.asarray(object_class, dtype=np.int64)
    rgb = np.zeros(oc.shape + (3,), dtype=np.uint8)
    rgb[..., 0] = (oc // 256) * 10
    rgb[..., 1] = oc % 256
    rgb[..., 2] = 7  # instance channel, ignored by the conversion
    return rgb


def write_raw_ade20k_full(ade: str | Path, objects: dict[str, np.ndarray]) -> None:
    """``ADE20K_2021_17_01/images/ADE/<split>/<scene>/<name>.jpg`` + ``<name>_seg.png``."""
    base = Path(ade) / "ADE20K_2021_17_01" / "images" / "ADE"
    for name, oc in objects.items():
        split = "validation" if name.split("_")[1] == "val" else "training"
        folder = base / split / "home_or_hotel" / "bedroom"
        write_image(folder / f"{name}.jpg", synthetic_image(name, oc.shape))
        write_image(folder / f"{name}_seg.png", ade_seg_png(oc))


def write_raw_ade20k_150(ade150: str | Path, maps: dict[str, dict[str, np.ndarray]]) -> None:
    """``ADEChallengeData2016/{images,annotations}/{training,validation}`` with raw 0..150."""
    for split, items in maps.items():
        for stem, raw in items.items():
            write_image(
                Path(ade150) / "images" / split / f"{stem}.jpg", synthetic_image(stem, raw.shape)
            )
            write_label(Path(ade150) / "annotations" / split / f"{stem}.png", raw)


def write_raw_pascal_context(voc2010: str | Path, maps: dict[str, dict[str, np.ndarray]]) -> None:
    """``JPEGImages``, ``trainval/<stem>.mat`` (uint16 ``LabelMap``), ``trainval_merged.json``."""
    root = Path(voc2010)
    images = []
    for split, items in maps.items():
        for stem, lm in items.items():
            write_image(root / "JPEGImages" / f"{stem}.jpg", synthetic_image(stem, lm.shape))
            (root / "trainval").mkdir(parents=True, exist_ok=True)
            scipy.io.savemat(root / "trainval" / f"{stem}.mat", {"LabelMap": lm.astype(np.uint16)})
            images.append({"file_name": f"{stem}.jpg", "phase": split, "image_id": len(images)})
    (root / "trainval_merged.json").write_text(json.dumps({"images": images}))
