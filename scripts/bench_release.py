"""Speed and memory of the released FreeSeg/MAFT model (pure PyTorch) next to the lite generator.

Three measurements, each run side by side with its lite counterpart in the same process:

- ``deform_attn``: the deformable-attention pixel decoder (conv 256, 6 layers, 8 heads, 4 points)
  against the lite full-attention pixel decoder (hidden 256, 6 layers) on random backbone maps of
  a 640x640 input, forward and forward+backward, plus the attention core op alone;
- ``generator``: the whole FreeSeg generator (R-101 DeepLab) against the lite generator
  (timm ResNet-101) at 640x640, batch 1, inference;
- ``released_model``: the whole model (generator + IP-CLIP + ensemble + post-processing) on one
  640x853 image padded to 640x864, 171 classes, with ViT-B/16 and ViT-L/14 (random weights).

Ratios are lite / freeseg (above 1: the released part is faster or smaller). Nothing is asserted.

    python scripts/bench_release.py                          # CPU, 1 warm-up + 2 timed runs
    python scripts/bench_release.py --skip-vitl --repeats 1  # CPU, about 2 minutes
    python scripts/bench_release.py --device cuda            # fp32, 3 warm-ups + 10 runs
    python scripts/bench_release.py --device cuda --amp      # bf16 autocast, ..._cuda_bf16.json
    python scripts/bench_release.py --quick --out /tmp/b.json  # tiny sizes (tests)

Prints one JSON object and writes it to --out (default docs/bench/bench_release_<device>.json,
``_bf16`` added with --amp); progress lines go to stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import gc
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from maft.benchmarking import PeakMemory, machine
from maft.data.vocabulary import Vocabulary
from maft.models.proposals import build_generator
from maft.models.proposals.freeseg.ms_deform_attn import ms_deform_attn_core
from maft.models.proposals.freeseg.pixel_decoder import MSDeformAttnPixelDecoder
from maft.models.proposals.pixel_decoder import PixelDecoder
from maft.models.release import INPUT_SIZE, START_LAYER

ROOT = Path(__file__).resolve().parents[1]
LEVELS = ("res2", "res3", "res4", "res5")

#: Released sizes (``conf/model/proposals/freeseg_r101.yaml`` / ``lite_r101.yaml``) at 640 px.
REAL: dict[str, Any] = {
    "deform": {
        "size": 640,
        "channels": {"res2": 256, "res3": 512, "res4": 1024, "res5": 2048},
        "conv_dim": 256,
        "enc_layers": 6,
        "nheads": 8,
        "n_points": 4,
        "dim_feedforward": 1024,
    },
    "generator_size": 640,
    "generator_clip_dim": 512,
    "classes": 171,  # COCO-Stuff-171, the training vocabulary of the releases
    "freeseg": {"arch": "freeseg"},  # FreeSegGenerator defaults are the released sizes
    "lite": {
        "arch": "lite",
        "backbone": "resnet101",
        "pretrained_backbone": False,
        "hidden_dim": 256,
        "dec_layers": 9,
        "enc_layers": 6,
    },
    "image": (640, 853),  # short side 640 (the released test size)
    "canvas": (640, 864),  # padded to a multiple of 32
    "orig": (480, 640),  # the original image the scores are resized back to
    "clips": {
        "ViT-B-16": {"embed_dim": 512},
        "ViT-L-14": {"embed_dim": 768},
    },
}

#: Tiny sizes for the test suite: the same code paths in a few seconds.
QUICK: dict[str, Any] = {
    "deform": {
        "size": 64,
        "channels": {"res2": 32, "res3": 64, "res4": 128, "res5": 256},
        "conv_dim": 32,
        "enc_layers": 1,
        "nheads": 8,
        "n_points": 4,
        "dim_feedforward": 64,
    },
    "generator_size": 64,
    "generator_clip_dim": 32,
    "classes": 16,
    "freeseg": {
        "arch": "freeseg",
        "depth": 50,
        "stem_out_channels": 16,
        "res2_out_channels": 32,
        "width_per_group": 8,
        "conv_dim": 32,
        "mask_dim": 32,
        "enc_layers": 1,
        "enc_dim_feedforward": 64,
        "interaction_dim": 64,
        "hidden_dim": 32,
        "num_queries": 8,
        "dim_feedforward": 64,
        "dec_layers": 2,
        "embed_hidden_dim": 64,
    },
    "lite": {
        "arch": "lite",
        "backbone": "test_resnet.r160_in1k",
        "pretrained_backbone": False,
        "freeze_bn": False,
        "hidden_dim": 32,
        "num_queries": 8,
        "dec_layers": 2,
        "nheads": 2,
        "dim_feedforward": 64,
        "enc_layers": 1,
        "enc_dim_feedforward": 64,
        "mask_dim": 32,
    },
    "image": (64, 85),
    "canvas": (64, 96),
    "orig": (48, 64),
    "clips": {
        "maft-tiny": {"embed_dim": 32, "start_layer": 1, "input_size": 32, "quick_gelu": None},
    },
}


# ----------------------------------------------------------------------------------- helpers
def sync(device: torch.device) -> None:
    """Wait for queued kernels so wall-clock timings are real."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def autocast(device: torch.device, amp: bool) -> contextlib.AbstractContextManager:
    """bf16 autocast when ``amp``, else a no-op context."""
    if not amp:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def measure(
    label: str, fn: Callable[[], object], device: torch.device, warmup: int, repeats: int
) -> dict[str, Any]:
    """Lower-median and min seconds of ``repeats`` calls after ``warmup`` ones; peak MiB of all."""
    times: list[float] = []
    with PeakMemory(device) as mem:
        for i in range(warmup + repeats):
            sync(device)
            start = time.perf_counter()
            fn()
            sync(device)
            if i >= warmup:
                times.append(time.perf_counter() - start)
    out: dict[str, Any] = {
        "seconds": sorted(times)[(len(times) - 1) // 2],
        "seconds_min": min(times),
        "times_s": times,
        "peak_mib": mem.peak_mib,
    }
    if device.type == "cuda":
        out["total_peak_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
    print(f"{label:40s} {out['seconds']:10.4f} s {out['peak_mib']:10.1f} MiB", file=sys.stderr)
    return out


def ratio(lite: dict[str, Any], freeseg: dict[str, Any]) -> dict[str, float | None]:
    """lite / freeseg of seconds and peak memory (None where freeseg's figure is zero)."""
    out: dict[str, float | None] = {}
    for key in ("seconds", "peak_mib"):
        a, b = lite[key], freeseg[key]
        out[key] = a / b if b > 0 else None
    return out


def n_params(module: nn.Module) -> int:
    """Number of parameters."""
    return sum(p.numel() for p in module.parameters())


def weights_mib(module: nn.Module) -> float:
    """Size of the parameters and buffers (MiB)."""
    tensors = [*module.parameters(), *module.buffers()]
    return sum(t.numel() * t.element_size() for t in tensors) / 2**20


def free_memory() -> None:
    """Return cached CUDA blocks between measurements (each measurement starts with a gc)."""
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def backbone_features(
    size: int, channels: dict[str, int], device: torch.device
) -> dict[str, torch.Tensor]:
    """Random backbone-shaped maps res2..res5 (strides 4..32) of a ``size`` x ``size`` input."""
    g = torch.Generator().manual_seed(0)
    return {
        name: torch.randn(1, channels[name], size // 2**i, size // 2**i, generator=g).to(device)
        for i, name in enumerate(LEVELS, start=2)
    }


def decoder_loss(out: tuple[torch.Tensor, list[torch.Tensor]]) -> torch.Tensor:
    """A scalar touching every pixel-decoder output (for the backward pass)."""
    mask_features, maps = out
    return mask_features.float().mean() + sum(m.float().mean() for m in maps)


# ----------------------------------------------------------------------------------- entries
def bench_deform_attn(
    cfg: dict[str, Any], device: torch.device, amp: bool, warmup: int, repeats: int
) -> dict[str, Any]:
    """Deformable-attention pixel decoder vs the lite full-attention one, plus the core op."""
    torch.manual_seed(0)
    ch = cfg["channels"]
    freeseg = MSDeformAttnPixelDecoder(
        ch,
        conv_dim=cfg["conv_dim"],
        mask_dim=cfg["conv_dim"],
        enc_layers=cfg["enc_layers"],
        nheads=cfg["nheads"],
        n_points=cfg["n_points"],
        dim_feedforward=cfg["dim_feedforward"],
    ).to(device)
    lite = PixelDecoder(
        [ch[name] for name in LEVELS],
        hidden_dim=cfg["conv_dim"],
        mask_dim=cfg["conv_dim"],
        enc_layers=cfg["enc_layers"],
        nheads=cfg["nheads"],
        dim_feedforward=cfg["dim_feedforward"],
    ).to(device)
    feats = backbone_features(cfg["size"], ch, device)
    models = {"freeseg": freeseg, "lite": lite}

    def infer(model: nn.Module) -> Callable[[], object]:
        def run() -> object:
            with torch.inference_mode(), autocast(device, amp):
                return model(feats)

        return run

    def train(model: nn.Module) -> Callable[[], object]:
        inputs = {k: v.clone().requires_grad_(True) for k, v in feats.items()}

        def run() -> object:
            with autocast(device, amp):
                loss = decoder_loss(model(inputs))
            loss.backward()
            model.zero_grad(set_to_none=True)
            for v in inputs.values():
                v.grad = None
            return loss

        return run

    forward: dict[str, Any] = {}
    backward: dict[str, Any] = {}
    for name, model in models.items():
        forward[name] = measure(
            f"deform_attn forward {name}", infer(model.eval()), device, warmup, repeats
        )
        backward[name] = measure(
            f"deform_attn fwd+bwd {name}", train(model.train()), device, warmup, repeats
        )
        for entry in (forward[name], backward[name]):
            entry["params"] = n_params(model)
    forward["ratio_lite_over_freeseg"] = ratio(forward["lite"], forward["freeseg"])
    backward["ratio_lite_over_freeseg"] = ratio(backward["lite"], backward["freeseg"])

    # the attention core alone, at the encoder's own shapes (levels coarsest first)
    shapes = [(cfg["size"] // 2**i,) * 2 for i in (5, 4, 3)]
    tokens = sum(h * w for h, w in shapes)
    heads, points = cfg["nheads"], cfg["n_points"]
    d_head = cfg["conv_dim"] // heads
    g = torch.Generator().manual_seed(0)
    value = torch.randn(1, tokens, heads, d_head, generator=g).to(device)
    locations = torch.rand(1, tokens, heads, len(shapes), points, 2, generator=g).to(device)
    weights = torch.rand(1, tokens, heads, len(shapes) * points, generator=g).softmax(-1)
    weights = weights.view(1, tokens, heads, len(shapes), points).to(device)
    spatial = torch.tensor(shapes, dtype=torch.long, device=device)

    def core() -> object:
        with torch.inference_mode(), autocast(device, amp):
            return ms_deform_attn_core(value, spatial, locations, weights)

    core_op = measure("deform_attn core op", core, device, warmup, max(repeats, 3))
    core_op["calls_per_decoder_forward"] = cfg["enc_layers"]
    core_op["shapes"] = {
        "value": list(value.shape),
        "sampling_locations": list(locations.shape),
        "attention_weights": list(weights.shape),
        "spatial_shapes": [list(s) for s in shapes],
    }
    del freeseg, lite, models
    free_memory()
    return {
        "settings": {
            "input_size": [cfg["size"], cfg["size"]],
            "features": {k: list(v.shape) for k, v in feats.items()},
            "encoder_levels": ["res5", "res4", "res3"],
            "encoder_tokens": tokens,
            "freeseg": {
                "class": "MSDeformAttnPixelDecoder",
                "conv_dim": cfg["conv_dim"],
                "enc_layers": cfg["enc_layers"],
                "nheads": heads,
                "n_points": points,
                "dim_feedforward": cfg["dim_feedforward"],
            },
            "lite": {
                "class": "PixelDecoder (full attention, scaled_dot_product_attention)",
                "hidden_dim": cfg["conv_dim"],
                "enc_layers": cfg["enc_layers"],
                "nheads": heads,
                "dim_feedforward": cfg["dim_feedforward"],
            },
            "forward_mode": "eval, torch.inference_mode",
            "forward_backward_mode": "train mode (dropout: freeseg 0.1, lite 0.0), input maps "
            "require grad, loss = sum of the means of every output",
        },
        "forward": forward,
        "forward_backward": backward,
        "core_op": core_op,
    }


def bench_generator(
    preset: dict[str, Any], device: torch.device, amp: bool, warmup: int, repeats: int
) -> dict[str, Any]:
    """Whole FreeSeg generator vs the lite generator: forward at one square size, batch 1."""
    size = preset["generator_size"]
    clip_dim = preset["generator_clip_dim"]
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (1, 3, size, size), generator=g).float().to(device)
    classes = preset["classes"]
    text = torch.nn.functional.normalize(torch.randn(classes, clip_dim, generator=g), dim=-1)
    text = text.to(device)
    result: dict[str, Any] = {}
    settings: dict[str, Any] = {
        "image": [1, 3, size, size],
        "classes": classes,
        "clip_dim": clip_dim,
    }
    for name in ("freeseg", "lite"):
        torch.manual_seed(0)
        cfg = {**preset[name], "clip_dim": clip_dim}
        model = build_generator(cfg).to(device).eval()

        def run(model: nn.Module = model) -> object:
            with torch.inference_mode(), autocast(device, amp):
                return model(images, text)

        result[name] = measure(f"generator {name}", run, device, warmup, repeats)
        result[name]["params"] = n_params(model)
        result[name]["weights_mib"] = weights_mib(model)
        settings[name] = cfg
        del model, run
        free_memory()
    result["ratio_lite_over_freeseg"] = ratio(result["lite"], result["freeseg"])
    result["ratio_lite_over_freeseg"]["params"] = (
        result["lite"]["params"] / result["freeseg"]["params"]
    )
    settings["mode"] = "eval, torch.inference_mode"
    return {"settings": settings, **result}


def bench_released_model(
    preset: dict[str, Any],
    device: torch.device,
    amp: bool,
    warmup: int,
    repeats: int,
    skip_vitl: bool,
    real_text: bool,
) -> dict[str, Any]:
    """Whole-model inference per image (generator + IP-CLIP + ensemble + post-processing)."""
    from maft.tasks.maft_task import MaftTask

    names = Vocabulary.from_benchmark("coco_stuff_171", split=None).names
    vocab = Vocabulary.from_names(names[: preset["classes"]])
    (h, w), (ch, cw), orig = preset["image"], preset["canvas"], preset["orig"]
    g = torch.Generator().manual_seed(0)
    images = torch.zeros(1, 3, ch, cw)
    images[..., :h, :w] = torch.randint(0, 256, (1, 3, h, w), generator=g).float()
    images = images.to(device)
    valid_size = torch.tensor([[h, w]])
    orig_size = torch.tensor([list(orig)])
    out: dict[str, Any] = {
        "settings": {
            "image": [h, w],
            "canvas": [ch, cw],
            "orig_size": list(orig),
            "classes": vocab.num_classes,
            "call": 'task.segmenter("maft")(images, text_emb, None, valid_size, orig_size)',
            "text_embeddings": (
                "the text tower's (14 templates per class), computed once, not timed"
                if real_text
                else "random unit vectors [classes, D] made once, not timed (--real-text: the "
                "text tower's; the image path costs the same)"
            ),
            "weights": "random (no download)",
        }
    }
    for clip_name, clip_extra in preset["clips"].items():
        if skip_vitl and clip_name == "ViT-L-14":
            out[clip_name] = {"skipped": "--skip-vitl"}
            continue
        clip = {
            "name": clip_name,
            "pretrained": None,
            "quick_gelu": True,
            "start_layer": START_LAYER,
            "input_size": INPUT_SIZE,
            **clip_extra,
        }
        entry: dict[str, Any] = {"clip": clip}
        text = None
        for gen_name in ("freeseg", "lite"):
            torch.manual_seed(0)
            gen = {**preset[gen_name], "clip_dim": clip["embed_dim"]}
            task = MaftTask(vocabulary=vocab.to_dict(), clip=clip, generator=gen).to(device).eval()
            if text is None:  # one set of embeddings serves both generators
                start = time.perf_counter()
                if real_text:
                    with torch.inference_mode():
                        text = task.text_embeddings(vocab)
                    entry["text_embeddings_s"] = time.perf_counter() - start
                else:
                    g = torch.Generator().manual_seed(0)
                    text = torch.randn(vocab.num_classes, clip["embed_dim"], generator=g)
                    text = torch.nn.functional.normalize(text, dim=-1).to(device)
            seg = task.segmenter("maft")

            def run(seg: nn.Module = seg, text: torch.Tensor = text) -> object:
                with torch.inference_mode(), autocast(device, amp):
                    return seg(images, text, None, valid_size, orig_size)

            entry[gen_name] = measure(
                f"released_model {clip_name} {gen_name}", run, device, warmup, repeats
            )
            entry[gen_name]["proposals"] = int(task.generator.num_queries)
            entry[gen_name]["generator_params"] = n_params(task.generator)
            entry[gen_name]["clip_visual_params"] = n_params(task.clip_model.visual)
            del task, seg, run
            free_memory()
        entry["ratio_lite_over_freeseg"] = ratio(entry["lite"], entry["freeseg"])
        out[clip_name] = entry
    return out


# ----------------------------------------------------------------------------------- driver
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--amp", action="store_true", help="bfloat16 autocast")
    p.add_argument("--quick", action="store_true", help="tiny sizes (tests, smoke runs)")
    p.add_argument("--warmup", type=int, default=None, help="default: 1 on CPU, 3 on CUDA")
    p.add_argument("--repeats", type=int, default=None, help="default: 2 on CPU, 10 on CUDA")
    p.add_argument("--skip-vitl", action="store_true", help="no ViT-L/14 whole-model run")
    p.add_argument(
        "--real-text",
        action="store_true",
        help="text embeddings from the text tower (minutes on CPU) instead of random unit vectors",
    )
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    p.add_argument("--out", type=Path, default=None)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run every measurement, print the JSON and write it to --out; returns the result."""
    args = parse_args(argv)
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    cuda = device.type == "cuda"
    warmup = args.warmup if args.warmup is not None else (3 if cuda else 1)
    repeats = args.repeats if args.repeats is not None else (10 if cuda else 2)
    preset = QUICK if args.quick else REAL
    stem = f"bench_release_{device.type}" + ("_bf16" if args.amp else "")
    out_path = args.out or ROOT / "docs" / "bench" / f"{stem}.json"
    started = time.perf_counter()
    result: dict[str, Any] = {
        "script": "scripts/bench_release.py",
        "argv": list(argv) if argv is not None else sys.argv[1:],
        "preset": "quick" if args.quick else "real",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {
            **machine(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "load_average_at_start": list(os.getloadavg()),
        },
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "device": torch.cuda.get_device_name(device) if cuda else "cpu",
        "dtype": "bfloat16 autocast" if args.amp else "float32",
        "warmup": warmup,
        "repeats": repeats,
        "seconds": "median of the timed calls (the lower one for an even count)",
        "memory_kind": (
            "torch.cuda.max_memory_allocated above the start (weights and inputs excluded); "
            "total_peak_mib includes them"
            if cuda
            else "sampled process RSS above the start (weights and inputs excluded)"
        ),
        "ratio": "lite / freeseg, measured side by side in this run",
    }
    # Every measurement starts with gc.collect(); freezing the objects that exist now (torch,
    # lightning, open_clip: about 400k) keeps that collect from scanning them each time.
    gc.freeze()
    try:
        result["deform_attn"] = bench_deform_attn(
            preset["deform"], device, args.amp, warmup, repeats
        )
        result["generator"] = bench_generator(preset, device, args.amp, warmup, repeats)
        result["released_model"] = bench_released_model(
            preset, device, args.amp, warmup, repeats, args.skip_vitl, args.real_text
        )
    finally:
        gc.unfreeze()
    result["machine"]["load_average_at_end"] = list(os.getloadavg())
    result["wall_s"] = time.perf_counter() - started
    text = json.dumps(result, indent=2)
    print(text)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(text + "\n")
    return result


if __name__ == "__main__":
    main()
