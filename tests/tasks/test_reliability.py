"""Reliability of runs: resume after a kill (in-process, and kill -9 / Ctrl-C of the CLI),
bit-reproducible seeds, multirun, DDP.

All tests but the README-facing config check are ``slow`` (end-to-end runs, subprocesses).
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
import torch

import maft.runner as runner
from maft.config import compose
from maft.data.synthetic import write_benchmark
from maft.runner import run_eval, run_train

REPO = Path(__file__).resolve().parents[2]
EXPERIMENTS = sorted(p.stem for p in (REPO / "conf" / "experiment").glob("*.yaml"))
# Deterministic data: no flip, no jitter, one scale; every MAFT step is logged and checkpointed.
RESUME = [
    "data.hflip=false",
    "data.color_jitter=false",
    "data.train_short_sides=[64]",
    "data.crop_size=64",
    "callbacks=default",
    "callbacks.model_checkpoint.every_n_train_steps=1",
    "callbacks.val_panels=null",
    "model.maft.max_steps=6",
]


class Killed(RuntimeError):
    """Raised by :class:`KillAt` to stop a run as a crash would."""


class KillAt(L.Callback):
    """Crash the run at the end of training step ``step`` (before that step is checkpointed)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer: L.Trainer, *args: object) -> None:
        if trainer.global_step == self.step:
            raise Killed(f"killed at step {self.step}")


def _env() -> dict[str, str]:
    """Subprocess environment: one thread per process, the checkout importable."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), env.get("PYTHONPATH", "")])
    return env


def _cli(args: list[str], cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run ``python -m <args>`` and fail with its output when it does not exit 0."""
    proc = subprocess.run(
        [sys.executable, "-m", *args],
        cwd=cwd,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, f"{args[:2]} exited {proc.returncode}:\n{proc.stderr[-4000:]}"
    return proc


def _results(out: Path) -> str:
    """``results`` of a run's metrics.json as canonical text (NaN compares equal to NaN)."""
    payload = json.loads((out / "metrics.json").read_text())
    return json.dumps(payload["results"], sort_keys=True)


def _state(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=False)["state_dict"]


def _assert_same_state(a: Path, b: Path) -> None:
    sa, sb = _state(a), _state(b)
    assert sa.keys() == sb.keys()
    diff = [k for k in sa if not torch.equal(sa[k], sb[k])]
    assert not diff, f"{len(diff)} tensors differ between {a} and {b}, e.g. {diff[:3]}"


def _changed(a: Path, b: Path) -> list[str]:
    sa, sb = _state(a), _state(b)
    return [k for k in sa if not torch.equal(sa[k], sb[k])]


@pytest.fixture(autouse=True)
def _one_thread():
    """Share the machine politely; also what makes CPU float reductions run in one order."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ------------------------------------------------------------------------------ README check
def test_every_experiment_prints_its_config() -> None:
    """`python -m maft.train --cfg job experiment=X` composes for every experiment (README)."""
    assert len(EXPERIMENTS) >= 10
    for name in EXPERIMENTS:
        proc = _cli(["maft.train", "--cfg", "job", f"experiment={name}"], cwd=REPO, timeout=120)
        assert "stages:" in proc.stdout and "model:" in proc.stdout, name


# ------------------------------------------------------------------------------ resume
@pytest.mark.slow
@pytest.mark.parametrize("batch_size", [2, 1], ids=["epoch_boundary", "mid_epoch"])
def test_killed_run_resumes_to_the_same_result(
    tiny_overrides: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, batch_size: int
) -> None:
    """Kill during MAFT after step k, resume with ckpt_path=last: same weights and metrics.

    4 training images: batches of 2 put the last checkpoint (step 2) at an epoch boundary,
    batches of 1 in the middle of an epoch.
    """
    overrides = [*tiny_overrides, *RESUME, f"data.batch_size={batch_size}"]
    run_a, run_b = tmp_path / "a", tmp_path / "b"
    run_train(compose(overrides, output_dir=run_a))

    k = 3
    build = runner.build_trainer

    def build_with_kill(cfg, stage, max_steps, **kw):
        trainer = build(cfg, stage, max_steps, **kw)
        if stage == "maft":
            trainer.callbacks.insert(0, KillAt(k))
        return trainer

    monkeypatch.setattr(runner, "build_trainer", build_with_kill)
    with pytest.raises(Killed):
        run_train(compose(overrides, output_dir=run_b))
    monkeypatch.setattr(runner, "build_trainer", build)

    maft_dir, prop_dir = run_b / "checkpoints" / "maft", run_b / "checkpoints" / "proposals"
    assert not (maft_dir / "final.ckpt").exists() and not (run_b / "metrics.json").exists()
    killed_at = torch.load(maft_dir / "last.ckpt", map_location="cpu", weights_only=False)
    assert 1 <= killed_at["global_step"] < 6
    prop_final = prop_dir / "final.ckpt"
    stamp = prop_final.stat().st_mtime_ns
    (maft_dir / "killed.ckpt").write_bytes((maft_dir / "last.ckpt").read_bytes())

    run_train(compose([*overrides, "ckpt_path=last"], output_dir=run_b))

    assert prop_final.stat().st_mtime_ns == stamp  # stage 1 was finished: not trained again
    final_b = maft_dir / "final.ckpt"
    final_a = run_a / "checkpoints" / "maft" / "final.ckpt"
    assert torch.load(final_b, map_location="cpu", weights_only=False)["global_step"] == 6
    assert _changed(maft_dir / "killed.ckpt", final_b), "the resumed run did not train"
    _assert_same_state(final_a, final_b)
    assert _results(run_a) == _results(run_b)


# world_quick with a longer stage 1 (20 steps; 7 batches per epoch): checkpoints fall mid-epoch.
WORLD = [
    "experiment=world_quick",
    "logger=none",
    "pictures=0",
    "callbacks.val_panels=null",
    "callbacks.lr_monitor=null",
    "model.proposal_train.max_steps=20",
]
LOG_LINE = re.compile(r"^\[[\d:,\- ]+\]\[([\w.]+)\]\[(\w+)\] - (.*)$")


def _log_lines(text: str) -> list[tuple[str, str]]:
    """(logger, first line) of every record of a Hydra log (multi-line tables left out)."""
    return [(m[1], m[3]) for m in map(LOG_LINE.match, text.splitlines()) if m and m[3].strip()]


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 300) -> None:
    end = time.monotonic() + timeout
    while not (path.is_file() and not path.is_symlink()):
        assert proc.poll() is None, f"the run ended (exit {proc.returncode}) before {path}"
        assert time.monotonic() < end, f"no {path} after {timeout} s"
        time.sleep(0.05)


@pytest.mark.slow
def test_kill_9_in_a_world_stage_resumes_to_the_same_result(tmp_path: Path) -> None:
    """SIGKILL in the middle of the world's stage 1, then the documented resume command: it says
    the step it resumes from, skips nothing it should not, and ends with the uninterrupted run's
    weights and metrics. Each line of the uninterrupted run's log appears once."""
    base = [*WORLD, f"paths.cache_dir={tmp_path / 'cache'}"]
    # every run below must find the world and its CLIP in the cache, as the killed one will
    _cli(
        ["maft.train", *base, "stages=[]", "evaluate=[]", f"hydra.run.dir={tmp_path / 'warm'}"],
        cwd=tmp_path,
    )

    ref = tmp_path / "ref"
    proc = _cli(["maft.train", *base, f"hydra.run.dir={ref}"], cwd=tmp_path)
    lines = _log_lines(proc.stdout)
    assert len(lines) > 20 and len(lines) == len(set(lines)), "a log line was written twice"
    assert not any("Tip:" in msg for _, msg in lines)
    assert "[3/7] proposal generator, 20 steps" in [msg for _, msg in lines]
    log_file = (ref / "train.log").read_text()
    assert "\r" not in log_file and "\r" not in proc.stderr  # no carriage-return bars
    file_lines = _log_lines(log_file)
    assert file_lines == lines and len(file_lines) == len(set(file_lines))

    killed = tmp_path / "killed"
    every = [*base, "callbacks.model_checkpoint.every_n_train_steps=5"]
    with open(tmp_path / "killed.out", "w") as out:
        run = subprocess.Popen(
            [sys.executable, "-m", "maft.train", *every, f"hydra.run.dir={killed}"],
            cwd=tmp_path,
            env=_env(),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        last = killed / "checkpoints" / "proposals" / "last.ckpt"
        try:
            _wait_for(last, run)
        finally:
            run.send_signal(signal.SIGKILL)
            run.wait(timeout=60)
    assert run.returncode == -signal.SIGKILL
    assert not (killed / "checkpoints" / "proposals" / "final.ckpt").exists()
    step = torch.load(last, map_location="cpu", weights_only=False)["global_step"]
    assert step in (5, 10, 15)  # inside an epoch of 7 batches

    resumed = _cli(["maft.train", *every, f"hydra.run.dir={killed}", "ckpt_path=last"], tmp_path)
    assert f"[3/7] proposal generator: resuming from step {step} of 20" in resumed.stdout
    for stage in ("proposals", "maft"):
        final = Path("checkpoints") / stage / "final.ckpt"
        _assert_same_state(ref / final, killed / final)
    assert _results(ref) == _results(killed)
    assert sorted(os.listdir(killed / "checkpoints" / "proposals")) == [
        "final.ckpt",
        "final.json",
        "last.ckpt",
    ]


@pytest.mark.slow
def test_ctrl_c_saves_a_checkpoint_and_prints_the_resume_command(tmp_path: Path) -> None:
    """SIGINT during stage 1 of the CLI: exit 130, last.ckpt at a step, the printed command
    resumes from that step and finishes."""
    base = ["experiment=smoke", *WORLD[1:], f"paths.cache_dir={tmp_path / 'cache'}"]
    out = tmp_path / "run"
    with open(tmp_path / "run.out", "w") as log_out, open(tmp_path / "run.err", "w") as err:
        run = subprocess.Popen(
            [sys.executable, "-m", "maft.train", *base, f"hydra.run.dir={out}"],
            cwd=tmp_path,
            env=_env(),
            stdout=log_out,
            stderr=err,
        )
        end = time.monotonic() + 300
        while "proposal generator: step" not in (tmp_path / "run.out").read_text():
            assert run.poll() is None and time.monotonic() < end, "stage 1 never started"
            time.sleep(0.05)
        run.send_signal(signal.SIGINT)
        run.wait(timeout=120)
    stderr = (tmp_path / "run.err").read_text()
    assert run.returncode == 130, stderr[-2000:]
    last = out / "checkpoints" / "proposals" / "last.ckpt"
    step = torch.load(last, map_location="cpu", weights_only=False)["global_step"]
    assert 1 <= step < 20 and not (out / "metrics.json").exists()
    command = stderr.split("resume with: ", 1)[1].strip().splitlines()[0]
    args = shlex.split(command)
    assert args[:3] == ["python", "-m", "maft.train"] and args[-1] == "ckpt_path=last"
    resumed = _cli(args[2:], cwd=tmp_path)  # _cli runs `python -m <args>`
    assert f"proposal generator: resuming from step {step} of 20" in resumed.stdout
    assert (out / "metrics.json").is_file()


# ------------------------------------------------------------------------------ seeds
@pytest.mark.slow
def test_seeded_cpu_runs_are_bit_reproducible(tiny_overrides: list[str], tmp_path: Path) -> None:
    """Two runs with one seed: identical metrics.json results and final checkpoints."""
    runs = {}
    for name, seed in (("a", 7), ("b", 7), ("c", 8)):
        runs[name] = tmp_path / name
        run_train(compose([*tiny_overrides, f"seed={seed}"], output_dir=runs[name]))
    for stage in ("proposals", "maft"):
        final = Path("checkpoints") / stage / "final.ckpt"
        _assert_same_state(runs["a"] / final, runs["b"] / final)
        # the comparison can fail: another seed gives other weights
        assert _changed(runs["a"] / final, runs["c"] / final)
    assert _results(runs["a"]) == _results(runs["b"])


# ------------------------------------------------------------------------------ multirun
@pytest.mark.slow
def test_multirun_sweep_aggregates_into_one_table(
    tiny_overrides: list[str], tmp_path: Path
) -> None:
    """A 2-point λ multirun through the CLI, then scripts/aggregate_reports.py -> 2 rows."""
    sweep = tmp_path / "sweep"
    args = ["maft.train", "-m", *tiny_overrides, "model.ensemble.lambda_=0,0.5"]
    _cli([*args, f"hydra.sweep.dir={sweep}"], cwd=tmp_path)
    payloads = [json.loads(p.read_text()) for p in sorted(sweep.glob("*/metrics.json"))]
    assert sorted(p["meta"]["lambda"] for p in payloads) == [0.0, 0.5]

    table_md = tmp_path / "table.md"
    script = REPO / "scripts" / "aggregate_reports.py"
    proc = subprocess.run(
        [sys.executable, str(script), str(sweep), "--out", str(table_md)],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    lines = table_md.read_text().splitlines()
    head = [c.strip() for c in lines[0].strip("|").split("|")]
    assert head[:3] == ["run", "model", "benchmark"] and "mIoU" in head
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in lines[2:]]
    assert len(rows) == 2
    by_lambda = {}
    for cells in rows:
        (tok,) = [t for t in cells[0].split() if t.startswith("model.ensemble.lambda_=")]
        by_lambda[float(tok.split("=")[1])] = cells
    assert sorted(by_lambda) == [0.0, 0.5]
    for payload in payloads:  # each row carries its own run's numbers
        cells = by_lambda[payload["meta"]["lambda"]]
        (bench,) = payload["results"]["maft"]
        assert cells[1:3] == ["maft", bench]
        miou = payload["results"]["maft"][bench]["miou"]
        assert cells[head.index("mIoU")] == ("–" if math.isnan(miou) else f"{miou:.2f}")


# ------------------------------------------------------------------------------ DDP
# trainer=ddp replaces trainer=smoke of the tiny overrides: restore what the tests rely on.
DDP = [
    "trainer=ddp",
    "trainer.accelerator=cpu",
    "trainer.devices=2",
    "trainer.log_every_n_steps=1",
    "trainer.enable_progress_bar=false",
]


def _ddp_data(tmp_path: Path, n_val: int) -> Path:
    root = write_benchmark(tmp_path / "data", "folder", n_images=4, size=(64, 80), seed=0).root
    for sub in ("images", "labels"):
        for f in sorted((Path(root) / sub / "val").iterdir())[n_val:]:
            f.unlink()
    return Path(root)


def _labels_half_right(ckpt: Path, root: Path) -> None:
    """Rewrite the val labels: the model's own prediction on the top i/(n+1) of image i's rows,
    another class below, so each image adds its own share of correct pixels to pAcc.

    A random tiny model may predict one class that no label holds (pAcc 0 whatever is counted).
    """
    from PIL import Image

    from maft.data.vocabulary import Vocabulary
    from maft.predictor import Predictor

    vocab = Vocabulary.from_file(root / "classes.txt")
    predictor = Predictor.from_checkpoint(ckpt, short_side=64)
    images = sorted((root / "images" / "val").iterdir())
    for i, image in enumerate(images):
        pred = predictor.predict(image, vocab, return_scores=False).label_map  # [H0, W0]
        label = (pred + 1) % vocab.num_classes
        rows = pred.shape[0] * (i + 1) // (len(images) + 1)
        label[:rows] = pred[:rows]
        target = root / "labels" / "val" / f"{image.stem}.png"
        Image.fromarray(label.numpy().astype("uint8")).save(target)


@pytest.mark.slow
@pytest.mark.parametrize("n_val", [4, 3])
def test_ddp_evaluation_equals_single_process(
    tiny_overrides: list[str], tmp_path: Path, n_val: int
) -> None:
    """2 gloo processes score each test image exactly once: the metrics equal 1 process's."""
    root = _ddp_data(tmp_path, n_val)
    data = [
        f"data.root={root}",
        "trainer.limit_test_batches=null",
        "model.proposal_train.max_steps=2",
    ]
    train_out = tmp_path / "train"
    run_train(compose([*tiny_overrides, *data, "evaluate=[]"], output_dir=train_out))
    ckpt = train_out / "checkpoints" / "maft" / "final.ckpt"
    _labels_half_right(ckpt, root)

    ev = [*tiny_overrides, *data, f"ckpt_path={ckpt}"]
    single = tmp_path / "single"
    ref = run_eval(compose(ev, config_name="eval", output_dir=single))
    (bench,) = ref["results"]["maft"]
    # every image right on a different share of its pixels: a duplicate or a dropped image shows
    assert 0 < ref["results"]["maft"][bench]["pacc"] < 100

    ddp = tmp_path / "ddp"
    proc = _cli(["maft.eval", *ev, *DDP, f"hydra.run.dir={ddp}"], cwd=tmp_path)
    assert proc.stdout.count("metrics: ") == 1  # only rank 0 writes the reports
    assert _results(ddp) == _results(single)


@pytest.mark.slow
def test_ddp_training_loss_is_finite_and_falls(tiny_overrides: list[str], tmp_path: Path) -> None:
    """`trainer=ddp` on 2 CPU processes trains both stages with a finite, falling loss."""
    out = tmp_path / "run"
    # One training image (both ranks see it each step) and a larger MAFT lr: a loss that can fall.
    steps = [
        "model.proposal_train.max_steps=8",
        "model.maft.max_steps=8",
        "model.maft.lr=1e-3",
        "data.max_train_images=1",
        "data.batch_size=1",
        "model.proposal_train.batch_size=null",  # stage 1 too: 1 image per step
        "logger=csv",
    ]
    proc = _cli(["maft.train", *tiny_overrides, *DDP, *steps, f"hydra.run.dir={out}"], tmp_path)
    assert proc.stdout.count("metrics: ") == 1
    assert (out / "metrics.json").is_file()
    for stage, key in (("proposals", "train/loss"), ("maft", "train/loss")):
        rows = list(csv.DictReader((out / "csv" / stage / "metrics.csv").open()))
        losses = [float(r[key]) for r in rows if r.get(key)]
        assert len(losses) >= 4, (stage, losses)
        assert all(math.isfinite(v) for v in losses), (stage, losses)
        half = len(losses) // 2
        assert sum(losses[half:]) / (len(losses) - half) < sum(losses[:half]) / half, losses
