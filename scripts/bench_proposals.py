"""Time forward/backward and peak memory of the proposal generator at ViT-B scale.

The generator and its loss: docs/method.md §2.1, §6.1.

Default: ResNet-101, hidden 256, 100 queries, 9 decoder layers, 6 encoder layers, batch 2, 640²,
with the full set criterion (12 544 points, deep supervision) in the backward pass.

    python scripts/bench_proposals.py                      # CPU, 1 timed iteration
    python scripts/bench_proposals.py --device cuda --iters 10 --warmup 3 --amp

Prints one JSON object and writes it to --out.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from maft.losses.matcher import HungarianMatcher
from maft.losses.set_criterion import SetCriterion, targets_from_label
from maft.models.proposals import MaskProposalGenerator


def parse_args() -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--backbone", default="resnet101")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--size", type=int, default=640)
    p.add_argument("--num-classes", type=int, default=156)
    p.add_argument("--iters", type=int, default=1)
    p.add_argument("--warmup", type=int, default=0)
    p.add_argument("--amp", action="store_true", help="bfloat16 autocast (cuda)")
    p.add_argument("--out", default="bench_proposals.json")
    return p.parse_args()


def synthetic_batch(batch: int, size: int, num_classes: int, device: torch.device) -> tuple:
    """Random images and label maps with 8 classes each (blocks of 80 px) -> images, targets."""
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (batch, 3, size, size), generator=g).float().to(device)
    block = max(size // 8, 1)
    coarse = torch.randint(0, num_classes, (batch, 1, 8, 8), generator=g).float()
    labels = F.interpolate(coarse, scale_factor=block, mode="nearest")[:, 0].long()
    targets = [{k: v.to(device) for k, v in targets_from_label(lab, 255).items()} for lab in labels]
    return images, targets


def sync(device: torch.device) -> None:
    """Wait for queued kernels so wall-clock timings are real."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_memory_mib(device: torch.device) -> float:
    """Peak CUDA memory allocated, or the process' peak resident set size on CPU (MiB)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    scale = 1 if platform.system() == "Darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20


def main() -> None:
    """Run the benchmark and print/write the timings."""
    args = parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = MaskProposalGenerator(backbone=args.backbone).to(device).train()
    criterion = SetCriterion(args.num_classes, HungarianMatcher()).to(device)
    text = F.normalize(torch.randn(args.num_classes, 512, device=device), dim=-1)
    images, targets = synthetic_batch(args.batch, args.size, args.num_classes, device)
    times: dict[str, list[float]] = {"forward_s": [], "loss_s": [], "backward_s": []}
    for i in range(args.warmup + args.iters):
        if i == args.warmup and device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        sync(device)
        t0 = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.amp):
            outputs = model(images, text)
            sync(device)
            t1 = time.perf_counter()
            loss = criterion(outputs, targets)["loss"]
        sync(device)
        t2 = time.perf_counter()
        loss.backward()
        sync(device)
        t3 = time.perf_counter()
        model.zero_grad(set_to_none=True)
        if i >= args.warmup:
            for key, value in zip(times, (t1 - t0, t2 - t1, t3 - t2)):
                times[key].append(value)
    mean = {k: sum(v) / len(v) for k, v in times.items()}
    result = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch_threads": torch.get_num_threads(),
        "config": {k: getattr(args, k) for k in ("backbone", "batch", "size", "num_classes")},
        "amp_bf16": args.amp,
        "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
        "iters": args.iters,
        **mean,
        "step_s": sum(mean.values()),
        "peak_memory_mib": peak_memory_mib(device),
        "memory_kind": "cuda max_memory_allocated" if device.type == "cuda" else "process peak RSS",
    }
    print(json.dumps(result, indent=2))
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
