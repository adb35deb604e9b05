"""Convert the released MAFT checkpoint (detectron2 .pth) into weights maft loads.

The fine-tuned IP-CLIP tower (``IPCLIP.*`` in the official file; any other prefix with --prefix)
is checked against an open_clip architecture and written as:
  - default: a bare open_clip visual state dict (``conv1.weight``, ...), for
    ``IPClipEncoder.visual.load_state_dict`` or ``IPClipEncoder.from_openai_state_dict``;
  - ``--full``: a whole CLIP in OpenAI state-dict layout (text tower from
    ``clip_adapter.clip_model.``), loadable with ``build_clip(<model>, OUT)`` (QuickGELU is picked
    automatically from the OpenAI markers written into the file).
Usage: python scripts/convert_maft_checkpoint.py MAFT_VitB.pth out.pt [--model ViT-B-16] [--full]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from maft.checkpoints import check_keys, read_state_dict
from maft.errors import CheckpointError
from maft.models.clip.convert import check_against, convert_maft_state_dict, text_tower_state_dict
from maft.models.clip.factory import build_clip


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("checkpoint", type=Path, help="official MAFT .pth (dict with 'model')")
    p.add_argument("output", type=Path, help="where to write the converted state dict")
    p.add_argument("--model", default="ViT-B-16", help="open_clip architecture to check against")
    p.add_argument("--prefix", default=None, help="visual-tower key prefix (default: IPCLIP.)")
    p.add_argument("--full", action="store_true", help="write a whole CLIP (visual + text)")
    p.add_argument("--force", action="store_true", help="overwrite an existing output")
    p.add_argument(
        "--unsafe-load", action="store_true", help="torch.load with weights_only=False (trusted)"
    )
    return p.parse_args(argv)


def convert(args: argparse.Namespace) -> dict[str, torch.Tensor]:
    """Read, convert and check; print the report; return the state dict to write."""
    sd, _ = read_state_dict(args.checkpoint, weights_only=not args.unsafe_load)
    visual_sd, report = convert_maft_state_dict(sd, args.prefix, str(args.checkpoint))
    model, _ = build_clip(args.model)
    check_against(visual_sd, model.visual, report)
    print(report.summary())
    check_keys(model.visual.state_dict(), visual_sd, args.checkpoint, f"the {args.model} visual")
    if not args.full:
        return visual_sd
    text = text_tower_state_dict(sd, str(args.checkpoint))
    full = {**text, **{f"visual.{k}": v for k, v in visual_sd.items()}}
    check_keys(model.state_dict(), full, args.checkpoint, f"a whole {args.model} CLIP")
    full["input_resolution"] = torch.tensor(model.visual.image_size[0])  # OpenAI-layout markers
    full["context_length"] = torch.tensor(model.context_length)
    full["vocab_size"] = torch.tensor(model.vocab_size)
    print(f"text tower: {len(text)} keys")
    return full


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit status."""
    args = parse_args(argv)
    if args.output.exists() and not args.force:
        print(f"{args.output} exists; pass --force to overwrite", file=sys.stderr)
        return 2
    try:
        out = convert(args)
    except CheckpointError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    args.output.parent.mkdir(parents=True, exist_ok=True)
    torch.save(out, args.output)
    print(f"wrote {len(out)} tensors to {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
