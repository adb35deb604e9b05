"""Time IP-CLIP vs the per-proposal mask & crop merge vs a plain CLIP pass on the same inputs.

Presets: ``real`` = ViT-B/16 (random weights), 480×480 canvas, N = 100, start layer 8, merge
sub-images at 224 (the paper's setting); ``quick`` = maft-tiny, 128×128, N = 100, sub-images 32.
Prints a table and writes JSON (seconds per image, ratios, peak memory, analytic GFLOPs next to
the paper's 1127 → 53.4 GFLOPs). No timing is asserted anywhere.
Usage: python scripts/bench_ip_clip.py --preset quick [--device cuda] [--repeats 3] [--out f.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
from pathlib import Path

import torch

from maft.benchmarking import timed
from maft.models.clip import IPClipEncoder, build_clip, classify_merged

PRESETS = {
    "real": dict(model="ViT-B-16", size=480, proposals=100, start_layer=8, chunk=25, repeats=2),
    "quick": dict(model="maft-tiny", size=128, proposals=100, start_layer=1, chunk=50, repeats=5),
}
PAPER_GFLOPS = {"merge": 1127.0, "ip_clip": 53.4}


def vit_gflops(
    width: int, depth: int, tokens_per_block: list[int], patches: int, patch: int
) -> float:
    """Analytic forward GFLOPs (2 × multiply-adds) of a ViT: projections, MLP, attention."""
    macs = patches * 3 * patch * patch * width
    for length in tokens_per_block:
        macs += 12 * width * width * length + 2 * length * length * width
    return 2 * macs / 1e9


def flops(visual, size: int, n: int, start: int, merge_size: int) -> dict[str, float]:
    """Analytic GFLOPs per image of the three methods."""
    width = visual.conv1.weight.shape[0]
    patch = visual.patch_size[0]
    depth = len(visual.transformer.resblocks)
    hw = (size // patch) ** 2
    hw_sub = (merge_size // patch) ** 2
    plain = vit_gflops(width, depth, [hw + 1] * depth, hw, patch)
    ip = vit_gflops(width, depth, [hw + 1] * start + [hw + n] * (depth - start), hw, patch)
    merge = n * vit_gflops(width, depth, [hw_sub + 1] * depth, hw_sub, patch)
    return {"plain": plain, "ip_clip": ip, "merge": merge}


def run(
    preset: str, device: str, repeats: int | None, batch: int, merge_proposals: int | None = None
) -> dict:
    """Benchmark one preset; returns the JSON-ready result."""
    cfg = dict(PRESETS[preset])
    repeats = repeats or cfg["repeats"]
    dev = torch.device(device)
    torch.manual_seed(0)
    model, norm = build_clip(cfg["model"], device=dev)
    enc = IPClipEncoder.from_open_clip(model.visual, start_layer=cfg["start_layer"]).eval()
    n, size = cfg["proposals"], cfg["size"]
    images = torch.randn(batch, 3, size, size, device=dev)
    mask_logits = torch.randn(batch, n, size // 4, size // 4, device=dev) * 4  # 1/4-res proposals
    masks = mask_logits.sigmoid()
    # The merge costs one ViT pass per proposal: on a slow CPU time K of them and scale by N / K.
    k = min(merge_proposals or n, n)
    merge_logits = mask_logits[:, :k]
    methods = {
        "ip_clip": lambda: enc(images, masks),
        "merge": lambda: classify_merged(model, images, merge_logits, "mask_crop", cfg["chunk"]),
        "plain": lambda: enc(images),
    }
    result: dict = {"preset": preset, "config": cfg, "batch": batch, "repeats": repeats}
    with torch.no_grad():
        for name, fn in methods.items():
            sec, mib = timed(fn, dev, repeats)
            scale = n / k if name == "merge" else 1.0  # linear in the number of sub-images
            result[name] = {"seconds_per_image": sec * scale / batch, "peak_memory_mib": mib}
    result["merge_timed_proposals"] = k
    gf = flops(model.visual, size, n, cfg["start_layer"], norm.image_size)
    for name in methods:
        result[name]["analytic_gflops_per_image"] = gf[name]
    result["ratios"] = {
        "merge_over_ip_clip_time": result["merge"]["seconds_per_image"]
        / result["ip_clip"]["seconds_per_image"],
        "ip_clip_over_plain_time": result["ip_clip"]["seconds_per_image"]
        / result["plain"]["seconds_per_image"],
        "merge_over_ip_clip_gflops": gf["merge"] / gf["ip_clip"],
        "paper_merge_over_ip_clip_gflops": PAPER_GFLOPS["merge"] / PAPER_GFLOPS["ip_clip"],
    }
    result["device"] = (
        torch.cuda.get_device_name(dev)
        if dev.type == "cuda"
        else f"{platform.machine()} CPU x{os.cpu_count()}"
    )
    result["threads"] = torch.get_num_threads()
    result["torch"] = torch.__version__
    return result


def print_table(res: dict) -> None:
    """Human-readable summary."""
    print(f"preset={res['preset']} device={res['device']} threads={res['threads']}")
    print(f"{'method':<10}{'s/image':>12}{'peak MiB':>12}{'GFLOPs':>12}")
    for name in ("ip_clip", "merge", "plain"):
        r = res[name]
        print(
            f"{name:<10}{r['seconds_per_image']:>12.4f}{r['peak_memory_mib']:>12.1f}"
            f"{r['analytic_gflops_per_image']:>12.3f}"
        )
    for key, value in res["ratios"].items():
        print(f"{key}: {value:.2f}")


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--preset", choices=sorted(PRESETS), default="quick")
    p.add_argument("--device", default="cpu")
    p.add_argument("--repeats", type=int, default=None)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument(
        "--merge-proposals",
        type=int,
        default=None,
        help="time the merge on this many proposals and scale to N (slow CPUs)",
    )
    p.add_argument(
        "--out", type=Path, default=None, help="JSON path (default bench_ip_clip_<preset>.json)"
    )
    args = p.parse_args(argv)
    res = run(args.preset, args.device, args.repeats, args.batch, args.merge_proposals)
    print_table(res)
    out = args.out or Path(f"bench_ip_clip_{args.preset}.json")
    out.write_text(json.dumps(res, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
