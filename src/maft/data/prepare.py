"""Label conversions of the official prepare scripts (``benchmarks.json`` ``conversion`` fields).

Pure numpy functions shared by ``scripts/prepare_*.py`` and their tests, plus the small CLI
helpers every script uses (refuse to overwrite without ``--force``, report what was written).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import TypeVar

import numpy as np
from PIL import Image
from tqdm import tqdm

from maft.data.vocabulary import load_benchmarks

T = TypeVar("T")
R = TypeVar("R")


def _info(key: str) -> dict:
    return load_benchmarks()[key]


def coco_stuff_lut() -> np.ndarray:
    """stuffthingmaps value (COCO id - 1, 255 unlabelled) -> contiguous 171 index, uint8 [256]."""
    ids = _info("coco_stuff_171")["coco_category_ids"]
    lut = np.full(256, 255, dtype=np.uint8)
    for index, cid in enumerate(ids):
        lut[cid - 1] = index
    return lut


def voc_lut() -> np.ndarray:
    """SegmentationClassAug value -> 20-class index: 0 (background) and 255 -> 255, k -> k-1."""
    lut = np.full(256, 255, dtype=np.uint8)
    lut[1:21] = np.arange(20)
    return lut


def ade150_convert(raw: np.ndarray) -> np.ndarray:
    """ADEChallengeData2016 value v -> v-1 in uint8 (0 wraps to 255 = ignore)."""
    return (np.asarray(raw).astype(np.uint8) - np.uint8(1)).astype(np.uint8)


def ade_full_object_class(seg_rgb: np.ndarray) -> np.ndarray:
    """ADE full ``_seg.png`` object class ``floor(R / 10) * 256 + G``, int32 [H, W]."""
    r = seg_rgb[:, :, 0].astype(np.int32)
    g = seg_rgb[:, :, 1].astype(np.int32)
    return (r // 10) * 256 + g


def ade_full_train_ids(object_class: np.ndarray) -> np.ndarray:
    """ADE object class -> 847 trainId via ``ade_object_ids``; unmapped -> 65535, uint16."""
    ids = np.asarray(_info("ade20k_847")["ade_object_ids"], dtype=np.int64)
    size = max(int(ids.max()), int(object_class.max(initial=0))) + 1
    lut = np.full(size, 65535, dtype=np.uint16)
    lut[ids] = np.arange(len(ids), dtype=np.uint16)
    return lut[object_class]


def ade_full_resized_size(h: int, w: int, max_size: int = 512) -> tuple[int, int] | None:
    """``(h, w)`` after the ADE-full script's short-side-512 resize, or None when not resized."""
    if w >= h > max_size:
        return max_size, round(w / float(h) * max_size)
    if h >= w > max_size:
        return round(h / float(w) * max_size), max_size
    return None


def pc459_convert(label_map: np.ndarray) -> np.ndarray:
    """PASCAL-Context ``LabelMap`` (1..459, 0 unlabelled) -> 0..458, 0 -> 65535, uint16."""
    lm = np.asarray(label_map).astype(np.int64)
    return np.where(lm == 0, 65535, lm - 1).astype(np.uint16)


def pc59_lut() -> np.ndarray:
    """``LabelMap`` value -> 59-class index via ``detail_api_ids_sorted``; others 255, uint8.

    Class k of PC-59 is Detail id ``detail_api_ids_sorted[k + 1]``; Detail ids are the
    ``LabelMap`` values (the 59 names match the 459 list at those ids, 'diningtable' = 'table').
    """
    ids = _info("pcontext_59")["detail_api_ids_sorted"]
    lut = np.full(65536, 255, dtype=np.uint8)
    for k, did in enumerate(ids[1:]):
        lut[did] = k
    return lut


def read_rgb(path: str | Path) -> np.ndarray:
    """Raw RGB ``[H, W, 3]`` uint8 of an image file (prep scripts only)."""
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


# ---------------------------------------------------------------------- CLI helpers
def base_parser(description: str) -> argparse.ArgumentParser:
    """ArgumentParser with the ``--force`` flag every prepare script takes."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--force", action="store_true", help="overwrite existing output folders")
    return p


def check_outputs(dirs: Sequence[Path], force: bool) -> None:
    """Refuse to write into non-empty output folders unless ``force``."""
    busy = [d for d in dirs if d.is_dir() and any(d.iterdir())]
    if busy and not force:
        listed = "\n  ".join(str(d) for d in busy)
        raise SystemExit(f"refusing to overwrite existing output:\n  {listed}\nre-run with --force")
    for d in dirs:
        d.mkdir(parents=True, exist_ok=True)


def report(written: dict[Path, int], skipped: int = 0, why: str = "") -> None:
    """Print how many files went to each output folder."""
    for folder, n in written.items():
        print(f"wrote {n} file(s) to {folder}")
    if skipped:
        print(f"skipped {skipped} file(s): {why}")


def run_all(fn: Callable[[T], R], items: Sequence[T], workers: int = 1, desc: str = "") -> list[R]:
    """Apply ``fn`` to every item with a tqdm progress bar, in ``workers`` processes if > 1."""
    if workers <= 1:
        return [fn(x) for x in tqdm(items, desc=desc)]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        chunk = max(1, len(items) // (workers * 16))
        return list(tqdm(pool.map(fn, items, chunksize=chunk), total=len(items), desc=desc))
