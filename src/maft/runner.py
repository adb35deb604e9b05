"""Importable runners behind the CLIs: ``run_train(cfg)``, ``run_eval(cfg)``, ``run_predict(cfg)``.

A run turns ``data`` + ``split`` into one :class:`Vocabulary`, instantiates the DataModule with it,
then runs the stages the config names (``proposals`` -> ``maft``), evaluates the requested rows
(``frozen_merge``, ``frozen_ip_clip``, ``maft``, or ``proposals``) on the test set(s) and writes
``metrics.json`` + ``report.md`` in the run folder. Tests call these in-process.

The run's lifecycle: a run folder that already holds another run's results is refused (the CLI
picks a fresh folder unless one is named); each training stage saves ``checkpoints/<stage>/
last.ckpt`` every few steps (atomically, beside its target), on SIGINT / SIGTERM and at its end,
where ``final.ckpt`` is written and ``last.ckpt`` becomes a link to it; ``ckpt_path=last`` says
what it resumes from, skips finished stages (reported with their original times) or fails when
the folder holds nothing to resume. Each stage logs a numbered banner, progress lines and its
duration; the run returns its headline metric (what a Hydra sweeper optimises).
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import math
import os
import shlex
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.errors import HydraException
from hydra.utils import instantiate
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import ModelCheckpoint, ModelSummary
from lightning.pytorch.utilities.rank_zero import rank_zero_only
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from maft.callbacks import (
    GracefulStop,
    StageClock,
    StageProgressBar,
    StageProgressLog,
    TrainingInterrupted,
    ValidationCurve,
    duration,
    interactive,
)
from maft.checkpoints import read_lightning_checkpoint
from maft.config import check_config, check_maft_selection
from maft.data.vocabulary import Vocabulary
from maft.distributed import StepSeeder
from maft.errors import ConfigError, MaftError
from maft.reports import config_hash, row_label, summary_table, write_reports
from maft.tasks.base import METRIC_RULE, results_from_metrics
from maft.train import checkpoints_in, run_folder_problem

log = logging.getLogger(__name__)

STAGES = ("proposals", "maft")
EVAL_ROWS = ("proposals", "frozen_merge", "frozen_ip_clip", "maft")
STAGE_TITLES = {"proposals": "proposal generator", "maft": "MAFT fine-tuning"}
#: Periodic ``last.ckpt`` saves: about this many per stage, 10 to 1000 steps apart.
CHECKPOINTS_PER_STAGE = 5
CHECKPOINT_INTERVAL_RANGE = (10, 1000)
#: Lightning messages that are advertisements, not information.
ADVERTS = ("💡 Tip:", "litlogger", "litmodels")
#: Warnings that are expected in maft's runs (each says why it is harmless here).
EXPECTED_WARNINGS = (
    # MAFT keeps its frozen towers in eval mode on purpose
    r"Found \d+ module\(s\) in eval mode at the start of training",
    # the summary counts parameters in fp32 under bf16-mixed; nothing else is affected
    r"Precision .* is not supported by the model summary",
    # short demo stages; the progress lines report the loss instead
    r"The number of training batches \(\d+\) is smaller than the logging interval",
    # StepSeeder replays the part of the epoch a mid-epoch checkpoint had already used
    r"You're resuming from a checkpoint that ended before the epoch ended",
    # inside Lightning, not maft
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",
)


# ---------------------------------------------------------------------------------------- errors
@contextlib.contextmanager
def cli_guard() -> Iterator[None]:
    """Turn maft's named errors and config mistakes into one clear line and exit status 2.

    A training stage stopped by SIGINT / SIGTERM exits 130 / 143 with the command that resumes it.
    """
    try:
        yield
    except TrainingInterrupted as err:
        print(
            f"maft: {err}\nresume with: {resume_command(err.path.parents[2])}",
            file=sys.stderr,
        )
        sys.exit(128 + err.signum)
    except (MaftError, OmegaConfBaseException, HydraException) as err:
        name = type(err).__name__
        print(f"maft: error: {name}: {err}", file=sys.stderr)
        sys.exit(2)


@contextlib.contextmanager
def interrupt_guard(out: str | Path) -> Iterator[None]:
    """Ctrl-C outside a training step (data, evaluation): exit 130 with what can be resumed."""
    try:
        yield
    except KeyboardInterrupt:
        if checkpoints_in(Path(out)):
            hint = f"resume with: {resume_command(out)}"
        else:
            hint = "no stage had saved a checkpoint yet: start the run again"
        print(f"maft: interrupted; {hint}", file=sys.stderr)
        sys.exit(130)


def resume_command(out: str | Path) -> str:
    """The command that resumes the run in ``out`` (this run's overrides, when Hydra knows them)."""
    task: list[str] = []
    with contextlib.suppress(Exception):
        from hydra.core.hydra_config import HydraConfig

        task = [str(o) for o in HydraConfig.get().overrides.task]
    keep = [o for o in task if not o.startswith(("ckpt_path=", "hydra.run.dir="))]
    args = [*keep, f"hydra.run.dir={out}", "ckpt_path=last"]
    return "python -m maft.train " + " ".join(shlex.quote(a) for a in args)


# ---------------------------------------------------------------------------------------- folders
def update_latest_link(cfg: DictConfig) -> Path | None:
    """Point ``cfg.latest_link`` (``outputs/world/latest``) at this run's folder, atomically."""
    target = cfg.get("latest_link")
    if not target or rank_zero_only.rank != 0:
        return None
    link, out = Path(str(target)), Path(cfg.paths.output_dir).resolve()
    if link.exists() and not link.is_symlink():
        log.warning("latest link not updated: %s exists and is not a link", link)
        return None
    link.parent.mkdir(parents=True, exist_ok=True)
    tmp = link.with_name(f".{link.name}.{os.getpid()}.tmp")
    try:
        tmp.unlink(missing_ok=True)
        os.symlink(os.path.relpath(out, link.parent.resolve()), tmp, target_is_directory=True)
        os.replace(tmp, link)
    except OSError as err:  # a file system without links
        log.warning("latest link not updated: %s", err)
        return None
    return link


# ---------------------------------------------------------------------------------------- logging
class _RunLogFilter(logging.Filter):
    """Drops advertisements, and third-party lines already written once in this run."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[tuple[str, str]] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        """False for adverts and repeats of a third-party line."""
        msg = record.getMessage()
        if any(a in msg for a in ADVERTS):
            return False
        if record.name.startswith("maft"):
            return True
        key = (record.name, msg)
        if key in self.seen:
            return False
        self.seen.add(key)
        return True


class _NoProgressLines(logging.Filter):
    """On a terminal with a live bar, the progress lines go to the log file only."""

    def filter(self, record: logging.LogRecord) -> bool:
        """False for ``maft.progress`` records."""
        return record.name != "maft.progress"


def setup_run_logging() -> None:
    """One line per message: Lightning's own console handlers go (Hydra's handlers print), adverts
    and third-party repeats are dropped, expected warnings silenced. Idempotent."""
    root = logging.getLogger()
    if root.handlers:
        for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
            logger = logging.getLogger(name)
            for handler in list(logger.handlers):
                logger.removeHandler(handler)
            logger.propagate = True
    live = interactive()
    for handler in root.handlers:
        if not any(isinstance(f, _RunLogFilter) for f in handler.filters):
            handler.addFilter(_RunLogFilter())
        console = isinstance(handler, logging.StreamHandler) and not isinstance(
            handler, logging.FileHandler
        )
        tty = getattr(getattr(handler, "stream", None), "isatty", lambda: False)()
        if (
            live
            and console
            and tty
            and not any(isinstance(f, _NoProgressLines) for f in handler.filters)
        ):
            handler.addFilter(_NoProgressLines())
    for pattern in EXPECTED_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)


class _Story:
    """Numbered banners per step of a run ('[3/7] proposal generator, 250 steps') and times."""

    def __init__(self, steps: list[tuple[str, str]], timings: dict[str, float]) -> None:
        self.keys = [k for k, _ in steps]
        self.titles = dict(steps)
        self.timings = timings
        self.resumed: dict[str, str] = {}  # stage -> how it was resumed (for the report)
        self.validation: dict[str, dict[str, Any]] = {}  # stage -> ValidationCurve.summary()

    def label(self, key: str, short: bool = False) -> str:
        """``[i/n] title`` for a planned step, the bare title otherwise (short: no step count)."""
        title = self.titles.get(key, key)
        if short:
            title = title.split(",")[0]
        if key not in self.keys:
            return title
        return f"[{self.keys.index(key) + 1}/{len(self.keys)}] {title}"

    @contextlib.contextmanager
    def step(self, key: str, timing: str | None = None) -> Iterator[None]:
        """Banner, run the block, record its time under ``timing`` (default: ``key``), log it."""
        label = self.label(key)
        log.info("%s", label)
        t0 = time.perf_counter()
        yield
        seconds = time.perf_counter() - t0
        self.timings[timing or key] = seconds
        log.info("%s: done in %s", label, duration(seconds))

    def skipped(self, key: str, seconds: float, timing: str) -> None:
        """A step finished in an earlier session: reported with its original time."""
        self.timings[f"{timing} (skipped: done in an earlier session)"] = seconds
        log.info(
            "%s: skipped, finished in an earlier session (%s)", self.label(key), duration(seconds)
        )


def _plan(cfg: DictConfig, stages: list[str], rows: list[str], data: bool) -> list[tuple[str, str]]:
    """The steps of a run, in order, with their titles."""
    steps: list[tuple[str, str]] = []
    if data:
        steps.append(("data", f"data: {cfg.data.get('benchmark')}"))
    wp = cfg.model.clip.get("world_pretrain")
    if wp and not cfg.model.clip.get("pretrained"):
        steps.append(("clip", "CLIP pretraining (or the cached one)"))
    if "proposals" in stages:
        n = int(cfg.model.proposal_train.max_steps)
        steps.append(("proposals", f"{STAGE_TITLES['proposals']}, {n} steps"))
    if "proposals" in rows:
        steps.append(("eval proposals", "evaluate the proposal generator"))
    merge = {"merge": cfg.model.merge}
    steps += [(f"eval {r}", f"evaluate {row_label(r, merge)}") for r in rows if r.startswith("fro")]
    if "maft" in stages:
        steps.append(("maft", f"{STAGE_TITLES['maft']}, {int(cfg.model.maft.max_steps)} steps"))
    if "maft" in rows:
        steps.append(("eval maft", "evaluate MAFT"))
    return steps


# ---------------------------------------------------------------------------------------- caches
@contextlib.contextmanager
def cache_lock(cfg: DictConfig) -> Iterator[None]:
    """An exclusive lock on ``paths.cache_dir`` while a run builds what it caches there."""
    cache = cfg.get("paths", {}).get("cache_dir")
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        fcntl = None  # type: ignore[assignment]
    if not cache or fcntl is None:
        yield
        return
    Path(cache).mkdir(parents=True, exist_ok=True)
    with open(Path(cache) / ".maft.lock", "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            log.info("waiting for another run that is writing the cache %s", cache)
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _plain(node: Any) -> Any:
    """DictConfig/ListConfig -> plain dict/list (resolved); anything else unchanged."""
    if isinstance(node, DictConfig) or OmegaConf.is_list(node):
        return OmegaConf.to_container(node, resolve=True)
    return node


# ---------------------------------------------------------------------------------------- pieces
def build_vocabulary(cfg: DictConfig) -> Vocabulary:
    """The run's vocabulary from ``data.benchmark`` (+ ``data.root``) and ``split.name``."""
    return Vocabulary.resolve(cfg.data.benchmark, cfg.data.get("root"), cfg.split.name)


def build_datamodule(cfg: DictConfig, vocab: Vocabulary, **overrides: Any) -> L.LightningDataModule:
    """Instantiate ``cfg.data`` with the run's vocabulary (misspelled keys fail with their name)."""
    if "progress" in cfg.data and not interactive():
        overrides.setdefault("progress", False)  # no carriage-return bars in log files
    try:
        factory = instantiate(cfg.data, _partial_=True, _convert_="all")
        return factory(vocabulary=vocab, **overrides)  # the object itself, not a config copy
    except TypeError as err:
        raise ConfigError(f"data config: {err}") from err


def _stage_dir(cfg: DictConfig, stage: str) -> Path:
    return Path(cfg.paths.output_dir) / "checkpoints" / stage


def checkpoint_interval(max_steps: int) -> int:
    """Steps between two saves of a stage's ``last.ckpt``: about 5 per stage, 10 to 1000 apart."""
    lo, hi = CHECKPOINT_INTERVAL_RANGE
    return max(lo, min(hi, math.ceil(int(max_steps) / CHECKPOINTS_PER_STAGE)))


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints written to a temporary file beside the target, then renamed over it.

    Lightning's own transaction writes the temporary file under the system's temp folder and
    moves it, which copies (not atomic) when that folder is on another file system, and holds
    the whole checkpoint in memory first. A killed save here leaves the previous file intact.
    """

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        """``torch.save`` to ``.<name>.<pid>.tmp`` in the target's folder, fsync, rename."""
        if storage_options is not None or "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            with open(tmp, "wb") as handle:
                torch.save(checkpoint, handle)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)


def build_trainer(cfg: DictConfig, stage: str, max_steps: int, **trainer_kwargs: Any) -> L.Trainer:
    """A Lightning Trainer for one stage: its own checkpoint folder and logger sub-folder.

    Training stages get exact-resume seeding, a stage clock, a stop on SIGINT / SIGTERM that
    saves ``last.ckpt``, progress lines, and (with ``callbacks.model_checkpoint``) a periodic
    ``last.ckpt`` (``every_n_train_steps: null``: :func:`checkpoint_interval`). The live bar
    counts the stage's steps, on a terminal only. ``trainer_kwargs`` override ``cfg.trainer``
    (the evaluation turns Lightning's sampler off).
    """
    training = stage in STAGES
    folder = _stage_dir(cfg, stage)
    callbacks: list[L.Callback] = []
    if training:
        callbacks += [
            StepSeeder(int(cfg.seed), stage),
            StageClock(),
            GracefulStop(folder, stage),
            StageProgressLog(stage, max_steps),
        ]
    for name, node in (cfg.get("callbacks") or {}).items():
        if node is None:
            continue
        kw: dict[str, Any] = {}
        if name == "model_checkpoint":
            if not training:
                continue
            kw["dirpath"] = str(folder)
            timed = ("every_n_train_steps", "train_time_interval", "every_n_epochs")
            if all(node.get(k) is None for k in timed):
                kw["every_n_train_steps"] = checkpoint_interval(max_steps)
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
    if training:
        kwargs.update(_gradient_clipping(cfg, stage, kwargs))
    live = bool(kwargs.get("enable_progress_bar", True)) and interactive()
    kwargs["enable_progress_bar"] = live
    if live:
        callbacks.append(StageProgressBar(stage, max_steps if training else 0))
    if training and kwargs.get("enable_model_summary", True):
        callbacks.append(ModelSummary(max_depth=1))  # into the log, not a console-only table
    kwargs["enable_model_summary"] = False
    # no checkpoint callback configured: no Lightning default one either (it would keep an
    # epoch=*.ckpt per stage beside final.ckpt); GracefulStop and final.ckpt still save
    kwargs["enable_checkpointing"] = any(isinstance(c, ModelCheckpoint) for c in callbacks)
    if not kwargs.get("plugins"):
        kwargs["plugins"] = [AtomicCheckpointIO()]
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


def _gradient_clipping(cfg: DictConfig, stage: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Trainer arguments clipping the global gradient L2 norm at the stage recipe's grad_clip.

    A trainer ``gradient_clip_val`` that differs from the recipe's is a ``ConfigError``: one
    value has to say which clipping runs.
    """
    recipe = cfg.model.proposal_train.optim if stage == "proposals" else cfg.model.maft
    clip = recipe.get("grad_clip")
    given = kwargs.get("gradient_clip_val")
    if clip is None:
        return {}
    where = "model.proposal_train.optim" if stage == "proposals" else "model.maft"
    if given is not None and float(given) != float(clip):
        raise ConfigError(
            f"trainer gradient_clip_val={given} and {where}.grad_clip={clip} both set gradient "
            f"clipping for the {stage} stage; set one ({where}.grad_clip=null to use the trainer's)"
        )
    if kwargs.get("gradient_clip_algorithm") not in (None, "norm"):
        raise ConfigError(
            f"{where}.grad_clip clips the gradient norm; trainer gradient_clip_algorithm="
            f"{kwargs['gradient_clip_algorithm']} conflicts (set {where}.grad_clip=null)"
        )
    return {"gradient_clip_val": float(clip), "gradient_clip_algorithm": "norm"}


def _resume_path(cfg: DictConfig, stage: str) -> str | None:
    """Resume point of a stage: ``ckpt_path=last`` picks the stage's last.ckpt when it exists."""
    want = cfg.get("ckpt_path")
    if want in (None, "", "none"):
        return None
    if want == "last":
        last = _stage_dir(cfg, stage) / "last.ckpt"
        return str(last) if last.is_file() else None
    return str(want)


def _checkpoint_facts(path: str | Path) -> dict[str, Any]:
    """``global_step``, the stage clock's seconds and the validation curve's pending step of a
    checkpoint (memory-mapped read)."""
    try:
        ckpt = torch.load(path, map_location="cpu", mmap=True, weights_only=False)
    except Exception as err:  # noqa: BLE001 - an unreadable file is reported by Lightning itself
        log.warning("could not read %s: %s", path, err)
        return {}
    clock = (ckpt.get("callbacks") or {}).get("StageClock") or {}
    return {
        "step": int(ckpt.get("global_step", 0)),
        "seconds": clock.get("seconds"),
        "pending": ValidationCurve.pending_of(ckpt),
    }


def _stage_record(folder: Path) -> dict[str, Any]:
    """What ``final.json`` says about a finished stage (steps, seconds), {} when absent."""
    with contextlib.suppress(OSError, ValueError):
        return json.loads((folder / "final.json").read_text("utf-8"))
    return {}


def _write_json(path: Path, payload: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(payload, indent=2), "utf-8")
    os.replace(tmp, path)


def _seal_stage(
    trainer: L.Trainer, folder: Path, stage: str, seconds: float, extra: dict | None = None
) -> Path:
    """``final.ckpt`` (atomic), ``final.json``, and ``last.ckpt`` as a link to ``final.ckpt``."""
    final = folder / "final.ckpt"
    trainer.save_checkpoint(str(final))
    if trainer.is_global_zero:
        record = {"stage": stage, "steps": int(trainer.global_step), "seconds": round(seconds, 3)}
        record.update(extra or {})
        _write_json(folder / "final.json", record)
        last, tmp = folder / "last.ckpt", folder / f".last.ckpt.{os.getpid()}.tmp"
        try:
            tmp.unlink(missing_ok=True)
            os.symlink(final.name, tmp)
            os.replace(tmp, last)
        except OSError:  # no symbolic links here: a hard link, else no last.ckpt at all
            tmp.unlink(missing_ok=True)
            try:
                os.link(final, tmp)
                os.replace(tmp, last)
            except OSError:
                last.unlink(missing_ok=True)
    return final


def build_proposal_task(cfg: DictConfig, vocab: Vocabulary) -> L.LightningModule:
    """ProposalTask (stage 1) from ``model.clip``, ``model.proposals``, ``model.proposal_train``."""
    from maft.tasks.proposal_task import ProposalTask

    pt = cfg.model.proposal_train
    optim = {**_plain(pt.optim), "max_steps": int(pt.max_steps)}
    try:
        return ProposalTask(
            vocabulary=vocab.to_dict(),
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


def _tests_on_cpu(cfg: DictConfig) -> bool:
    """Whether the evaluation trainer runs on the CPU (``trainer.accelerator``; auto: no GPU)."""
    accelerator = str((cfg.get("trainer") or {}).get("accelerator", "auto"))
    if accelerator == "cpu":
        return True
    gpu = torch.cuda.is_available() or torch.backends.mps.is_available()
    return accelerator == "auto" and not gpu


@contextlib.contextmanager
def evaluation_rows(
    task: Any, dm: Any, cfg: DictConfig, timings: dict[str, float]
) -> Iterator[None]:
    """Around the evaluation rows of one task: what no single row should be charged for.

    First, on a CPU run, each test vocabulary's text embeddings (the task caches them; on a GPU
    its first batch computes them in milliseconds, where they stay). Then the objects the run
    holds so far are frozen out of the garbage collector until the rows end: a full collection
    of them (0.3 s for the world run) otherwise lands inside whichever row triggers it.
    """
    t0 = time.perf_counter()
    dm.setup("test")
    embed = getattr(task, "text_embeddings", None)
    if embed is not None and _tests_on_cpu(cfg):
        for vocab in getattr(dm, "test_vocabularies", None) or [task.vocab]:
            embed(vocab)
    freeze = gc.get_freeze_count() == 0  # never unfreeze what the caller froze
    if freeze:
        gc.freeze()
    timings["eval setup"] = timings.get("eval setup", 0.0) + time.perf_counter() - t0
    try:
        yield
    finally:
        if freeze:
            gc.unfreeze()


def evaluate(task, dm, cfg: DictConfig, mode: str) -> dict[str, dict[str, Any]]:
    """Test ``task`` in evaluation ``mode`` on the datamodule's test sets: ``{set: metrics}``.

    The proposal generator (``proposals``: A^p over the seen classes) is tested on the main set
    only; the other rows on every test set the datamodule names. The numbers come back through
    the trainer's logged metrics.
    """
    trainer = build_trainer(cfg, f"test_{mode}", max_steps=-1, use_distributed_sampler=False)
    dm.setup("test")
    names = list(getattr(dm, "test_names", None) or ["test"])
    vocabs = list(getattr(dm, "test_vocabularies", None) or [task.vocab])
    if mode == "proposals":
        loaders = dm.test_dataloader()
        first = loaders[0] if isinstance(loaders, list | tuple) else loaders
        trainer.test(task, dataloaders=first, verbose=False)
        names, vocabs = names[:1], [task.vocab]
    else:
        with task.evaluating(mode):
            trainer.test(task, datamodule=dm, verbose=False)
    results = results_from_metrics(trainer.callback_metrics, names)
    for name, vocab in zip(names, vocabs):  # per-class IoU in metrics.json, named
        if name in results:
            results[name]["class_names"] = list(vocab.names)
    return results


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


def _find(trainer: L.Trainer, kind: type) -> Any:
    return next((c for c in trainer.callbacks if isinstance(c, kind)), None)


#: What MAFT's validation curve follows: mIoU of the seen classes (the only labels it may use).
VALIDATION_MONITOR = "val/miou_seen"


def _validation_setup(cfg: DictConfig, stage: str) -> tuple[dict[str, Any], ValidationCurve | None]:
    """Trainer arguments and the curve callback of a stage's validation (MAFT's ``val_every``)."""
    if stage != "maft":
        return {}, None
    every, keep = cfg.model.maft.get("val_every"), str(cfg.model.maft.get("keep", "last"))
    check_maft_selection(keep, every)
    if every is None:
        return {}, None
    kwargs = {
        "val_check_interval": int(every),
        "check_val_every_n_epoch": None,  # count steps across epochs
        "limit_val_batches": 1.0,
        "num_sanity_val_steps": 0,
    }
    return kwargs, ValidationCurve(VALIDATION_MONITOR, keep_best=keep == "best", every=int(every))


def _load_weights(task: L.LightningModule, path: str | Path) -> None:
    """Put a stage checkpoint's weights into ``task`` (a stage skipped on resume, or the step of a
    pending validation)."""
    ckpt = read_lightning_checkpoint(path)
    task.load_state_dict(ckpt["state_dict"])


def _fit_stage(cfg, task, dm, stage: str, max_steps: int, story: _Story | None = None) -> str:
    """Fit one stage (resuming when asked) and return the path of its final checkpoint.

    A stage stopped by SIGINT / SIGTERM raises :class:`TrainingInterrupted` after saving
    ``last.ckpt``; ``final.ckpt`` is only written by a stage that reached its last step. A stage
    finished in an earlier session is skipped and its weights loaded into ``task``. With MAFT's
    ``val_every``, the stage validates before its first step and every ``val_every`` steps; with
    ``keep: best`` it ends with (and ``final.ckpt`` holds) the weights of the best validation.
    """
    story = story or _Story([], {})
    folder = _stage_dir(cfg, stage)
    final = folder / "final.ckpt"
    label = story.label(stage, short=True)
    if cfg.get("ckpt_path") == "last" and final.is_file():
        record = _stage_record(folder)
        seconds = record.get("seconds")
        if seconds is None:
            seconds = _checkpoint_facts(final).get("seconds")
        story.skipped(stage, float("nan") if seconds is None else float(seconds), stage)
        if record.get("validation"):
            story.validation[stage] = record["validation"]
        _load_weights(task, final)
        return str(final)
    extra = _plain((cfg.get("stage_trainer") or {}).get(stage) or {})  # e.g. bf16 for one stage
    val_kwargs, curve = _validation_setup(cfg, stage)
    resume = _resume_path(cfg, stage)
    with story.step(stage):
        trainer = build_trainer(cfg, stage, max_steps, **{**extra, **val_kwargs})
        if curve is not None:
            trainer.callbacks.append(curve)
        for cb in trainer.callbacks:
            if isinstance(cb, StageProgressBar | StageProgressLog):
                cb.label = label
        facts = _checkpoint_facts(resume) if resume else {}
        if resume:
            step = facts.get("step", "?")
            log.info("%s: resuming from step %s of %d (%s)", label, step, max_steps, resume)
            story.resumed[stage] = f"from step {step} ({resume})"
        elif cfg.get("ckpt_path") == "last":
            log.info("%s: no checkpoint of this stage yet, starting at step 0", label)
        if curve is not None and not resume:  # the curve's step 0: where fine-tuning starts
            trainer.validate(task, datamodule=dm, verbose=False)
        pending = facts.get("pending") if curve is not None else None
        if pending is not None:  # saved at a validation step before its validation ran
            _load_weights(task, resume)
            curve.next_step = pending
            trainer.validate(task, datamodule=dm, verbose=False)
        trainer.fit(task, datamodule=dm, ckpt_path=resume)
        stopper = _find(trainer, GracefulStop)
        if stopper is not None:
            stopper.raise_if_stopped()
        if max_steps > 0 and trainer.global_step == 0:
            raise ConfigError(
                f"the {stage} stage trained 0 steps: its training loader is empty (too few "
                "training images for the batch size per device with drop_last); lower "
                "data.batch_size / model.proposal_train.batch_size or set data.drop_last=false"
            )
        clock = _find(trainer, StageClock)
        record = {}
        if curve is not None:
            record["validation"] = story.validation[stage] = curve.summary()
        _seal_stage(trainer, folder, stage, clock.seconds if clock else 0.0, record)
    return str(final)


def _meta(
    cfg: DictConfig, vocab: Vocabulary, results: dict, ckpt: str | None, task: Any = None
) -> dict[str, Any]:
    """Facts of the run for the reports; model facts from the task when one was built or loaded."""
    hp = dict(getattr(task, "hparams", None) or {})
    clip = hp.get("clip") or _plain(cfg.model.clip)
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
        "rule": METRIC_RULE,
        **_inference_facts(cfg, task),
        "clip": f"{clip.get('name')} ({clip.get('pretrained')})",
        "checkpoint": ckpt,
        "seed": int(cfg.seed),
        "config_hash": config_hash(OmegaConf.to_yaml(cfg, resolve=True)),
    }


def _inference_facts(cfg: DictConfig, task: Any) -> dict[str, Any]:
    """λ, form, start layer, input size, classifier, merge op and recipe that ran (task first)."""
    if task is not None and hasattr(task, "clip_cfg"):  # the MaftTask evaluated: its own values
        hp = task.hparams
        ens = {"lambda_": task.lambda_, "form": task.form}
        clip, model, recipe = task.clip_cfg, hp, getattr(task, "recipe", {})
    else:
        ens, clip, model = _plain(cfg.model.ensemble), _plain(cfg.model.clip), cfg.model
        recipe = _plain(cfg.model.maft)
    return {
        "lambda": float(ens["lambda_"]),
        "form": str(ens["form"]),
        "start_layer": int(clip["start_layer"]),
        "input_size": int(clip["input_size"]),
        "classifier": str(model["classifier"]),
        "merge": str(model["merge"]),
        "maft recipe": ", ".join(
            f"{k} {recipe[k]}" for k in ("dis_weight", "lr", "weight_decay", "schedule")
        ),
    }


def headline(results: dict[str, dict[str, dict[str, Any]]]) -> tuple[str, float]:
    """The run's headline metric ``<row>/<benchmark>/<metric>`` and its value.

    Row: ``maft`` when evaluated, else the last row; benchmark: the row's first (main) test set;
    metric: ``hiou`` (harmonic mean of seen and unseen mIoU) when the vocabulary has unseen
    classes, else ``miou``. NaN when nothing was evaluated.
    """
    if not results:
        return "none", float("nan")
    row = "maft" if "maft" in results else list(results)[-1]
    if not results[row]:
        return f"{row}/none", float("nan")
    bench, metrics = next(iter(results[row].items()))
    key = "hiou" if "hiou" in metrics else "miou"
    value = metrics.get(key)
    return f"{row}/{bench}/{key}", float("nan") if value is None else float(value)


def _finish(
    cfg, vocab, results, timings, ckpt, task=None, dm=None, story: _Story | None = None
) -> dict[str, Any]:
    meta = _meta(cfg, vocab, results, ckpt, task)
    if dm is not None and getattr(dm, "test_datasets", None):
        counts = dict(dm.num_test_images)
        skipped = dict(getattr(dm, "num_test_unlabeled", {}) or {})
        if counts:
            meta["images evaluated"] = ", ".join(
                f"{k}: {n}" + (f" ({skipped[k]} without a label skipped)" if skipped.get(k) else "")
                for k, n in counts.items()
            )
    if story is not None and story.resumed:
        meta["resumed"] = "; ".join(f"{k} {v}" for k, v in story.resumed.items())
    if story is not None and story.validation.get("maft"):
        meta.update(validation_facts(story.validation["maft"], cfg))
    name, value = headline(results)
    meta["headline metric"], meta["headline"] = name, value
    out = Path(cfg.paths.output_dir)
    if rank_zero_only.rank == 0:  # DDP: every rank holds the synced metrics; one writes them
        write_reports(out, results, meta, timings)
        print(summary_table(results, meta))
        print(f"\nheadline {name}: {value:.2f}")
        print(f"report: {out / 'report.md'}\nmetrics: {out / 'metrics.json'}")
    return {"results": results, "meta": meta, "timings_s": timings, "headline": value}


def validation_facts(summary: dict[str, Any], cfg: DictConfig) -> dict[str, Any]:
    """Report lines of MAFT's validation: which step's weights were kept, on what, and the curve."""
    split = cfg.data.get("val_split", "val")
    seen_only = " with unseen pixels ignored" if cfg.data.get("val_seen_only") else ""
    last = summary["curve"][-1][0] if summary["curve"] else None
    if summary["kept"] == "best":
        kept = (
            f"step {summary['best_step']} of {last} (the highest {summary['monitor']}, "
            f"{summary['best_value']:.2f}, on split {split!r}{seen_only})"
        )
    else:
        kept = f"step {last} (the last; curve on split {split!r}{seen_only})"
    return {"maft weights kept": kept, "maft_validation": {**summary, "split": split}}


@contextlib.contextmanager
def preserved_rng() -> Iterator[None]:
    """Restore Python's, NumPy's and torch's (CPU and CUDA) global random states afterwards."""
    import random

    import numpy as np

    states = (random.getstate(), np.random.get_state(), torch.get_rng_state())
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    try:
        yield
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.set_rng_state(states[2])
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)


def resolve_clip_weights(cfg: DictConfig, timings: dict[str, float]) -> None:
    """Pretrain (or reuse from the cache) the built-in world's CLIP when the config asks for it."""
    wp = cfg.model.clip.get("world_pretrain")
    if not wp or cfg.model.clip.get("pretrained"):
        return
    from maft.world.pretrain import ensure_world_clip

    t0 = time.perf_counter()
    kwargs = _plain(wp)
    if not interactive():
        kwargs["progress"] = False  # no carriage-return bars in log files
    # two runs sharing the cache: one pretrains, the other waits for it; a pretraining run here
    # leaves the random state as a cache hit does, so a first run on a fresh machine gives the
    # same numbers as every later one
    with cache_lock(cfg), preserved_rng():
        path = ensure_world_clip(Path(cfg.paths.cache_dir) / "world_clip", **kwargs)
    cfg.model.clip.pretrained = str(path)
    timings["clip pretrain (or cache)"] = time.perf_counter() - t0


def _start(cfg: DictConfig, command: str) -> None:
    """Readable logging, and the run folder checked before anything is written into it."""
    setup_run_logging()
    check_config(cfg)
    if rank_zero_only.rank != 0:
        return
    resume = command == "train" and cfg.get("ckpt_path") == "last"
    problem = run_folder_problem(cfg.paths.output_dir, command, resume)
    if problem:
        raise ConfigError(problem)
    if resume:
        log.info("resuming the run in %s", cfg.paths.output_dir)
        for stale in Path(cfg.paths.output_dir).glob("checkpoints/*/.*.tmp"):
            stale.unlink(missing_ok=True)  # a save cut short by a kill


def run_train(cfg: DictConfig) -> dict[str, Any]:
    """Train the configured stages, evaluate the configured rows, write the reports."""
    _start(cfg, "train")
    torch.set_float32_matmul_precision("high")
    L.seed_everything(int(cfg.seed), workers=True)
    stages, rows = _stages(cfg), list(cfg.get("evaluate") or [])
    results: dict[str, dict] = {}
    timings: dict[str, float] = {}
    story = _Story(_plan(cfg, stages, rows, data=True), timings)
    with story.step("data"), cache_lock(cfg):
        vocab = build_vocabulary(cfg)
        dm = build_datamodule(cfg, vocab)
        dm.setup("fit" if stages else "test")  # a missing or broken dataset fails now, by name
        if stages and rows:
            dm.setup("test")  # test sets are scanned too, before any training
    if "clip" in story.keys:
        with story.step("clip", "clip pretrain (or cache)"):
            resolve_clip_weights(cfg, timings)
    ckpt = cfg.get("proposals_ckpt")
    if "proposals" in stages:
        ptask = build_proposal_task(cfg, vocab)
        dm1 = dm
        stage1_batch = cfg.model.proposal_train.get("batch_size")
        if stage1_batch and int(stage1_batch) != int(cfg.data.batch_size):
            dm1 = build_datamodule(cfg, vocab, batch_size=int(stage1_batch))
            dm1.setup("fit")
        steps = int(cfg.model.proposal_train.max_steps)
        ckpt = _fit_stage(cfg, ptask, dm1, "proposals", steps, story)
        if "proposals" in rows:
            with story.step("eval proposals", "eval proposals"):
                results["proposals"] = evaluate(ptask, dm, cfg, "proposals")
    needs_maft = "maft" in stages or any(r != "proposals" for r in rows)
    final, task = ckpt, None
    if needs_maft:
        if not ckpt:
            raise ConfigError(
                "no proposal generator: add 'proposals' to stages or give "
                "proposals_ckpt=<path to a ProposalTask checkpoint>"
            )
        # whatever ran before (a stage trained here or skipped on resume), the task's random
        # initialisation (overwritten by pretrained / stage-1 weights) is drawn from the seed
        L.seed_everything(int(cfg.seed), workers=True, verbose=False)
        task = build_maft_task(cfg, vocab, ckpt)
        frozen = [r for r in rows if r.startswith("frozen")]
        with evaluation_rows(task, dm, cfg, timings) if frozen else contextlib.nullcontext():
            for row in frozen:
                with story.step(f"eval {row}"):
                    results[row] = evaluate(task, dm, cfg, row)
        if "maft" in stages:
            final = _fit_stage(cfg, task, dm, "maft", int(cfg.model.maft.max_steps), story)
        if "maft" in rows:
            with evaluation_rows(task, dm, cfg, timings), story.step("eval maft"):
                results["maft"] = evaluate(task, dm, cfg, "maft")
        _pictures(cfg, task, dm, vocab, timings)
    return _finish(cfg, vocab, results, timings, final, task, dm, story)


def _pictures(cfg: DictConfig, task: Any, dm: Any, vocab: Vocabulary, timings: dict) -> None:
    """Overlays, panels and proposal figures of the first ``cfg.pictures`` test images."""
    if int(cfg.get("pictures") or 0) <= 0:
        return
    from maft.pictures import write_run_pictures

    t0 = time.perf_counter()
    write_run_pictures(task, dm, vocab, cfg.paths.output_dir, int(cfg.pictures))
    timings["pictures"] = time.perf_counter() - t0
    log.info("pictures: done in %s", duration(timings["pictures"]))


#: Inference settings a user may change on a loaded MaftTask, by their config key.
INFERENCE_KEYS = {
    "model.ensemble.lambda_": "lambda_",
    "model.ensemble.form": "form",
    "model.clip.start_layer": "start_layer",
    "model.clip.input_size": "input_size",
    "model.classifier": "classifier",
    "model.merge": "merge",
    "model.merge_variant": "merge_variant",
    "model.drop_invalid": "drop_invalid",
    "model.mask_align_corners": "mask_align_corners",
}


def user_overrides() -> set[str]:
    """Config keys the user set on the command line (Hydra's task overrides), e.g. in a sweep."""
    try:
        from hydra.core.hydra_config import HydraConfig

        task = [str(o) for o in HydraConfig.get().overrides.task]
    except (ValueError, AttributeError):  # no Hydra context (a direct call)
        return set()
    return {o.split("=", 1)[0].lstrip("+~") for o in task if "=" in o}


def inference_overrides(cfg: DictConfig) -> dict[str, Any]:
    """The inference settings the user overrode, to apply over a loaded checkpoint's own."""
    given = user_overrides()
    return {
        name: OmegaConf.select(cfg, key) for key, name in INFERENCE_KEYS.items() if key in given
    }


def load_task_for_eval(cfg: DictConfig, vocab: Vocabulary):
    """A MaftTask from ``ckpt_path`` (MaftTask checkpoint, or a ProposalTask one: frozen rows).

    A MaftTask checkpoint (or a release file) keeps its own inference settings (λ, form, start
    layer, ...) unless the user overrides them on the command line; a ProposalTask checkpoint
    takes them all from the config.
    """
    from maft.checkpoints import identify_checkpoint
    from maft.tasks.maft_task import MaftTask

    path = cfg.get("ckpt_path")
    if not path or path == "???":
        raise ConfigError("ckpt_path is required: python -m maft.eval ckpt_path=<checkpoint> ...")
    kind = identify_checkpoint(path)  # one memory-mapped read; errors name the file
    if kind == "release":  # an official FreeSeg / MAFT release file, as downloaded
        from maft.tasks.release import maft_task_from_release

        task, _, _ = maft_task_from_release(path, cfg.get("release_config"))
        return task.configure_inference(**inference_overrides(cfg))
    if kind == "proposals":  # a ProposalTask checkpoint: evaluate frozen CLIP on its proposals
        return build_maft_task(cfg, vocab, str(path))
    return MaftTask.from_checkpoint(path).configure_inference(**inference_overrides(cfg))


def run_eval(cfg: DictConfig) -> dict[str, Any]:
    """Evaluate a checkpoint on the configured test set(s); returns the metrics per row."""
    _start(cfg, "eval")
    L.seed_everything(int(cfg.seed), workers=True)
    rows = list(cfg.get("evaluate") or ["maft"])
    results: dict[str, dict] = {}
    timings: dict[str, float] = {}
    story = _Story(_plan(cfg, [], rows, data=False), timings)
    with cache_lock(cfg):
        vocab = build_vocabulary(cfg)
        dm = build_datamodule(cfg, vocab)
    if "clip" in story.keys:
        with story.step("clip", "clip pretrain (or cache)"):
            resolve_clip_weights(cfg, timings)
    task = load_task_for_eval(cfg, vocab)
    with evaluation_rows(task, dm, cfg, timings):
        for row in rows:
            with story.step(f"eval {row}"):
                results[row] = evaluate(task, dm, cfg, row)
    _pictures(cfg, task, dm, vocab, timings)
    return _finish(cfg, vocab, results, timings, str(cfg.ckpt_path), task, dm)


def run_predict(cfg: DictConfig) -> dict[str, Any]:
    """Segment the images of ``cfg.image`` with ``cfg.vocabulary`` (see :mod:`maft.predict_run`)."""
    from maft.predict_run import run_predict_cli

    return run_predict_cli(cfg)
