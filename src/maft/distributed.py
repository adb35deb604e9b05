"""Exact resumption and exact distributed evaluation.

- :class:`StepSeeder` reseeds every random stream from ``(seed, stage, global_step)`` and replays
  the consumed part of an epoch, so a run killed and resumed from ``last.ckpt`` ends with the same
  weights as an uninterrupted one, wherever in an epoch it was stopped.
- :class:`RankShardSampler` shards test sets over ranks without padding, so DDP evaluation counts
  every image exactly once (Lightning's DistributedSampler repeats samples on uneven splits).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import lightning as L
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, RandomSampler, Sampler, Subset

_STAGE_IDS = {"proposals": 0, "maft": 1}


class _ResumableSampler(Sampler[int]):
    """The epoch's sampler, able to skip (and replay) the samples a resumed epoch already used."""

    def __init__(self, base: Sampler[int]) -> None:
        self.base = base
        self._skip = 0
        self._replay: Callable[[int], Any] | None = None

    def skip_next(self, n: int, replay: Callable[[int], Any] | None) -> None:
        """Skip the first ``n`` indices of the next epoch, passing each to ``replay`` first."""
        self._skip, self._replay = int(n), replay

    def __iter__(self) -> Iterator[int]:
        it = iter(self.base)
        skip, replay = self._skip, self._replay
        self._skip, self._replay = 0, None
        for _ in range(skip):
            index = next(it, None)
            if index is None:
                return
            if replay is not None:
                replay(index)  # draws the same augmentation randomness as the first pass
        yield from it

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]


class StepSeeder(L.Callback):
    """Make a training run's randomness a function of (seed, stage, global step) alone.

    Lightning checkpoints hold no RNG states, so a run resumed from ``last.ckpt`` would otherwise
    shuffle, crop and sample points differently from an uninterrupted run. Each epoch's shuffle
    and augmentation RNG are reseeded from the step it starts at (through ``set_epoch``, which
    Lightning calls before every epoch, a resumed one included) and the global RNGs before every
    step. The step an epoch started at is saved in every checkpoint; an epoch resumed in its
    middle draws the same permutation again, runs the dataset over the samples already used
    (``num_workers == 0``: same augmentation draws) and continues with the next batch, so the
    resumed run ends bit for bit as the uninterrupted one.
    Not covered: ``num_workers > 0`` (worker seeds; the skipped samples are not replayed) and DDP
    (its sampler seeds by epoch itself).
    """

    def __init__(self, seed: int, stage: str) -> None:
        self.base = int(seed) * 1000 + _STAGE_IDS.get(stage, 9)
        self.epoch_start_step: int | None = None
        self.resumed_mid_epoch = 0  # batches of the resumed epoch that were skipped (replayed)
        self._restored_start: int | None = None

    def _seed(self, step: int) -> int:
        return (self.base * 7919 + int(step)) % 2**32

    def state_dict(self) -> dict[str, Any]:
        """The step the running epoch began at (saved in every checkpoint)."""
        return {"epoch_start_step": self.epoch_start_step}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Remember where the checkpoint's epoch began, for the first ``set_epoch`` call."""
        start = state_dict.get("epoch_start_step")
        self._restored_start = None if start is None else int(start)

    def _epoch_start(self, trainer: L.Trainer) -> tuple[int, int]:
        """(step the starting epoch began at, batches of it already trained)."""
        step, restored = int(trainer.global_step), self._restored_start
        self._restored_start = None
        if restored is None:
            return step, 0
        done = (step - restored) * int(trainer.accumulate_grad_batches)
        per_epoch = trainer.num_training_batches
        if 0 < done and (not isinstance(per_epoch, int) or done < per_epoch):
            return restored, done
        return step, 0

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        loader = trainer.train_dataloader
        if not isinstance(loader, DataLoader) or not isinstance(loader.sampler, RandomSampler):
            return
        sampler, dataset, ds = loader.sampler, loader.dataset, loader.dataset
        while isinstance(ds, Subset):
            ds = ds.dataset
        transform = getattr(ds, "transform", None)
        batches = getattr(loader, "batch_sampler", None)
        resumable = None
        if batches is not None and getattr(batches, "sampler", None) is sampler:
            resumable = _ResumableSampler(sampler)
            batches.sampler = resumable  # read lazily by the batch iterator, after this hook
        replay = dataset.__getitem__ if loader.num_workers == 0 else None

        def set_epoch(epoch: int) -> None:  # RandomSampler draws lazily, after this call
            start, done = self._epoch_start(trainer)
            self.epoch_start_step = start
            seed = self._seed(start)
            sampler.generator = torch.Generator().manual_seed(seed)
            if hasattr(transform, "set_random_seed"):
                transform.set_random_seed(seed)
            if done and resumable is not None:
                resumable.skip_next(done * int(loader.batch_size or 1), replay)
                self.resumed_mid_epoch = done

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
