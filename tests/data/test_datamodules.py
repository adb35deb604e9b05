"""DataModules: Hydra configs, cross-dataset test sets, zero-shot training, a folder end to end."""

from __future__ import annotations

from pathlib import Path

import hydra
import lightning as L
import pytest
import torch
from omegaconf import OmegaConf

from maft.config import compose as compose_config
from maft.data import (
    Ade20kDataModule,
    CocoStuffDataModule,
    FolderDataModule,
    PascalContextDataModule,
    VocDataModule,
    write_benchmark,
)
from maft.data.layouts import SUBFOLDERS
from maft.data.vocabulary import Vocabulary
from maft.errors import ConfigError

CONF = Path(__file__).resolve().parents[2] / "conf" / "data"
SMALL = dict(
    batch_size=2,
    num_workers=0,
    pin_memory=False,
    train_short_sides=[32, 48],
    crop_size=32,
    test_short_side=48,
)
CLASSES = {
    "coco_stuff_171": CocoStuffDataModule,
    "voc_20": VocDataModule,
    "pas_20": VocDataModule,
    "ade20k_847": Ade20kDataModule,
    "ade20k_150": Ade20kDataModule,
    "pcontext_59": PascalContextDataModule,
    "pcontext_459": PascalContextDataModule,
    "folder": FolderDataModule,
}


def compose(name: str, data_root: Path, **overrides):
    """The ``data`` node as the CLI composes it (schema defaults + the benchmark's file)."""
    over = [f"data={name}", f"paths.data_root={data_root}", f"paths.cache_dir={data_root / 'c'}"]
    over += ["split=all_seen"]
    over += [f"data.{k}={_hydra_value(v)}" for k, v in overrides.items()]
    cfg = compose_config(over, output_dir=data_root / "run")
    return OmegaConf.create({"paths": cfg.paths, "data": cfg.data})


def _hydra_value(value) -> str:
    if isinstance(value, list | tuple):
        return "[" + ",".join(str(v) for v in value) + "]"
    if value is None:
        return "null"
    return str(value).lower() if isinstance(value, bool) else str(value)


@pytest.mark.parametrize("name", sorted(CLASSES))
def test_every_data_config_instantiates_and_reads(tmp_path, name):
    assert sorted(p.stem for p in CONF.glob("*.yaml") if p.stem != "world") == sorted(CLASSES)
    sb = write_benchmark(tmp_path, name, n_images=2, splits=("val",))
    extra = {"root": str(sb.root)} if name == "folder" else {}
    cfg = compose(name, tmp_path, **extra, **SMALL)
    vocab = sb.vocabulary if name == "folder" else Vocabulary.from_benchmark(name, None)
    dm = hydra.utils.instantiate(cfg.data, _partial_=True)(vocabulary=vocab)
    assert type(dm) is CLASSES[name] and dm.vocabulary is vocab
    merged = hydra.utils.instantiate(cfg.data, vocabulary=vocab)  # Hydra makes a dict of it
    assert merged.vocabulary.names == vocab.names
    assert torch.equal(merged.vocabulary.seen, vocab.seen)
    assert merged.vocabulary.ignore_index == vocab.ignore_index
    assert Path(dm.root) == tmp_path / SUBFOLDERS[name]
    dm.setup("validate")
    batch = next(iter(dm.val_dataloader()))
    assert batch["image"].shape == (1, 3, 64, 64)  # 48 short side -> padded to 64
    assert batch["valid_size"].tolist() == [[48, 48]] and batch["orig_size"].tolist() == [[64, 64]]


def test_misspelled_key_fails_with_its_name(tmp_path):
    with pytest.raises(Exception, match="bach_size"):  # at compose time (typed data schema)
        compose("voc_20", tmp_path, bach_size=3)


def test_wrong_benchmark_for_class(tmp_path):
    with pytest.raises(ConfigError, match="voc_20, pas_20"):
        VocDataModule(benchmark="coco_stuff_171", root=str(tmp_path))


def test_cross_dataset_test_sets(tmp_path):
    roots = {
        b: write_benchmark(tmp_path, b, n_images=2, splits=("val",)).root
        for b in ("coco_stuff_171", "ade20k_847", "pcontext_459", "pas_20")
    }
    tests = [
        {"benchmark": b, "root": str(roots[b])} for b in ("ade20k_847", "pcontext_459", "pas_20")
    ]
    dm = CocoStuffDataModule(
        benchmark="coco_stuff_171", root=str(roots["coco_stuff_171"]), test_sets=tests, **SMALL
    )
    assert dm.test_names == ["ade20k_847", "pcontext_459", "pas_20"]
    assert [v.num_classes for v in dm.test_vocabularies] == [847, 459, 20]
    assert all(not v.has_split for v in dm.test_vocabularies)
    dm.setup("test")
    loaders = dm.test_dataloader()
    assert isinstance(loaders, list) and len(loaders) == 3
    for loader, vocab in zip(loaders, dm.test_vocabularies):
        batch = next(iter(loader))
        lab = batch["label"]
        assert lab.dtype == torch.int64 and (lab == vocab.ignore_index).any()
        assert int(lab[lab != vocab.ignore_index].max()) < vocab.num_classes
    ade_labels = next(iter(loaders[0]))["label"]
    assert (ade_labels == 65535).any()  # uint16 ignore survives resize and padding
    with pytest.raises(ConfigError, match="unknown keys"):
        CocoStuffDataModule(
            benchmark="coco_stuff_171",
            root="x",
            test_sets=[{"benchmark": "a", "root": "b", "roots": "c"}],
        )


def test_zero_shot_module_serves_both_tasks(tmp_path):
    sb = write_benchmark(tmp_path, "coco_stuff_171", n_images=4)
    vocab = Vocabulary.from_benchmark("coco_stuff_171", "zero_shot")
    dm = CocoStuffDataModule(
        benchmark="coco_stuff_171", root=str(sb.root), vocabulary=vocab, max_val_images=3, **SMALL
    )
    dm.setup("fit")
    train, val = dm.train_dataset, dm.val_dataset
    dm.setup("fit")  # a second task reusing the instance gets the same datasets
    assert dm.train_dataset is train and dm.val_dataset is val
    assert len(train) == 3 and len(val) == 3
    unseen = vocab.unseen_indices
    for batch in dm.train_dataloader():
        assert batch["image"].shape == (2, 3, 32, 32)
        assert not torch.isin(batch["label"], unseen).any()
    assert dm.test_names == ["coco_stuff_171"] and dm.test_vocabularies == [vocab]


class _TinySeg(L.LightningModule):
    """A 1x1 conv per-pixel classifier: enough to prove batches feed a training loop."""

    def __init__(self, num_classes: int, ignore: int) -> None:
        super().__init__()
        self.head = torch.nn.Conv2d(3, num_classes, 1)
        self.ignore = ignore
        self.seen_batches = {"train": 0, "val": 0, "test": 0}

    def _loss(self, batch):
        logits = self.head(batch["image"].float() / 255)  # [B, C, H, W]
        return torch.nn.functional.cross_entropy(logits, batch["label"], ignore_index=self.ignore)

    def training_step(self, batch, batch_idx):
        self.seen_batches["train"] += 1
        return self._loss(batch)

    def validation_step(self, batch, batch_idx):
        self.seen_batches["val"] += 1

    def test_step(self, batch, batch_idx):
        self.seen_batches["test"] += 1
        # evaluation labels stay at the original size (the test transform resizes only the image)
        assert tuple(batch["label"].shape[-2:]) == tuple(batch["orig_size"].max(0).values.tolist())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_folder_datamodule_trains_end_to_end(tmp_path):
    sb = write_benchmark(tmp_path, "folder", n_images=4, size=(40, 56))
    dm = FolderDataModule(benchmark="folder", root=str(sb.root), **SMALL)
    assert dm.vocabulary.names == ["sky", "grass", "water", "road", "sand"]
    model = _TinySeg(dm.vocabulary.num_classes, dm.vocabulary.ignore_index)
    before = model.head.weight.detach().clone()
    trainer = L.Trainer(
        max_epochs=2,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, datamodule=dm)
    trainer.test(model, datamodule=dm, verbose=False)
    assert model.seen_batches["train"] == 2  # 3 kept images (image 0 is all unseen), batch 2
    assert model.seen_batches["val"] >= 4 and model.seen_batches["test"] == 4
    assert not torch.equal(before, model.head.weight)


class _Probe(torch.utils.data.Dataset):
    """Returns one draw of the augmentation RNG per item."""

    def __init__(self) -> None:
        from maft.data.transforms import build_train_transform

        self.transform = build_train_transform(seed=0)

    def __len__(self) -> int:
        return 4

    def __getitem__(self, i: int) -> float:
        return self.transform.py_random.random()


def test_workers_get_distinct_augmentation_streams():
    from maft.data.datamodule import seed_worker

    loader = torch.utils.data.DataLoader(_Probe(), batch_size=1, num_workers=2)
    unseeded = [float(x) for x in loader]
    assert len(set(unseeded)) < 4  # forked workers share the albumentations RNG state
    loader = torch.utils.data.DataLoader(
        _Probe(), batch_size=1, num_workers=2, worker_init_fn=seed_worker
    )
    assert len({float(x) for x in loader}) == 4
