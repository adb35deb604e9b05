"""Exact resumption and exact distributed evaluation (issue 8: resume, DDP).

- :class:`StepSeeder` reseeds every random stream from ``(seed, stage, global_step)`` so a run
  killed and resumed from ``last.ckpt`` ends with the same weights as an uninterrupted one.
- :class:`RankShardSampler` shards test sets over ranks without padding, so DDP evaluation counts
  every image exactly once (Lightning's DistributedSampler repeats samples on uneven splits).
"""

from __future__ import annotations

from collections.abc import Iterator

import lightning as L
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, RandomSampler, Sampler, Subset

_STAGE_IDS = {"proposals": 0, "maft": 1}


class StepSeeder(L.Callback):
    """Make a training run's randomness a function of (seed, stage, global step) alone.

    Lightning checkpoints hold no RNG states, so a run resumed from ``last.ckpt`` would otherwise
    shuffle, crop and sample points differently from an uninterrupted run. Each epoch's shuffle
    and augmentation RNG are reseeded from the step it starts at (through ``set_epoch``, which
    Lightning calls before every epoch, a resumed one included) and the global RNGs before every
    step, so a run resumed at an epoch boundary ends bit for bit as the uninterrupted one.
    Not covered: ``num_workers > 0`` (worker seeds) and DDP (its sampler seeds by epoch itself).
    """

    def __init__(self, seed: int, stage: str) -> None:
        self.base = int(seed) * 1000 + _STAGE_IDS.get(stage, 9)

    def _seed(self, step: int) -> int:
        return (self.base * 7919 + int(step)) % 2**32

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        loader = trainer.train_dataloader
        if not isinstance(loader, DataLoader) or not isinstance(loader.sampler, RandomSampler):
            return
        sampler, ds = loader.sampler, loader.dataset
        while isinstance(ds, Subset):
            ds = ds.dataset
        transform = getattr(ds, "transform", None)

        def set_epoch(epoch: int) -> None:  # RandomSampler draws lazily, after this call
            seed = self._seed(trainer.global_step)
            sampler.generator = torch.Generator().manual_seed(seed)
            if hasattr(transform, "set_random_seed"):
                transform.set_random_seed(seed)

        sampler.set_epoch = set_epoch

    def on_train_batch_start(self, trainer: L.Trainer, pl_module, batch, batch_idx: int) -> None:
        L.seed_everything(self._seed(trainer.global_step), workers=True, verbose=False)


class RankShardSampler(Sampler[int]):
    """Indices ``rank, rank + W, ...`` of a test set: under DDP each sample is scored once.

    Lightning's DistributedSampler pads the last round with repeated samples so that ranks get
    equal batch counts; the summed confusion matrix would then count them twice. The rank is
    read when iterating (the process group exists by then, also in DDP children).
    """

    def __init__(self, n: int) -> None:
        self.n = int(n)

    def _indices(self) -> range:
        if dist.is_available() and dist.is_initialized():
            return range(dist.get_rank(), self.n, dist.get_world_size())
        return range(self.n)

    def __iter__(self) -> Iterator[int]:
        return iter(self._indices())

    def __len__(self) -> int:
        return len(self._indices())


def sharded_loader(loader: DataLoader) -> DataLoader:
    """The same test loader, drawing its samples through a :class:`RankShardSampler`."""
    return DataLoader(
        loader.dataset,
        batch_size=loader.batch_size,
        sampler=RankShardSampler(len(loader.dataset)),
        num_workers=loader.num_workers,
        collate_fn=loader.collate_fn,
        pin_memory=loader.pin_memory,
        worker_init_fn=loader.worker_init_fn,
        persistent_workers=loader.persistent_workers,
    )
