"""Pretrain the built-in world's tiny CLIP (``maft-world``) and report its zero-shot accuracy.

Example::

    python scripts/pretrain_world_clip.py --out /tmp/world_clip/maft-world-s0.pt --seed 0

Writes the open_clip state dict at ``--out`` (loadable with
``maft.models.clip.build_clip("maft-world", pretrained=<out>)``) and a JSON sidecar next to it.
"""

from __future__ import annotations

import argparse
import shlex
import sys

import torch


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options; defaults are the tiny-scale recipe of the world."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="checkpoint path (.pt); a .json goes beside it")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--budget-s", type=float, default=150.0, help="wall-clock training budget")
    p.add_argument("--steps", type=int, default=None, help="step budget (with --budget-s 0: only)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--pool-size", type=int, default=10_000, help="generated scenes in the pool")
    p.add_argument(
        "--crop-frac", type=float, default=0.0, help="zoom crops per pool scene (world_zoom: 0.3)"
    )
    p.add_argument(
        "--mask-frac", type=float, default=0.0, help="mask-crops per scene (world_masked: 0.15)"
    )
    p.add_argument("--eval-images", type=int, default=320)
    p.add_argument("--eval-scenes", type=int, default=400)
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    p.add_argument("--device", default="cpu")
    p.add_argument("--fp32", action="store_true", help="disable bf16 autocast")
    p.add_argument("--fp16", action="store_true", help="save the weights in float16 (half size)")
    p.add_argument(
        "--dense-embedding", action="store_true", help="dense AdamW on the token embedding"
    )
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    """Run the pretraining and print the command, seed, steps, times and accuracies."""
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from maft.world.pretrain import pretrain_world_clip

    cmd = " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv])
    print(f"command: {cmd}\nseed: {args.seed}  threads: {torch.get_num_threads()}", flush=True)
    meta = pretrain_world_clip(
        args.out,
        seed=args.seed,
        budget_s=args.budget_s or None,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        weight_decay=args.weight_decay,
        pool_size=args.pool_size,
        crop_frac=args.crop_frac,
        mask_frac=args.mask_frac,
        eval_images=args.eval_images,
        eval_scenes=args.eval_scenes,
        bf16=not args.fp32,
        fp16=args.fp16,
        sparse_embedding=not args.dense_embedding,
        device=args.device,
        progress=not args.no_progress,
    )
    acc = {
        k: ("n/a" if v is None else f"{v:.3f}")
        for k, v in meta["accuracy"].items()
        if k.startswith(("image_", "region_s", "region_u"))
    }
    per_class = meta["accuracy"]["region_per_class"]
    n_img, n_reg = meta["accuracy"]["n_images"], meta["accuracy"]["n_regions"]
    print(
        f"steps {meta['steps']}  train {meta['train_s']:.1f} s  pool {meta['pool_s']:.1f} s "
        f"({meta['pool_images']} pairs)  eval {meta['eval_s']:.1f} s\n"
        f"| zero-shot accuracy (class mean) | seen | unseen |\n|---|---|---|\n"
        f"| image level ({n_img} single-class images) | {acc['image_seen']} | "
        f"{acc['image_unseen']} |\n"
        f"| region level, mask&crop ({n_reg} regions, 16-way) | "
        f"{acc['region_seen']} | {acc['region_unseen']} |\n"
        f"per class (region): "
        + ", ".join(f"{k} {v:.2f}" for k, v in per_class.items() if v is not None)
        + f"\ncheckpoint: {args.out}",
        flush=True,
    )
    return meta


if __name__ == "__main__":
    main()
