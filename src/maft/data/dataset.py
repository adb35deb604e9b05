"""Semantic-segmentation dataset over a benchmark layout (zero-shot: docs/method.md §6.3, §7.5).

Labels always use the full benchmark index space (``0..C-1``, ignore = ``vocabulary.ignore_index``)
so one checkpoint's class embeddings line up with every test-time vocabulary. In zero-shot
training (``split="train"`` and a vocabulary with unseen classes) unseen pixels become ignore and
images left with no labelled pixel are dropped.

:meth:`SemSegDataset.scan` checks a split before any training: every label's values and every
image/label size (image sizes from file headers; labels are decoded once, since 16-bit TIFF
values need the pixels). What a scan reads (sizes and each label's distinct values) is cached
per file in ``<cache_dir>/scan_<key>.json`` and reused while the file's mtime and size are
unchanged; the zero-shot kept list is derived from the same cache.
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
from tqdm import tqdm

from maft.data.layouts import BenchmarkLayout, get_layout
from maft.data.readers import list_pairs, read_image, read_label, read_size
from maft.data.vocabulary import Vocabulary, benchmark_info
from maft.errors import (
    ConfigError,
    DatasetFileError,
    DatasetLayoutError,
    LabelValueError,
    MaftError,
)

log = logging.getLogger(__name__)

Transform = Callable[..., dict[str, Any]]
Pair = tuple[Path, Path]

#: Version of the scan cache format (a different version is rescanned).
SCAN_CACHE_VERSION = 1
#: Scans of fewer files than this run without a progress bar.
PROGRESS_MIN_FILES = 100
_MAX_LISTED = 5


def _stat(path: Path) -> list[int]:
    st = path.stat()
    return [st.st_mtime_ns, st.st_size]


def _label_values(raw: np.ndarray) -> list[int]:
    """Distinct values of a decoded label map, ascending."""
    flat = raw.ravel()
    if flat.size and 0 <= int(flat.min()) and int(flat.max()) < 1 << 17:
        return np.flatnonzero(np.bincount(flat)).tolist()
    return np.unique(flat).tolist()


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
    """Image + label pairs of one benchmark split, decoded to full-index int64 labels.

    ``allow_missing_labels=False`` makes images without a label file an error even where the
    layout skips them (COCO-Stuff writes no file for an all-ignore map); evaluation splits of
    :class:`~maft.data.datamodule.SemSegDataModule` use it so no image is dropped silently.
    """

    def __init__(
        self,
        benchmark: str,
        root: str | Path,
        split: str = "val",
        vocabulary: Vocabulary | None = None,
        transform: Transform | None = None,
        layout: str = "registration",
        cache_dir: str | Path | None = None,
        allow_missing_labels: bool = True,
        drop_unseen: bool | None = None,
    ) -> None:
        self.benchmark, self.root, self.split = benchmark, Path(root), split
        self.layout = get_layout(benchmark, layout, root=self.root if self.root.is_dir() else "")
        self.vocabulary = vocabulary or self._default_vocabulary()
        self._check_vocabulary()
        self.transform = transform
        self.cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
        hint = (
            " To evaluate only the labelled images, set data.allow_missing_labels=true (the "
            "report states how many images were evaluated)."
        )
        self.pairs, self.num_unlabeled = list_pairs(
            self.layout,
            self.root,
            split,
            unlabeled=None if allow_missing_labels else "error",
            hint="" if allow_missing_labels else hint,
        )
        if self.num_unlabeled:
            log.warning(
                "%s/%s: skipped %d image(s) without a label file (%s)",
                benchmark,
                split,
                self.num_unlabeled,
                self.layout.note,
            )
        space = self.layout.splits[split].label_space
        if drop_unseen is None:
            drop_unseen = split == "train"
        self.drop_unseen = bool(drop_unseen) and self.vocabulary.has_split
        self.lut = build_label_lut(self.layout, space, self.vocabulary, self.drop_unseen)
        self.num_dropped = 0
        self.num_scanned = 0
        self._listed = {p[1].name for p in self.pairs}  # the split's labels, before any drop
        self._entries: dict[str, dict[str, Any]] = {}  # label file name -> scan entry
        if self.drop_unseen or space == "seen":
            self._drop_unlabelled()

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

    def _value_error(self, path: Path, values: Any) -> LabelValueError:
        limit = int((self.lut[: self.layout.ignore_value] >= 0).sum())
        return LabelValueError(
            f"label map {path} holds values {list(values)[:10]} outside [0, {limit}) "
            f"(ignore = {self.layout.ignore_value}); the file does not belong to "
            f"{self.benchmark!r} ({self.layout.name}) or was converted wrongly: re-run the "
            "prepare script."
        )

    def _map_values(self, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Disk values -> (full indices via the LUT, mask of values outside the label range)."""
        mapped = self.lut[np.clip(values, 0, len(self.lut) - 1)]
        return mapped, (mapped < 0) | (values >= len(self.lut)) | (values < 0)

    def decode_label(self, path: Path) -> np.ndarray:
        """Read a label file and map it to full class indices, int64 ``[H, W]``."""
        raw = read_label(path)
        mapped, bad = self._map_values(raw)
        if bad.any():
            raise self._value_error(path, np.unique(raw[bad]).tolist())
        return mapped

    # ------------------------------------------------------------------ scan
    def _cache_path(self) -> Path:
        key = json.dumps([str(self.root.resolve()), self.benchmark, self.layout.name, self.split])
        return self.cache_dir / f"scan_{hashlib.sha1(key.encode()).hexdigest()[:20]}.json"

    def _load_cache(self, path: Path) -> dict[str, dict[str, Any]]:
        try:
            data = json.loads(path.read_text("utf-8"))
            if data.get("version") != SCAN_CACHE_VERSION:
                return {}
            return dict(data["files"])
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return {}

    def _save_cache(self, path: Path, files: dict[str, dict[str, Any]]) -> None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            files = {k: v for k, v in files.items() if k in self._listed}  # forget deleted files
            tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps({"version": SCAN_CACHE_VERSION, "files": files}), "utf-8")
            os.replace(tmp, path)  # atomic: parallel ranks never read a half-written file
        except OSError as err:  # read-only home: keep going, rescan next time
            log.warning(
                "could not cache the scan of %s/%s in %s: %s", self.benchmark, self.split, path, err
            )

    def _scan_pair(self, pair: Pair, stats: list[int]) -> dict[str, Any]:
        image_path, label_path = pair
        raw = read_label(label_path)
        return {
            "image": image_path.name,
            "stat": stats,
            "label_hw": list(raw.shape),
            "image_hw": list(read_size(image_path)),
            "values": _label_values(raw),
        }

    def _scan_entries(self, pairs: list[Pair]) -> list[dict[str, Any]]:
        """Scan entries of ``pairs`` (from memory, the cache file, or by reading the files)."""
        wanted = [p for p in pairs if p[1].name not in self._entries]
        if wanted:
            cache = self._cache_path()
            stored = self._load_cache(cache)
            todo: list[tuple[Pair, list[int]]] = []
            for pair in wanted:
                try:
                    stats = _stat(pair[1]) + _stat(pair[0])
                except FileNotFoundError as err:
                    raise DatasetLayoutError(f"file vanished during the scan: {err}") from None
                entry = stored.get(pair[1].name)
                if entry and entry.get("stat") == stats and entry.get("image") == pair[0].name:
                    self._entries[pair[1].name] = entry
                else:
                    todo.append((pair, stats))
            if todo:
                self._read_entries(todo, stored)
                self._save_cache(cache, stored)
        return [self._entries[p[1].name] for p in pairs]

    def _read_entries(
        self, todo: list[tuple[Pair, list[int]]], stored: dict[str, dict[str, Any]]
    ) -> None:
        """Read ``todo`` in threads with a progress bar; store what was read, then raise."""

        def one(item: tuple[Pair, list[int]]) -> dict[str, Any] | MaftError:
            try:
                return self._scan_pair(*item)
            except MaftError as err:  # reported after the others are cached
                return err

        bar = tqdm(
            total=len(todo),
            desc=f"scan {self.benchmark}/{self.split}",
            unit="file",
            disable=True if len(todo) < PROGRESS_MIN_FILES else None,  # None: no tty, no bar
            mininterval=0.5,
        )
        errors: list[MaftError] = []
        with bar, ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
            for (pair, _), result in zip(todo, pool.map(one, todo)):
                bar.update()
                if isinstance(result, MaftError):
                    errors.append(result)
                else:
                    stored[pair[1].name] = self._entries[pair[1].name] = result
        if errors:
            self._save_cache(self._cache_path(), stored)
            raise _combined(errors)

    def _problems(self, pairs: list[Pair], entries: list[dict[str, Any]]) -> list[MaftError]:
        """Label values outside the label range and image/label size mismatches, in file order."""
        out: list[MaftError] = []
        for (image_path, label_path), e in zip(pairs, entries):
            values = np.asarray(e["values"], dtype=np.int64)
            _, bad = self._map_values(values)
            if bad.any():
                out.append(self._value_error(label_path, values[bad].tolist()))
            if list(e["image_hw"]) != list(e["label_hw"]):
                out.append(
                    DatasetFileError(
                        f"size mismatch: image {image_path} is {tuple(e['image_hw'])} (H, W) but "
                        f"label {label_path} is {tuple(e['label_hw'])}; re-run the prepare "
                        "script for this file."
                    )
                )
        return out

    def scan(self, limit: int | None = None) -> int:
        """Check the first ``limit`` pairs (all by default) before training; returns how many.

        Raises :class:`LabelValueError` (label values outside ``[0, C)`` other than the ignore
        value) or :class:`DatasetFileError` (image and label sizes differ, unreadable file),
        naming the first bad file and counting the others.
        """
        pairs = self.pairs if limit is None else self.pairs[: max(int(limit), 0)]
        entries = self._scan_entries(pairs)
        problems = self._problems(pairs, entries)
        if problems:
            raise _combined(problems)
        self.num_scanned = len(pairs)
        return len(pairs)

    def _drop_unlabelled(self) -> None:
        """Drop images whose label has no non-ignore pixel (docs/method.md §6.3), from the scan."""
        entries = self._scan_entries(self.pairs)
        problems = [
            e for e in self._problems(self.pairs, entries) if isinstance(e, LabelValueError)
        ]
        if problems:
            raise _combined(problems)
        ignore = self.vocabulary.ignore_index
        keep = []
        for e in entries:
            mapped, _ = self._map_values(np.asarray(e["values"], dtype=np.int64))
            keep.append(bool((mapped != ignore).any()))
        before = len(self.pairs)
        self.pairs = [p for p, k in zip(self.pairs, keep) if k]
        log.info(
            "%s/%s: dropped %d of %d image(s) with no labelled pixel after removing unseen "
            "classes (scan cached in %s)",
            self.benchmark,
            self.split,
            before - len(self.pairs),
            before,
            self._cache_path(),
        )
        self.num_dropped = before - len(self.pairs)
        if not self.pairs:
            raise DatasetFileError(
                f"empty split {self.split!r} under {self.root}: every image is all-ignore after "
                "removing unseen classes; check the vocabulary's seen mask"
            )

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


def _combined(errors: list[MaftError]) -> MaftError:
    """The first error, its message extended by the other files with problems."""
    first = errors[0]
    if len(errors) == 1:
        return first
    rest = errors[1:]
    shown = "\n  ".join(str(e).split(";")[0][:300] for e in rest[:_MAX_LISTED])
    more = f"\n  and {len(rest) - _MAX_LISTED} more" if len(rest) > _MAX_LISTED else ""
    return type(first)(f"{first}\n{len(rest)} more file(s) have problems:\n  {shown}{more}")
