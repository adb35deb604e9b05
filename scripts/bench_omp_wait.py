"""Training steps of the built-in world under OpenMP wait settings, side by side (maft.omp).

OpenMP reads its wait settings once, when torch loads it, so every setting runs in its own child
process: the world's proposal-generator training steps (forward, set criterion, backward, gradient
clip, AdamW; float32 as in stage 1) and MAFT steps (bf16 autocast as in stage 2), from the same
seed. Settings: ``passive`` (``OMP_WAIT_POLICY=PASSIVE``: no spin), ``spin<N>``
(``GOMP_SPINCOUNT=N``), ``default`` (libgomp's own: 300 000 turns). The settings take turns for
``--rounds`` rounds (the host's speed drifts); per setting the median seconds per step and the
losses, which must be equal bit for bit across settings (the wait does not change any number).
Uses the world's config and cached data and CLIP (``python -m maft.train experiment=world``
builds them on first use). Prints a table and writes JSON; nothing asserts time.
Usage: python scripts/bench_omp_wait.py [--settings spin10000 passive default] [--steps 20]
       [--rounds 2] [--experiment world] [--override ...] [--out bench_omp_wait.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

WAIT_VARS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")


def child_env(setting: str) -> dict[str, str]:
    """The environment of one setting: the wait variables it names, no others."""
    env = {k: v for k, v in os.environ.items() if k not in WAIT_VARS}
    if setting == "passive":
        env["OMP_WAIT_POLICY"] = "PASSIVE"
    elif setting.startswith("spin"):
        env["GOMP_SPINCOUNT"] = str(int(setting[4:]))
    elif setting != "default":
        raise SystemExit(f"unknown setting {setting!r}: passive, spin<N> or default")
    return env


def run_child(experiment: str, steps: int, warmup: int, overrides: list[str]) -> dict[str, Any]:
    """Time ``steps`` proposal and MAFT training steps in this process (after ``warmup``)."""
    import lightning as L
    import torch

    from maft.config import compose
    from maft.runner import build_datamodule, build_maft_task, build_proposal_task, build_vocabulary
    from maft.tasks.proposal_task import targets_from_label

    cfg = compose([f"experiment={experiment}", *overrides])
    L.seed_everything(0, verbose=False)  # the augmentation seed (drawn in setup), the shuffle
    vocab = build_vocabulary(cfg)
    dm = build_datamodule(cfg, vocab)
    dm.prepare_data()
    dm.setup("fit")
    batches = []
    for batch in dm.train_dataloader():
        batches.append(batch)
        if len(batches) == warmup + steps:
            break

    def timed_steps(step: Any) -> tuple[list[float], list[float]]:
        seconds, losses = [], []
        for i, batch in enumerate(batches):
            start = time.perf_counter()
            loss = step(batch)
            if i >= warmup:
                seconds.append(time.perf_counter() - start)
                losses.append(float(loss))
        return seconds, losses

    L.seed_everything(0, verbose=False)
    task = build_proposal_task(cfg, vocab).train()
    opt = torch.optim.AdamW(task.param_groups(), lr=1e-4)

    def proposal_step(batch: dict[str, Any]) -> torch.Tensor:
        targets = [
            targets_from_label(label, vocab.ignore_index, task.class_map)
            for label in batch["label"]
        ]
        loss = task.criterion(task(batch["image"]), targets)["loss"]
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(task.parameters(), 0.01)
        opt.step()
        return loss.detach()

    prop_s, prop_loss = timed_steps(proposal_step)
    L.seed_everything(0, verbose=False)
    maft = build_maft_task(cfg, vocab, None)
    maft.train()
    maft_opt = maft.configure_optimizers()["optimizer"]

    def maft_step(batch: dict[str, Any]) -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = maft.compute_losses(batch)["loss"]
        maft_opt.zero_grad()
        loss.backward()
        maft_opt.step()
        return loss.detach()

    maft_s, maft_loss = timed_steps(maft_step)
    return {
        "threads": torch.get_num_threads(),
        "proposal_s": prop_s,
        "proposal_losses": prop_loss,
        "maft_s": maft_s,
        "maft_losses": maft_loss,
    }


def summarise(runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Median s/step per setting and stage, the ratios to the first setting, loss equality."""
    out: dict[str, Any] = {}
    for setting, rs in runs.items():
        out[setting] = {
            stage: statistics.median(s for r in rs for s in r[f"{stage}_s"])
            for stage in ("proposal", "maft")
        }
    first = next(iter(runs))
    for setting in runs:
        for stage in ("proposal", "maft"):
            out[setting][f"{stage}_vs_{first}"] = out[setting][stage] / out[first][stage]
    ref = runs[first][0]
    out["losses_equal"] = all(
        r[key] == ref[key]
        for rs in runs.values()
        for r in rs
        for key in ("proposal_losses", "maft_losses")
    )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--experiment", default="world", help="a world experiment config")
    ap.add_argument("--settings", nargs="+", default=["spin10000", "passive", "default"])
    ap.add_argument("--steps", type=int, default=20, help="timed steps per stage")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    ap.add_argument("--rounds", type=int, default=2, help="the settings take turns this often")
    ap.add_argument("--override", nargs="*", default=[], help="more Hydra overrides")
    ap.add_argument("--out", type=Path, default=Path("bench_omp_wait.json"))
    ap.add_argument("--child", type=Path, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child is not None:
        result = run_child(args.experiment, args.steps, args.warmup, args.override)
        args.child.write_text(json.dumps(result))
        return
    for setting in args.settings:
        child_env(setting)  # a bad name fails before any run
    runs: dict[str, list[dict[str, Any]]] = {s: [] for s in args.settings}
    with tempfile.TemporaryDirectory() as tmp:
        for rnd in range(args.rounds):
            for setting in args.settings:
                out = Path(tmp) / f"{setting}_{rnd}.json"
                cmd = [sys.executable, __file__, "--child", str(out)]
                cmd += ["--experiment", args.experiment]
                cmd += ["--steps", str(args.steps), "--warmup", str(args.warmup)]
                cmd += ["--override", *args.override]
                subprocess.run(cmd, env=child_env(setting), check=True)
                runs[setting].append(json.loads(out.read_text()))
                print(f"round {rnd}, {setting}: done", flush=True)
    summary = summarise(runs)
    first = args.settings[0]
    print(f"{'setting':12s} {'proposal s/step':>16s} {'MAFT s/step':>12s}   vs {first}")
    for setting in args.settings:
        s = summary[setting]
        print(
            f"{setting:12s} {s['proposal']:16.3f} {s['maft']:12.3f}   "
            f"{s[f'proposal_vs_{first}']:.2f} / {s[f'maft_vs_{first}']:.2f}"
        )
    print(f"losses equal bit for bit across settings: {summary['losses_equal']}")
    from maft.benchmarking import machine

    result = {"settings": args.settings, "summary": summary, "runs": runs, "machine": machine()}
    args.out.write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
