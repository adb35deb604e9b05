"""One MAFT training step and one inference pass: seconds and peak memory (docs/method.md §5).

Presets: ``real`` = ViT-B/16 (random weights) at 480 px, ResNet-101 generator (random weights),
N = 100 proposals, 640² crops, batch 2 — the per-GPU load of the official run (8 GPUs × 2 images:
0.365 s per iteration, 20.5 GB peak per GPU; inference 0.09–0.11 s per image on an A100);
``quick`` = maft-tiny + tiny generator at 64². Prints a table and writes JSON; nothing asserts time.
Usage: python scripts/bench_maft_step.py --preset quick [--device cuda] [--repeats 3] [--out f.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from omegaconf import OmegaConf

from maft.benchmarking import machine, timed
from maft.config import compose
from maft.data.vocabulary import Vocabulary
from maft.tasks.maft_task import MaftTask

PRESETS = {
    "real": dict(
        clip="vit_b16", proposals="freeseg_r101", crop=640, test=(640, 864), batch=2, repeats=3
    ),
    "quick": dict(clip="tiny", proposals="tiny", crop=64, test=(64, 96), batch=2, repeats=3),
}
OFFICIAL = {"train_s_per_iter_batch2_per_gpu": 0.365, "peak_gb_per_gpu": 20.5, "infer_s": 0.1}


def build_task(preset: dict, device: torch.device) -> MaftTask:
    """A MaftTask with random weights (no download) at the preset's scale."""
    cfg = compose(
        [
            f"model/clip={preset['clip']}",
            f"model/proposals={preset['proposals']}",
            "model.clip.pretrained=null",
        ]
    )
    clip = OmegaConf.to_container(cfg.model.clip, resolve=True)
    gen = OmegaConf.to_container(cfg.model.proposals, resolve=True)
    gen.update(pretrained_backbone=False, backbone_weights=None)
    vocab = Vocabulary.from_benchmark("coco_stuff_171", split="zero_shot")
    task = MaftTask(vocabulary=vocab.to_dict(), clip=clip, generator=gen, maft={"max_steps": 1000})
    return task.to(device)


def run(name: str, device: str, repeats: int | None) -> dict:
    """Benchmark one preset; returns the JSON-ready result."""
    p = PRESETS[name]
    dev = torch.device(device)
    torch.manual_seed(0)
    task = build_task(p, dev)
    opt = task.configure_optimizers()["optimizer"]
    b, s = p["batch"], p["crop"]
    vocab = task.vocab
    label = torch.randint(0, vocab.num_classes, (b, s, s), device=dev)
    batch = {
        "image": torch.randint(0, 256, (b, 3, s, s), dtype=torch.uint8, device=dev),
        "label": label,
    }

    def train_step() -> None:
        opt.zero_grad(set_to_none=True)
        task.compute_losses(batch)["loss"].backward()
        opt.step()

    h, w = p["test"]
    image = torch.randint(0, 256, (1, 3, h, w), dtype=torch.uint8, device=dev)
    text = task.text_embeddings(vocab)
    seg = task.segmenter("maft")

    def infer() -> None:
        seg(image, text, vocab.seen.to(dev))

    task.train()
    reps = repeats or p["repeats"]
    t_train, m_train = timed(train_step, dev, reps)
    task.eval()
    t_inf, m_inf = timed(infer, dev, reps)
    n = task.generator.num_queries
    return {
        "preset": name,
        "config": p,
        "proposals": n,
        "machine": machine(),
        "train_step_s": t_train,
        "train_peak_mib": m_train,
        "inference_s_per_image": t_inf,
        "inference_peak_mib": m_inf,
        "official_reference": OFFICIAL,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", choices=sorted(PRESETS), default="quick")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--out", type=Path, default=Path("bench_maft_step.json"))
    args = ap.parse_args()
    r = run(args.preset, args.device, args.repeats)
    print(f"{'what':24s} {'seconds':>10s} {'peak MiB':>10s}")
    print(
        f"{'train step (batch ' + str(r['config']['batch']) + ')':24s} "
        f"{r['train_step_s']:10.4f} {r['train_peak_mib']:10.1f}"
    )
    print(
        f"{'inference / image':24s} {r['inference_s_per_image']:10.4f} "
        f"{r['inference_peak_mib']:10.1f}"
    )
    print(
        f"official (8xA100, 2 img/GPU): {OFFICIAL['train_s_per_iter_batch2_per_gpu']} s/iter, "
        f"{OFFICIAL['peak_gb_per_gpu']} GB/GPU; inference ~{OFFICIAL['infer_s']} s/image"
    )
    args.out.write_text(json.dumps(r, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
