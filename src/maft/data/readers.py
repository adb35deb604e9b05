"""File readers and pairing for the benchmark layouts (docs/datasets.md, ``benchmarks.json``).

Images decode to uint8 RGB ``[H, W, 3]``; labels decode to int64 ``[H, W]`` straight away, so
uint16 TIFF labels (ignore 65535) never meet an unsigned comparison. EXIF orientation is not
applied: label maps are stored in the images' stored pixel orientation.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from maft.data.layouts import BenchmarkLayout
from maft.errors import DatasetFileError, DatasetLayoutError

_MAX_LISTED = 5


def read_image(path: str | Path) -> np.ndarray:
    """Decode an image file to uint8 RGB ``[H, W, 3]``; corrupt or truncated files raise."""
    path = Path(path)
    try:
        with Image.open(path) as im:
            im.load()
            rgb = im.convert("RGB")
    except FileNotFoundError:
        raise DatasetLayoutError(f"image file not found: {path}") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise DatasetFileError(
            f"cannot decode image {path}: {err}. The file is corrupt or truncated; "
            "re-extract it from the original archive or delete it together with its label."
        ) from None
    return np.array(rgb, dtype=np.uint8)  # writable copy


def read_size(path: str | Path) -> tuple[int, int]:
    """``(H, W)`` of an image or label file from its header (the pixels are not decoded)."""
    path = Path(path)
    try:
        with Image.open(path) as im:
            return int(im.height), int(im.width)
    except FileNotFoundError:
        raise DatasetLayoutError(f"file not found: {path}") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise DatasetFileError(
            f"cannot read the header of {path}: {err}. The file is corrupt or not an image; "
            "re-extract it from the original archive or delete it together with its label."
        ) from None


def read_label(path: str | Path) -> np.ndarray:
    """Decode a single-channel PNG/TIFF label map to int64 ``[H, W]``."""
    path = Path(path)
    try:
        with Image.open(path) as im:
            im.load()
            mode = im.mode
            arr = np.asarray(im)
    except FileNotFoundError:
        raise DatasetLayoutError(f"label file not found: {path}") from None
    except (OSError, SyntaxError, ValueError) as err:
        raise DatasetFileError(
            f"cannot decode label map {path}: {err}. Re-run the prepare script for this split."
        ) from None
    if arr.ndim != 2:
        raise DatasetFileError(
            f"label map {path} has mode {mode!r} and shape {arr.shape}; expected one channel "
            "(8-bit 'L'/'P' PNG or 16-bit TIFF). Convert colour-coded masks to class indices."
        )
    return arr.astype(np.int64)


def write_label(path: str | Path, label: np.ndarray, dtype: str = "uint8") -> None:
    """Write a label map as 8-bit PNG or 16-bit TIFF (``dtype`` ``"uint8"`` / ``"uint16"``)."""
    arr = np.asarray(label)
    info = np.iinfo(dtype)
    if arr.size and (arr.min() < info.min or arr.max() > info.max):
        raise ValueError(f"label values for {path} do not fit {dtype}")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr.astype(dtype)).save(path)


def write_image(path: str | Path, image: np.ndarray, quality: int = 95) -> None:
    """Write a uint8 RGB ``[H, W, 3]`` image (JPEG for ``.jpg``, else by suffix)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(np.asarray(image, dtype=np.uint8))
    if path.suffix.lower() in (".jpg", ".jpeg"):
        im.save(path, quality=quality)
    else:
        im.save(path)


def _stems(folder: Path, suffixes: tuple[str, ...]) -> dict[str, Path]:
    """Map stem -> file for the files of ``folder`` whose suffix is in ``suffixes``."""
    out: dict[str, Path] = {}
    with os.scandir(folder) as it:
        for entry in it:
            stem, ext = os.path.splitext(entry.name)
            if ext.lower() in suffixes and entry.is_file():
                out[stem] = Path(entry.path)
    return out


def _listing(names: list[str]) -> str:
    shown = ", ".join(sorted(names)[:_MAX_LISTED])
    more = f" and {len(names) - _MAX_LISTED} more" if len(names) > _MAX_LISTED else ""
    return shown + more


def list_pairs(
    layout: BenchmarkLayout,
    root: str | Path,
    split: str,
    unlabeled: str | None = None,
    hint: str = "",
) -> tuple[list[tuple[Path, Path]], int]:
    """Sorted ``(image, label)`` pairs of ``split`` and the number of skipped unlabelled images.

    ``unlabeled`` (``"error"`` / ``"skip"``) overrides the layout's policy for images without a
    label file; ``hint`` is appended to that error.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetLayoutError(
            f"dataset root {root} does not exist; set MAFT_DATA_ROOT / data.root.\n"
            + layout.describe(root)
        )
    s = layout.split(split, root)
    image_dir, label_dir = root / s.image_dir, root / s.label_dir
    for d in (image_dir, label_dir):
        if not d.is_dir():
            raise DatasetLayoutError(f"missing folder {d}.\n" + layout.describe(root))
    label_suffixes = (layout.label_suffix, ".tiff") if layout.label_dtype == "uint16" else (".png",)
    labels = _stems(label_dir, label_suffixes)
    images = _stems(image_dir, layout.image_suffixes)
    if not labels:
        raise DatasetFileError(
            f"empty split {split!r}: no '*{layout.label_suffix}' label files in {label_dir}; "
            "run the prepare script or check data.root.\n" + layout.describe(root)
        )
    orphans = [n for n in labels if n not in images]
    if orphans:
        raise DatasetLayoutError(
            f"{len(orphans)} label file(s) in {label_dir} have no image in {image_dir}: "
            f"{_listing(orphans)}. Restore the images or delete these labels."
        )
    policy = unlabeled or layout.unlabeled_images
    missing = [] if layout.images_shared else [n for n in images if n not in labels]
    if missing and policy == "error":
        raise DatasetLayoutError(
            f"{len(missing)} image(s) in {image_dir} have no label in {label_dir}: "
            f"{_listing(missing)}. Add their labels or move the images out of the split." + hint
        )
    pairs = [(images[n], labels[n]) for n in sorted(labels)]
    return pairs, len(missing)
