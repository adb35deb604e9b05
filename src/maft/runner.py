"""Importable runners behind the CLIs: ``run_train(cfg)``, ``run_eval(cfg)``, ``run_predict(cfg)``.

A run turns ``data`` + ``split`` into one :class:`Vocabulary`, instantiates the DataModule with it,
then runs the stages the config names (``proposals`` -> ``maft``), evaluates the requested rows
(``frozen_merge``, ``frozen_ip_clip``, ``maft``, or ``proposals``) on the test set(s) and writes
``metrics.json`` + ``report.md`` in the run folder. Tests call these in-process.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.errors import HydraException
from hydra.utils import instantiate
from lightning.pytorch.utilities.rank_zero import rank_zero_only
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from torch.utils.data import DataLoader

from maft.data.vocabulary import Vocabulary
from maft.distributed import StepSeeder, sharded_loader
from maft.errors import ConfigError, MaftError
from maft.reports import config_hash, summary_table, write_reports

log = logging.getLogger(__name__)

STAGES = ("proposals", "maft")
EVAL_ROWS = ("proposals", "frozen_merge", "frozen_ip_clip", "maft")


# ---------------------------------------------------------------------------------------- errors
@contextlib.contextmanager
def cli_guard() -> Iterator[None]:
    """Turn maft's named errors and config mistakes into one clear line and exit status 2."""
    try:
        yield
    except (MaftError, OmegaConfBaseException, HydraException) as err:
        name = type(err).__name__
        print(f"maft: error: {name}: {err}", file=sys.stderr)
        sys.exit(2)


def _plain(node: Any) -> Any:
    """DictConfig/ListConfig -> plain dict/list (resolved); anything else unchanged."""
    if isinstance(node, DictConfig) or OmegaConf.is_list(node):
        return OmegaConf.to_container(node, resolve=True)
    return node


# ---------------------------------------------------------------------------------------- pieces
def build_vocabulary(cfg: DictConfig) -> Vocabulary:
    """The run's vocabulary from ``data.benchmark`` (+ ``data.root``) and ``split.name``."""
    bench, split = cfg.data.benchmark, cfg.split.name
    if bench == "folder":
        from maft.data.dataset import folder_vocabulary

        vocab = folder_vocabulary(cfg.data.root)  # classes.txt, with its "| unseen" markers
        if split is None:
            vocab = Vocabulary.from_names(vocab.names, None, vocab.ignore_index)
        return vocab
    if bench == "world":
        from maft.world.writer import world_vocabulary

        vocab = world_vocabulary()
        return Vocabulary.from_names(vocab.names, None) if split is None else vocab
    if split == "from_file":
        split = "zero_shot"
    return Vocabulary.from_benchmark(bench, split=split)


def build_datamodule(cfg: DictConfig, vocab: Vocabulary, **overrides: Any) -> L.LightningDataModule:
    """Instantiate ``cfg.data`` with the run's vocabulary (misspelled keys fail with their name)."""
    try:
        factory = instantiate(cfg.data, _partial_=True, _convert_="all")
        return factory(vocabulary=vocab, **overrides)  # the object itself, not a config copy
    except TypeError as err:
        raise ConfigError(f"data config: {err}") from err


def _stage_dir(cfg: DictConfig, stage: str) -> Path:
    return Path(cfg.paths.output_dir) / "checkpoints" / stage


def build_trainer(cfg: DictConfig, stage: str, max_steps: int, **trainer_kwargs: Any) -> L.Trainer:
    """A Lightning Trainer for one stage: its own checkpoint folder and logger sub-folder.

    ``trainer_kwargs`` override ``cfg.trainer`` (the evaluation turns Lightning's sampler off).
    """
    callbacks: list[L.Callback] = [StepSeeder(int(cfg.seed), stage)] if stage in STAGES else []
    for name, node in (cfg.get("callbacks") or {}).items():
        if node is None:
            continue
        kw = {"dirpath": str(_stage_dir(cfg, stage))} if name == "model_checkpoint" else {}
        callbacks.append(instantiate(node, **kw))
    loggers = [
        instantiate(node, version=stage)
        for node in (cfg.get("logger") or {}).values()
        if node is not None
    ]
    if not loggers:  # Lightning refuses a learning-rate monitor without a logger
        callbacks = [
            c for c in callbacks if not isinstance(c, L.pytorch.callbacks.LearningRateMonitor)
        ]
    kwargs = {**_plain(cfg.trainer), **trainer_kwargs}
    try:
        return L.Trainer(
            max_steps=int(max_steps),
            default_root_dir=cfg.paths.output_dir,
            callbacks=callbacks,
            logger=loggers or False,
            **kwargs,
        )
    except TypeError as err:
        raise ConfigError(f"trainer config: {err}") from err


def _resume_path(cfg: DictConfig, stage: str) -> str | None:
    """Resume point of a stage: ``ckpt_path=last`` picks the stage's last.ckpt when it exists."""
    want = cfg.get("ckpt_path")
    if want in (None, "", "none"):
        return None
    if want == "last":
        last = _stage_dir(cfg, stage) / "last.ckpt"
        return str(last) if last.is_file() else None
    return str(want)


def build_proposal_task(cfg: DictConfig, vocab: Vocabulary) -> L.LightningModule:
    """ProposalTask (stage 1) from ``model.clip``, ``model.proposals``, ``model.proposal_train``."""
    from maft.tasks.proposal_task import ProposalTask

    pt = cfg.model.proposal_train
    optim = {**_plain(pt.optim), "max_steps": int(pt.max_steps)}
    try:
        return ProposalTask(
            class_names=vocab.names,
            seen=[bool(s) for s in vocab.seen.tolist()],
            ignore_index=vocab.ignore_index,
            clip={"name": cfg.model.clip.name, "pretrained": cfg.model.clip.pretrained},
            generator=_plain(cfg.model.proposals),
            criterion=_plain(pt.criterion),
            optim=optim,
        )
    except TypeError as err:
        raise ConfigError(f"model.proposals: {err}") from err


def stage2_generator(generator: dict[str, Any]) -> dict[str, Any]:
    """Generator config of stage 2: weights come from stage 1, so initialisation files go."""
    out = dict(generator)
    if out.get("backbone_weights"):
        out["backbone_weights"] = None
    if out.get("pretrained_backbone"):
        out["pretrained_backbone"] = False
    return out


def build_maft_task(cfg: DictConfig, vocab: Vocabulary, proposals_ckpt: str | None):
    """MaftTask (stage 2 + frozen baselines) from ``model.*`` and a stage-1 checkpoint."""
    from maft.tasks.maft_task import MaftTask

    m = cfg.model
    try:
        return MaftTask(
            vocabulary=vocab.to_dict(),
            clip=_plain(m.clip),
            generator=stage2_generator(_plain(m.proposals)),
            maft=_plain(m.maft),
            ensemble=_plain(m.ensemble),
            classifier=m.classifier,
            merge=m.merge,
            merge_variant=m.merge_variant,
            drop_invalid=bool(m.drop_invalid),
            mask_align_corners=bool(m.mask_align_corners),
            proposals_ckpt=proposals_ckpt,
            generator_train_mode=m.get("generator_train_mode"),
        )
    except TypeError as err:
        raise ConfigError(f"model config: {err}") from err


def _test_sets(dm: L.LightningDataModule, vocab: Vocabulary) -> tuple[list[Vocabulary], list[str]]:
    vocabs = list(getattr(dm, "test_vocabularies", None) or [vocab])
    names = list(getattr(dm, "test_names", None) or [vocab.benchmark or "test"])
    return vocabs, names


def _test_loaders(dm: L.LightningDataModule) -> list[DataLoader]:
    dm.setup("test")
    loaders = dm.test_dataloader()
    return [
        sharded_loader(x) for x in (loaders if isinstance(loaders, list | tuple) else [loaders])
    ]


def evaluate(task, dm, cfg: DictConfig, mode: str) -> dict[str, dict[str, Any]]:
    """Run the test loop of ``task`` in evaluation ``mode``; return ``{benchmark: metrics}``."""
    trainer = build_trainer(cfg, f"test_{mode}", max_steps=-1, use_distributed_sampler=False)
    loaders = _test_loaders(dm)
    if mode == "proposals":  # A^p over the seen classes, on the main test set
        task.eval_name = (getattr(dm, "test_names", None) or ["test"])[0]
        trainer.test(task, dataloaders=loaders[0], verbose=False)
        return dict(task.results)
    vocabs, names = _test_sets(dm, task.vocab)
    task.eval_vocabularies, task.eval_names, task.eval_mode = vocabs, names, mode
    trainer.test(task, dataloaders=loaders if len(loaders) > 1 else loaders[0], verbose=False)
    return dict(task.results)


# ---------------------------------------------------------------------------------------- runs
def _stages(cfg: DictConfig) -> list[str]:
    stages = list(cfg.get("stages") or [])
    bad = [s for s in stages if s not in STAGES]
    bad += [r for r in (cfg.get("evaluate") or []) if r not in EVAL_ROWS]
    if bad:
        raise ConfigError(
            f"unknown stage/evaluation {bad}; stages: {STAGES}, evaluate: {EVAL_ROWS}"
        )
    return stages


def _fit_stage(cfg, task, dm, stage: str, max_steps: int) -> str:
    """Fit one stage (resuming when asked) and return the path of its final checkpoint."""
    final = _stage_dir(cfg, stage) / "final.ckpt"
    if cfg.get("ckpt_path") == "last" and final.is_file():
        log.info("stage %s already finished: %s", stage, final)
        return str(final)
    extra = _plain((cfg.get("stage_trainer") or {}).get(stage) or {})  # e.g. bf16 for one stage
    trainer = build_trainer(cfg, stage, max_steps, **extra)
    trainer.fit(task, datamodule=dm, ckpt_path=_resume_path(cfg, stage))
    final.parent.mkdir(parents=True, exist_ok=True)
    trainer.save_checkpoint(str(final))
    return str(final)


def _meta(
    cfg: DictConfig, vocab: Vocabulary, results: dict, ckpt: str | None, task: Any = None
) -> dict[str, Any]:
    """Facts of the run for the reports; model facts from the task when one was built or loaded."""
    hp = dict(getattr(task, "hparams", None) or {})
    clip = hp.get("clip") or _plain(cfg.model.clip)
    rules = {m.get("rule") for per in results.values() for m in per.values()}
    release = dict(hp.get("release") or {})
    extra: dict[str, Any] = {}
    if release:
        trained = task.vocab
        extra = {
            "release file": release.get("file"),
            "release settings": release.get("settings_from"),
            "release trained on": f"{trained.benchmark} "
            f"({int(trained.seen.sum())} seen / {int((~trained.seen).sum())} unseen classes)",
            "paper_row_name": release.get("paper_row_name"),
            "paper_row": release.get("paper_row"),
        }
    gen = hp.get("generator") or _plain(cfg.model.proposals)
    if task is not None and hasattr(task, "generator_train_mode"):
        extra["generator mode during MAFT training"] = (
            "train (dropout on, as released)" if task.generator_train_mode else "eval"
        )
    return {
        **extra,
        "generator": str(gen.get("arch", "lite")),
        "experiment": cfg.get("experiment_name") or cfg.get("task_name"),
        "benchmark": vocab.benchmark or cfg.data.get("benchmark"),
        "classes": vocab.num_classes,
        "seen/unseen": f"{int(vocab.seen.sum())}/{int((~vocab.seen).sum())}",
        "rule": ", ".join(sorted(r for r in rules if r)) or "gt_or_pred",
        "lambda": float(getattr(task, "lambda_", cfg.model.ensemble.lambda_)),
        "form": str(getattr(task, "form", cfg.model.ensemble.form)),
        "classifier": str(hp.get("classifier", cfg.model.classifier)),
        "merge": str(hp.get("merge", cfg.model.merge)),
        "clip": f"{clip.get('name')} ({clip.get('pretrained')})",
        "start_layer": int(clip.get("start_layer", 0)),
        "checkpoint": ckpt,
        "seed": int(cfg.seed),
        "config_hash": config_hash(OmegaConf.to_yaml(cfg, resolve=True)),
    }


def _finish(cfg, vocab, results, timings, ckpt, task=None, dm=None) -> dict[str, Any]:
    meta = _meta(cfg, vocab, results, ckpt, task)
    if dm is not None and getattr(dm, "test_datasets", None):
        counts = dict(dm.num_test_images)
        skipped = dict(getattr(dm, "num_test_unlabeled", {}) or {})
        if counts:
            meta["images evaluated"] = ", ".join(
                f"{k}: {n}" + (f" ({skipped[k]} without a label skipped)" if skipped.get(k) else "")
                for k, n in counts.items()
            )
    out = Path(cfg.paths.output_dir)
    if rank_zero_only.rank == 0:  # DDP: every rank holds the synced metrics; one writes them
        write_reports(out, results, meta, timings)
        print(summary_table(results, meta))
        print(f"\nreport: {out / 'report.md'}\nmetrics: {out / 'metrics.json'}")
    return {"results": results, "meta": meta, "timings_s": timings}


def resolve_clip_weights(cfg: DictConfig, timings: dict[str, float]) -> None:
    """Pretrain (or reuse from the cache) the built-in world's CLIP when the config asks for it."""
    wp = cfg.model.clip.get("world_pretrain")
    if not wp or cfg.model.clip.get("pretrained"):
        return
    from maft.world.pretrain import ensure_world_clip

    t0 = time.perf_counter()
    kwargs = _plain(wp)
    path = ensure_world_clip(Path(cfg.paths.cache_dir) / "world_clip", **kwargs)
    cfg.model.clip.pretrained = str(path)
    timings["clip pretrain (or cache)"] = time.perf_counter() - t0


def run_train(cfg: DictConfig) -> dict[str, Any]:
    """Train the configured stages, evaluate the configured rows, write the reports."""
    torch.set_float32_matmul_precision("high")
    L.seed_everything(int(cfg.seed), workers=True)
    stages, rows = _stages(cfg), list(cfg.get("evaluate") or [])
    results: dict[str, dict] = {}
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    vocab = build_vocabulary(cfg)
    dm = build_datamodule(cfg, vocab)
    dm.setup("fit" if stages else "test")  # a missing or broken dataset fails now, by name
    if stages and rows:
        dm.setup("test")  # test sets are scanned too, before any training
    timings["data"] = time.perf_counter() - t0
    resolve_clip_weights(cfg, timings)
    ckpt = cfg.get("proposals_ckpt")
    if "proposals" in stages:
        t0 = time.perf_counter()
        ptask = build_proposal_task(cfg, vocab)
        dm1 = dm
        stage1_batch = cfg.model.proposal_train.get("batch_size")
        if stage1_batch and int(stage1_batch) != int(cfg.data.batch_size):
            dm1 = build_datamodule(cfg, vocab, batch_size=int(stage1_batch))
            dm1.setup("fit")
        ckpt = _fit_stage(cfg, ptask, dm1, "proposals", int(cfg.model.proposal_train.max_steps))
        timings["proposals"] = time.perf_counter() - t0
        if "proposals" in rows:
            results["proposals"] = evaluate(ptask, dm, cfg, "proposals")
    needs_maft = "maft" in stages or any(r != "proposals" for r in rows)
    final, task = ckpt, None
    if needs_maft:
        if not ckpt:
            raise ConfigError(
                "no proposal generator: add 'proposals' to stages or give "
                "proposals_ckpt=<path to a ProposalTask checkpoint>"
            )
        task = build_maft_task(cfg, vocab, ckpt)
        for row in [r for r in rows if r.startswith("frozen")]:
            t0 = time.perf_counter()
            results[row] = evaluate(task, dm, cfg, row)
            timings[f"eval {row}"] = time.perf_counter() - t0
        if "maft" in stages:
            t0 = time.perf_counter()
            final = _fit_stage(cfg, task, dm, "maft", int(cfg.model.maft.max_steps))
            timings["maft"] = time.perf_counter() - t0
        if "maft" in rows:
            t0 = time.perf_counter()
            results["maft"] = evaluate(task, dm, cfg, "maft")
            timings["eval maft"] = time.perf_counter() - t0
        _pictures(cfg, task, dm, vocab, timings)
    return _finish(cfg, vocab, results, timings, final, task, dm)


def _pictures(cfg: DictConfig, task: Any, dm: Any, vocab: Vocabulary, timings: dict) -> None:
    """Overlays, panels and proposal figures of the first ``cfg.pictures`` test images."""
    if int(cfg.get("pictures") or 0) <= 0:
        return
    from maft.pictures import write_run_pictures

    t0 = time.perf_counter()
    write_run_pictures(task, dm, vocab, cfg.paths.output_dir, int(cfg.pictures))
    timings["pictures"] = time.perf_counter() - t0


def load_task_for_eval(cfg: DictConfig, vocab: Vocabulary):
    """A MaftTask from ``ckpt_path`` (MaftTask checkpoint, or a ProposalTask one: frozen rows)."""
    from maft.tasks.common import read_lightning_checkpoint
    from maft.tasks.maft_task import MaftTask

    path = cfg.get("ckpt_path")
    if not path or path == "???":
        raise ConfigError("ckpt_path is required: python -m maft.eval ckpt_path=<checkpoint> ...")
    from maft.models.release import is_release_file

    if is_release_file(path):  # an official FreeSeg / MAFT release file, as downloaded
        from maft.tasks.release import maft_task_from_release

        task, _, _ = maft_task_from_release(path, cfg.get("release_config"))
        task.lambda_ = float(cfg.model.ensemble.lambda_)
        task.form = str(cfg.model.ensemble.form)
        return task
    hp = read_lightning_checkpoint(path).get("hyper_parameters") or {}
    if "criterion" in hp:  # a ProposalTask checkpoint: evaluate frozen CLIP on its proposals
        return build_maft_task(cfg, vocab, str(path))
    task = MaftTask.from_checkpoint(path)
    task.lambda_ = float(cfg.model.ensemble.lambda_)
    task.form = str(cfg.model.ensemble.form)
    return task


def run_eval(cfg: DictConfig) -> dict[str, Any]:
    """Evaluate a checkpoint on the configured test set(s); returns the metrics per row."""
    L.seed_everything(int(cfg.seed), workers=True)
    vocab = build_vocabulary(cfg)
    dm = build_datamodule(cfg, vocab)
    results: dict[str, dict] = {}
    timings: dict[str, float] = {}
    resolve_clip_weights(cfg, timings)
    task = load_task_for_eval(cfg, vocab)
    for row in list(cfg.get("evaluate") or ["maft"]):
        t0 = time.perf_counter()
        results[row] = evaluate(task, dm, cfg, row)
        timings[f"eval {row}"] = time.perf_counter() - t0
    _pictures(cfg, task, dm, vocab, timings)
    return _finish(cfg, vocab, results, timings, str(cfg.ckpt_path), task, dm)


def run_predict(cfg: DictConfig) -> dict[str, Any]:
    """Segment the images of ``cfg.image`` with ``cfg.vocabulary`` (see :mod:`maft.predictor`)."""
    from maft.predictor import run_predict_cli

    return run_predict_cli(cfg)
