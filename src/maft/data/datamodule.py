"""LightningDataModules for every benchmark and for custom folders (docs/method.md §6.2, §4.4, §7).

One instance serves both tasks (proposal generator and MAFT): it only yields batches of
:class:`~maft.data.collate.SemSegCollate`. ``test_sets`` turns on the cross-dataset protocol:
``test_dataloader()`` then returns one loader per entry, with ``test_vocabularies`` and
``test_names`` aligned to it (metrics log under ``test/<name>/...``).

``setup()`` scans every split it builds before any training (label values, image/label sizes;
see :meth:`SemSegDataset.scan`), so a broken file fails the run at once, by name. Evaluation
splits must have a label for every image unless ``allow_missing_labels=True``;
``num_test_images`` gives how many images each test set evaluates.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any, ClassVar

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset, get_worker_info

from maft.data.collate import SemSegCollate
from maft.data.dataset import SemSegDataset, folder_vocabulary
from maft.data.transforms import DEFAULT_SHORT_SIDES, build_test_transform, build_train_transform
from maft.data.vocabulary import Vocabulary
from maft.distributed import sharded_loader
from maft.errors import ConfigError

_TEST_SET_KEYS = {"benchmark", "root", "layout", "split", "name"}


def seed_worker(worker_id: int) -> None:
    """Give each worker its own augmentation stream (albumentations keeps a private RNG)."""
    seed = torch.initial_seed() % 2**32  # differs per worker and per epoch
    random.seed(seed)
    np.random.seed(seed)
    info = get_worker_info()
    ds = info.dataset if info is not None else None
    while isinstance(ds, Subset):
        ds = ds.dataset
    transform = getattr(ds, "transform", None)
    if hasattr(transform, "set_random_seed"):
        transform.set_random_seed(seed)


def as_vocabulary(value: Any) -> Vocabulary | None:
    """Accept a Vocabulary, or the mapping Hydra makes of one when it is merged into a config.

    ``hydra.utils.instantiate(cfg, vocabulary=v)`` turns the dataclass into a DictConfig; prefer
    ``instantiate(cfg, _partial_=True)(vocabulary=v)``, which passes the object untouched.
    """
    if value is None or isinstance(value, Vocabulary):
        return value
    try:
        d = dict(value)
        return Vocabulary(
            list(d["names"]),
            torch.as_tensor(d["seen"], dtype=torch.bool),
            int(d.get("ignore_index", 255)),
            d.get("benchmark"),
            d.get("split"),
        )
    except (TypeError, KeyError, ValueError) as err:
        raise ConfigError(
            f"vocabulary must be a maft Vocabulary, got {type(value)}: {err}"
        ) from None


def _limit(ds: Dataset, n: int | None) -> Dataset:
    return ds if n is None or n >= len(ds) else Subset(ds, range(int(n)))


class SemSegDataModule(L.LightningDataModule):
    """Train / val / test loaders of one benchmark, plus optional cross-dataset test sets."""

    #: benchmark keys this class accepts (empty: any).
    benchmarks: ClassVar[tuple[str, ...]] = ()

    def __init__(
        self,
        *,
        benchmark: str,
        root: str,
        vocabulary: Vocabulary | None = None,
        layout: str = "registration",
        batch_size: int = 16,
        val_batch_size: int = 1,
        num_workers: int = 4,
        pin_memory: bool = True,
        persistent_workers: bool = False,
        drop_last: bool = True,
        train_short_sides: Sequence[int] = DEFAULT_SHORT_SIDES,
        train_max_long_side: int = 2560,
        crop_size: int = 640,
        color_jitter: bool = True,
        hflip: bool = True,
        test_short_side: int = 640,
        test_max_long_side: int = 2560,
        size_divisibility: int = 32,
        image_pad_value: int = 128,
        test_sets: Sequence[dict[str, Any]] | None = None,
        max_train_images: int | None = None,
        max_val_images: int | None = None,
        train_split: str = "train",
        val_split: str = "val",
        test_split: str | None = None,
        val_seen_only: bool = False,
        cache_dir: str | None = None,
        allow_missing_labels: bool = False,
        scan: bool = True,
    ) -> None:
        super().__init__()
        if self.benchmarks and benchmark not in self.benchmarks:
            raise ConfigError(
                f"{type(self).__name__} reads {', '.join(self.benchmarks)}, not {benchmark!r}; "
                "pick the matching data config (conf/data/<benchmark>.yaml)"
            )
        self.benchmark, self.root, self.layout = benchmark, str(root), layout
        vocabulary = as_vocabulary(vocabulary)
        self.vocabulary = vocabulary or self._default_vocabulary(benchmark, self.root)
        self.batch_size, self.val_batch_size = int(batch_size), int(val_batch_size)
        self.num_workers, self.pin_memory = int(num_workers), bool(pin_memory)
        self.persistent_workers = bool(persistent_workers) and self.num_workers > 0
        self.drop_last = bool(drop_last)
        self.train_short_sides = [int(s) for s in train_short_sides]
        self.train_max_long_side, self.crop_size = int(train_max_long_side), int(crop_size)
        self.color_jitter, self.hflip = bool(color_jitter), bool(hflip)
        self.test_short_side, self.test_max_long_side = (
            int(test_short_side),
            int(test_max_long_side),
        )
        self.size_divisibility, self.image_pad_value = int(size_divisibility), int(image_pad_value)
        self.max_train_images, self.max_val_images = max_train_images, max_val_images
        self.train_split, self.val_split, self.cache_dir = train_split, val_split, cache_dir
        self.test_split = test_split or val_split
        self.val_seen_only = bool(val_seen_only)
        self.allow_missing_labels, self.scan = bool(allow_missing_labels), bool(scan)
        self.test_sets = [self._check_test_set(dict(t)) for t in (test_sets or [])]
        self.test_vocabularies: list[Vocabulary] = [
            self._default_vocabulary(t["benchmark"], t["root"]) for t in self.test_sets
        ] or [self.vocabulary]
        self.test_names: list[str] = [t.get("name", t["benchmark"]) for t in self.test_sets] or [
            benchmark
        ]
        self.train_dataset: Dataset | None = None
        self.val_dataset: Dataset | None = None
        self.test_datasets: list[Dataset] = []

    @staticmethod
    def _default_vocabulary(benchmark: str, root: str) -> Vocabulary:
        if benchmark == "folder":
            return folder_vocabulary(root)
        return Vocabulary.from_benchmark(benchmark, split=None)

    @staticmethod
    def _check_test_set(entry: dict[str, Any]) -> dict[str, Any]:
        unknown = set(entry) - _TEST_SET_KEYS
        if unknown or not {"benchmark", "root"} <= set(entry):
            raise ConfigError(
                f"test_sets entry {entry} must have keys 'benchmark' and 'root' (optional: "
                f"'layout', 'split', 'name'); unknown keys: {sorted(unknown)}"
            )
        return entry

    # ------------------------------------------------------------------ datasets
    def _dataset(self, split: str, train: bool, drop_unseen: bool | None = None) -> SemSegDataset:
        if train:
            t = build_train_transform(
                self.train_short_sides,
                self.train_max_long_side,
                self.crop_size,
                self.color_jitter,
                self.hflip,
                self.image_pad_value,
                self.vocabulary.ignore_index,
                seed=int(torch.randint(0, 2**31 - 1, ()).item()),
            )
        else:
            t = build_test_transform(self.test_short_side, self.test_max_long_side)
        return SemSegDataset(
            self.benchmark,
            self.root,
            split,
            self.vocabulary,
            t,
            self.layout,
            self.cache_dir,
            allow_missing_labels=train or self.allow_missing_labels,  # training may skip
            drop_unseen=drop_unseen,
        )

    def _test_dataset(self, entry: dict[str, Any], vocab: Vocabulary) -> SemSegDataset:
        t = build_test_transform(self.test_short_side, self.test_max_long_side)
        return SemSegDataset(
            entry["benchmark"],
            entry["root"],
            entry.get("split", "val"),
            vocab,
            t,
            entry.get("layout", "registration"),
            self.cache_dir,
            allow_missing_labels=self.allow_missing_labels,
        )

    def _checked(self, ds: SemSegDataset, limit: int | None) -> Dataset:
        """Scan the images the run will use (the first ``limit``), then apply the limit."""
        if self.scan:
            ds.scan(limit)
        return _limit(ds, limit)

    def setup(self, stage: str | None = None) -> None:
        """Build and scan the datasets a stage needs (idempotent: both tasks may call it)."""
        if stage in (None, "fit") and self.train_dataset is None:
            ds = self._dataset(self.train_split, train=True)
            self.train_dataset = self._checked(ds, self.max_train_images)
        if stage in (None, "fit", "validate") and self.val_dataset is None:
            ds = self._dataset(self.val_split, train=False, drop_unseen=self.val_seen_only)
            self.val_dataset = self._checked(ds, self.max_val_images)
        if stage in (None, "test") and not self.test_datasets:
            if self.test_sets:
                sets = [
                    self._test_dataset(e, v) for e, v in zip(self.test_sets, self.test_vocabularies)
                ]
            else:
                sets = [self._dataset(self.test_split, train=False, drop_unseen=False)]
            self.test_datasets = [self._checked(d, self.max_val_images) for d in sets]

    # ------------------------------------------------------------------ counts
    def _test_counts(self, what: str) -> dict[str, int]:
        if not self.test_datasets:
            raise ConfigError(f"{type(self).__name__}.setup('test') has not been called")
        out = {}
        for name, ds in zip(self.test_names, self.test_datasets):
            base = ds
            while isinstance(base, Subset):
                base = base.dataset
            out[name] = len(ds) if what == "images" else int(getattr(base, "num_unlabeled", 0))
        return out

    @property
    def num_test_images(self) -> dict[str, int]:
        """Images each test set evaluates, by test name (after ``max_val_images``)."""
        return self._test_counts("images")

    @property
    def num_test_unlabeled(self) -> dict[str, int]:
        """Images each test set skipped for lack of a label file (``allow_missing_labels``)."""
        return self._test_counts("unlabeled")

    # ------------------------------------------------------------------ loaders
    def _loader(self, ds: Dataset | None, batch: int, ignore: int, train: bool) -> DataLoader:
        if ds is None:
            raise ConfigError(f"{type(self).__name__}.setup() has not built this dataset yet")
        return DataLoader(
            ds,
            batch_size=batch,
            shuffle=train,
            drop_last=train and self.drop_last,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.persistent_workers,
            collate_fn=SemSegCollate(ignore, self.size_divisibility, self.image_pad_value),
            worker_init_fn=seed_worker,
        )

    def train_dataloader(self) -> DataLoader:
        """Shuffled training batches, cropped to ``crop_size`` (docs/method.md §6.2)."""
        return self._loader(self.train_dataset, self.batch_size, self.vocabulary.ignore_index, True)

    def val_dataloader(self) -> DataLoader:
        """Validation split at the test resolution, main vocabulary (``val_seen_only``: unseen
        pixels ignored, images without a seen pixel dropped)."""
        ignore = self.vocabulary.ignore_index
        return self._loader(self.val_dataset, self.val_batch_size, ignore, False)

    def test_dataloader(self) -> DataLoader | list[DataLoader]:
        """One loader (``test_split``) or, with ``test_sets``, a list aligned with ``test_names``.

        Samples are drawn through :class:`~maft.distributed.RankShardSampler` (test with
        ``use_distributed_sampler=False``).
        """
        if not self.test_datasets:
            raise ConfigError(f"{type(self).__name__}.setup('test') has not been called")
        loaders = [  # under DDP each rank scores its own share, every image once
            sharded_loader(self._loader(ds, self.val_batch_size, v.ignore_index, False))
            for ds, v in zip(self.test_datasets, self.test_vocabularies)
        ]
        return loaders if self.test_sets else loaders[0]


class CocoStuffDataModule(SemSegDataModule):
    """COCO-Stuff 164k, 171 classes (root ``$MAFT_DATA_ROOT/coco``)."""

    benchmarks = ("coco_stuff_171",)


class VocDataModule(SemSegDataModule):
    """PASCAL VOC 2012, 20 classes: zero-shot ``voc_20`` or cross-dataset ``pas_20``."""

    benchmarks = ("voc_20", "pas_20")


class Ade20kDataModule(SemSegDataModule):
    """ADE20K-Full 847 (uint16 TIFF labels) or ADE20K-150."""

    benchmarks = ("ade20k_847", "ade20k_150")


class PascalContextDataModule(SemSegDataModule):
    """PASCAL-Context 59 or full 459 (uint16 TIFF labels)."""

    benchmarks = ("pcontext_59", "pcontext_459")


class FolderDataModule(SemSegDataModule):
    """A user's own ``images/``, ``labels/``, ``classes.txt`` folder (see docs/datasets.md)."""

    benchmarks = ("folder",)
