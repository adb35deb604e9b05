"""Semantic-segmentation dataset over a benchmark layout (spec §d.1/§e zero-shot protocol).

Labels always use the full benchmark index space (``0..C-1``, ignore = ``vocabulary.ignore_index``)
so one checkpoint's class embeddings line up with every test-time vocabulary. In zero-shot
training (``split="train"`` and a vocabulary with unseen classes) unseen pixels become ignore and
images left with no labelled pixel are dropped; the kept list is computed once and cached.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from maft.data.layouts import BenchmarkLayout, get_layout
from maft.data.readers import list_pairs, read_image, read_label
from maft.data.vocabulary import Vocabulary, benchmark_info
from maft.errors import ConfigError, DatasetFileError, DatasetLayoutError, LabelValueError

log = logging.getLogger(__name__)

Transform = Callable[..., dict[str, Any]]


def _stat(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_mtime_ns, st.st_size


def default_cache_dir() -> Path:
    """Folder for cached kept-image lists: ``$MAFT_CACHE_DIR`` or ``~/.cache/maft``."""
    return Path(os.environ.get("MAFT_CACHE_DIR", Path.home() / ".cache" / "maft"))


def folder_vocabulary(root: str | Path) -> Vocabulary:
    """Vocabulary of a custom folder dataset from ``root/classes.txt`` (ignore by label format)."""
    root = Path(root)
    path = root / "classes.txt"
    if not path.is_file():
        raise DatasetLayoutError(
            f"missing {path}: write one class name per line (optional '| unseen' marker).\n"
            + get_layout("folder", root=root if root.is_dir() else "").describe(root)
        )
    layout = get_layout("folder", root=root if root.is_dir() else "")
    return Vocabulary.from_file(path, ignore_index=layout.ignore_value)


def build_label_lut(
    layout: BenchmarkLayout, label_space: str, vocabulary: Vocabulary, drop_unseen: bool
) -> np.ndarray:
    """Lookup table disk value -> full class index / ignore, -1 for invalid values, int64 [V]."""
    c, ignore = vocabulary.num_classes, vocabulary.ignore_index
    if label_space == "seen":
        full_of = Vocabulary.from_benchmark(layout.benchmark, "zero_shot").seen_indices.numpy()
    else:
        full_of = np.arange(c)
    size = max(layout.ignore_value, len(full_of) - 1) + 1
    if len(full_of) > layout.ignore_value:
        raise ConfigError(
            f"{c} classes do not fit {layout.label_dtype} labels with ignore "
            f"{layout.ignore_value}; use 16-bit .tif labels"
        )
    lut = np.full(size, -1, dtype=np.int64)
    keep = vocabulary.seen.numpy()[full_of] if drop_unseen else np.ones(len(full_of), bool)
    lut[: len(full_of)] = np.where(keep, full_of, ignore)
    lut[layout.ignore_value] = ignore
    return lut


class SemSegDataset(Dataset):
    """Image + label pairs of one benchmark split, decoded to full-index int64 labels."""

    def __init__(
        self,
        benchmark: str,
        root: str | Path,
        split: str = "val",
        vocabulary: Vocabulary | None = None,
        transform: Transform | None = None,
        layout: str = "registration",
        cache_dir: str | Path | None = None,
    ) -> None:
        self.benchmark, self.root, self.split = benchmark, Path(root), split
        self.layout = get_layout(benchmark, layout, root=self.root if self.root.is_dir() else "")
        self.vocabulary = vocabulary or self._default_vocabulary()
        self._check_vocabulary()
        self.transform = transform
        self.pairs, n_unlabeled = list_pairs(self.layout, self.root, split)
        if n_unlabeled:
            log.warning(
                "%s/%s: skipped %d image(s) without a label file (%s)",
                benchmark,
                split,
                n_unlabeled,
                self.layout.note,
            )
        space = self.layout.splits[split].label_space
        self.drop_unseen = split == "train" and self.vocabulary.has_split
        self.lut = build_label_lut(self.layout, space, self.vocabulary, self.drop_unseen)
        if self.drop_unseen or space == "seen":
            self._drop_unlabelled(Path(cache_dir) if cache_dir else default_cache_dir())

    def _default_vocabulary(self) -> Vocabulary:
        if self.benchmark == "folder":
            return folder_vocabulary(self.root)
        return Vocabulary.from_benchmark(self.benchmark, split=None)

    def _check_vocabulary(self) -> None:
        if self.benchmark == "folder":
            return
        expected = int(benchmark_info(self.benchmark)["num_classes"])
        if self.vocabulary.num_classes != expected:
            raise ConfigError(
                f"vocabulary has {self.vocabulary.num_classes} classes but {self.benchmark!r} "
                f"labels index {expected}; build it with Vocabulary.from_benchmark"
                f"({self.benchmark!r}, ...)"
            )

    def __len__(self) -> int:
        return len(self.pairs)

    def decode_label(self, path: Path) -> np.ndarray:
        """Read a label file and map it to full class indices, int64 ``[H, W]``."""
        raw = read_label(path)
        mapped = self.lut[np.minimum(raw, len(self.lut) - 1)]
        bad = (mapped < 0) | (raw >= len(self.lut))
        if bad.any():
            values = np.unique(raw[bad])
            limit = int((self.lut[: self.layout.ignore_value] >= 0).sum())
            raise LabelValueError(
                f"label map {path} holds values {values[:10].tolist()} outside [0, {limit}) "
                f"(ignore = {self.layout.ignore_value}); the file does not belong to "
                f"{self.benchmark!r} ({self.layout.name}) or was converted wrongly: re-run the "
                "prepare script."
            )
        return mapped

    def _drop_unlabelled(self, cache_dir: Path) -> None:
        """Drop images whose label has no non-ignore pixel, caching the kept list (spec §e)."""
        key = json.dumps(
            [
                str(self.root.resolve()),
                self.layout.name,
                self.split,
                [(p[1].name, *_stat(p[1])) for p in self.pairs],
                hashlib.sha1(self.lut.tobytes()).hexdigest(),
            ]
        )
        cache = cache_dir / f"kept_{hashlib.sha1(key.encode()).hexdigest()[:20]}.json"
        kept = self._load_cache(cache)
        if kept is None:
            with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
                flags = list(pool.map(self._has_labelled_pixel, [p[1] for p in self.pairs]))
            kept = [p[1].name for p, f in zip(self.pairs, flags) if f]
            self._save_cache(cache, kept)
        keep = set(kept)
        before = len(self.pairs)
        self.pairs = [p for p in self.pairs if p[1].name in keep]
        log.info(
            "%s/%s: dropped %d of %d image(s) with no labelled pixel after removing unseen "
            "classes (kept list cached in %s)",
            self.benchmark,
            self.split,
            before - len(self.pairs),
            before,
            cache,
        )
        self.num_dropped = before - len(self.pairs)
        if not self.pairs:
            raise DatasetFileError(
                f"empty split {self.split!r} under {self.root}: every image is all-ignore after "
                "removing unseen classes; check the vocabulary's seen mask"
            )

    def _has_labelled_pixel(self, path: Path) -> bool:
        return bool((self.decode_label(path) != self.vocabulary.ignore_index).any())

    @staticmethod
    def _load_cache(path: Path) -> list[str] | None:
        try:
            return list(json.loads(path.read_text("utf-8"))["kept"])
        except (OSError, ValueError, KeyError):
            return None

    @staticmethod
    def _save_cache(path: Path, kept: list[str]) -> None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps({"kept": kept}), "utf-8")
        except OSError as err:  # read-only home: keep going, rescan next time
            log.warning("could not cache the kept-image list in %s: %s", path, err)

    def __getitem__(self, index: int) -> dict[str, Any]:
        image_path, label_path = self.pairs[index]
        image = read_image(image_path)  # [H, W, 3] uint8
        label = self.decode_label(label_path)  # [H, W] int64
        if image.shape[:2] != label.shape:
            raise DatasetFileError(
                f"size mismatch: image {image_path} is {image.shape[:2]} (H, W) but label "
                f"{label_path} is {label.shape}; re-run the prepare script for this file."
            )
        orig_size = (int(image.shape[0]), int(image.shape[1]))
        if self.transform is not None:
            out = self.transform(image=image, mask=label.astype(np.int32))
            image, label = out["image"], out["mask"]
        image = np.require(image, np.uint8, ["C", "W"])  # resized arrays may be read-only
        label = np.require(label, np.int64, ["C", "W"])
        return {
            "image": torch.from_numpy(image).permute(2, 0, 1).contiguous(),  # [3, H, W] uint8
            "label": torch.from_numpy(label),  # [H, W] int64
            "file_name": str(image_path),
            "orig_size": orig_size,
        }
