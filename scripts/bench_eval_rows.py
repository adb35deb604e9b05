"""Time the evaluation rows of the built-in world side by side, with their components.

Builds the world run as ``python -m maft.train experiment=world`` does (the runner's own build
functions; the world CLIP comes from the cache when its settings match), then evaluates the rows
``frozen_merge``, ``frozen_ip_clip`` and ``maft`` through :func:`maft.runner.evaluate` on the same
data and the same task, in the runner's order, optionally with a short MAFT stage (the stage's own
trainer settings, e.g. bf16-mixed) before the ``maft`` row, and then again (``--rounds``). Per row:
wall and CPU seconds, first batch vs the median later batch, and the time spent in the proposal
generator, the CLIP image passes, text embeddings (calls and real encodes), data loading and the
Lightning test loop, Python's full garbage collections, page faults and context switches; plus
what each evaluation trainer ran with (precision, autocast, threads, inference mode, grad) and
the OpenMP wait settings (set as the command lines set them, :mod:`maft.omp`, unless given).
Prints a table and writes JSON; the rows' metrics are in the JSON so two versions of the code can
be compared number for number. Nothing asserts time.
Usage: python scripts/bench_eval_rows.py [--n-val 64] [--rounds 2] [--maft-steps 4] [--out f.json]
"""

# ruff: noqa: E402 (OpenMP's wait policy is set before torch loads it, as in the command lines)
from __future__ import annotations

import contextlib
import os

try:
    from maft.omp import bounded_spin
except ImportError:  # an older maft: OpenMP's settings as the environment gives them
    pass
else:
    bounded_spin()

import argparse
import gc
import json
import resource
import statistics
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import lightning as L
import torch

from maft import runner
from maft.benchmarking import machine
from maft.config import compose
from maft.models.clip.text import TextClassifier

ROWS = ("frozen_merge", "frozen_ip_clip", "maft")


class Clock:
    """Wall and CPU seconds and call counts per component, for the row being evaluated."""

    def __init__(self) -> None:
        self.parts: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0, 0])
        self.flags: dict[str, Any] = {}

    def reset(self) -> None:
        """Start a new row."""
        self.parts.clear()
        self.flags = {}

    def add(self, name: str, wall: float, cpu: float) -> None:
        """Charge ``wall`` / ``cpu`` seconds and one call to ``name``."""
        part = self.parts[name]
        part[0] += wall
        part[1] += cpu
        part[2] += 1

    def hook(self, module: torch.nn.Module, name: str) -> None:
        """Time every forward of ``module`` under ``name``."""
        start: list[tuple[float, float]] = []

        def pre(*_: Any) -> None:
            start.append((time.perf_counter(), time.process_time()))
            self.flags.setdefault("autocast_cpu", torch.is_autocast_enabled("cpu"))
            self.flags.setdefault("inference_mode", torch.is_inference_mode_enabled())
            self.flags.setdefault("grad_enabled", torch.is_grad_enabled())
            self.flags.setdefault("threads", torch.get_num_threads())

        def post(*_: Any) -> None:
            wall, cpu = start.pop()
            self.add(name, time.perf_counter() - wall, time.process_time() - cpu)

        module.register_forward_pre_hook(pre)
        module.register_forward_hook(post)

    def watch_gc(self) -> None:
        """Charge Python's garbage-collection pauses to ``python gc (gen 2)`` / ``(gen 0-1)``."""
        start: list[tuple[float, float]] = []

        def callback(phase: str, info: dict[str, int]) -> None:
            if phase == "start":
                start.append((time.perf_counter(), time.process_time()))
            elif start:
                wall, cpu = start.pop()
                name = "python gc (gen 2)" if info["generation"] == 2 else "python gc (gen 0-1)"
                self.add(name, time.perf_counter() - wall, time.process_time() - cpu)

        gc.callbacks.append(callback)

    def wrap(self, owner: Any, attr: str, name: str) -> None:
        """Time every call of ``owner.attr`` (a method) under ``name``."""
        fn = getattr(owner, attr)

        def timed(*args: Any, **kwargs: Any) -> Any:
            wall, cpu = time.perf_counter(), time.process_time()
            try:
                return fn(*args, **kwargs)
            finally:
                self.add(name, time.perf_counter() - wall, time.process_time() - cpu)

        setattr(owner, attr, timed)


class BatchTimes(L.Callback):
    """Per-batch step seconds and the gaps between batches (data loading) of one test run."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.steps: list[float] = []
        self.cpu_steps: list[float] = []
        self._mark = (0.0, 0.0)

    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.clock.flags["precision"] = str(trainer.precision)
        self.clock.flags["trainer_inference_mode"] = bool(trainer._evaluation_loop.inference_mode)
        self._mark = (time.perf_counter(), time.process_time())

    def on_test_batch_start(self, trainer: L.Trainer, *_: Any) -> None:
        wall, cpu = self._mark
        self.clock.add("data loading", time.perf_counter() - wall, time.process_time() - cpu)
        self._mark = (time.perf_counter(), time.process_time())

    def on_test_batch_end(self, trainer: L.Trainer, *_: Any) -> None:
        wall, cpu = self._mark
        self.steps.append(time.perf_counter() - wall)
        self.cpu_steps.append(time.process_time() - cpu)
        self._mark = (time.perf_counter(), time.process_time())


def build(args: argparse.Namespace, out_dir: Path) -> tuple[Any, Any, Any, Any]:
    """The world run's config, vocabulary, datamodule and MaftTask, built as ``run_train`` does."""
    overrides = [
        f"experiment={args.experiment}",
        f"data.n_train={args.n_train}",
        f"data.n_val={args.n_val}",
        "pictures=0",
        "trainer.enable_progress_bar=false",
        *args.override,
    ]
    cfg = compose(overrides, output_dir=out_dir)
    runner.setup_run_logging()
    torch.set_float32_matmul_precision("high")  # as run_train
    L.seed_everything(int(cfg.seed), workers=True, verbose=False)
    vocab = runner.build_vocabulary(cfg)
    dm = runner.build_datamodule(cfg, vocab)
    dm.setup("fit")
    dm.setup("test")
    runner.resolve_clip_weights(cfg, {})
    L.seed_everything(int(cfg.seed), workers=True, verbose=False)
    task = runner.build_maft_task(cfg, vocab, args.proposals_ckpt)
    return cfg, vocab, dm, task


def instrument(task: Any, clock: Clock) -> None:
    """Hooks on the generator, the CLIP image passes of every row, and the text embeddings."""
    clock.hook(task.generator, "generator")
    for mode in ROWS:
        seg = task.segmenter(mode)
        if seg.classifier == "ip_clip":
            clock.hook(seg.ip_clip, "clip image")
    clock.hook(task.teacher_visual, "clip image")  # the merge row's sub-image passes
    clock.watch_gc()
    clock.wrap(task, "text_embeddings", "text embeddings (calls)")
    clock.wrap(TextClassifier, "encode", "text encode (computed)")


def os_counts(before: Any, after: Any) -> dict[str, int]:
    """Page faults and context switches between two ``getrusage`` readings."""
    names = {"ru_minflt": "minor faults", "ru_majflt": "major faults"}
    names |= {"ru_nvcsw": "voluntary switches", "ru_nivcsw": "involuntary switches"}
    return {v: int(getattr(after, k) - getattr(before, k)) for k, v in names.items()}


def row_result(
    row: str, rnd: int, wall: float, cpu: float, cb: BatchTimes, clock: Clock, metrics: dict
) -> dict[str, Any]:
    """One row's timings, components and metrics."""
    steps = cb.steps
    later = statistics.median(steps[1:]) if len(steps) > 1 else float("nan")
    parts = {k: {"wall_s": v[0], "cpu_s": v[1], "calls": v[2]} for k, v in clock.parts.items()}
    inside = sum(steps) + parts.get("data loading", {}).get("wall_s", 0.0)
    parts["lightning loop + trainer"] = {"wall_s": wall - inside, "cpu_s": float("nan"), "calls": 1}
    bench, m = next(iter(metrics.items()))
    return {
        "row": row,
        "round": rnd,
        "wall_s": wall,
        "cpu_s": cpu,
        "batches": len(steps),
        "first_batch_s": steps[0] if steps else float("nan"),
        "median_later_batch_s": later,
        "step_cpu_s": sum(cb.cpu_steps),
        "components": parts,
        "flags": dict(clock.flags),
        "metrics": {k: v for k, v in m.items() if isinstance(v, float | list)},
        "benchmark": bench,
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Evaluate every row ``args.rounds`` times (MAFT steps before the first ``maft`` row)."""
    if args.threads:
        torch.set_num_threads(args.threads)
    out_dir = Path(args.run_dir or tempfile.mkdtemp(prefix="bench_eval_rows_"))
    t0 = time.perf_counter()
    cfg, vocab, dm, task = build(args, out_dir)
    setup_s = time.perf_counter() - t0
    clock = Clock()
    instrument(task, clock)
    build_trainer = runner.build_trainer
    current: list[BatchTimes] = []

    def with_timer(*a: Any, **kw: Any) -> L.Trainer:
        trainer = build_trainer(*a, **kw)
        if str(a[1]).startswith("test_"):
            trainer.callbacks.append(current[-1])
        return trainer

    runner.build_trainer = with_timer
    rows: list[dict[str, Any]] = []
    fit_s = None
    setup: dict[str, float] = {}
    prepare = getattr(runner, "evaluation_rows", None)  # absent before the fix: rows alone

    def rows_of_one_task() -> contextlib.AbstractContextManager:
        return prepare(task, dm, cfg, setup) if prepare else contextlib.nullcontext()

    def one_row(row: str, rnd: int) -> None:
        clock.reset()
        current.append(BatchTimes(clock))
        usage = resource.getrusage(resource.RUSAGE_SELF)
        wall, cpu = time.perf_counter(), time.process_time()
        metrics = runner.evaluate(task, dm, cfg, row)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        rows.append(row_result(row, rnd, wall, cpu, current[-1], clock, metrics))
        rows[-1]["os"] = os_counts(usage, resource.getrusage(resource.RUSAGE_SELF))

    try:
        for rnd in range(args.rounds):  # run_train's order: frozen rows, MAFT steps, maft row
            with rows_of_one_task():
                for row in [r for r in ROWS if r in args.rows and r != "maft"]:
                    one_row(row, rnd)
            if "maft" not in args.rows:
                continue
            if rnd == 0 and args.maft_steps > 0:
                cfg.model.maft.max_steps = int(args.maft_steps)
                t = time.perf_counter()
                runner._fit_stage(cfg, task, dm, "maft", int(args.maft_steps))
                fit_s = time.perf_counter() - t
            with rows_of_one_task():
                one_row("maft", rnd)
    finally:
        runner.build_trainer = build_trainer
    return {
        "experiment": args.experiment,
        "n_val": int(args.n_val),
        "images": dict(dm.num_test_images),
        "proposals": int(task.generator.num_queries),
        "maft_steps_before_maft_row": int(args.maft_steps),
        "maft_fit_s": fit_s,
        "setup_s": setup_s,
        "eval_setup_s": setup.get("eval setup"),
        "machine": machine(),
        "env": {
            k: os.environ.get(k) for k in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OMP_NUM_THREADS")
        },
        "rows": rows,
        "ratios": ratios(rows),
    }


def ratios(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Wall and CPU time of each row over the ``maft`` row's, per round."""
    out: dict[str, float] = {}
    for rnd in sorted({r["round"] for r in rows}):
        here = {r["row"]: r for r in rows if r["round"] == rnd}
        base = here.get("maft")
        if not base:
            continue
        for name, r in here.items():
            out[f"round{rnd}/{name}/maft wall"] = r["wall_s"] / base["wall_s"]
            out[f"round{rnd}/{name}/maft cpu"] = r["cpu_s"] / base["cpu_s"]
    return out


def table(result: dict[str, Any]) -> str:
    """Rows x (time, first/later batch, components) as text."""
    comps = [
        "generator",
        "clip image",
        "text embeddings (calls)",
        "text encode (computed)",
        "data loading",
        "python gc (gen 2)",
        "lightning loop + trainer",
    ]
    head = f"{'round/row':22s} {'wall s':>7s} {'cpu s':>7s} {'1st b':>6s} {'later b':>7s}"
    head += "".join(f" {c.split(' ')[0][:9]:>9s}" for c in comps)
    head += f" {'minflt':>7s} {'invcsw':>7s}  precision  miou"
    lines = [head]
    for r in result["rows"]:
        line = f"{r['round']}/{r['row']:20s} {r['wall_s']:7.2f} {r['cpu_s']:7.2f} "
        line += f"{r['first_batch_s']:6.2f} {r['median_later_batch_s']:7.3f}"
        for c in comps:
            part = r["components"].get(c)
            line += f" {part['wall_s']:9.2f}" if part else f" {'-':>9s}"
        line += f" {r['os']['minor faults']:7d} {r['os']['involuntary switches']:7d}"
        miou = r["metrics"].get("miou", float("nan"))
        line += f"  {r['flags'].get('precision', '?'):9s}  {miou:.4f}"
        lines.append(line)
    lines.append("(text: seconds in calls of task.text_embeddings / in TextClassifier.encode)")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--experiment", default="world")
    ap.add_argument("--n-val", type=int, default=64, help="test images (a small world)")
    ap.add_argument("--n-train", type=int, default=64, help="train images (MAFT steps only)")
    ap.add_argument("--rounds", type=int, default=2, help="evaluate every row this many times")
    ap.add_argument("--rows", nargs="+", default=list(ROWS), choices=ROWS, help="in run order")
    ap.add_argument("--maft-steps", type=int, default=4, help="MAFT steps before the maft row")
    ap.add_argument("--proposals-ckpt", default=None, help="stage-1 checkpoint (else seeded init)")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    ap.add_argument("--run-dir", default=None, help="run folder (default: a fresh temp folder)")
    ap.add_argument("--override", nargs="*", default=[], help="more Hydra overrides")
    ap.add_argument("--out", type=Path, default=Path("bench_eval_rows.json"))
    args = ap.parse_args()
    result = run(args)
    print(table(result))
    setup = result["eval_setup_s"]
    print(
        f"OMP_WAIT_POLICY={result['env']['OMP_WAIT_POLICY']}, "
        f"GOMP_SPINCOUNT={result['env'].get('GOMP_SPINCOUNT')}, torch threads "
        f"{result['machine']['threads']}; eval setup outside the rows: "
        + ("none (no runner.evaluation_rows)" if setup is None else f"{setup:.2f} s")
    )
    for key, value in result["ratios"].items():
        print(f"{key}: {value:.2f}")
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
