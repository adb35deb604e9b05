"""A run's lifecycle: run folders never written over, resumable stops, checkpoints that fit, a log
that reads like a story, the headline metric. Fast: a smoke run of a few steps, in-process."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import pytest
import torch
import yaml
from omegaconf import OmegaConf

import maft.runner as runner
from maft.callbacks import StageProgressBar, TrainingInterrupted
from maft.config import compose
from maft.errors import ConfigError
from maft.runner import (
    AtomicCheckpointIO,
    checkpoint_interval,
    cli_guard,
    headline,
    run_eval,
    run_train,
    setup_run_logging,
    update_latest_link,
)
from maft.train import RunFolderGuard, run_folder_problem

REPO = Path(__file__).resolve().parents[2]
STAGE_FILES = {"final.ckpt", "final.json", "last.ckpt"}


def _smoke(cache: Path) -> list[str]:
    """The smoke experiment (world_quick data, tiny CLIP), a few steps, a checkpoint every 2."""
    return [
        "experiment=smoke",
        f"paths.cache_dir={cache}",
        "logger=none",
        "callbacks.val_panels=null",
        "callbacks.lr_monitor=null",
        "callbacks.model_checkpoint.every_n_train_steps=2",
        "model.proposal_train.max_steps=4",
        "model.maft.max_steps=3",
    ]


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """One finished smoke run: its folder, overrides, summary and log records."""
    tmp = tmp_path_factory.mktemp("lifecycle")
    overrides = _smoke(tmp / "cache")
    handler = _Records()
    root = logging.getLogger()
    root.addHandler(handler)
    level = root.level
    root.setLevel(logging.INFO)
    try:
        summary = run_train(compose(overrides, output_dir=tmp / "run"))
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
    return SimpleNamespace(
        tmp=tmp, out=tmp / "run", overrides=overrides, summary=summary, records=handler.records
    )


def _digest(folder: Path) -> dict[str, str]:
    """Every file (bytes) and link (target) under ``folder``."""
    out = {}
    for dirpath, _, files in os.walk(folder):
        for name in files:
            path = Path(dirpath, name)
            rel = path.relative_to(folder).as_posix()
            if path.is_symlink():
                out[rel] = "-> " + os.readlink(path)
            else:
                out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def _results(out: Path) -> str:
    return json.dumps(json.loads((out / "metrics.json").read_text())["results"], sort_keys=True)


def _env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), env.get("PYTHONPATH", "")])
    return env


def _cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", *args],
        cwd=cwd,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )


# ------------------------------------------------------------------------------ checkpoints
def test_checkpoint_interval_suits_the_stage() -> None:
    """About 5 saves per stage (the world's 250 and 500 steps too), 10 to 1000 steps apart."""
    assert checkpoint_interval(250) == 50 and checkpoint_interval(500) == 100
    assert checkpoint_interval(8) == 10 and checkpoint_interval(60_000) == 1000


def test_finished_stages_keep_one_checkpoint_file_each(smoke_run: SimpleNamespace) -> None:
    """final.ckpt, last.ckpt as a link to it, final.json: no periodic copy, no temp file."""
    ckpts = smoke_run.out / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["maft", "proposals"]
    for stage, steps in (("proposals", 4), ("maft", 3)):
        folder = ckpts / stage
        assert {p.name for p in folder.iterdir()} == STAGE_FILES, stage
        assert (folder / "last.ckpt").is_symlink()
        assert os.readlink(folder / "last.ckpt") == "final.ckpt"
        record = json.loads((folder / "final.json").read_text())
        assert record["steps"] == steps and record["seconds"] > 0
        final = torch.load(folder / "final.ckpt", map_location="cpu", weights_only=False)
        assert final["global_step"] == steps
    big = [p for p in smoke_run.out.rglob("*") if p.is_file() and not p.is_symlink()]
    assert len([p for p in big if p.suffix == ".ckpt"]) == 2  # one file per stage


def test_atomic_checkpoint_io_keeps_the_old_file_when_a_save_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A save killed half way leaves the previous checkpoint as it was, and no temp file."""
    io = AtomicCheckpointIO()
    path = tmp_path / "stage" / "last.ckpt"
    io.save_checkpoint({"global_step": 1}, path)
    before = path.read_bytes()

    def half_save(obj, handle, *args, **kwargs):
        handle.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", half_save)
    with pytest.raises(OSError, match="disk full"):
        io.save_checkpoint({"global_step": 2}, path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.ckpt"]


# ------------------------------------------------------------------------------ run folders
def test_run_folder_rules(tmp_path: Path) -> None:
    """Results are never written over; resume needs a checkpoint; a fresh run needs none."""
    empty, missing = tmp_path / "empty", tmp_path / "missing"
    empty.mkdir()
    assert run_folder_problem(empty, "train") is None
    assert run_folder_problem(missing, "eval") is None
    assert "nothing to resume" in run_folder_problem(missing, "train", resume=True)
    assert "nothing to resume" in run_folder_problem(empty, "train", resume=True)

    unfinished = tmp_path / "unfinished"
    (unfinished / "checkpoints" / "maft").mkdir(parents=True)
    (unfinished / "checkpoints" / "maft" / "last.ckpt").write_bytes(b"x")
    assert run_folder_problem(unfinished, "train", resume=True) is None
    assert "ckpt_path=last" in run_folder_problem(unfinished, "train")
    assert "checkpoints of another run" in run_folder_problem(unfinished, "eval")

    done = tmp_path / "done"
    done.mkdir()
    (done / "metrics.json").write_text("{}")
    assert "already holds the results" in run_folder_problem(done, "train")
    assert "already holds the results" in run_folder_problem(done, "eval")
    assert "has finished" in run_folder_problem(done, "train", resume=True)


def _hydra_like(run_dir: Path, named: bool, ckpt_path: str | None = None):
    over = [f"hydra.run.dir={run_dir}"] if named else []
    return OmegaConf.create(
        {
            "hydra": {"run": {"dir": str(run_dir)}, "overrides": {"hydra": over}},
            "ckpt_path": ckpt_path,
        }
    )


def test_unnamed_run_folders_are_always_fresh(tmp_path: Path) -> None:
    """Two commands in the same second get two folders; a named folder is checked instead."""
    taken = tmp_path / "outputs" / "world" / "2026-01-01_00-00-00"
    taken.mkdir(parents=True)
    cfg = _hydra_like(taken, named=False)
    RunFolderGuard("train").on_run_start(cfg)
    assert cfg.hydra.run.dir == str(taken) + "_1" and Path(cfg.hydra.run.dir).is_dir()

    (taken / "report.md").write_text("# an earlier run")
    with pytest.raises(SystemExit) as stop:
        RunFolderGuard("eval").on_run_start(_hydra_like(taken, named=True))
    assert stop.value.code == 2
    with pytest.raises(SystemExit):  # resuming needs the folder named
        RunFolderGuard("train").on_run_start(_hydra_like(taken, named=False, ckpt_path="last"))


def test_a_folder_with_results_is_never_written_over(smoke_run: SimpleNamespace) -> None:
    """Training or evaluating into a finished run's folder fails first; nothing changes."""
    before = _digest(smoke_run.out)
    with pytest.raises(ConfigError, match="already holds the results"):
        run_train(compose(smoke_run.overrides, output_dir=smoke_run.out))
    ckpt = smoke_run.out / "checkpoints" / "maft" / "final.ckpt"
    ev = compose(
        ["experiment=smoke", f"ckpt_path={ckpt}"], config_name="eval", output_dir=smoke_run.out
    )
    with pytest.raises(ConfigError, match="already holds the results"):
        run_eval(ev)
    assert _digest(smoke_run.out) == before


def test_eval_of_the_demo_checkpoint_leaves_its_folder_byte_identical(
    smoke_run: SimpleNamespace, tmp_path: Path
) -> None:
    """maft.eval on the run's checkpoint (in-process, and the CLI naming the run's folder)."""
    before = _digest(smoke_run.out)
    ckpt = smoke_run.out / "checkpoints" / "maft" / "final.ckpt"
    over = ["experiment=smoke", f"ckpt_path={ckpt}", f"paths.cache_dir={smoke_run.tmp / 'cache'}"]
    summary = run_eval(compose(over, config_name="eval", output_dir=tmp_path / "eval"))
    assert (tmp_path / "eval" / "metrics.json").is_file()
    same = [json.dumps(s["results"]["maft"], sort_keys=True) for s in (summary, smoke_run.summary)]
    assert same[0] == same[1]
    proc = _cli(["maft.eval", *over, f"hydra.run.dir={smoke_run.out}"], cwd=tmp_path)
    assert proc.returncode == 2 and "already holds the results" in proc.stderr
    assert _digest(smoke_run.out) == before  # not even Hydra's .hydra/ or a log file


def test_ckpt_path_last_with_nothing_to_resume_fails_clearly(tmp_path: Path) -> None:
    """An empty or mistyped folder: a ConfigError (in-process) / exit 2 (CLI), nothing created."""
    over = _smoke(tmp_path / "cache")
    empty = tmp_path / "empty"
    empty.mkdir()
    for folder in (empty, tmp_path / "mistyped"):
        with pytest.raises(ConfigError, match="nothing to resume"):
            run_train(compose([*over, "ckpt_path=last"], output_dir=folder))
    assert not (tmp_path / "mistyped").exists() and list(empty.iterdir()) == []

    typo = tmp_path / "outputs" / "smoke" / "typo"
    proc = _cli(["maft.train", *over, f"hydra.run.dir={typo}", "ckpt_path=last"], cwd=tmp_path)
    assert proc.returncode == 2 and "nothing to resume" in proc.stderr, proc.stderr
    assert not typo.exists()
    proc = _cli(["maft.train", *over, "ckpt_path=last"], cwd=tmp_path)
    assert proc.returncode == 2 and "hydra.run.dir" in proc.stderr
    assert not (tmp_path / "outputs").exists()


def test_latest_link_points_at_the_last_run(tmp_path: Path) -> None:
    """outputs/<task>/latest: a relative link, moved atomically to each new run."""
    runs = [tmp_path / "outputs" / "world" / name for name in ("t1", "t2")]
    link = tmp_path / "outputs" / "world" / "latest"
    for run in runs:
        run.mkdir(parents=True)
        cfg = OmegaConf.create({"latest_link": str(link), "paths": {"output_dir": str(run)}})
        assert update_latest_link(cfg) == link
        assert link.resolve() == run.resolve() and not os.path.isabs(os.readlink(link))
    blocker = tmp_path / "other" / "latest"
    blocker.mkdir(parents=True)
    cfg = OmegaConf.create({"latest_link": str(blocker), "paths": {"output_dir": str(runs[0])}})
    assert update_latest_link(cfg) is None and blocker.is_dir() and not blocker.is_symlink()


# ------------------------------------------------------------------------------ stop & resume
class _SendSignal(L.Callback):
    """Send ``signum`` to this process at the end of training step ``step``."""

    def __init__(self, step: int, signum: int) -> None:
        self.step, self.signum = step, signum

    def on_train_batch_end(self, trainer: L.Trainer, *args: object) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), self.signum)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_saves_a_resumable_checkpoint(
    smoke_run: SimpleNamespace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, signum: int
) -> None:
    """Ctrl-C / SIGTERM in the middle of an epoch: last.ckpt at that step, the stage stops, and
    the resumed run ends with the uninterrupted run's metrics."""
    build = runner.build_trainer
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}

    def build_with_signal(cfg, stage, max_steps, **kw):
        trainer = build(cfg, stage, max_steps, **kw)
        if stage == "proposals":
            trainer.callbacks.insert(0, _SendSignal(2, signum))
        return trainer

    monkeypatch.setattr(runner, "build_trainer", build_with_signal)
    out = tmp_path / "run"
    with pytest.raises(TrainingInterrupted) as stop:
        run_train(compose(smoke_run.overrides, output_dir=out))
    assert stop.value.signum == signum and stop.value.step == 2
    assert {s: signal.getsignal(s) for s in handlers} == handlers  # handlers restored
    last = out / "checkpoints" / "proposals" / "last.ckpt"
    assert stop.value.path == last and not last.is_symlink()
    assert torch.load(last, map_location="cpu", weights_only=False)["global_step"] == 2
    assert not (out / "checkpoints" / "proposals" / "final.ckpt").exists()
    assert not (out / "metrics.json").exists()

    monkeypatch.setattr(runner, "build_trainer", build)
    summary = run_train(compose([*smoke_run.overrides, "ckpt_path=last"], output_dir=out))
    assert "proposals from step 2" in summary["meta"]["resumed"]
    assert _results(out) == _results(smoke_run.out)


def test_an_interrupted_cli_run_exits_with_the_resume_command(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """Exit status 128 + signal, and the exact command that resumes the run."""
    path = tmp_path / "run" / "checkpoints" / "maft" / "last.ckpt"
    with pytest.raises(SystemExit) as stop, cli_guard():
        raise TrainingInterrupted(signal.SIGTERM, "maft", 7, path)
    assert stop.value.code == 128 + signal.SIGTERM
    err = capsys.readouterr().err
    assert "stage maft stopped at step 7" in err
    assert f"hydra.run.dir={tmp_path / 'run'} ckpt_path=last" in err


def test_a_finished_stage_is_skipped_with_its_original_time(
    smoke_run: SimpleNamespace, tmp_path: Path
) -> None:
    """Resume after stage 1: it is reported as skipped, with the seconds it took."""
    out = tmp_path / "run"
    stage1 = out / "checkpoints" / "proposals"
    stage1.mkdir(parents=True)
    for name in ("final.ckpt", "final.json"):
        (stage1 / name).write_bytes(
            (smoke_run.out / "checkpoints" / "proposals" / name).read_bytes()
        )
    summary = run_train(compose([*smoke_run.overrides, "ckpt_path=last"], output_dir=out))
    seconds = json.loads((stage1 / "final.json").read_text())["seconds"]
    assert summary["timings_s"]["proposals (skipped: done in an earlier session)"] == seconds
    assert "proposals" not in summary["timings_s"]
    assert _results(out) == _results(smoke_run.out)


# ------------------------------------------------------------------------------ log
def test_the_log_reads_like_a_story(smoke_run: SimpleNamespace) -> None:
    """Numbered banners with durations, progress in steps of the stage, no adverts, no repeats."""
    messages = [r.getMessage() for r in smoke_run.records]
    assert "[1/6] data: world" in messages
    assert "[2/6] proposal generator, 4 steps" in messages
    assert "[5/6] MAFT fine-tuning, 3 steps" in messages
    assert any(m.startswith("[2/6] proposal generator, 4 steps: done in ") for m in messages)
    assert any(m.startswith("[6/6] evaluate MAFT: done in ") for m in messages)
    assert any(m.startswith("[2/6] proposal generator: step 4/4 (100%), loss ") for m in messages)
    assert any(m.startswith("[5/6] MAFT fine-tuning: step 2/3 (67%)") for m in messages)
    assert not any("Tip:" in m or "litlogger" in m for m in messages)
    third = [(r.name, r.getMessage()) for r in smoke_run.records if not r.name.startswith("maft")]
    assert len(third) == len(set(third)), "a third-party line was written twice"


def test_lightning_lines_go_through_hydras_handlers_only() -> None:
    """Lightning's own console handler goes when the root logger has handlers (Hydra's)."""
    root, probe = logging.getLogger(), _Records()
    root.addHandler(probe)
    try:
        setup_run_logging()
        assert logging.getLogger("lightning").handlers == []
        assert logging.getLogger("lightning.pytorch").propagate
        logging.getLogger("lightning.pytorch.utilities.rank_zero").warning("probe line")
        logging.getLogger("lightning.pytorch.utilities.rank_zero").warning("probe line")
        logging.getLogger("lightning.pytorch.utilities.rank_zero").warning("💡 Tip: buy this")
    finally:
        root.removeHandler(probe)
    assert [r.getMessage() for r in probe.records] == ["probe line"]


class _Tiny(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)

    def training_step(self, batch, batch_idx):
        loss = self.layer(batch[0]).pow(2).mean()
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self):
        data = torch.utils.data.TensorDataset(torch.randn(6, 2))
        return torch.utils.data.DataLoader(data, batch_size=2)  # 3 batches per epoch


@pytest.mark.filterwarnings("ignore:.*LeafSpec")
def test_the_live_bar_counts_steps_of_the_stage(capsys: pytest.CaptureFixture) -> None:
    """'[3/7] proposal generator ... 10/10', not Lightning's per-epoch 'Epoch 3: 1/3'."""
    bar = StageProgressBar("[3/7] proposal generator", 10)
    trainer = L.Trainer(
        max_steps=10,
        callbacks=[bar],
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        accelerator="cpu",
    )
    trainer.fit(_Tiny())
    out = capsys.readouterr().out
    assert "[3/7] proposal generator" in out and "10/10" in out
    assert "Epoch" not in out and "v_num" not in out


# ------------------------------------------------------------------------------ sweeps
def test_run_returns_its_headline_metric(smoke_run: SimpleNamespace) -> None:
    """hIoU of the MAFT row on the main benchmark: what a sweeper optimises."""
    meta, results = smoke_run.summary["meta"], smoke_run.summary["results"]
    assert meta["headline metric"] == "maft/world/hiou"
    assert smoke_run.summary["headline"] == results["maft"]["world"]["hiou"] == meta["headline"]


def test_headline_rules() -> None:
    """MAFT first, else the last row; hIoU with unseen classes, else mIoU; NaN when nothing."""
    rows = {"frozen_merge": {"a": {"miou": 3.0}}, "frozen_ip_clip": {"a": {"miou": 4.0}}}
    assert headline(rows) == ("frozen_ip_clip/a/miou", 4.0)
    rows["maft"] = {"a": {"miou": 5.0, "hiou": 2.0}, "b": {"miou": 1.0, "hiou": 1.0}}
    assert headline(rows) == ("maft/a/hiou", 2.0)
    name, value = headline({})
    assert name == "none" and value != value


def test_slurm_launcher_config_fits_the_train_config() -> None:
    """conf/hydra/launcher/slurm.yaml extends submitit_slurm with keys of the train config."""
    text = (REPO / "conf" / "hydra" / "launcher" / "slurm.yaml").read_text()
    node = yaml.safe_load(text)
    assert node["defaults"] == ["submitit_slurm"]
    assert node["tasks_per_node"] == node["gpus_per_node"] == "${trainer.devices}"
    cfg = compose(["experiment=coco_zs", "trainer=ddp"])
    assert int(cfg.trainer.devices) >= 1 and int(cfg.trainer.num_nodes) >= 1
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    launcher = compose(["experiment=coco_zs", "trainer=ddp", "hydra/launcher=slurm"])
    assert launcher is not None
